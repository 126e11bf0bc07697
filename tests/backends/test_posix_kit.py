"""The POSIX kit (ipckit.backends.common.posix) on real kernel objects.

OFD-lock liveness across processes that are really SIGKILLed, name sets (removal order, never
a newer object's names), stale reclaim and sweeps, the same machinery on message queues, and
the posix_ipc error map on errors posix_ipc really raises.
"""

from __future__ import annotations

import errno
import os
import resource
import secrets
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipckit.backends.common import posix
from ipckit.backends.common.posix import MQ, SEM, SHM, NameSet, PosixName
from ipckit.errors import (
    ChannelBroken,
    ChannelTimeout,
    ConfigurationError,
    EndpointExists,
    EndpointNotFound,
    InvalidAddress,
    PermissionDenied,
    RecvTimeout,
    ResourceExhausted,
)
from ipckit.testing import as_user

posix_ipc = pytest.importorskip("posix_ipc")

pytestmark = pytest.mark.timeout(30)


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def name() -> str:
    return f"/ipckit.kit-{os.getpid()}-{secrets.token_hex(6)}"


@pytest.fixture
def anchor(name: str) -> Iterator[tuple[PosixName, int]]:
    """A real 4 KiB segment, mode 0600, and a descriptor of it; removed afterwards."""
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    pname = PosixName(SHM, name)
    try:
        yield pname, shm.fd
    finally:
        os.close(shm.fd)
        pname.unlink()


