"""SysV IPC for the schemes built on it (``sysv+shm://`` now, ``sysv+mq://`` next).

What a SysV scheme needs besides its own object layout:

Timed semaphore waits (:class:`TimedSemaphore`)
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
    (``semop`` with ``IPC_NOWAIT`` and a sleep that backs off from 50 us to 2 ms).  Posts never
    use ``SEM_UNDO``: the semaphore counts wake-up hints, and undo would revert the posts of a
    producer that exits normally.  ctypes releases the GIL for the duration of the call, like
    any blocking syscall in CPython.

Random keys (:func:`create_at_random_key`)
    Objects are created at random keys with ``IPC_CREAT|IPC_EXCL``; a key that is taken (by
    anyone) is never used, another one is drawn.  Never ``ftok``: its keys collide and can be
    predicted.

Semaphore sets and SEM_UNDO liveness (:func:`sem_create`, :func:`semops`, :func:`hold_alive`)
    An end proves it is alive by holding +1 on "its" semaphore with ``SEM_UNDO``: the kernel
    undoes the adjustment when the process dies, also by SIGKILL, so a zero count proves the
    end gone.  ``SEM_UNDO`` adjustments are not inherited by ``fork``.

``/proc/sysvipc`` rows (:func:`proc_row`)
    Owner, creator, mode and key of an id, read without attaching to the object.

Rendezvous records (:class:`RecordFormat`)
    SysV objects have no names, so each ipckit object is recorded in a 0600 file (a
    *record*) in a private 0700 directory (:func:`registry_dir`; where another user created
    its name in the shared temp directory first, a fallback only we can create,
    :func:`registry_candidates`): the keys and ids of the
    SysV objects it uses (``shm``, ``sem``, ``msg``), a nonce, and ``end`` once complete.  A
    named endpoint's record is its rendezvous file.  Its creator holds an ``flock`` on it while
    building; a record whose creator is gone and whose ends are all dead is stale, and
    :meth:`RecordFormat.reclaim_if_stale` removes it with every object it records (only
    objects that are still this user's and still at the recorded key).

Errors (:func:`sysv_error`)
    sysv_ipc's exceptions and the kernel's errnos, translated into the ipckit error tree with
    a message that says what to do.  sysv_ipc is imported lazily (:func:`import_sysv_ipc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pwd
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from ipckit.errors import (
    ChannelBroken,
    ChannelTimeout,
    ConfigurationError,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    IPCError,
    PermissionDenied,
    ResourceExhausted,
    from_oserror,
)

from . import paths as _paths
from . import posix as _posix

__all__ = [
    "GETVAL",
    "IPC_CREAT",
    "IPC_EXCL",
    "IPC_NOWAIT",
    "IPC_RMID",
    "KEY_TRIES",
    "SEM_UNDO",
    "Kind",
    "RecordFormat",
    "SemAdjust",
    "Sembuf",
    "TimedSemaphore",
    "check_private_dir",
    "check_sem_set",
    "create_at_random_key",
    "ensure_private_dir",
    "ensure_registry_dir",
    "getval",
    "hold_alive",
    "import_sysv_ipc",
    "open_record",
    "owned_row",
    "proc_row",
    "random_key",
    "locate_record",
    "msg_create",
    "msg_limits",
    "record_int",
    "registry_candidates",
    "registry_dir",
    "registry_dirs",
    "release_alive",
    "remove_recorded",
    "sem_create",
    "sem_remove",
    "semget",
    "semop_available",
    "semops",
    "semtimedop_available",
    "shm_create",
    "sysv_error",
]

IPC_CREAT: Final = 0o1000
IPC_EXCL: Final = 0o2000
IPC_NOWAIT: Final = 0o4000
IPC_RMID: Final = 0
GETVAL: Final = 12
SEM_UNDO: Final = 0x1000

#: Random keys drawn before giving up (a taken key is a collision with anyone's object).
KEY_TRIES: Final = 64

#: The kinds of SysV object, as ``/proc/sysvipc`` and the records name them.
Kind = Literal["shm", "sem", "msg"]
_KINDS: Final[tuple[Kind, ...]] = ("shm", "sem", "msg")

_T = TypeVar("_T")


def import_sysv_ipc() -> Any:
    """The sysv_ipc module (ImportError when it is not installed: the scheme is unavailable)."""
    import sysv_ipc

    return sysv_ipc


class Sembuf(ctypes.Structure):
    """``struct sembuf``: one operation of a ``semop`` call."""


    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_libc = _load_libc()
try:
    from ._queuefast import semop1 as _semop1
    from ._queuefast import semwait as _semwait
except ImportError:  # not built: libc's semop through ctypes
    _semop1 = _semwait = None  # type: ignore[assignment]
if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
    _semop1 = _semwait = None  # type: ignore[assignment]  # (as for the ring: measure and test the fallback)
_semop = getattr(_libc, "semop", None) if _libc is not None else None
_semtimedop = getattr(_libc, "semtimedop", None) if _libc is not None else None
_semget = getattr(_libc, "semget", None) if _libc is not None else None
_semctl = getattr(_libc, "semctl", None) if _libc is not None else None
if _semop is not None:
    _semop.argtypes = [ctypes.c_int, ctypes.POINTER(Sembuf), ctypes.c_size_t]
    _semop.restype = ctypes.c_int
if _semtimedop is not None:
    _semtimedop.argtypes = [ctypes.c_int, ctypes.POINTER(Sembuf), ctypes.c_size_t, ctypes.POINTER(_Timespec)]
    _semtimedop.restype = ctypes.c_int
if _semget is not None:
    _semget.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    _semget.restype = ctypes.c_int
if _semctl is not None:
    _semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]  # the commands used take no 4th argument
    _semctl.restype = ctypes.c_int


def semtimedop_available() -> bool:
    """True when libc exports ``semtimedop`` (the blocking, timed path is used)."""
    return _semtimedop is not None


def semop_available() -> bool:
    """True when libc's ``semget``/``semop``/``semctl`` are reachable through ctypes."""
    return _semop is not None and _semget is not None and _semctl is not None


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
        self._down = Sembuf(sem_num, -1, 0)
        self._try = Sembuf(sem_num, -1, IPC_NOWAIT)
        self._up = Sembuf(sem_num, 1, 0)
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


