"""POSIX IPC objects for the schemes built on them (``shm://`` now, ``mq://`` next).

An ipckit POSIX object is a *set of POSIX names* (:class:`NameSet`): one **anchor** and its
**companions**.  ``shm://`` uses a shared-memory segment as the anchor and two named semaphores
as companions; a message-queue scheme would use one queue as the anchor and the other as its
companion.  The rules that keep such a set safe live here, once:

Creation and removal order
    The anchor's name is taken first, exclusively, and removed last.  While it exists nobody
    else can create the set, so companion names removed before it are never a newer object's.

Liveness: OFD locks
    Each end holds an open-file-description lock (``F_OFD_SETLK``) on its own byte of the
    anchor, through a description of its own (:func:`new_description`).  The kernel drops the
    lock when the last descriptor of that description closes -- also when the holder is
    SIGKILLed -- so "the byte is unlocked" proves the end gone (:func:`lock_held`).  Linux shows
    shm segments, semaphores and message queues as files, and these locks work on all of them.
    A further byte serves as a mutex around removing the names (:func:`lock_wait`).

Names
    Linux keeps the objects in file systems: segments as ``/dev/shm/<name>``, semaphores as
    ``/dev/shm/sem.<name>``, queues as ``/dev/mqueue/<name>`` (where mqueuefs is mounted).  An
    object found under a name is used only if this user owns it (:func:`refuse_foreign`,
    :func:`check_opened`); a name is removed only while it still refers to the object the
    remover holds open (:meth:`NameSet.names_object`), never because it has the right name.

Stale reclaim
    :func:`reclaim_stale` removes the names of an object whose ends are all dead (no liveness
    byte locked), under the removal mutex, so two processes reclaiming at once never remove the
    object the faster one created afterwards; :func:`sweep` applies it to every name of a kind
    with a prefix (``ipckit cleanup``, and temporaries of creators that crashed).

Errors
    :func:`posix_error` translates posix_ipc's exceptions into the ipckit error tree, with a
    message that says what to do.  posix_ipc is imported lazily (:func:`import_posix_ipc`):
    ``import ipckit`` never needs it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ipckit.errors import (
    ChannelBroken,
    ChannelTimeout,
    ConfigurationError,
    EndpointExists,
    EndpointNotFound,
    InvalidAddress,
    IPCError,
    PermissionDenied,
    ResourceExhausted,
    errno_of,
    from_oserror,
)

__all__ = [
    "MQ",
    "MQUEUE_DIR",
    "SEM",
    "SHM",
    "SHM_DIR",
    "Kind",
    "NameSet",
    "PosixName",
    "check_opened",
    "holding",
    "import_posix_ipc",
    "interrupted",
    "lock",
    "lock_held",
    "lock_wait",
    "names_in",
    "new_description",
    "posix_error",
    "reclaim_stale",
    "refuse_foreign",
    "sweep",
    "unlock",
]

Kind = Literal["shm", "sem", "mq"]
SHM: Final = "shm"
SEM: Final = "sem"
MQ: Final = "mq"

SHM_DIR: Final = "/dev/shm"
MQUEUE_DIR: Final = "/dev/mqueue"
_SEM_FILE_PREFIX: Final = "sem."  # glibc keeps the semaphore "/x" as /dev/shm/sem.x


def import_posix_ipc() -> Any:
    """The posix_ipc module (ImportError when it is not installed: the scheme is unavailable)."""
    import posix_ipc

    return posix_ipc


# ----------------------------------------------------------------------------- OFD locks
# struct flock on Linux x86-64: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK: Final = struct.Struct("hhqqi4x")
_F_OFD_GETLK: Final = getattr(fcntl, "F_OFD_GETLK", 36)
try:
    from ._queuefast import held as _held
except ImportError:  # not built: fcntl.fcntl
    _held = None  # type: ignore[assignment]
if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
    _held = None  # type: ignore[assignment]
_F_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW: Final = getattr(fcntl, "F_OFD_SETLKW", 38)


def lock(fd: int, byte: int) -> bool:
    """Take an OFD write lock on *byte* of *fd*; False if another description holds it."""
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def lock_wait(fd: int, byte: int) -> None:
    """Take an OFD write lock on *byte*, waiting for the holder (meant for locks held only for a
    few syscalls, like the removal mutex)."""
    fcntl.fcntl(fd, _F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))


def unlock(fd: int, byte: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))


def lock_held(fd: int, byte: int) -> bool:
    """True when some other open file description (another end) holds a lock on *byte*.

    Locks of *fd*'s own description never conflict with it, so a holder asks about the other
    ends' bytes, never its own.  (The C module's call when built: the queue kit's send fast
    path asks this once per message, and fcntl.fcntl with struct packing costs 3x the syscall.)
    """
    if _held is not None:
        return _held(fd, byte)
    res = fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    return int(_FLOCK.unpack(res)[0]) != fcntl.F_UNLCK


@contextlib.contextmanager
def holding(fd: int, byte: int) -> Iterator[None]:
    """``with holding(fd, byte):`` -- :func:`lock_wait` around the block, then :func:`unlock`."""
    lock_wait(fd, byte)
    try:
        yield
    finally:
        unlock(fd, byte)


def new_description(fd: int) -> int:
    """A new open file description of the object open as *fd* (close-on-exec).

    An OFD lock belongs to the description, so every end that proves its liveness by a lock
    needs one of its own (a ``dup`` would share the lock).
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)


