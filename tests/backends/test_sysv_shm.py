"""sysv+shm:// runs the whole contract, plus the SysV ring fault rows V-1…V-12 (docs/design.md).

Crash tests kill real processes (fork) at chosen points; the leak guard checks /proc/sysvipc
and the manifest directory after every test.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import ipckit
from ipckit.backends import sysv_shm
from ipckit.backends.common import faults
from ipckit.backends.common import sysv as sysv_kit
from ipckit.backends.common.sysv import TimedSemaphore
from ipckit.errors import (
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    PeerDied,
    PermissionDenied,
    ProtocolError,
    RecvTimeout,
    UnsupportedOperation,
)
from ipckit.testing import (
    AioContract,
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    ForkContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    PeerDeathContract,
    PeerExitContract,
    SecurityContract,
    WaitContract,
    as_user,
    signal_storm,
    spawn_peer,
    takes_timeout,
)
from ipckit.testing.peers import kill_self, ready
from ipckit.testing.workers import recv_messages

sysv_ipc = pytest.importorskip("sysv_ipc")

pytestmark = pytest.mark.timeout(60)


class TestSysvShm(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, CrossProcessContract,
                  PeerDeathContract, ListenerContract, SecurityContract, PeerExitContract, ForkContract,
                  WaitContract, AioContract):
    scheme = "sysv+shm"

    def url_in(self, directory: str) -> str:
        return f"sysv+shm://{os.path.join(directory, 'ep')}"


# --------------------------------------------------------------------------- helpers
def _rows(kind: str) -> set[int]:
    with open(f"/proc/sysvipc/{kind}") as f:
        return {int(line.split()[1]) for line in f.read().splitlines()[1:]}


@pytest.fixture
def name() -> str:
    return f"t{os.getpid()}-{secrets.token_hex(6)}"


def _fork(fn: Any, *args: Any) -> int:
    """Run ``fn(*args)`` in a forked child that ends with ``os._exit`` (or is killed); return its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def _status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _listen_and_die(url: str, fault: str | None = None) -> None:
    faults.arm(fault)
    lst = ipckit.listen(url)  # noqa: F841 - kept alive until the kill
    kill_self()


def _pair_parts(ch: Any) -> tuple[int, int]:
    seg = ch._seg
    return seg.shmid, seg.semid


# --------------------------------------------------------------------------- timed waits on this build
def test_installed_sysv_ipc_has_no_semaphore_timeouts_yet_waits_time_out() -> None:
    """The trap of issue 4: the wheel blocks forever in acquire(timeout); our waits never do."""
    a, b = ipckit.pair("sysv+shm", spin=False)
    with a, b:
        waker = b._own_waker  # type: ignore[attr-defined]
        while waker.wait(0):  # hints left over from attaching
            pass
        t0 = time.monotonic()
        assert waker.wait(0.2) is False
        assert 0.19 <= time.monotonic() - t0 < 0.4
        with takes_timeout(0.3), pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0.3)
    assert isinstance(sysv_ipc.SEMAPHORE_TIMEOUT_SUPPORTED, bool)  # False on the PyPI 1.2.0 wheel


# --------------------------------------------------------------------------- V-1 / V-2 semaphores
def _post_and_exit(semid: int, num: int, count: int) -> None:
    sem = TimedSemaphore(semid, sem_num=num)
    for _ in range(count):
        sem.post()


def test_v2_wake_hints_posted_by_a_process_that_exits_normally_survive() -> None:
    a, b = ipckit.pair("sysv+shm")
    with a, b:
        semid = a._seg.semid  # type: ignore[attr-defined]
        before = sysv_kit.getval(semid, sysv_shm._WAKE[1])
        assert _status(_fork(_post_and_exit, semid, sysv_shm._WAKE[1], 5)) == 0
        assert sysv_kit.getval(semid, sysv_shm._WAKE[1]) == before + 5  # no SEM_UNDO on counting hints


def _attach_end_then_die(url: str) -> None:
    ch = ipckit.connect(url, timeout=5)
    ch.send_bytes(b"committed")
    kill_self()