class _Holder:
    """A forked child that runs *setup* (taking locks, say), reports ready and then blocks until
    it is SIGKILLed: its locks are held exactly as long as the process lives."""

    def __init__(self, setup: Callable[[], None]) -> None:
        ready_r, ready_w = os.pipe()
        self._block_r, self._block_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                os.close(ready_r)
                setup()
                os.write(ready_w, b"R")
                os.read(self._block_r, 1)
            finally:
                os._exit(1)
        os.close(ready_w)
        got = os.read(ready_r, 1)
        os.close(ready_r)
        os.close(self._block_r)
        if got != b"R":
            os.waitpid(self.pid, 0)
            os.close(self._block_w)
            self.pid = 0
            raise AssertionError("the holder failed before it was ready")

    def kill(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
            os.close(self._block_w)
            self.pid = 0


@pytest.fixture
def holders() -> Iterator[Callable[[Callable[[], None]], _Holder]]:
    made: list[_Holder] = []

    def start(setup: Callable[[], None]) -> _Holder:
        made.append(_Holder(setup))
        return made[-1]

    yield start
    for h in made:
        h.kill()


def _lock_in_child(fd: int, byte: int) -> Callable[[], None]:
    def setup() -> None:
        assert posix.lock(posix.new_description(fd), byte)

    return setup


# --------------------------------------------------------------------------- OFD-lock liveness
def test_a_lock_is_held_while_its_process_lives_and_free_once_it_is_killed(
    anchor: tuple[PosixName, int], holders: Any
) -> None:
    _, fd = anchor
    holder = holders(_lock_in_child(fd, 1))
    assert posix.lock_held(fd, 1)
    assert not posix.lock_held(fd, 0)  # one byte per end
    mine = posix.new_description(fd)
    try:
        assert posix.lock(mine, 1) is False  # the live holder keeps it
        holder.kill()
        assert not posix.lock_held(fd, 1)  # the kernel dropped it with the process
        assert posix.lock(mine, 1) is True
    finally:
        os.close(mine)


def test_own_description_never_conflicts_with_its_own_lock(anchor: tuple[PosixName, int]) -> None:
    _, fd = anchor
    mine = posix.new_description(fd)
    try:
        assert posix.lock(mine, 0)
        assert posix.lock(mine, 0)  # re-taking one's own lock succeeds
        assert not posix.lock_held(mine, 0)  # a holder asks about the other ends' bytes, not its own
        assert posix.lock_held(fd, 0)  # another description sees it
        posix.unlock(mine, 0)
        assert not posix.lock_held(fd, 0)
    finally:
        os.close(mine)


def test_a_dup_shares_the_lock_a_new_description_does_not(anchor: tuple[PosixName, int]) -> None:
    _, fd = anchor
    mine = posix.new_description(fd)
    twin = os.dup(mine)
    try:
        assert posix.lock(mine, 0)
        os.close(mine)  # the description lives on in the dup: still locked
        assert posix.lock_held(fd, 0)
    finally:
        os.close(twin)
    assert not posix.lock_held(fd, 0)  # the last descriptor of the description is gone


def test_the_removal_mutex_of_a_killed_holder_is_released(anchor: tuple[PosixName, int], holders: Any) -> None:
    _, fd = anchor
    holder = holders(_lock_in_child(fd, 2))
    assert posix.lock_held(fd, 2)
    holder.kill()
    with posix.holding(fd, 2):  # would block forever if the dead holder kept it
        assert not posix.lock_held(fd, 2)
    assert not posix.lock_held(fd, 2)


# --------------------------------------------------------------------------- names
def test_paths_follow_how_linux_shows_the_objects() -> None:
    assert PosixName(SHM, "/ipckit.x").path == "/dev/shm/ipckit.x"
    assert PosixName(SEM, "/ipckit.x.a").path == "/dev/shm/sem.ipckit.x.a"
    assert PosixName(MQ, "/ipckit.q").path == "/dev/mqueue/ipckit.q"


def _name_set(name: str) -> NameSet:
    return NameSet(PosixName(SHM, name), (PosixName(SEM, name + ".a"), PosixName(SEM, name + ".b")))


def _make(names: NameSet) -> int:
    shm = posix_ipc.SharedMemory(names.anchor.name, posix_ipc.O_CREX, mode=0o600, size=4096)
    for c in names.companions:
        posix_ipc.Semaphore(c.name, posix_ipc.O_CREX, mode=0o600).close()
    return int(shm.fd)


@pytest.mark.security("S18", subject="posix")
def test_a_name_set_is_removed_only_while_it_names_the_object_held_open(name: str) -> None:
    names = _name_set(name)
    fd = _make(names)
    try:
        assert names.names_object(fd)
        assert all(n.stat() is not None for n in (names.anchor, *names.companions))
        assert names.unlink_if_ours(fd) is True
        assert all(n.stat() is None for n in (names.anchor, *names.companions))
        assert not names.names_object(fd)
        assert names.unlink_if_ours(fd) is False  # gone: nothing to remove twice
    finally:
        os.close(fd)
        names.unlink()


@pytest.mark.security("S18", subject="posix")
def test_a_newer_object_of_the_same_names_is_never_removed(name: str) -> None:
    names = _name_set(name)
    old = _make(names)
    new = -1
    try:
        names.unlink()  # someone removed them behind our back ...
        new = _make(names)  # ... and a new channel took the names
        assert names.unlink_if_ours(old) is False
        assert names.names_object(new)
        assert all(n.stat() is not None for n in names.companions)
    finally:
        os.close(old)
        if new >= 0:
            os.close(new)
        names.unlink()


def test_names_in_tells_segments_from_semaphores(name: str) -> None:
    names = _name_set(name)
    fd = _make(names)
    try:
        prefix = name[1:]
        assert posix.names_in(SHM, prefix) == [name]
        assert sorted(posix.names_in(SEM, prefix)) == [name + ".a", name + ".b"]
    finally:
        os.close(fd)
        names.unlink()


def _squat(name: str, mode: int) -> None:
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=4096).close_fd()


def test_refuse_foreign_and_check_opened(name: str, anchor: tuple[PosixName, int]) -> None:
    own, fd = anchor
    posix.refuse_foreign(own)  # ours: no complaint
    posix.refuse_foreign(PosixName(SHM, name + "-free"))  # free: no complaint
    posix.check_opened(fd, own.name)
    os.fchmod(fd, 0o660)  # group access may be granted on purpose
    posix.check_opened(fd, own.name)
    os.fchmod(fd, 0o604)
    with pytest.raises(PermissionDenied):
        posix.check_opened(fd, own.name)
    squatted = PosixName(SHM, name + "-squat")
    as_user(_squat, squatted.name, 0o666)
    try:
        with pytest.raises(PermissionDenied, match="belongs to uid 65534"):
            posix.refuse_foreign(squatted)
        foreign = squatted.open()
        try:
            with pytest.raises(PermissionDenied):
                posix.check_opened(foreign, squatted.name)
        finally:
            os.close(foreign)
    finally:
        squatted.unlink()