class SemAdjust:
    """Adjustments of one semaphore by varying amounts, each one ``semop`` call whose answer is
    stored from C.

    ``adjust(delta, box)`` appends the call's answer to *box* from inside C (``list.extend`` over
    ``map``), so a caller that an exception reaches as the call returns (a signal handler's)
    still finds out in its ``finally`` whether the adjustment happened: counts that are credit
    are never lost that way.  The answer is 0 (done) or not (failed: :meth:`errno` of it tells
    why).  The call is the C module ``_queuefast``'s when it was built (ctypes costs more than
    the semop itself), else libc's through ctypes.  Never blocks when *flags* has
    ``IPC_NOWAIT`` or *delta* is positive.
    """

    __slots__ = ("_args", "_buf", "_fast")
    _buf: Sembuf

    def __init__(self, semid: int, num: int, flags: int) -> None:
        if _semop1 is not None:
            self._fast = True
            self._args: tuple[Any, ...] = ((semid,), (num,), (flags,))
            return
        if _semop is None:
            raise ChannelBroken("libc semop() is not available through ctypes")
        self._fast = False
        self._buf = Sembuf(num, 0, flags)
        self._args = ((semid,), (ctypes.byref(self._buf),), (1,))

    def adjust(self, delta: int, box: list[int]) -> None:
        if self._fast:
            semid, num, flags = self._args
            box.extend(map(_semop1, semid, num, (delta,), flags))
            return
        self._buf.sem_op = delta
        semid, ref, one = self._args
        box.extend(map(_semop, semid, ref, one))  # type: ignore[arg-type]  # (not None: checked in __init__)

    def errno(self, answer: int) -> int:
        """The errno of a failed adjustment whose *answer* :meth:`adjust` stored (read at once:
        the ctypes path keeps it only until the next ctypes call of this thread)."""
        return -answer if self._fast else ctypes.get_errno()