def test_v1_alive_semaphore_is_undone_when_its_holder_is_killed(name: str) -> None:
    lst = ipckit.listen(f"sysv+shm://{name}")
    with lst:
        pid = _fork(_attach_end_then_die, f"sysv+shm://{name}")
        ch = lst.accept(timeout=10)
        with ch:
            assert _status(pid) == -signal.SIGKILL
            t0 = time.monotonic()
            assert sysv_kit.getval(ch._seg.semid, sysv_shm._ALIVE[1]) == 0  # type: ignore[attr-defined]
            assert ch.recv_bytes(timeout=5) == b"committed"
            with pytest.raises(PeerDied):
                ch.recv_bytes(timeout=5)
            assert time.monotonic() - t0 < 1.5


def _use_and_close_inherited_end(ch: Any) -> None:
    try:
        ch.send_bytes(b"from a child that was not handed the end")
    except UnsupportedOperation:
        pass
    else:
        raise AssertionError("a plainly forked child wrote into its parent's ring")
    ch.close()


def test_plain_fork_child_neither_uses_nor_releases_the_parents_end() -> None:
    """An end inherited through os.fork (not handed over) is unusable in the child, and closing it
    there leaves the parent's alive count alone: the peer never sees a false death."""
    a, b = ipckit.pair("sysv+shm")
    with a, b:
        semid = a._seg.semid  # type: ignore[attr-defined]
        assert _status(_fork(_use_and_close_inherited_end, a)) == 0
        assert sysv_kit.getval(semid, sysv_shm._ALIVE[0]) == 1
        b.send_bytes(b"ping")
        assert a.recv_bytes(timeout=5) == b"ping"
        a.send_bytes(b"pong")
        assert b.recv_bytes(timeout=5) == b"pong"
        assert not b.poll(0)  # no PeerDied, nothing else queued


# --------------------------------------------------------------------------- V-3 orphans
_SHM_DEST = 0o1000  # the "marked for removal" bit of /proc/sysvipc/shm perms


def _hello_then_close(ch: Any) -> None:
    ch.send_bytes(b"hello", timeout=10)
    ready()
    assert ch.recv_bytes(timeout=10) == b"bye"
    ch.close()


def test_v3_segment_is_marked_for_removal_once_both_ends_are_in_their_processes(name: str) -> None:
    a, b = ipckit.pair("sysv+shm")
    shmid, _ = _pair_parts(a)
    row = sysv_kit.proc_row("shm", shmid)
    assert row is not None and row["key"] != 0 and not row["perms"] & _SHM_DEST  # b may still travel
    with spawn_peer(_hello_then_close, b, method="spawn") as peer:
        b.close()
        assert a.recv_bytes(timeout=10) == b"hello"  # the child attached and claimed b
        row = sysv_kit.proc_row("shm", shmid)
        assert row is not None and row["key"] == 0 and row["perms"] & _SHM_DEST  # IPC_RMID done
        a.send_bytes(b"bye")
        peer.join()
    a.close()
    lst = ipckit.listen(f"sysv+shm://{name}")
    with lst:
        c = ipckit.connect(f"sysv+shm://{name}", timeout=5)
        s = lst.accept(timeout=5)
        with c, s:
            assert not os.path.exists(os.path.join(sysv_kit.registry_dir(), f"ep.{name}"))  # name freed
            with pytest.raises(EndpointNotFound):
                ipckit.connect(f"sysv+shm://{name}", timeout=0.05)
            again = ipckit.listen(f"sysv+shm://{name}")  # reusable while the channel lives
            again.close()


def test_v3_kill_one_side_then_close_leaves_nothing() -> None:
    before_shm, before_sem = _rows("shm"), _rows("sem")
    a, b = ipckit.pair("sysv+shm")
    with spawn_peer(_send_and_die, b) as peer:
        b.close()
        peer.wait_ready()
        assert a.recv_bytes(timeout=10) == b"last"
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=10)
        a.close()
    assert _rows("shm") - before_shm == set()
    assert _rows("sem") - before_sem == set()


def _send_and_die(ch: Any) -> None:
    ch.send_bytes(b"last")
    ready()
    kill_self()