# --------------------------------------------------------------------------- stale reclaim
def test_reclaim_keeps_a_live_object_and_removes_it_once_every_end_is_killed(name: str, holders: Any) -> None:
    names = _name_set(name)
    fd = _make(names)
    try:
        end0 = holders(_lock_in_child(fd, 0))
        end1 = holders(_lock_in_child(fd, 1))
        assert posix.reclaim_stale(names, alive=(0, 1), mutex=2) is False
        end0.kill()
        assert posix.reclaim_stale(names, alive=(0, 1), mutex=2) is False  # one end still alive
        assert names.names_object(fd)
        end1.kill()
        assert posix.reclaim_stale(names, alive=(0, 1), mutex=2) is True
        assert all(n.stat() is None for n in (names.anchor, *names.companions))
        assert posix.reclaim_stale(names, alive=(0, 1), mutex=2) is True  # the name is free
    finally:
        os.close(fd)
        names.unlink()


def test_reclaim_keeps_what_the_scheme_does_not_recognise_and_what_is_not_ours(name: str) -> None:
    names = _name_set(name)
    fd = _make(names)
    seen: list[int] = []

    def not_mine(opened: int, st: os.stat_result) -> bool:
        seen.append(st.st_size)
        return False

    try:
        assert posix.reclaim_stale(names, alive=(0, 1), mutex=2, ours=not_mine) is False
        assert seen == [4096] and names.names_object(fd)
    finally:
        os.close(fd)
        names.unlink()
    squatted = NameSet(PosixName(SHM, name + "-squat"))
    as_user(_squat, squatted.anchor.name, 0o666)
    try:
        assert posix.reclaim_stale(squatted, alive=(0, 1), mutex=2) is False
        assert squatted.anchor.stat() is not None  # another user's object is never removed
    finally:
        squatted.unlink()


def test_sweep_reclaims_the_stale_names_with_the_prefix_only(name: str) -> None:
    stale = [NameSet(PosixName(SHM, f"{name}-stale{i}")) for i in range(2)]
    other = NameSet(PosixName(SHM, name.replace("kit-", "kat-")))
    fds = [_make(n) for n in (*stale, other)]
    try:
        removed = posix.sweep(SHM, name[1:] + "-stale",
                              lambda n: posix.reclaim_stale(NameSet(PosixName(SHM, n)), alive=(0, 1), mutex=2))
        assert sorted(removed) == sorted(n.anchor.name[1:] for n in stale)
        assert other.anchor.stat() is not None
    finally:
        for fd in fds:
            os.close(fd)
        for n in (*stale, other):
            n.unlink()


def test_message_queues_are_a_name_set_like_any_other(name: str, holders: Any) -> None:
    """Two queues, the first the anchor: opened, locked, compared and reclaimed by the same kit
    (through /dev/mqueue where it is mounted, else through the queue descriptor)."""
    names = NameSet(PosixName(MQ, name + ".q0"), (PosixName(MQ, name + ".q1"),))
    queues = [posix_ipc.MessageQueue(n.name, posix_ipc.O_CREX, mode=0o600) for n in (names.anchor, *names.companions)]
    try:
        fd = names.anchor.open()
        try:
            assert names.names_object(fd)
            end = holders(_lock_in_child(fd, 0))
            assert posix.reclaim_stale(names, alive=(0, 1), mutex=2) is False
            end.kill()
            assert posix.reclaim_stale(names, alive=(0, 1), mutex=2) is True
            assert names.anchor.stat() is None and names.companions[0].stat() is None
        finally:
            os.close(fd)
    finally:
        for q in queues:
            q.close()
        names.unlink()


# --------------------------------------------------------------------------- the error map
def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the test inspects whatever was raised
        return exc
    raise AssertionError("nothing was raised")


def test_existential_errors_mean_taken_when_creating_and_missing_when_opening(
    anchor: tuple[PosixName, int], name: str
) -> None:
    exc = _raised(lambda: posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096))
    assert type(exc) is posix_ipc.ExistentialError
    err = posix.posix_error(exc, f"create {name}", creating=True)
    assert type(err) is EndpointExists and isinstance(err, FileExistsError)
    assert "ipckit cleanup" in str(err)
    exc = _raised(lambda: posix_ipc.SharedMemory(name + "-none", 0))
    err = posix.posix_error(exc, f"open {name}-none")
    assert type(err) is EndpointNotFound and isinstance(err, FileNotFoundError)
    assert "listener running" in str(err)