class SemWait:
    """Waits of one semaphore (take one count): :meth:`wait` in the kernel with a timeout.

    The C module's ``semtimedop`` when built, else :class:`TimedSemaphore`'s through ctypes.
    """

    __slots__ = ("_num", "_semid", "_slow")

    def __init__(self, semid: int, num: int) -> None:
        self._semid = semid
        self._num = num
        self._slow = None if _semwait is not None else TimedSemaphore(semid, sem_num=num)

    def wait(self, timeout: float) -> bool:
        """Take one count, waiting up to *timeout* seconds; False when it did not come.

        Returns (False) at a signal too, so the caller's loop lets Python run the handler and
        goes on with what is left of its own deadline.
        Raises:
            ChannelBroken: the semaphore set was removed.
        """
        if self._slow is not None:
            return self._slow.wait(timeout)
        rc = _semwait(self._semid, self._num, timeout)
        if rc == 0:
            return True
        if rc in (-errno.EAGAIN, -errno.EINTR):
            return False
        raise _error(-rc, "semtimedop")


# --------------------------------------------------------------------------- semaphore sets
def semops(semid: int, *ops: tuple[int, int, int]) -> int:
    """Apply *ops* ``(sem_num, op, flags)`` atomically; 0 or the errno (EINTR retried)."""
    assert _semop is not None
    arr = (Sembuf * len(ops))(*[Sembuf(n, o, f) for n, o, f in ops])
    while _semop(semid, arr, len(ops)) == -1:
        code = ctypes.get_errno()
        if code != errno.EINTR:
            return code
    return 0


def semget(key: int, nsems: int, flags: int) -> int:
    """``semget(2)``: the id of the set at *key*.

    Raises:
        OSError: with the kernel's errno (EEXIST for a taken key with ``IPC_EXCL``).
    """
    assert _semget is not None
    semid = int(_semget(key, nsems, flags))
    if semid < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return semid


def getval(semid: int, num: int) -> int:
    """The count of semaphore *num* of the set *semid* (OSError once the set is gone)."""
    assert _semctl is not None
    value = int(_semctl(semid, num, GETVAL))
    if value < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return value


def sem_remove(semid: int) -> None:
    """Remove the set (``IPC_RMID``); waiters wake with EIDRM.  A set already gone is no error."""
    assert _semctl is not None
    _semctl(semid, 0, IPC_RMID)


def sem_create(nsems: int, mode: int) -> tuple[int, int]:
    """A new set of *nsems* semaphores (all zero) at a random key: ``(key, semid)``.

    Raises:
        ResourceExhausted: the kernel's semaphore limits are reached, or no free key was found.
    """

    def make(key: int) -> int | None:
        try:
            return semget(key, nsems, IPC_CREAT | IPC_EXCL | (mode & 0o777))
        except FileExistsError:
            return None  # someone's key: draw another
        except OSError as exc:
            raise sysv_error(exc, "creating a SysV semaphore set", kind="sem", creating=True) from exc

    return create_at_random_key(make, "a semaphore set")


# --------------------------------------------------------------------------- SEM_UNDO liveness
def hold_alive(semid: int, num: int, *, exclusive: bool = False) -> int:
    """Add this process's +1 (``SEM_UNDO``) to semaphore *num*; 0 or the errno.

    With *exclusive* the count must be zero first (checked in the same atomic ``semop``), else
    EAGAIN: somebody else already holds the end.
    """
    if exclusive:
        return semops(semid, (num, 0, IPC_NOWAIT), (num, 1, SEM_UNDO))
    return semops(semid, (num, 1, SEM_UNDO))


def release_alive(semid: int, num: int) -> int:
    """Take this process's +1 back (also cancelling its undo entry); 0 or the errno."""
    return semops(semid, (num, -1, SEM_UNDO | IPC_NOWAIT))


# --------------------------------------------------------------------------- random keys, segments
def random_key() -> int:
    """A random positive SysV key (never ``IPC_PRIVATE``, never ``ftok``); tests monkeypatch it."""
    return secrets.randbelow(0x7FFFFFFE) + 1


def create_at_random_key(make: Callable[[int], _T | None], what: str) -> tuple[int, _T]:
    """``(key, make(key))`` for the first random key at which *make* succeeds.

    *make* creates the object with ``IPC_CREAT|IPC_EXCL`` and returns None when the key is
    taken; it raises for any other failure.
    """
    for _ in range(KEY_TRIES):
        key = random_key()
        made = make(key)
        if made is not None:
            return key, made
    raise ResourceExhausted(f"no free SysV key for {what} after {KEY_TRIES} random tries")