def test_v3_creator_killed_the_other_end_cleans_up(name: str) -> None:
    before_shm, before_sem = _rows("shm"), _rows("sem")
    url = f"sysv+shm://{name}"
    with spawn_peer(_listen_accept_send_die, url) as peer:
        ch = ipckit.connect(url, timeout=10)
        peer.wait_ready()
        assert ch.recv_bytes(timeout=10) == b"bye"
        with pytest.raises(PeerDied):
            ch.recv_bytes(timeout=10)
        ch.close()
    assert _rows("shm") - before_shm == set()
    assert _rows("sem") - before_sem == set()
    assert not [e for e in os.listdir(sysv_kit.registry_dir()) if e.startswith("reg.")] \
        if os.path.isdir(sysv_kit.registry_dir()) else True


def test_connect_reads_the_record_again_under_the_lock(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A creator that finishes between a connector's read and its lock is not "half-made".

    The first read is made to return the record as it was before the creator's last write (ids,
    no ``end``); the lock is then free because the creator is done.  That interleaving failed a
    CI run: connect() must read again under the lock and attach.
    """
    real_read = sysv_kit.RecordFormat.read
    calls: list[int] = []

    def early_read(self: sysv_kit.RecordFormat, fd: int, path: str) -> dict[str, str]:
        fields = real_read(self, fd, path)
        calls.append(1)
        if len(calls) == 1:
            fields.pop("end", None)
        return fields

    with ipckit.listen(f"sysv+shm://{name}") as lst:
        monkeypatch.setattr(sysv_kit.RecordFormat, "read", early_read)
        with ipckit.connect(lst.url, timeout=5) as c:
            monkeypatch.undo()
            assert len(calls) == 2
            with lst.accept(timeout=5) as s:
                s.send_bytes(b"whole")
                assert c.recv_bytes(timeout=5) == b"whole"


def _listen_accept_send_die(url: str) -> None:
    with ipckit.listen(url) as lst:
        ch = lst.accept(timeout=10)
        ch.send_bytes(b"bye")
        ready()
        kill_self()


def _make_pair_and_die() -> None:
    a, _b = ipckit.pair("sysv+shm")
    a.send_bytes(b"never read")
    kill_self()


@pytest.mark.security("S18", subject="sysv+shm")
def test_v3_both_killed_cleanup_stale_removes_everything(name: str) -> None:
    before_shm, before_sem = _rows("shm"), _rows("sem")
    assert _status(_fork(_make_pair_and_die)) == -signal.SIGKILL
    assert _status(_fork(_listen_and_die, f"sysv+shm://{name}")) == -signal.SIGKILL
    leftovers = _rows("sem") - before_sem
    assert len(leftovers) == 2  # semaphores persist after kill -9 (V6) ...
    # ... and so do the never-attached listener's segment and the segment of a pair that never
    # left its process (either end could still have been handed to a child: V-3)
    assert len(_rows("shm") - before_shm) == 2
    removed = sysv_shm.cleanup_stale()
    assert any(e.startswith("reg.") for e in removed) and f"ep.{name}" in removed
    assert _rows("sem") - before_sem == set()
    assert _rows("shm") - before_shm == set()
    assert not os.path.exists(sysv_kit.registry_dir())


@pytest.mark.security("S18", subject="sysv+shm")
def test_cleanup_stale_leaves_live_channels_alone(name: str) -> None:
    a, b = ipckit.pair("sysv+shm")
    lst = ipckit.listen(f"sysv+shm://{name}")
    with a, b, lst:
        assert sysv_shm.cleanup_stale() == []
        a.send_bytes(b"still here")
        assert b.recv_bytes(timeout=5) == b"still here"
        c = ipckit.connect(lst.url, timeout=5)
        with c, lst.accept(timeout=5) as s:
            s.send_bytes(b"ok")
            assert c.recv_bytes(timeout=5) == b"ok"


# --------------------------------------------------------------------------- V-10 hand-offs the parent lets go of
def test_v10_creator_closing_while_the_peer_travels_leaves_the_cleanup_to_the_peer() -> None:
    """The creator's close removes nothing while the other end is on its way to a child; the
    child gets the messages, and its close removes everything (the leak guard checks)."""
    before_shm, before_sem = _rows("shm"), _rows("sem")
    a, b = ipckit.pair("sysv+shm")
    b._hdr[sysv_shm.H_STATE[1]] = sysv_shm.HANDOFF  # type: ignore[attr-defined]  # as pickling it does
    shmid, semid = _pair_parts(a)
    a.send_bytes(b"for the traveller")
    a.close()
    assert sysv_kit.proc_row("shm", shmid) is not None and sysv_kit.proc_row("sem", semid) is not None
    b._hdr[sysv_shm.H_STATE[1]] = sysv_shm.ATTACHED  # type: ignore[attr-defined]  # as the child's claim does
    assert b.recv_bytes(timeout=5) == b"for the traveller"
    with pytest.raises(EndOfChannel):
        b.recv_bytes(timeout=5)
    b.close()
    assert _rows("shm") - before_shm == set()
    assert _rows("sem") - before_sem == set()


def test_v10_an_end_whose_peer_removed_everything_refuses_the_spawn_hand_off() -> None:
    """As shm:// once its names are gone: the child could only find a freed segment."""
    a, b = ipckit.pair("sysv+shm")
    a.send_bytes(b"left")
    a.close()  # the creator, its peer attached here: everything is removed
    with b:
        with pytest.raises(TypeError, match="can no longer be handed"):
            spawn_peer(recv_messages, b, 1, method="spawn")
        assert not b._handed_off  # type: ignore[attr-defined]
        assert b.recv_bytes(timeout=5) == b"left"


