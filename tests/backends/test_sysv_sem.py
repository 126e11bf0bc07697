"""Timed SysV semaphore waits (ipckit.backends.common.sysv) on the installed sysv_ipc build.

The PyPI wheel of sysv_ipc 1.2.0 has no semaphore timeouts, so ``Semaphore.acquire(0.2)``
would block forever; these tests prove ipckit's waits time out, wake on a post from another
process, survive signals without extending the deadline and fail cleanly on removal.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from ipckit.backends.common import sysv as sysv_sem
from ipckit.backends.common.sysv import TimedSemaphore
from ipckit.errors import ChannelBroken

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
    # reliability.md V-2: SEM_UNDO would revert these posts at exit.
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