def _open_as_other(name: str) -> tuple[str, str]:
    try:
        posix_ipc.SharedMemory(name, 0)
    except posix_ipc.Error as exc:
        err = posix.posix_error(exc, f"open {name}")
        return type(exc).__name__, f"{type(err).__name__}: {err}"
    return "opened", ""


@pytest.mark.security("S4", subject="posix")
def test_permissions_error_is_permission_denied_with_where_to_look(anchor: tuple[PosixName, int]) -> None:
    own, _ = anchor
    raised, mapped = as_user(_open_as_other, own.name)
    assert raised == "PermissionsError"
    assert mapped.startswith("PermissionDenied: ") and "ls -l /dev/shm" in mapped


def test_busy_and_signal_errors_are_timeouts(name: str) -> None:
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600)
    try:
        busy = _raised(lambda: sem.acquire(0))
        assert type(busy) is posix_ipc.BusyError
        assert type(posix.posix_error(busy, "wait")) is ChannelTimeout
        assert type(posix.posix_error(busy, "receive", timeout=RecvTimeout)) is RecvTimeout
        assert not posix.interrupted(busy)
        old = signal.signal(signal.SIGALRM, lambda *a: None)  # a handler that returns
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        try:
            intr = _raised(lambda: sem.acquire(10))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        assert type(intr) is posix_ipc.SignalError
        assert posix.interrupted(intr)
        err = posix.posix_error(intr, "wait", timeout=RecvTimeout)
        assert type(err) is RecvTimeout and "call again" in str(err)
    finally:
        sem.unlink()
        sem.close()


def test_value_errors_are_configuration_errors(name: str) -> None:
    too_long = _raised(lambda: posix_ipc.MessageQueue("/ipckit." + "x" * 300, posix_ipc.O_CREX))
    assert type(too_long) is ValueError and "too long" in str(too_long)  # mq_open says ENAMETOOLONG
    assert type(posix.posix_error(too_long, "create", kind=MQ)) is InvalidAddress
    bad = _raised(lambda: posix_ipc.SharedMemory("/ipckit/x", posix_ipc.O_CREX, size=0))
    assert type(bad) is ValueError
    assert type(posix.posix_error(bad, "create")) is ConfigurationError


def _emfile_in_child(name: str, w: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    filler = []
    try:
        while True:
            filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    exc = _raised(lambda: posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=0))
    err = posix.posix_error(exc, "create", creating=True)
    os.write(w, f"{type(exc).__name__}|{getattr(exc, 'errno', None)}|{type(err).__name__}|{err}".encode())


@pytest.mark.security("S17", subject="posix")
def test_errno_less_emfile_of_posix_ipc_is_resource_exhausted(name: str) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            _emfile_in_child(name, w)
        finally:
            os._exit(0)
    os.close(w)
    report = os.read(r, 4096).decode()
    os.close(r)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    raised, code, mapped, text = report.split("|", 3)
    assert (raised, code) == ("OSError", "None")  # what posix_ipc does: no errno to go by
    assert mapped == "ResourceExhausted" and "RLIMIT_NOFILE" in text
    assert PosixName(SHM, name).stat() is None


@pytest.mark.security("S17", subject="posix")
def test_limit_errors_name_the_limit_of_their_kind() -> None:
    # posix_ipc's errno-less message for a queue past fs.mqueue.queues_max (reaching it needs
    # a non-root user and 256 queues; the message is the one posix_ipc raises).
    err = posix.posix_error(OSError("Insufficient space for a new queue"), "create", kind=MQ)
    assert type(err) is ResourceExhausted and "queues_max" in str(err)
    err = posix.posix_error(OSError(errno.ENOSPC, "No space left on device"), "reserve", kind=SHM)
    assert type(err) is ResourceExhausted and "/dev/shm is full" in str(err)
    err = posix.posix_error(MemoryError("Not enough memory"), "create", kind=MQ)
    assert type(err) is ResourceExhausted
    err = posix.posix_error(OSError(errno.EACCES, "Permission denied"), "open")
    assert type(err) is PermissionDenied
    assert type(posix.posix_error(RuntimeError("?"), "open")) is ChannelBroken
