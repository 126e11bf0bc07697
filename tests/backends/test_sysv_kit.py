"""The SysV kit (ipckit.backends.common.sysv) on real kernel objects.

Timed semaphore waits on the installed sysv_ipc build: the PyPI wheel of sysv_ipc 1.2.0 has no
semaphore timeouts, so ``Semaphore.acquire(0.2)`` would block forever; these tests prove
ipckit's waits time out, wake on a post from another process, survive signals without
extending the deadline and fail cleanly on removal.  Then the rest of the kit: random keys
that skip taken ones, SEM_UNDO liveness across a process that is really SIGKILLed,
``/proc/sysvipc`` checks, rendezvous records (stale reclaim, never another user's or a newer
object), and the sysv_ipc error map on errors sysv_ipc really raises.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ipckit.backends.common import sysv as sysv_sem
from ipckit.backends.common.sysv import RecordFormat, TimedSemaphore
from ipckit.errors import (
    ChannelBroken,
    ChannelTimeout,
    ConfigurationError,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    PermissionDenied,
    RecvTimeout,
    ResourceExhausted,
)
from ipckit.testing import as_user

sysv_ipc = pytest.importorskip("sysv_ipc")

pytestmark = pytest.mark.timeout(30)

MODES = [True, False]  # semtimedop, polling fallback


@pytest.fixture
def sem() -> Iterator[object]:
    s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600, initial_value=0)
    yield s
    try:
        s.remove()
    except sysv_ipc.ExistentialError:
        pass


def test_installed_build_reports_its_timeout_support() -> None:
    # Informational: the point of sysv_sem is that this may be False.
    assert isinstance(sysv_ipc.SEMAPHORE_TIMEOUT_SUPPORTED, bool)
    assert sysv_sem.semtimedop_available()


@pytest.mark.parametrize("timed", MODES)
def test_wait_times_out(sem: object, timed: bool) -> None:
    ts = TimedSemaphore(sem.id, use_semtimedop=timed)  # type: ignore[attr-defined]
    assert ts.timed is timed
    t0 = time.monotonic()
    assert ts.wait(0.2) is False
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 0.3
    t0 = time.monotonic()
    assert ts.wait(0) is False
    assert time.monotonic() - t0 < 0.05


@pytest.mark.parametrize("timed", MODES)
def test_post_from_other_process_wakes_waiter(sem: object, timed: bool) -> None:
    ts = TimedSemaphore(sem.id, use_semtimedop=timed)  # type: ignore[attr-defined]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            # Post only once the parent is really blocked (semncnt > 0), unless polling.
            end = time.monotonic() + 10
            while timed and sem.waiting_for_nonzero == 0 and time.monotonic() < end:  # type: ignore[attr-defined]
                time.sleep(0.001)
            TimedSemaphore(sem.id).post()  # type: ignore[attr-defined]
            code = 0
        finally:
            os._exit(code)
    try:
        t0 = time.monotonic()
        assert ts.wait(10) is True
        assert time.monotonic() - t0 < 5
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sem.value == 0  # type: ignore[attr-defined]


def test_signals_do_not_extend_or_cut_the_deadline(sem: object) -> None:
    ts = TimedSemaphore(sem.id)  # type: ignore[attr-defined]
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
    try:
        t0 = time.monotonic()
        assert ts.wait(0.3) is False
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(hits) >= 5
    assert 0.3 <= elapsed < 0.4


def test_signal_handler_exception_propagates(sem: object) -> None:
    ts = TimedSemaphore(sem.id)  # type: ignore[attr-defined]

    class Interrupted(Exception):
        pass

    def handler(*_: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(Interrupted):
            ts.wait(5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("timed", MODES)
def test_removed_semaphore_raises_channel_broken(timed: bool) -> None:
    s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600)
    ts = TimedSemaphore(s.id, use_semtimedop=timed)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            ts.wait(10)
        except ChannelBroken as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    end = time.monotonic() + 5
    while timed and s.waiting_for_nonzero == 0 and time.monotonic() < end:
        time.sleep(0.001)
    s.remove()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0].__cause__, OSError)
    with pytest.raises(ChannelBroken):
        ts.post()
    with pytest.raises(ChannelBroken):
        ts.wait(0.01)


def test_post_saturated_count_is_ignored(sem: object) -> None:
    sem.value = 32767  # type: ignore[attr-defined]  # SEMVMX
    TimedSemaphore(sem.id).post()  # type: ignore[attr-defined]
    assert sem.value == 32767  # type: ignore[attr-defined]


def test_posts_survive_a_normally_exiting_poster(sem: object) -> None:
    # SEM_UNDO would revert these posts at exit (row V-2 of docs/design.md).
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ts = TimedSemaphore(sem.id)  # type: ignore[attr-defined]
        for _ in range(5):
            ts.post()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sem.value == 5  # type: ignore[attr-defined]
    ts = TimedSemaphore(sem.id)  # type: ignore[attr-defined]
    assert all(ts.try_acquire() for _ in range(5))
    assert ts.try_acquire() is False


# --------------------------------------------------------------------------- random keys
@pytest.mark.security("S3", subject="sysv")
def test_taken_keys_are_skipped_and_never_touched(monkeypatch: pytest.MonkeyPatch, sem: object) -> None:
    taken = sem.key  # type: ignore[attr-defined]
    fresh = 0x5B000000 + secrets.randbelow(1 << 20)
    keys = iter([taken, taken, fresh])
    monkeypatch.setattr(sysv_sem, "random_key", lambda: next(keys))
    key, semid = sysv_sem.sem_create(2, 0o600)
    try:
        assert key == fresh and semid != sem.id  # type: ignore[attr-defined]
        row = sysv_sem.proc_row("sem", semid)
        assert row is not None and row["key"] == fresh and row["nsems"] == 2 and row["perms"] & 0o777 == 0o600
        assert sysv_sem.proc_row("sem", sem.id) is not None  # type: ignore[attr-defined]
    finally:
        sysv_sem.sem_remove(semid)


@pytest.mark.security("S17", subject="sysv")
def test_no_free_key_is_resource_exhausted(monkeypatch: pytest.MonkeyPatch, sem: object) -> None:
    draws: list[int] = []

    def always_taken() -> int:
        draws.append(1)
        return int(sem.key)  # type: ignore[attr-defined]

    monkeypatch.setattr(sysv_sem, "random_key", always_taken)
    with pytest.raises(ResourceExhausted, match="no free SysV key"):
        sysv_sem.sem_create(1, 0o600)  # (keys are per kind: a semaphore key is taken for sets only)
    assert len(draws) == sysv_sem.KEY_TRIES


@pytest.mark.security("S3", "S4", subject="sysv")
def test_segments_are_created_zeroed_private_at_a_random_key() -> None:
    key, shm = sysv_sem.shm_create(8192, 0o600)
    try:
        row = sysv_sem.owned_row("shm", int(shm.id), key)
        assert row is not None and row["perms"] & 0o777 == 0o600 and row["size"] == 8192
        assert shm.read(16) == bytes(16)
        assert sysv_sem.owned_row("shm", int(shm.id), key + 1) is None  # another key: not that object
    finally:
        shm.detach()
        shm.remove()


# --------------------------------------------------------------------------- SEM_UNDO liveness
@pytest.fixture
def sem_set() -> Iterator[int]:
    _, semid = sysv_sem.sem_create(4, 0o600)
    yield semid
    sysv_sem.sem_remove(semid)


def _hold_until_killed(semid: int, num: int) -> int:
    """A forked child that holds *num* of *semid* (SEM_UNDO) until it is SIGKILLed."""
    ready_r, ready_w = os.pipe()
    block_r, block_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if sysv_sem.hold_alive(semid, num) == 0:
                os.write(ready_w, b"R")
            os.read(block_r, 1)
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(block_r)
    assert os.read(ready_r, 1) == b"R"
    os.close(ready_r)
    os.close(block_w)  # the child's copy keeps its read end blocked
    return pid


def test_sem_undo_liveness_drops_when_the_holder_is_killed(sem_set: int) -> None:
    pid = _hold_until_killed(sem_set, 2)
    assert sysv_sem.getval(sem_set, 2) == 1
    assert sysv_sem.hold_alive(sem_set, 2, exclusive=True) == errno.EAGAIN  # somebody holds the end
    assert sysv_sem.getval(sem_set, 3) == 0
    os.kill(pid, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
    assert sysv_sem.getval(sem_set, 2) == 0  # undone by the kernel
    assert sysv_sem.hold_alive(sem_set, 2, exclusive=True) == 0
    assert sysv_sem.getval(sem_set, 2) == 1
    assert sysv_sem.release_alive(sem_set, 2) == 0
    assert sysv_sem.getval(sem_set, 2) == 0
    assert sysv_sem.release_alive(sem_set, 2) == errno.EAGAIN  # nothing left to take back


def test_a_removed_set_reports_oserror() -> None:
    _, semid = sysv_sem.sem_create(1, 0o600)
    sysv_sem.sem_remove(semid)
    with pytest.raises(OSError) as info:
        sysv_sem.getval(semid, 0)
    assert info.value.errno in (errno.EINVAL, errno.EIDRM)
    assert sysv_sem.semops(semid, (0, 1, 0)) in (errno.EINVAL, errno.EIDRM)
    sysv_sem.sem_remove(semid)  # removing twice is no error


# --------------------------------------------------------------------------- /proc/sysvipc checks
def test_check_sem_set_wants_ours_private_and_of_the_right_shape(sem_set: int) -> None:
    row = sysv_sem.proc_row("sem", sem_set)
    assert row is not None
    sysv_sem.check_sem_set(sem_set, row["key"], 4, "test")
    with pytest.raises(IncompatibleEndpoint, match="has 4 semaphores, not 2"):
        sysv_sem.check_sem_set(sem_set, row["key"], 2, "test")
    with pytest.raises(IncompatibleEndpoint, match="gone"):
        sysv_sem.check_sem_set(sem_set, row["key"] + 1, 4, "test")
    key = 0x7E000000 + secrets.randbelow(1 << 24)
    shared = sysv_sem.semget(key, 4, sysv_sem.IPC_CREAT | sysv_sem.IPC_EXCL | 0o640)
    try:
        with pytest.raises(PermissionDenied):
            sysv_sem.check_sem_set(shared, key, 4, "test")
    finally:
        sysv_sem.sem_remove(shared)


# --------------------------------------------------------------------------- rendezvous records
FORMAT = RecordFormat(tag="ipckit-kit-test/1", what="kit-test", nsems=4, alive=(2, 3))


def _record(directory: str, name: str, fields: dict[str, object], *, complete: bool = True,
            fmt: RecordFormat = FORMAT) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fmt.write(fd, fields, complete)
    finally:
        os.close(fd)
    return path


def _read(path: str, fmt: RecordFormat = FORMAT) -> dict[str, str]:
    fd = sysv_sem.open_record(path)
    try:
        return fmt.read(fd, path)
    finally:
        os.close(fd)


def test_records_round_trip_and_other_tags_are_foreign(tmp: str) -> None:
    path = _record(tmp, "r1", {"semkey": 7, "semid": 8, "nonce": "ab"}, complete=False)
    try:
        assert _read(path) == {"semkey": "7", "semid": "8", "nonce": "ab"}
        other = RecordFormat(tag="ipckit-other/1", what="other", nsems=4, alive=(2, 3))
        assert _read(path, other) == {"foreign": "1"}
        fd = os.open(path, os.O_RDWR)
        try:
            FORMAT.write(fd, {"semkey": 7}, True)
        finally:
            os.close(fd)
        fields = _read(path)
        assert fields == {"semkey": "7", "end": ""} and sysv_sem.record_int(fields, "semkey") == 7
        assert sysv_sem.record_int(fields, "semid") is None and sysv_sem.record_int({"x": "y"}, "x") is None
        os.truncate(path, 0)
        assert _read(path) == {}  # empty: a creator about to write it
    finally:
        os.unlink(path)


@pytest.mark.security("S6", subject="sysv")
def test_a_symlinked_record_is_refused(tmp: str) -> None:
    target = _record(tmp, "target", {"semkey": 1})
    link = os.path.join(tmp, "link")
    os.symlink(target, link)
    try:
        with pytest.raises(PermissionDenied, match="symlink"):
            sysv_sem.open_record(link)
        with pytest.raises(FileNotFoundError):
            sysv_sem.open_record(os.path.join(tmp, "none"))
    finally:
        os.unlink(link)
        os.unlink(target)


@pytest.mark.security("S18", subject="sysv")
def test_unlink_if_ours_keeps_a_record_of_another_nonce(tmp: str) -> None:
    path = _record(tmp, "r", {"nonce": "newer"})
    FORMAT.unlink_if_ours(path, "older")
    assert os.path.exists(path)
    FORMAT.unlink_if_ours(path, "newer")
    assert not os.path.exists(path)


def _recorded_objects(mode: int = 0o600) -> tuple[dict[str, Any], Any]:
    semkey, semid = sysv_sem.sem_create(4, mode)
    shmkey, shm = sysv_sem.shm_create(4096, mode)
    return {"semkey": semkey, "semid": semid, "shmkey": shmkey, "shmid": int(shm.id), "nonce": "n"}, shm


def test_a_record_is_reclaimed_with_its_objects_once_every_end_is_killed(tmp: str) -> None:
    fields, shm = _recorded_objects()
    semid, shmid = int(fields["semid"]), int(fields["shmid"])
    path = _record(tmp, "ep.live", fields)
    try:
        pid = _hold_until_killed(semid, 3)
        try:
            assert FORMAT.reclaim_if_stale(path) is False  # end 1 lives
            assert os.path.exists(path) and sysv_sem.proc_row("sem", semid) is not None
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert FORMAT.reclaim_if_stale(path) is True
        assert not os.path.exists(path)
        assert sysv_sem.proc_row("sem", semid) is None
        row = sysv_sem.proc_row("shm", shmid)
        assert row is None or row["key"] == 0  # removed (freed at our detach)
        assert FORMAT.reclaim_if_stale(path) is True  # gone is reclaimed
    finally:
        shm.detach()
        sysv_sem.remove_recorded({k: str(v) for k, v in fields.items()})


def test_reclaim_leaves_objects_no_longer_at_their_recorded_key(tmp: str) -> None:
    fields, shm = _recorded_objects()
    shm.detach()
    wrong = {**fields, "shmkey": int(fields["shmkey"]) + 1}
    path = _record(tmp, "ep.moved", wrong)
    try:
        assert FORMAT.reclaim_if_stale(path) is True  # the record is stale ...
        assert sysv_sem.proc_row("shm", int(fields["shmid"])) is not None
        assert sysv_sem.proc_row("sem", int(fields["semid"])) is None  # ... only what matches goes
    finally:
        sysv_sem.remove_recorded({k: str(v) for k, v in fields.items()})
    assert sysv_sem.proc_row("shm", int(fields["shmid"])) is None


def test_a_locked_or_foreign_record_is_never_reclaimed(tmp: str) -> None:
    from ipckit.backends.common import paths

    path = _record(tmp, "ep.building", {"semkey": 1, "semid": 2})
    foreign = _record(tmp, "ep.foreign", {"semkey": 1}, fmt=RecordFormat("someone-else/1", "x", 4, (2, 3)))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert paths.try_lock(fd)  # its creator is writing it
        assert FORMAT.reclaim_if_stale(path) is False
    finally:
        os.close(fd)
    try:
        assert FORMAT.sweep(tmp) == ["ep.building"]  # the creator died: stale; the foreign one stays
        assert os.path.exists(foreign)
    finally:
        os.unlink(foreign)


# --------------------------------------------------------------------------- the error map
def _raised(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the test inspects whatever was raised
        return exc
    raise AssertionError("nothing was raised")


def test_existential_errors_mean_taken_when_creating_else_the_missing_error() -> None:
    key, shm = sysv_sem.shm_create(4096, 0o600)
    try:
        taken = _raised(lambda: sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, size=4096))
        assert type(taken) is sysv_ipc.ExistentialError
        assert type(sysv_sem.sysv_error(taken, "create", creating=True)) is EndpointExists
    finally:
        shm.detach()
        shm.remove()
    gone = _raised(lambda: sysv_ipc.SharedMemory(key))
    assert type(gone) is sysv_ipc.ExistentialError
    err = sysv_sem.sysv_error(gone, "open")
    assert type(err) is EndpointNotFound and isinstance(err, FileNotFoundError)
    assert type(sysv_sem.sysv_error(gone, "open", missing=IncompatibleEndpoint)) is IncompatibleEndpoint
    bad_id = _raised(lambda: sysv_ipc.attach(int(shm.id)))
    assert type(bad_id) is ValueError
    assert type(sysv_sem.sysv_error(bad_id, "attach")) is EndpointNotFound


def _attach_as_other(shmid: int) -> tuple[str, str]:
    try:
        sysv_ipc.attach(shmid)
    except sysv_ipc.Error as exc:
        err = sysv_sem.sysv_error(exc, "attach")
        return type(exc).__name__, f"{type(err).__name__}: {err}"
    return "attached", ""


@pytest.mark.security("S4", subject="sysv")
def test_permissions_error_is_permission_denied_with_where_to_look() -> None:
    _, shm = sysv_sem.shm_create(4096, 0o600)
    try:
        raised, mapped = as_user(_attach_as_other, int(shm.id))
        assert raised == "PermissionsError"
        assert mapped.startswith("PermissionDenied: ") and "ipcs -m" in mapped
    finally:
        shm.detach()
        shm.remove()


@pytest.mark.security("S17", subject="sysv")
def test_sizes_the_kernel_refuses_are_resource_exhausted() -> None:
    for size in (-1, 1 << 62):  # ValueError, MemoryError (ENOMEM) from sysv_ipc
        exc = _raised(lambda: sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, size=size, mode=0o600))  # noqa: B023
        assert type(exc) in (ValueError, MemoryError)
        err = sysv_sem.sysv_error(exc, "create", creating=True)
        assert type(err) is ResourceExhausted and "kernel.shm" in str(err)


def test_busy_and_interrupted_waits_are_timeouts(sem: object) -> None:
    sem.block = False  # type: ignore[attr-defined]  # IPC_NOWAIT (acquire(0) would block on this build)
    busy = _raised(sem.acquire)  # type: ignore[attr-defined]
    assert type(busy) is sysv_ipc.BusyError
    assert type(sysv_sem.sysv_error(busy, "wait", kind="sem")) is ChannelTimeout
    assert type(sysv_sem.sysv_error(busy, "receive", kind="msg", timeout=RecvTimeout)) is RecvTimeout
    # sysv_ipc's EINTR is its base Error with this message (a wait with no timeout support can
    # only be interrupted by a signal that would also have to stop it: built, not provoked).
    err = sysv_sem.sysv_error(sysv_ipc.Error("Signaled while waiting"), "wait", kind="sem")
    assert type(err) is ChannelTimeout and "call again" in str(err)


@pytest.mark.security("S17", subject="sysv")
def test_limit_errors_name_the_limit_of_their_kind() -> None:
    # sysv_ipc raises ENOSPC without an errno, with these messages.
    err = sysv_sem.sysv_error(OSError("Not enough shared memory identifiers available (ENOSPC)"), "create",
                              creating=True)
    assert type(err) is ResourceExhausted and "kernel.shmmni" in str(err)
    err = sysv_sem.sysv_error(OSError("The system limit for message queues has been reached"), "create",
                              kind="msg", creating=True)
    assert type(err) is ResourceExhausted and "kernel.msgmni" in str(err)
    err = sysv_sem.sysv_error(OSError(errno.ENOSPC, "No space left on device"), "semget", kind="sem", creating=True)
    assert type(err) is ResourceExhausted and "kernel.sem" in str(err)
    assert type(sysv_sem.sysv_error(OSError(errno.EIDRM, "removed"), "semop", kind="sem")) is ChannelBroken
    assert type(sysv_sem.sysv_error(ValueError("The semaphore's value must remain between 0 and SEMVMX"),
                                    "post", kind="sem")) is ConfigurationError