# --------------------------------------------------------------------------- V-11 fork hand-off liveness
def test_v11_a_fork_child_taking_its_end_late_is_not_taken_for_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent's close releases its alive count (SEM_UNDO counts are per process) before the
    child has taken its own: the end is HANDOFF meanwhile, which the peer's liveness check honours."""
    gate_r, gate_w = os.pipe()
    take_over = sysv_shm.SysvShmChannel._take_over_after_fork

    def late_take_over(self: sysv_shm.SysvShmChannel) -> None:
        os.read(gate_r, 1)  # in the child's at-fork handler: wait for the test
        take_over(self)

    monkeypatch.setattr(sysv_shm.SysvShmChannel, "_take_over_after_fork", late_take_over)
    a, b = ipckit.pair("sysv+shm")
    try:
        with spawn_peer(_hello_then_close, b) as peer:
            b.close()
            assert sysv_kit.getval(a._seg.semid, sysv_shm._ALIVE[1]) == 0  # type: ignore[attr-defined]
            with pytest.raises(RecvTimeout):  # not PeerDied
                a.recv_bytes(timeout=0.3)
            os.write(gate_w, b"x")
            assert a.recv_bytes(timeout=10) == b"hello"
            a.send_bytes(b"bye")
            peer.join()
        with pytest.raises(EndOfChannel):
            a.recv_bytes(timeout=5)
    finally:
        os.close(gate_r)
        os.close(gate_w)
        a.close()


def test_v11_two_hundred_fork_hand_offs_never_report_a_live_peer_dead() -> None:
    """The parent closes the handed end right after start(): 0 false PeerDied (the issue measured
    up to 24 %)."""
    false_deaths = 0
    for _ in range(200):
        a, b = ipckit.pair("sysv+shm")
        with a, spawn_peer(_hello_then_close, b) as peer:
            b.close()
            try:
                assert a.recv_bytes(timeout=10) == b"hello"
                a.send_bytes(b"bye")
            except PeerDied:
                false_deaths += 1
                continue
            peer.join()
    assert false_deaths == 0


# --------------------------------------------------------------------------- V-4 keys
@pytest.mark.security("S3", subject="sysv+shm")
def test_v4_taken_key_is_never_used_and_a_new_one_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    taken_shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
    taken_sem = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600)
    try:
        keys = iter([taken_sem.key, 0x5A5A0001 + secrets.randbelow(1 << 20), taken_shm.key,
                     0x6B6B0001 + secrets.randbelow(1 << 20)])
        monkeypatch.setattr(sysv_kit, "random_key", lambda: next(keys))
        a, b = ipckit.pair("sysv+shm")
        with a, b:
            seg = a._seg  # type: ignore[attr-defined]
            assert seg.semkey != taken_sem.key and seg.shmkey != taken_shm.key
            assert seg.semid != taken_sem.id and seg.shmid != taken_shm.id
            a.send_bytes(b"fine")
            assert b.recv_bytes(timeout=5) == b"fine"
        # The other application's objects are untouched.
        assert sysv_kit.proc_row("shm", taken_shm.id) is not None
        assert sysv_kit.proc_row("sem", taken_sem.id) is not None
    finally:
        taken_shm.detach()
        taken_shm.remove()
        taken_sem.remove()