def shm_create(size: int, mode: int) -> tuple[int, Any]:
    """A new zero-filled ``sysv_ipc.SharedMemory`` of *size* bytes at a random key: ``(key, shm)``.

    Raises:
        ResourceExhausted: the kernel's segment limits are reached, or no free key was found.
    """
    sysv_ipc = import_sysv_ipc()

    def make(key: int) -> Any:
        try:
            return sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=mode & 0o777, size=size, init_character=b"\0")
        except sysv_ipc.ExistentialError:
            return None  # a taken key: draw another
        except (OSError, ValueError, MemoryError, sysv_ipc.Error) as exc:
            raise sysv_error(exc, f"creating a {size}-byte SysV segment", kind="shm", creating=True) from exc

    return create_at_random_key(make, "a segment")


def msg_create(mode: int, max_message_size: int) -> tuple[int, Any]:
    """A new, empty ``sysv_ipc.MessageQueue`` at a random key: ``(key, queue)``.

    *max_message_size* is sysv_ipc's receive buffer (its default, 2048, is below the kernel's
    ``msgmax``: pass :func:`msg_limits` ``["msgmax"]``).

    Raises:
        ResourceExhausted: ``kernel.msgmni`` queues exist already, or no free key was found.
    """
    sysv_ipc = import_sysv_ipc()

    def make(key: int) -> Any:
        try:
            return sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode=mode & 0o777,
                                         max_message_size=max_message_size)
        except sysv_ipc.ExistentialError:
            return None  # a taken key: draw another
        except (OSError, ValueError, MemoryError, sysv_ipc.Error) as exc:
            raise sysv_error(exc, "creating a SysV message queue", kind="msg", creating=True) from exc

    return create_at_random_key(make, "a message queue")


#: The SysV message queue sysctls: (name, meaning, fallback when /proc cannot be read).
_MSG_SYSCTLS: Final = (("msgmax", "bytes in one message", 8192), ("msgmnb", "bytes in one queue", 16384),
                       ("msgmni", "queues system-wide", 32000))


def msg_limits() -> dict[str, int]:
    """The live ``kernel.msgmax``, ``kernel.msgmnb`` and ``kernel.msgmni`` (read on every call:
    an administrator may change them; Linux's defaults where /proc cannot be read)."""
    found: dict[str, int] = {}
    for name, _meaning, fallback in _MSG_SYSCTLS:
        try:
            with open(f"/proc/sys/kernel/{name}") as f:
                found[name] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            found[name] = fallback
    return found


# --------------------------------------------------------------------------- /proc/sysvipc
def proc_row(kind: Kind, ident: int) -> dict[str, int] | None:
    """The ``/proc/sysvipc/<kind>`` row of id *ident* (perms parsed as octal), or None.

    Raises:
        ResourceExhausted: no descriptor is left to read the table with (never "no such object").
    """
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            header = f.readline().split()
            for line in f:
                cols = line.split()
                if len(cols) == len(header) and int(cols[1]) == ident:
                    row = {h: int(c) for h, c in zip(header, cols, strict=True) if h != "perms"}
                    row["perms"] = int(cols[header.index("perms")], 8)
                    return row
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise from_oserror(exc, f"reading /proc/sysvipc/{kind}") from exc
        return None
    except ValueError:
        return None
    return None


def owned_row(kind: Kind, ident: int, key: int) -> dict[str, int] | None:
    """The row of *ident* if it is still at *key* and this user owns and created it, else None."""
    row = proc_row(kind, ident)
    euid = os.geteuid()
    if row is None or row["key"] != key or row["uid"] != euid or row["cuid"] != euid:
        return None
    return row


def check_sem_set(semid: int, semkey: int, nsems: int, what: str, *, mode: int = 0o600) -> None:
    """The set *semid* exists at *semkey*, is ours, grants group and others no more than *mode*
    (the opener's ``mode`` option), and has *nsems* semaphores."""
    row = proc_row("sem", semid)
    if row is None or row["key"] != semkey:
        raise IncompatibleEndpoint(f"{what}: its semaphore set {semid} is gone (stale endpoint)")
    euid = os.geteuid()
    if row["uid"] != euid or row["cuid"] != euid:
        raise PermissionDenied(
            errno.EACCES,
            f"{what}: semaphore set {semid} belongs to uid {row['uid']} (creator {row['cuid']}) "
            f"with mode {row['perms'] & 0o777:o}",
        )
    _paths.check_mode(f"{what}: semaphore set {semid}", row["perms"], mode)
    if row["nsems"] != nsems:
        raise IncompatibleEndpoint(f"{what}: semaphore set {semid} has {row['nsems']} semaphores, not {nsems}")


