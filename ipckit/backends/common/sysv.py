"""Timed waits on SysV semaphores, whichever sysv_ipc build is installed.

The sysv_ipc 1.2.0 wheel on PyPI is compiled without ``semtimedop`` support
(``sysv_ipc.SEMAPHORE_TIMEOUT_SUPPORTED is False``); its ``Semaphore.acquire(timeout)`` then
ignores the timeout and can block forever.  ipckit never issues a wait that cannot time out,
so it calls ``semtimedop(2)`` from libc through ctypes on the semaphore's id:

* ``EAGAIN``  -> the timeout expired (returns False);
* ``EINTR``   -> a signal arrived: return to Python (so its handler runs and may raise) and
  retry with the *remaining* time -- retries never extend the deadline;
* ``EIDRM`` / ``EINVAL`` -> the semaphore set was removed -> :class:`ChannelBroken`;
* ``ERANGE`` on a post -> the count is at SEMVMX; the waiter will wake anyway, so ignore.

If libc lacks ``semtimedop`` the wait degrades to bounded non-blocking polling
(``semop`` with ``IPC_NOWAIT`` and a sleep that backs off from 50 us to 2 ms).

Posts never use ``SEM_UNDO``: the semaphore counts wake-up hints, and undo would revert the
posts of a producer that exits normally (reliability.md V-2).  ctypes releases the GIL for
the duration of the call, like any blocking syscall in CPython.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import time
from typing import Final

from ipckit.errors import ChannelBroken, IPCError, from_oserror

__all__ = ["TimedSemaphore", "semtimedop_available"]

IPC_NOWAIT: Final = 0o4000


class _Sembuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_libc = _load_libc()
_semop = getattr(_libc, "semop", None) if _libc is not None else None
_semtimedop = getattr(_libc, "semtimedop", None) if _libc is not None else None
if _semop is not None:
    _semop.argtypes = [ctypes.c_int, ctypes.POINTER(_Sembuf), ctypes.c_size_t]
    _semop.restype = ctypes.c_int
if _semtimedop is not None:
    _semtimedop.argtypes = [ctypes.c_int, ctypes.POINTER(_Sembuf), ctypes.c_size_t, ctypes.POINTER(_Timespec)]
    _semtimedop.restype = ctypes.c_int


def semtimedop_available() -> bool:
    """True when libc exports ``semtimedop`` (the blocking, timed path is used)."""
    return _semtimedop is not None


def _error(code: int, what: str) -> IPCError:
    exc = OSError(code, f"{what}: {errno.errorcode.get(code, code)}")
    if code in (errno.EIDRM, errno.EINVAL):
        err: IPCError = ChannelBroken(f"{what}: the semaphore was removed")
    else:
        err = from_oserror(exc, what)
    err.__cause__ = exc
    return err


class TimedSemaphore:
    """Wait (with a timeout) on and post to semaphore *sem_num* (default 0) of the SysV set *semid*.

    Args:
        semid: ``sysv_ipc.Semaphore(...).id`` (or a ``semget`` id of a set of several).
        use_semtimedop: force the polling fallback with ``False`` (tests); default: auto.
        sem_num: index of the semaphore in the set.
    """

    __slots__ = ("_down", "_timed", "_try", "_ts", "_up", "semid")

    def __init__(self, semid: int, *, use_semtimedop: bool | None = None, sem_num: int = 0) -> None:
        if _semop is None:
            raise ChannelBroken("libc semop() is not available through ctypes")
        self.semid = semid
        self._down = _Sembuf(sem_num, -1, 0)
        self._try = _Sembuf(sem_num, -1, IPC_NOWAIT)
        self._up = _Sembuf(sem_num, 1, 0)
        self._ts = _Timespec(0, 0)
        self._timed = (
            _semtimedop is not None if use_semtimedop is None else use_semtimedop and _semtimedop is not None
        )

    @property
    def timed(self) -> bool:
        """True when waits use ``semtimedop``; False for the polling fallback."""
        return self._timed

    def post(self) -> None:
        """Add one to the count (no SEM_UNDO).

        Raises:
            ChannelBroken: the semaphore set was removed.
        """
        assert _semop is not None
        while _semop(self.semid, ctypes.byref(self._up), 1) == -1:
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code == errno.ERANGE:  # count saturated: the waiter wakes anyway
                return
            raise _error(code, "semop(+1)")

    def try_acquire(self) -> bool:
        """Take one count without blocking; False if the count is zero."""
        assert _semop is not None
        while _semop(self.semid, ctypes.byref(self._try), 1) == -1:
            code = ctypes.get_errno()
            if code == errno.EAGAIN:
                return False
            if code != errno.EINTR:
                raise _error(code, "semop(-1, IPC_NOWAIT)")
        return True

    def wait(self, timeout: float | None) -> bool:
        """Take one count, waiting up to *timeout* seconds (None: no limit); False on timeout.

        Raises:
            ChannelBroken: the semaphore set was removed while or before waiting.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not self._timed:
            return self._poll(deadline)
        assert _semtimedop is not None
        ts = self._ts
        while True:
            if deadline is None:
                rc = _semtimedop(self.semid, ctypes.byref(self._down), 1, None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    return self.try_acquire()
                sec = int(remaining)
                ts.tv_sec = sec
                ts.tv_nsec = int((remaining - sec) * 1e9)
                rc = _semtimedop(self.semid, ctypes.byref(self._down), 1, ctypes.byref(ts))
            if rc == 0:
                return True
            code = ctypes.get_errno()
            if code == errno.EAGAIN:
                return False
            if code != errno.EINTR:
                raise _error(code, "semtimedop")
            # EINTR: loop back through Python so pending signal handlers run, then retry
            # with what is left of the original deadline.

    def _poll(self, deadline: float | None) -> bool:
        delay = 50e-6
        while True:
            if self.try_acquire():
                return True
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    return False
                time.sleep(min(delay, remaining))
            else:
                time.sleep(delay)
            delay = min(delay * 2.0, 2e-3)