# --------------------------------------------------------------------------- V-5 init race
def _race_listen(url: str, w: int) -> None:
    try:
        lst = ipckit.listen(url)
    except EndpointExists:
        os.write(w, b"E")
        return
    os.write(w, b"L")
    ch = lst.accept(timeout=10)
    assert ch.recv_bytes(timeout=10) == b"hello"
    ch.close()
    lst.close()


@pytest.mark.security("S2", subject="sysv+shm")
def test_v5_fifty_create_races_have_exactly_one_creator(name: str) -> None:
    for i in range(50):
        url = f"sysv+shm://{name}-{i}"
        r, w = os.pipe()
        pid = _fork(_race_listen, url, w)
        try:
            mine = ipckit.listen(url)
        except EndpointExists:
            mine = None
        os.close(w)
        theirs = os.read(r, 1)
        os.close(r)
        assert (mine is None) != (theirs == b"E"), f"race {i}: both or neither created the endpoint"
        if mine is not None:
            with mine:
                pass
        else:
            with ipckit.connect(url, timeout=10) as c:
                c.send_bytes(b"hello")
                with pytest.raises(EndOfChannel):
                    c.recv_bytes(timeout=10)
        assert _status(pid) == 0


# --------------------------------------------------------------------------- V-6 / S-8 foreign segments
def _forge_rendezvous(name: str, shm: Any, sem_id: int, sem_key: int) -> str:
    directory = sysv_kit.registry_dir()
    sysv_kit.ensure_private_dir(directory)
    path = os.path.join(directory, f"ep.{name}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sysv_shm._RECORD.write(fd, {"semkey": sem_key, "semid": sem_id, "shmkey": shm.key, "shmid": shm.id,
                                    "nonce": "0" * 31 + "1"}, True)
    finally:
        os.close(fd)
    return path


@pytest.fixture
def foreign_sem() -> Iterator[tuple[int, int]]:
    key = 0x7C000000 + secrets.randbelow(1 << 24)
    semid = sysv_kit.semget(key, sysv_shm._NSEMS, sysv_kit.IPC_CREAT | sysv_kit.IPC_EXCL | 0o600)
    assert semid >= 0
    yield key, semid
    sysv_kit.sem_remove(semid)


@pytest.mark.parametrize("size", [4096, 64 * 4096])
def test_v6_s8_smaller_or_zeroed_segment_is_incompatible(name: str, size: int,
                                                          foreign_sem: tuple[int, int]) -> None:
    shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=size, init_character=b"\0")
    try:
        path = _forge_rendezvous(name, shm, foreign_sem[1], foreign_sem[0])
        try:
            t0 = time.monotonic()
            with pytest.raises(IncompatibleEndpoint):
                ipckit.connect(f"sysv+shm://{name}", timeout=5)
            assert time.monotonic() - t0 < 1.0
        finally:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
    finally:  # the segment goes even if forging the rendezvous failed
        shm.detach()
        shm.remove()


# --------------------------------------------------------------------------- V-8 other users
def _connect_as_other(url: str) -> str:
    try:
        ipckit.connect(url, timeout=1)
    except PermissionDenied:
        return "PermissionDenied"
    return "connected"


@pytest.mark.security("S4", subject="sysv+shm")
def test_v8_other_uid_is_refused(tmp_path: Any) -> None:
    os.chmod(tmp_path, 0o700)
    url = f"sysv+shm://{tmp_path}/ep"
    with ipckit.listen(url):
        assert as_user(_connect_as_other, url) == "PermissionDenied"
        assert oct(os.stat(f"{tmp_path}/ep").st_mode & 0o777) == "0o600"