# --------------------------------------------------------------------------- rendezvous records
_YOUNG: Final = 2.0  # a record without ids younger than this may belong to a creator about to lock it


def _home_cache() -> str | None:
    """``<home>/.cache`` of this user, when the home directory (from the password database, not
    ``$HOME``, which ``sudo`` may keep from another user) is ours and nobody else may write in it:
    then nobody else can create anything in it.  None without such a home (``nobody``'s is
    ``/nonexistent``)."""
    euid = os.geteuid()
    try:
        home = pwd.getpwuid(euid).pw_dir
        st = os.stat(home)
    except (KeyError, OSError):
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o022:
        return None
    return os.path.join(home, ".cache")


def registry_candidates() -> list[str]:
    """Where this user's records may live, the preferred first (issue 10, B.11).

    ``ipckit-sysv-<uid>`` in :func:`~ipckit.backends.common.paths.runtime_dir`: in a private
    ``$XDG_RUNTIME_DIR`` nobody else can create it, so that is the only candidate.  In the shared
    temp directory anyone can create the name first (a squatter would make every sysv+shm
    ``pair()`` and ``listen()`` of ours fail), so ``<home>/.cache/ipckit-sysv-<uid>`` follows: a
    place only we can create.  Both are deterministic, so ``connect()`` looks where ``listen()``
    put the record (:func:`locate_record`).
    """
    name = f"ipckit-sysv-{os.geteuid()}"
    runtime = _paths.runtime_dir()
    candidates = [os.path.join(runtime, name)]
    if runtime != os.environ.get("XDG_RUNTIME_DIR"):
        cache = _home_cache()
        if cache is not None:
            candidates.append(os.path.join(cache, name))
    return candidates


def _taken(path: str) -> bool:
    """True when another user holds *path*: something of theirs (a directory, a symlink, a file)
    is there.  Ours (even if wrongly made) is not taken: check_private_dir says what is wrong."""
    try:
        return os.lstat(path).st_uid != os.geteuid()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # a parent we cannot search is no place for our records


def registry_dir() -> str:
    """The directory this user's new records go to (not created): the first of
    :func:`registry_candidates` no other user holds.  When every one is held, the first:
    :func:`ensure_registry_dir` then raises the error that says what to do."""
    candidates = registry_candidates()
    return next((c for c in candidates if not _taken(c)), candidates[0])


def registry_dirs() -> list[str]:
    """This user's existing registry directories (for sweeps and lookups): candidates that are
    directories of ours, whatever else another user put at the others."""
    found = []
    for c in registry_candidates():
        try:
            st = os.lstat(c)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            found.append(c)
    return found


def locate_record(entry: str) -> str:
    """The path of the record *entry* (``ep.<name>``): in the first of this user's registry
    directories that has it, else where :func:`registry_dir` would create it."""
    for d in registry_dirs():
        if os.path.lexists(path := os.path.join(d, entry)):
            return path
    return os.path.join(registry_dir(), entry)