# ----------------------------------------------------------------------------- names
@dataclass(frozen=True, slots=True)
class PosixName:
    """One POSIX object name (``/ipckit.x``) of a kind: ``"shm"``, ``"sem"`` or ``"mq"``."""

    kind: Kind
    name: str

    @property
    def path(self) -> str:
        """Where Linux shows the object (for queues: only where mqueuefs is mounted)."""
        base = self.name.lstrip("/")
        if self.kind == SEM:
            return f"{SHM_DIR}/{_SEM_FILE_PREFIX}{base}"
        return f"{MQUEUE_DIR if self.kind == MQ else SHM_DIR}/{base}"

    def open(self) -> int:
        """A new read-write descriptor of the object (close-on-exec), for checks and locks.

        Raises:
            FileNotFoundError: no object has the name.
            PermissionError: the object's mode shuts us out.
        """
        if self.kind != MQ or os.path.isdir(MQUEUE_DIR):
            return os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        p = import_posix_ipc()  # not mounted: a queue descriptor is a descriptor on Linux
        try:
            q = p.MessageQueue(self.name, 0)
        except p.ExistentialError as exc:
            raise FileNotFoundError(errno.ENOENT, f"no message queue {self.name}") from exc
        except p.PermissionsError as exc:
            raise PermissionError(errno.EACCES, f"message queue {self.name} is not ours") from exc
        try:
            fd = os.dup(q.mqd)
        finally:
            q.close()
        os.set_inheritable(fd, False)
        return fd

    def stat(self) -> os.stat_result | None:
        """The object's status (owner, mode, inode), or None when the name is free."""
        if self.kind != MQ or os.path.isdir(MQUEUE_DIR):
            try:
                return os.stat(self.path, follow_symlinks=False)
            except OSError:
                return None
        try:
            fd = self.open()
        except OSError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def refers_to(self, fd: int) -> bool:
        """True when the name still refers to the object open as *fd* (not a newer one)."""
        st = self.stat()
        if st is None:
            return False
        mine = os.fstat(fd)
        return st.st_ino == mine.st_ino and st.st_dev == mine.st_dev

    def unlink(self) -> bool:
        """Remove the name; False if it was gone already or is not ours to remove."""
        p = import_posix_ipc()
        fn = {SHM: p.unlink_shared_memory, SEM: p.unlink_semaphore, MQ: p.unlink_message_queue}[self.kind]
        try:
            fn(self.name)
        except (p.ExistentialError, p.PermissionsError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class NameSet:
    """The names of one ipckit object: the anchor (taken first, removed last) and its companions."""

    anchor: PosixName
    companions: tuple[PosixName, ...] = ()

    def unlink(self) -> None:
        """Remove every name, companions first: while the anchor's name exists nobody can create
        a new set of these names, so the companions removed here are never a newer object's."""
        for n in self.companions:
            n.unlink()
        self.anchor.unlink()

    def names_object(self, fd: int) -> bool:
        """True when the anchor's name still refers to the anchor open as *fd*."""
        return self.anchor.refers_to(fd)

    def unlink_if_ours(self, fd: int) -> bool:
        """Remove the names only if they still name the object open as *fd*; True if removed.

        Call it holding the removal mutex, so no other process reclaims or recreates the set
        between the check and the removal.
        """
        if not self.names_object(fd):
            return False
        self.unlink()
        return True


def names_in(kind: Kind, prefix: str) -> list[str]:
    """The names (``/x``) of this kind that start with ``/`` + *prefix*; [] if none can be listed."""
    if kind == MQ:
        directory, strip = MQUEUE_DIR, ""
    else:
        directory, strip = SHM_DIR, _SEM_FILE_PREFIX if kind == SEM else ""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    found = []
    for entry in entries:
        if kind == SHM and entry.startswith(_SEM_FILE_PREFIX):
            continue  # a semaphore, not a segment
        if strip:
            if not entry.startswith(strip):
                continue
            entry = entry[len(strip) :]
        if entry.startswith(prefix):
            found.append("/" + entry)
    return found


def refuse_foreign(name: PosixName) -> None:
    """Raise PermissionDenied when *name* exists but belongs to another user (a squatter)."""
    st = name.stat()
    if st is not None and st.st_uid != os.geteuid():
        raise PermissionDenied(
            errno.EACCES,
            f"{name.name} already exists and belongs to uid {st.st_uid} (mode {oct(stat.S_IMODE(st.st_mode))}); "
            f"refusing to use an object someone else created (its owner or root can remove {name.path})",
        )


def check_opened(fd: int, what: str) -> None:
    """The object open as *fd* must be ours and closed to other users.

    Group read/write is accepted: the ``mode`` option may grant it on purpose.

    Raises:
        PermissionDenied: another owner, or access bits for others (or group execute).
    """
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 & ~0o060:
        raise PermissionDenied(
            errno.EACCES,
            f"{what} belongs to uid {st.st_uid} with mode {oct(stat.S_IMODE(st.st_mode))}",
        )


# ----------------------------------------------------------------------------- stale reclaim
def reclaim_stale(
    names: NameSet,
    *,
    alive: Sequence[int],
    mutex: int,
    ours: Callable[[int, os.stat_result], bool] | None = None,
    in_use: Callable[[int], bool] | None = None,
) -> bool:
    """Remove *names* if they are this user's and no end is alive; True if the anchor's name is free.

    Args:
        names: the object's names.
        alive: the anchor's liveness bytes (one per end); a lock on any of them means "in use".
        mutex: the anchor's byte that serialises removing the names.
        ours: the scheme's further check on the open anchor (its magic, a grace for objects
            still being built); False keeps the object.  The owner check is done already.
        in_use: asked under the mutex once no liveness byte is locked: True keeps the object
            (an end on its way to another process, which holds no lock until it arrives).

    Holds the removal mutex while checking and removing, so two processes reclaiming at once
    never remove the object the faster one created afterwards.
    """
    try:
        fd = names.anchor.open()
    except FileNotFoundError:
        return True
    except PermissionError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return False
        if ours is not None and not ours(fd, st):
            return False
        with holding(fd, mutex):
            if any(lock_held(fd, byte) for byte in alive):
                return False
            if in_use is not None and in_use(fd):  # after the locks: a travelling end marks itself first
                return False
            names.unlink_if_ours(fd)
            return True
    finally:
        os.close(fd)


def sweep(kind: Kind, prefix: str, reclaim: Callable[[str], bool]) -> list[str]:
    """Call *reclaim* on every name of *kind* starting with *prefix*; the entries it removed.

    Entries are returned as listed (``ipckit.x``, no slash).  An object that vanishes or turns
    unreadable meanwhile is skipped.
    """
    removed = []
    for name in names_in(kind, prefix):
        try:
            if reclaim(name):
                removed.append(name[1:])
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------- errors
_LIMIT_HINTS: Final[dict[str, dict[int, str]]] = {
    SHM: {
        errno.ENOSPC: f"{SHM_DIR} is full; free space there or pass a smaller capacity",
        errno.ENOMEM: "out of memory for the segment; pass a smaller capacity",
    },
    SEM: {
        errno.ENOSPC: f"{SHM_DIR} is full (semaphores live there too)",
    },
    MQ: {
        errno.ENOSPC: "too many message queues (fs.mqueue.queues_max in /proc/sys/fs/mqueue)",
        errno.EMFILE: "message queue memory limit reached (RLIMIT_MSGQUEUE, `ulimit -q`) or too many open files",
        errno.ENOMEM: "out of kernel memory for the queue; ask for fewer or smaller messages",
    },
}


def interrupted(exc: BaseException) -> bool:
    """True for a wait a signal interrupted: retry it with what is left of the deadline.

    ipckit retries interrupted calls (the signal's Python handler runs in between and may
    raise), so :func:`posix_error` sees one only from a call that could not be retried.
    """
    try:
        p = import_posix_ipc()
    except ImportError:
        return isinstance(exc, InterruptedError)
    return isinstance(exc, (p.SignalError, InterruptedError))


def posix_error(
    exc: BaseException,
    what: str,
    *,
    kind: Kind = SHM,
    creating: bool = False,
    timeout: type[ChannelTimeout] = ChannelTimeout,
) -> IPCError:
    """The ipckit error for a posix_ipc (or OS) error raised while doing *what*.

    Raise the result ``from exc``.  posix_ipc's exceptions carry no errno, so the caller says
    whether it was creating (``ExistentialError`` then means the name is taken, else that there
    is no such object).

    ================== =======================================================================
    ExistentialError   EndpointExists when *creating*, else EndpointNotFound
    PermissionsError   PermissionDenied (another user's object, or a mode that shuts us out)
    BusyError          *timeout* (a timed wait, send or receive that did not complete)
    SignalError        *timeout*: interrupted before anything happened, so calling again is
                       safe (:func:`interrupted` tells callers to retry instead)
    ValueError         InvalidAddress for a name too long, else ConfigurationError (a name
                       or size the kernel refuses)
    OSError            by errno (``ipckit.errors.from_oserror``); out-of-space and limit
                       errnos are ResourceExhausted with the limit of this *kind* to raise
                       (posix_ipc's errno-less EMFILE/ENFILE/ENOSPC included)
    MemoryError        ResourceExhausted (the kernel's ENOMEM)
    anything else      ChannelBroken
    ================== =======================================================================
    """
    try:
        p: Any = import_posix_ipc()
    except ImportError:
        p = None
    if p is not None and isinstance(exc, p.ExistentialError):
        if creating:
            return EndpointExists(
                errno.EEXIST,
                f"{what}: the name is taken (a live endpoint uses it, or a crashed one left it behind: "
                "`ipckit cleanup` removes the objects of dead processes)",
            )
        return EndpointNotFound(errno.ENOENT, f"{what}: no such object (is the listener running?)")
    if p is not None and isinstance(exc, p.PermissionsError):
        return PermissionDenied(
            errno.EACCES,
            f"{what}: permission denied (the object belongs to another user or its mode shuts this one out; "
            f"`ls -l {MQUEUE_DIR if kind == MQ else SHM_DIR}` shows owner and mode)",
        )
    if p is not None and isinstance(exc, p.BusyError):
        return timeout(f"{what}: timed out")
    if p is not None and isinstance(exc, p.SignalError):
        return timeout(f"{what}: interrupted by a signal before it completed; nothing was done, call again")
    if isinstance(exc, ValueError):
        if "too long" in str(exc):
            return InvalidAddress(f"{what}: {exc} (names are limited to NAME_MAX bytes)")
        return ConfigurationError(f"{what}: {exc} (a name the kernel refuses, or a size beyond its limits)")
    if isinstance(exc, MemoryError):
        hint = _LIMIT_HINTS[kind].get(errno.ENOMEM, "out of kernel memory")
        return ResourceExhausted(f"{what}: {exc} ({hint})")
    if isinstance(exc, OSError):
        code = errno_of(exc)  # posix_ipc's errno-less EMFILE/ENFILE/ENOSPC too: the hints above apply
        limit = _LIMIT_HINTS[kind].get(code)
        if limit is not None:
            return ResourceExhausted(f"{what}: {exc.strerror or exc} ({limit})")
        return from_oserror(exc if exc.errno else OSError(code, str(exc)), what)
    return ChannelBroken(f"{what}: {type(exc).__name__}: {exc}")