def _attach_as_other(shmid: int) -> str:
    try:
        sysv_ipc.attach(shmid)
    except sysv_ipc.PermissionsError:
        return "PermissionsError"
    return "attached"


@pytest.mark.security("S4", subject="sysv+shm")
def test_v8_objects_are_owner_only() -> None:
    a, b = ipckit.pair("sysv+shm")
    with a, b:
        shmid, semid = _pair_parts(a)
        for kind, ident in (("shm", shmid), ("sem", semid)):
            row = sysv_kit.proc_row(kind, ident)
            assert row is not None and row["perms"] & 0o777 == 0o600 and row["uid"] == row["cuid"] == os.geteuid()
        assert as_user(_attach_as_other, shmid) == "PermissionsError"


def _squat(size: int, mode: int) -> tuple[int, int]:
    shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=mode, size=size, init_character=b"\0")
    return int(shm.key), int(shm.id)


@pytest.mark.security("S2", "S5", subject="sysv+shm")
def test_v8_squatted_segment_of_another_uid_is_refused(name: str, foreign_sem: tuple[int, int]) -> None:
    key, shmid = as_user(_squat, 16 * 4096, 0o666)
    try:
        shm = sysv_ipc.SharedMemory(key)
        path = _forge_rendezvous(name, shm, foreign_sem[1], foreign_sem[0])
        try:
            with pytest.raises(PermissionDenied):
                ipckit.connect(f"sysv+shm://{name}", timeout=1)
            assert sysv_kit.proc_row("shm", shmid) is not None  # never removed
        finally:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
            shm.detach()
    finally:
        sysv_ipc.remove_shared_memory(shmid)


@pytest.mark.security("S5", subject="sysv+shm")
def test_v8_group_readable_semaphore_set_is_refused(name: str) -> None:
    shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
    key = 0x7D000000 + secrets.randbelow(1 << 24)
    semid = sysv_kit.semget(key, sysv_shm._NSEMS, sysv_kit.IPC_CREAT | sysv_kit.IPC_EXCL | 0o640)
    path = _forge_rendezvous(name, shm, semid, key)
    try:
        with pytest.raises(PermissionDenied):
            ipckit.connect(f"sysv+shm://{name}", timeout=1)
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
        sysv_kit.sem_remove(semid)
        shm.detach()
        shm.remove()


# --------------------------------------------------------------------------- V-7 signals
def test_v7_signals_during_semtimedop_never_extend_the_deadline() -> None:
    a, b = ipckit.pair("sysv+shm", spin=False)
    with a, b, signal_storm(hz=200) as storm:
        with takes_timeout(0.5), pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0.5)
        assert storm.count >= 10


# --------------------------------------------------------------------------- V-9: S-2, S-3, S-9, S-11
def _half_write_then_die(ch: Any) -> None:
    ch.send_bytes(b"whole")
    w = ch._w
    base = w._data + w._wp % w._cap
    w._mv[base: base + 64] = b"\x01\x00\x00\x00\x05\x00\x00\x00" + b"\x05" + b"\x00" * 7 + b"HALF!" + bytes(43)
    ready()
    kill_self()  # payload and header written, write_pos never published


def test_v9_s2_uncommitted_message_is_never_delivered() -> None:
    a, b = ipckit.pair("sysv+shm")
    with spawn_peer(_half_write_then_die, b) as peer:
        b.close()
        peer.wait_ready()
        assert peer.wait_exit() == -signal.SIGKILL
        assert a.recv_bytes(timeout=5) == b"whole"
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=5)
    a.close()


def _commit_without_wakeup(ch: Any) -> None:
    ready()
    ch._w.wake_peer = None  # killed "after commit, before post"
    assert ch.recv_bytes(timeout=10) == b"go"
    ch.send_bytes(b"committed, never posted")
    kill_self()


def test_v9_s3_committed_but_unposted_message_is_found() -> None:
    a, b = ipckit.pair("sysv+shm", spin=False)
    with spawn_peer(_commit_without_wakeup, b) as peer:
        b.close()
        peer.wait_ready()
        a.send_bytes(b"go")
        t0 = time.monotonic()
        assert a.recv_bytes(timeout=5) == b"committed, never posted"
        assert time.monotonic() - t0 < 1.0
    a.close()