def ensure_registry_dir(path: str, what: str = "a SysV rendezvous directory") -> None:
    """:func:`ensure_private_dir` for a registry directory (its ``.cache`` parent made if missing).

    Raises:
        PermissionDenied: another user holds *path* and so every candidate (no safe fallback
            exists here); the message says how to get a place of one's own.
    """
    if _taken(path):
        owner = "another user"
        try:
            owner = f"uid {os.lstat(path).st_uid}"
        except OSError:
            pass
        raise PermissionDenied(
            errno.EPERM,
            f"{path!r}, the directory of this user's sysv+shm records, was created by {owner}, and there is no "
            "safe place to fall back to (no private $XDG_RUNTIME_DIR, no home directory of this user's); set "
            "XDG_RUNTIME_DIR to a private (0700) directory of yours, or have that directory removed",
        )
    parent = os.path.dirname(path)
    if os.path.basename(parent) == ".cache" and path != registry_candidates()[0]:
        try:
            os.mkdir(parent, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise from_oserror(exc, f"creating {parent}") from exc
    ensure_private_dir(path, what)


def ensure_private_dir(path: str, what: str = "a SysV rendezvous directory") -> None:
    """Create *path* (0700) unless it exists; either way it must be a private directory of ours."""
    try:
        _paths.make_dir(path, 0o700, what)  # the mode set through a descriptor, not the name
    except FileExistsError:
        pass
    except IPCError:
        raise
    except OSError as exc:
        raise from_oserror(exc, f"creating {path}") from exc
    check_private_dir(path, what)


def check_private_dir(path: str, what: str = "a SysV rendezvous directory") -> None:
    """*path* must be a real directory of ours, closed to other users (EndpointNotFound if absent)."""
    try:
        _paths.check_dir(path, what, private=True)
    except FileNotFoundError as exc:
        raise EndpointNotFound(errno.ENOENT, f"directory {path!r} does not exist") from exc
    except IPCError:
        raise
    except OSError as exc:
        raise from_oserror(exc, f"checking {path}") from exc


def open_record(path: str) -> int:
    """Open the record *path* read-only, never through a symlink.

    Raises:
        FileNotFoundError: there is none.
        PermissionDenied: a symlink, or not ours to read.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionDenied(errno.ELOOP, f"{path!r} is a symlink; refusing to follow it") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(exc.errno, f"cannot open {path!r}: not ours") from exc
        raise from_oserror(exc, f"opening {path}") from exc


def record_int(fields: dict[str, str], key: str) -> int | None:
    """The integer field *key* of a record, or None when absent or malformed."""
    try:
        return int(fields[key])
    except (KeyError, ValueError):
        return None


def remove_recorded(fields: dict[str, str], kinds: Iterable[Kind] = _KINDS) -> None:
    """Remove the objects a record names (``<kind>key``/``<kind>id`` fields): only those still at
    the recorded key and created by and belonging to this user."""
    for kind in kinds:
        ident, key = record_int(fields, f"{kind}id"), record_int(fields, f"{kind}key")
        if ident is None or key is None or owned_row(kind, ident, key) is None:
            continue
        if kind == "sem":
            sem_remove(ident)
            continue
        try:
            sysv_ipc = import_sysv_ipc()
            if kind == "shm":
                sysv_ipc.remove_shared_memory(ident)
            else:
                sysv_ipc.remove_message_queue(ident)
        except Exception:  # gone meanwhile: nothing left to remove
            pass


@dataclass(frozen=True)
class RecordFormat:
    """The records of one scheme: how they are tagged, and which semaphores prove an end alive.

    A record is one line: the *tag*, ``key=value`` fields (``semkey``/``semid`` first, then the
    other objects and the ``nonce``), and ``end`` once the object is complete.  A file with
    another tag is *foreign*: never read as ours, never removed.

    Args:
        tag: first word of every record, with a version (``"ipckit-sysv-shm/1"``).
        what: how messages name an endpoint of the scheme (``"sysv+shm"``).
        nsems: the recorded semaphore set's size.
        alive: the set's ``SEM_UNDO`` liveness semaphores, one per end.
        in_transit: the scheme's look at the recorded objects (the record's fields) once every
            alive semaphore is zero: True while an end is on its way to another process, which
            holds no count until it arrives, so the record is kept (for a bounded time).
    """

    tag: str
    what: str
    nsems: int
    alive: tuple[int, ...]
    in_transit: Callable[[dict[str, str]], bool] | None = None
    #: Liveness by OFD locks instead of semaphores: the bytes of the record file each end holds
    #: an OFD lock on (``sysv+mq``); while any is held, the record is live.  ``alive`` is then ().
    locked: tuple[int, ...] = ()
    #: Files beside the SysV objects a record implies (sysv+mq's doorbell FIFOs and flags, named
    #: by its nonce), removed with them when the record is reclaimed.
    files: Callable[[dict[str, str]], tuple[str, ...]] | None = None

    def read(self, fd: int, path: str) -> dict[str, str]:
        """Owner-checked fields of an open record: ``{}`` while empty, ``{"foreign": "1"}`` for
        another tag, ``end`` present once complete."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionDenied(errno.EPERM, f"{path!r} is not a regular file")
        _paths.check_owned(path, st, "endpoint file", private=True)
        data = os.pread(fd, 4096, 0).decode("ascii", "replace").split()
        if not data or data[0] != self.tag:
            return {} if not data else {"foreign": "1"}
        return dict(item.partition("=")[::2] for item in data[1:])

    def write(self, fd: int, fields: dict[str, object], complete: bool) -> None:
        """Replace the record's content (``end`` appended when *complete*)."""
        words = [self.tag, *(f"{k}={v}" for k, v in fields.items()), *(["end"] if complete else [])]
        data = (" ".join(words) + "\n").encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def unlink_if_ours(self, path: str, nonce: str) -> None:
        """Unlink the record *path* only if it still records *nonce* (never a newer endpoint's)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fields = self.read(fd, path)
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except (OSError, IPCError):
            return
        finally:
            os.close(fd)
        if same and fields.get("nonce") == nonce:
            _paths.unlink_quiet(path)

    def reclaim_if_stale(self, path: str, *, dry_run: bool = False) -> bool:
        """Remove the record *path* and the objects it records if no live process uses them.

        Stale means: the file is ours, no creator holds its lock, every alive semaphore is
        zero (or the set is gone), and no end is in transit (``in_transit``).  Returns True if it
        was removed (or is gone).  With *dry_run* it only judges (True: it would be removed) and
        changes nothing; the lock test takes the record's ``flock`` for a moment, as a real run does.
        """
        try:
            fd = open_record(path)
        except FileNotFoundError:
            return True
        except PermissionDenied:
            return False
        try:
            try:
                fields = self.read(fd, path)
            except PermissionDenied:
                return False
            if "foreign" in fields:
                return False
            if not _paths.try_lock(fd):
                return False  # a creator is writing it right now
            semid, semkey = record_int(fields, "semid"), record_int(fields, "semkey")
            if self.locked:
                if any(_posix.lock_held(fd, byte) for byte in self.locked):
                    return False  # an end holds its lock: alive (also through a descriptor in transit)
                if not fields and time.time() - os.fstat(fd).st_ctime < _YOUNG:
                    return False  # just created; its creator may not hold its locks yet
            elif semid is None or semkey is None:
                if time.time() - os.fstat(fd).st_ctime < _YOUNG:
                    return False  # just created; its creator may not hold the lock yet
            else:
                row = proc_row("sem", semid)
                ours = row is not None and row["key"] == semkey and row["uid"] == os.geteuid() \
                    and row["nsems"] == self.nsems
                if ours:
                    try:
                        if any(getval(semid, num) for num in self.alive):
                            return False
                    except OSError:
                        pass
            # After the counts: an end marks itself travelling before it lets its count go.
            if self.in_transit is not None and self.in_transit(fields):
                return False
            if dry_run:
                return True
            remove_recorded(fields)
            if self.files is not None:
                for extra in self.files(fields):
                    _paths.unlink_quiet(extra)
            if os.path.lexists(path) and os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                _paths.unlink_quiet(path)
            return True
        finally:
            os.close(fd)

    def sweep(self, directory: str | None = None) -> list[str]:
        """Reclaim every stale record of this format in *directory* (default: every registry
        directory of this user's, each removed once empty); the file names removed.  Foreign files
        are left alone."""
        removed: list[str] = []
        for base in [directory] if directory else registry_dirs():
            try:
                entries = sorted(os.listdir(base))
            except OSError:
                continue
            for entry in entries:
                path = os.path.join(base, entry)
                if os.path.isfile(path) and self.reclaim_if_stale(path):
                    removed.append(entry)
            if directory is None:
                _paths.rmdir_quiet(base)
        return removed


# --------------------------------------------------------------------------- errors
_LIMIT_HINTS: Final[dict[str, str]] = {
    "shm": "SysV segment limits reached (kernel.shmmni segments, kernel.shmall pages, kernel.shmmax bytes: "
           "see /proc/sys/kernel/shm*); pass a smaller capacity or remove stale segments (`ipckit cleanup`)",
    "sem": "no SysV semaphore set left (kernel.sem SEMMNI/SEMMNS, see /proc/sys/kernel/sem); "
           "remove stale sets with `ipckit cleanup`",
    "msg": "SysV message queue limit reached: kernel.msgmni queues exist system-wide (see /proc/sys/kernel/msgmni); "
           "remove stale queues with `ipckit cleanup`, or raise it (sysctl -w kernel.msgmni=N)",
}
_IPCS_FLAG: Final[dict[str, str]] = {"shm": "m", "sem": "s", "msg": "q"}
# sysv_ipc raises ENOSPC as an OSError *without* an errno (fixed messages), and EINTR as its
# base Error; recognised by these fragments.
_ENOSPC_MESSAGES: Final = ("(ENOSPC)", "system limit for message queues")
_EINTR_MESSAGE: Final = "Signaled while waiting"


def sysv_error(
    exc: BaseException,
    what: str,
    *,
    kind: Kind = "shm",
    creating: bool = False,
    missing: type[EndpointNotFound] | type[IncompatibleEndpoint] = EndpointNotFound,
    timeout: type[ChannelTimeout] = ChannelTimeout,
) -> IPCError:
    """The ipckit error for a sysv_ipc (or OS) error raised while doing *what* to a *kind* object.

    Raise the result ``from exc``.  sysv_ipc's exceptions carry no errno, so the caller says
    whether it was creating, and which error a vanished object is (*missing*: EndpointNotFound,
    or IncompatibleEndpoint for an endpoint file whose objects are gone).

    ==================== =====================================================================
    ExistentialError     EndpointExists when *creating*, else *missing*
    PermissionsError     PermissionDenied (another user's object, or a mode that shuts us out)
    BusyError            *timeout*
    NotAttachedError     ChannelBroken (the segment was detached: the end is closed)
    Error (EINTR)        *timeout*: interrupted by a signal before anything happened, so
                         calling again is safe (ipckit's own waits retry instead)
    ValueError           creating: ResourceExhausted (a size beyond the kernel's limits);
                         an invalid id: *missing* (the kernel does not know it any more);
                         else ConfigurationError
    MemoryError          ResourceExhausted with the limits of this *kind*
    OSError              ENOSPC/ENOMEM: ResourceExhausted with the limits of this *kind*;
                         EIDRM/EINVAL: ChannelBroken (removed); else by errno
    anything else        ChannelBroken
    ==================== =====================================================================
    """
    try:
        s: Any = import_sysv_ipc()
    except ImportError:
        s = None
    limits = _LIMIT_HINTS[kind]
    if s is not None and isinstance(exc, s.ExistentialError):
        if creating:
            return EndpointExists(errno.EEXIST, f"{what}: the key is taken")
        return missing(errno.ENOENT, f"{what}: the object is gone (every end closed, or it was removed)")
    if s is not None and isinstance(exc, s.PermissionsError):
        return PermissionDenied(
            errno.EACCES,
            f"{what}: permission denied (the object belongs to another user or its mode shuts this one out; "
            f"`ipcs -{_IPCS_FLAG[kind]}` shows owner and mode)",
        )
    if s is not None and isinstance(exc, s.BusyError):
        return timeout(f"{what}: timed out")
    if s is not None and isinstance(exc, s.NotAttachedError):
        return ChannelBroken(f"{what}: the segment is not attached (the end was closed)")
    if s is not None and type(exc) is s.Error and _EINTR_MESSAGE in str(exc):
        return timeout(f"{what}: interrupted by a signal before it completed; nothing was done, call again")
    if isinstance(exc, ValueError):
        if creating:
            return ResourceExhausted(f"{what}: {exc} ({limits})")
        if "Invalid id" in str(exc):
            return missing(errno.EINVAL, f"{what}: {exc} (the object is gone)")
        return ConfigurationError(f"{what}: {exc}")
    if isinstance(exc, MemoryError):
        return ResourceExhausted(f"{what}: out of memory ({limits})")
    if isinstance(exc, OSError):
        code = exc.errno or (errno.ENOSPC if any(m in str(exc) for m in _ENOSPC_MESSAGES) else 0)
        if code in (errno.ENOSPC, errno.ENOMEM):
            return ResourceExhausted(f"{what}: {exc.strerror or exc} ({limits})")
        if code in (errno.EIDRM, errno.EINVAL) and not creating:
            return ChannelBroken(f"{what}: the {kind} object was removed")
        return from_oserror(exc, what)
    return ChannelBroken(f"{what}: {type(exc).__name__}: {exc}")