@pytest.mark.security("S16", subject="sysv+shm")
def test_v9_s9_corrupt_shared_counters_are_a_protocol_error() -> None:
    a, b = ipckit.pair("sysv+shm", capacity=8192)
    with a, b:
        a.send_bytes(b"x")
        ctl = b._r._ctl  # type: ignore[attr-defined]
        ctl[8] = 1 << 40  # write_pos far beyond the ring
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=1)


def test_v9_s11_creator_killed_before_init_then_reclaimed(name: str) -> None:
    before_shm, before_sem = _rows("shm"), _rows("sem")
    url = f"sysv+shm://{name}"
    assert _status(_fork(_listen_and_die, url, "sysv+shm.after_create_before_init")) == -signal.SIGKILL
    t0 = time.monotonic()
    with pytest.raises(IncompatibleEndpoint):
        ipckit.connect(url, timeout=5)
    assert time.monotonic() - t0 < 1.0
    with ipckit.listen(url) as lst:  # the half-made endpoint of the dead creator is reclaimed
        c = ipckit.connect(url, timeout=5)
        with c, lst.accept(timeout=5) as s:
            c.send_bytes(b"restarted")
            assert s.recv_bytes(timeout=5) == b"restarted"
    assert _rows("shm") - before_shm == set()
    assert _rows("sem") - before_sem == set()


def test_live_listener_is_never_reclaimed(name: str) -> None:
    url = f"sysv+shm://{name}"
    with ipckit.listen(url):
        with pytest.raises(EndpointExists):
            ipckit.listen(url)
        with pytest.raises(EndpointExists):  # one peer per endpoint
            c = ipckit.connect(url, timeout=5)
            try:
                ipckit.connect(url, timeout=5)
            finally:
                c.close()


# --------------------------------------------------------------------------- zero-copy
def test_recv_view_points_into_the_segment_and_numpy_goes_out_of_band() -> None:
    np = pytest.importorskip("numpy")
    a, b = ipckit.pair("sysv+shm", capacity=1 << 20)
    with a, b:
        a.send_bytes(b"zero-copy")
        view = b.recv_view(timeout=5)
        assert bytes(view) == b"zero-copy"
        assert isinstance(view.obj, ctypes_array_type())
        arr = np.arange(100_000, dtype=np.float64)
        a.send(arr)
        got = b.recv(timeout=5)
        assert np.array_equal(got, arr)


def ctypes_array_type() -> type:
    import ctypes

    return ctypes.Array


def test_ipckit_cleanup_command_keeps_live_manifests_and_reclaims_dead_ones(name: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from ipckit.cli import main

    before_sem = _rows("sem")
    assert _status(_fork(_make_pair_and_die)) == -signal.SIGKILL
    url = f"sysv+shm://{name}"
    with ipckit.listen(url) as lst:
        assert main(["cleanup"]) == 0
        assert "sysv+shm:// object reg." in capsys.readouterr().out
        assert _rows("sem") - before_sem == {lst._chan._seg.semid}  # type: ignore[attr-defined]
        with ipckit.connect(url, timeout=5) as c, lst.accept(timeout=5) as s:  # the rendezvous survived
            c.send_bytes(b"alive")
            assert s.recv_bytes(timeout=5) == b"alive"


@pytest.mark.parametrize("capacity", [1 << 40, (1 << 64) - 1], ids=["2**40", "2**64-1"])
@pytest.mark.security("S16", subject="sysv+shm")
def test_v8_forged_capacity_is_incompatible_not_a_raw_error(name: str, capacity: int) -> None:
    """Issue 10, B.12: a capacity the ring cannot have made connect() raise a raw ValueError (and
    leave the segment attached)."""
    from ipckit.backends.common.ring import channel as ring_channel

    url = f"sysv+shm://{name}"
    with ipckit.listen(url, capacity=8192) as lst:
        hdr = lst._chan._hdr  # type: ignore[attr-defined]
        good = hdr[ring_channel.H_CAPACITY]
        hdr[ring_channel.H_CAPACITY] = capacity
        with pytest.raises(IncompatibleEndpoint, match="another layout"):
            ipckit.connect(url, timeout=2)
        hdr[ring_channel.H_CAPACITY] = good
        with ipckit.connect(url, timeout=2) as c, lst.accept(timeout=5) as s:
            c.send_bytes(b"fine")
            assert s.recv_bytes(timeout=5) == b"fine"


# --------------------------------------------------------------------------- cleanup vs. travelling ends
_TRAVEL_COUNT = 3


def _travelling_channel() -> tuple[Any, Any, str, int, int]:
    """A pair whose end ``theirs`` is held at a gate in a spawned child's unpickling, the parent's
    copies of both ends closed after sending: no alive semaphore is held.
    ``(process, gate, record path, semid, shmid)``."""
    import multiprocessing

    from ipckit.testing.contract.cross_process import _drain_after_gate, _Gate
    from ipckit.testing.workers import make_payload

    ctx: Any = multiprocessing.get_context("spawn")
    mine, theirs = ipckit.pair("sysv+shm://")
    seg = theirs._seg  # type: ignore[attr-defined]
    record, semid, shmid = seg.current_manifest(), seg.semid, seg.shmid
    gate_in, gate_out = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_drain_after_gate, args=(_Gate(gate_in), theirs, _TRAVEL_COUNT), daemon=True)
    try:
        proc.start()
    except BaseException:
        gate_out.close()
        raise
    finally:
        gate_in.close()
        theirs.close()
    for i in range(_TRAVEL_COUNT):
        mine.send_bytes(make_payload(i, 100 + i), timeout=10.0)
    mine.close()
    assert sysv_kit.getval(semid, sysv_shm._ALIVE[0]) == sysv_kit.getval(semid, sysv_shm._ALIVE[1]) == 0
    return proc, gate_out, record, semid, shmid


def _finish(proc: Any, gate: Any) -> int | None:
    try:
        gate.send(True)
        proc.join(60)
        code: int | None = proc.exitcode
        return code
    finally:
        gate.close()
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        proc.close()


def _stale_record(path: str) -> Any:
    from ipckit.cleanup import StaleObject

    return StaleObject(path, "sysv+shm:// object", "test", scheme="sysv+shm")


def test_v14_cleanup_keeps_a_channel_whose_end_travels_to_a_child() -> None:
    """Issue 10: an end pickled for a spawned child, the parent's copies closed (their alive counts
    released), the child not yet attached.  ``ipckit cleanup``'s sweep (dry run and real run) leaves
    the record, the segment and the semaphore set alone, and the child then receives every message."""
    from ipckit.cleanup import Sweep

    proc, gate, record, semid, shmid = _travelling_channel()
    try:
        assert [o for o in sysv_shm.SysvShmBackend.find_stale(Sweep()) if o.path == record] == []
        assert not sysv_shm.SysvShmBackend.remove_stale(_stale_record(record))
        assert os.path.exists(record) and semid in _rows("sem") and shmid in _rows("shm")
    finally:
        code = _finish(proc, gate)
    assert code == _TRAVEL_COUNT, f"the child exited with {code}; {_TRAVEL_COUNT} is success"


def test_v14_an_end_that_never_arrives_is_reclaimed_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The travel mark holds for TRAVEL_GRACE only: past it the dry run lists the record and the real
    run removes it with its objects; the late child finds the channel gone."""
    from ipckit.backends.common.ring import channel as ring_channel
    from ipckit.cleanup import Sweep

    proc, gate, record, semid, shmid = _travelling_channel()
    try:
        monkeypatch.setattr(ring_channel, "TRAVEL_GRACE", 0.0)
        assert [o.path for o in sysv_shm.SysvShmBackend.find_stale(Sweep()) if o.path == record] == [record]
        assert sysv_shm.SysvShmBackend.remove_stale(_stale_record(record))
        assert not os.path.exists(record) and semid not in _rows("sem") and shmid not in _rows("shm")
    finally:
        code = _finish(proc, gate)
        # The real run then removes the registry directory it emptied (listed as its own object).
        for obj in sysv_shm.SysvShmBackend.find_stale(Sweep()):
            if obj.kind == "directory":
                sysv_shm.SysvShmBackend.remove_stale(obj)
    assert code == 1, f"the child exited with {code}; 1 is its EndpointNotFound while unpickling"
