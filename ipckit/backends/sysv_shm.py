"""``sysv+shm://`` — the shared-memory ring on SysV shared memory and SysV semaphores.

Features:
    The same two single-producer/single-consumer rings as ``shm://`` (``ipckit.backends.ring``,
    same wait strategy), in one SysV segment (``sysv_ipc.SharedMemory``).  A send copies into
    the ring once, a receive copies out once, ``recv_view`` is copy-free, pickle protocol 5
    buffers are written straight into the ring.  One SysV semaphore set of four holds the two
    wake-up hints (counting, never ``SEM_UNDO``) and the two "alive" semaphores (each end holds
    +1 with ``SEM_UNDO``; the kernel undoes it when the holder dies, so a SIGKILLed peer is
    PeerDied once its committed messages are drained).  Every semaphore wait is timed, through
    ``semtimedop`` (``ipckit.backends.sysv_sem``), whichever sysv_ipc build is installed.

    Lifecycle: keys are random, created with ``IPC_CREAT|IPC_EXCL`` (a taken key is retried
    with a new one; never ``ftok``), mode 0600 (SysV ignores the umask).  Each segment is
    recorded in a 0600 manifest file in a private 0700 directory (``$XDG_RUNTIME_DIR`` or
    ``/tmp``, ``ipckit-sysv-<uid>``); a named endpoint's manifest is its rendezvous file.
    Openers check the file's and the objects' owner and mode (``IPC_STAT`` uid/cuid, mode
    ``& 0o077 == 0``) and the segment's initialised magic and nonce.  The segment is marked
    ``IPC_RMID`` as soon as both ends are attached (the kernel frees it at the last detach, even
    after ``kill -9``); the creator removes the semaphores and the manifest when it closes, the
    other end only when the creator died.  Objects of crashed processes are reclaimed when the
    name is used again and by :func:`cleanup_stale`.

URL format:
    ``sysv+shm://`` for ``pair()``; ``sysv+shm://name`` (``[A-Za-z0-9._-]``, up to 200
    characters; the rendezvous file lives in the private directory) or
    ``sysv+shm:///dir/name`` (the rendezvous file is ``/dir/name``; the directory must be
    ours and private) for ``listen``/``connect``.

Options:
    ``capacity`` — bytes per direction (default 4 MiB; rounded up to a page).
    ``spin`` — spin briefly before blocking (default True; False never spins).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``, ``trust``.

Platform notes:
    Linux x86-64 (ring ordering; attaching a segment already marked for removal by its id is
    Linux behaviour).  An end passes to a ``multiprocessing`` child under *spawn* (pickled as
    ids + role, the child re-attaches) and under *fork* (the child takes the end over); close
    the end you hand over in the parent.  One thread may send while another receives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import secrets
import signal
import stat
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from ..backend import Backend, Capabilities, Options
from ..channel import Channel, Listener, _live_channels
from ..deadline import Deadline
from ..errors import (
    BufferTooSmall,
    ChannelBroken,
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    PeerDied,
    PermissionDenied,
    RecvTimeout,
    ResourceExhausted,
    SendTimeout,
    UnsupportedOperation,
    from_oserror,
)
from ..url import Endpoint
from . import _paths
from . import ring as _ring
from .shm import _NAME_RE, ShmOptions, _layout
from .sysv_sem import TimedSemaphore, _Sembuf, _semop
from .waiting import WaitStrategy

__all__ = ["SysvShmBackend", "SysvShmChannel", "SysvShmListener", "SysvShmOptions", "cleanup_stale"]

SEG_MAGIC: Final = 0x31565953484B4349  # b"ICKHSYV1"
SEG_VERSION: Final = 1
_PAGE: Final = 4096

# Segment header words (u64) on page 0.
_H_MAGIC, _H_VERSION, _H_CAPACITY, _H_MAXMSG, _H_UID = 0, 1, 2, 3, 4
_H_STATE: Final = (5, 6)  # per end: 0 free, 1 attached, 2 handing off, 3 closed
_H_PID: Final = (7, 8)
_H_NONCE: Final = (9, 10)
_H_SEMID, _H_SEMKEY, _H_PUBLISHED, _H_SEMS_GONE = 11, 12, 13, 14
_FREE, _ATTACHED, _HANDOFF, _CLOSED = 0, 1, 2, 3

# The semaphore set: two wake-up hints (counting), two "alive" semaphores (SEM_UNDO).
_WAKE: Final = (0, 1)
_ALIVE: Final = (2, 3)
_NSEMS: Final = 4

_IPC_CREAT: Final = 0o1000
_IPC_EXCL: Final = 0o2000
_IPC_NOWAIT: Final = 0o4000
_SEM_UNDO: Final = 0x1000
_IPC_RMID: Final = 0
_GETVAL: Final = 12

_MANIFEST_TAG: Final = "ipckit-sysv-shm/1"
_HANDOFF_GRACE: Final = 10.0  # seconds a handed-over end may take to re-attach before it counts as dead
_YOUNG: Final = 2.0  # an empty manifest younger than this may belong to a creator about to lock it
_KEY_TRIES: Final = 64


@dataclass
class SysvShmOptions(ShmOptions):
    """Same options as ``shm://``: ``capacity`` and ``spin`` plus the common ones."""


_CAPS = Capabilities(
    duplex=True,
    message_oriented=True,
    selectable=False,
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=True,
    proves_same_user=True,
)


def _sysv_ipc() -> Any:
    import sysv_ipc

    return sysv_ipc


# --------------------------------------------------------------------------- semaphore set (ctypes)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_semget = _libc.semget
_semget.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_semget.restype = ctypes.c_int
_semctl = _libc.semctl
_semctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_semctl.restype = ctypes.c_int


def _random_key() -> int:
    """A random positive SysV key (never ``IPC_PRIVATE``, never ``ftok``); tests monkeypatch it."""
    return secrets.randbelow(0x7FFFFFFE) + 1


def _semops(semid: int, *ops: tuple[int, int, int]) -> int:
    """Apply *ops* ``(sem_num, op, flags)`` atomically; 0 or the errno (EINTR retried)."""
    assert _semop is not None
    arr = (_Sembuf * len(ops))(*[_Sembuf(n, o, f) for n, o, f in ops])
    while _semop(semid, arr, len(ops)) == -1:
        code = ctypes.get_errno()
        if code != errno.EINTR:
            return code
    return 0


def _getval(semid: int, num: int) -> int:
    value = int(_semctl(semid, num, _GETVAL))
    if value < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return value


def _sem_remove(semid: int) -> None:
    _semctl(semid, 0, _IPC_RMID)


def _sem_create(mode: int) -> tuple[int, int]:
    """A new set of four semaphores at a random key: ``(key, semid)``; alive[0] is held (SEM_UNDO)."""
    for _ in range(_KEY_TRIES):
        key = _random_key()
        semid = int(_semget(key, _NSEMS, _IPC_CREAT | _IPC_EXCL | (mode & 0o777)))
        if semid >= 0:
            code = _semops(semid, (_ALIVE[0], 1, _SEM_UNDO))
            if code:
                _sem_remove(semid)
                raise from_oserror(OSError(code, os.strerror(code)), "claiming the creator's alive semaphore")
            return key, semid
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            continue  # someone else's key: draw another (V-4)
        if code == errno.ENOSPC:
            raise ResourceExhausted("no SysV semaphore set left (kernel.sem SEMMNI/SEMMNS, see /proc/sys/kernel/sem)")
        raise from_oserror(OSError(code, os.strerror(code)), "semget")
    raise ResourceExhausted(f"no free SysV key after {_KEY_TRIES} random tries")


def _proc_row(kind: str, ident: int) -> dict[str, int] | None:
    """The ``/proc/sysvipc/<kind>`` row of id *ident* (perms parsed as octal), or None."""
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            header = f.readline().split()
            for line in f:
                cols = line.split()
                if len(cols) == len(header) and int(cols[1]) == ident:
                    row = {h: int(c) for h, c in zip(header, cols, strict=True) if h != "perms"}
                    row["perms"] = int(cols[header.index("perms")], 8)
                    return row
    except (OSError, ValueError):
        return None
    return None


def _check_sem_set(semid: int, semkey: int, what: str) -> None:
    """The set *semid* exists at *semkey*, is ours and private, and has our shape."""
    row = _proc_row("sem", semid)
    if row is None or row["key"] != semkey:
        raise IncompatibleEndpoint(f"{what}: its semaphore set {semid} is gone (stale endpoint)")
    euid = os.geteuid()
    if row["uid"] != euid or row["cuid"] != euid or row["perms"] & 0o077:
        raise PermissionDenied(
            errno.EACCES,
            f"{what}: semaphore set {semid} belongs to uid {row['uid']} (creator {row['cuid']}) "
            f"with mode {row['perms'] & 0o777:o}",
        )
    if row["nsems"] != _NSEMS:
        raise IncompatibleEndpoint(f"{what}: semaphore set {semid} has {row['nsems']} semaphores, not {_NSEMS}")


# --------------------------------------------------------------------------- manifest files
def registry_dir() -> str:
    """The private directory of this user's manifests (not created)."""
    return os.path.join(_paths.runtime_dir(), f"ipckit-sysv-{os.geteuid()}")


def _ensure_private_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise from_oserror(exc, f"creating {path}") from exc
    _check_private_dir(path)


def _check_private_dir(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise EndpointNotFound(errno.ENOENT, f"directory {path!r} does not exist") from exc
    except OSError as exc:
        raise from_oserror(exc, f"checking {path}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionDenied(errno.EPERM, f"{path!r} is not a directory")
    _paths.check_owned(path, st, "directory", private=True)


def _read_manifest(fd: int, path: str) -> dict[str, str]:
    """Owner-checked fields of an open manifest (``end`` present once complete)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionDenied(errno.EPERM, f"{path!r} is not a regular file")
    _paths.check_owned(path, st, "endpoint file", private=True)
    data = os.pread(fd, 4096, 0).decode("ascii", "replace").split()
    if not data or data[0] != _MANIFEST_TAG:
        return {} if not data else {"foreign": "1"}
    fields = dict(item.partition("=")[::2] for item in data[1:])
    return fields


def _write_manifest(fd: int, fields: dict[str, object], complete: bool) -> None:
    text = " ".join([_MANIFEST_TAG, *(f"{k}={v}" for k, v in fields.items()), *(["end"] if complete else [])])
    data = (text + "\n").encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _open_manifest(path: str) -> int:
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


def _int(fields: dict[str, str], key: str) -> int | None:
    try:
        return int(fields[key])
    except (KeyError, ValueError):
        return None


def _reclaim_if_stale(path: str) -> bool:
    """Remove the manifest *path* and the objects it records if no live process uses them.

    Stale means: the file is ours, no creator holds its lock, and both alive semaphores are
    zero (or the set is gone).  Returns True if it was removed (or is gone).
    """
    try:
        fd = _open_manifest(path)
    except FileNotFoundError:
        return True
    except PermissionDenied:
        return False
    try:
        try:
            fields = _read_manifest(fd, path)
        except PermissionDenied:
            return False
        if "foreign" in fields:
            return False
        if not _paths.try_lock(fd):
            return False  # a creator is writing it right now
        semid, semkey = _int(fields, "semid"), _int(fields, "semkey")
        if semid is None or semkey is None:
            if time.time() - os.fstat(fd).st_ctime < _YOUNG:
                return False  # just created; its creator may not hold the lock yet
        else:
            row = _proc_row("sem", semid)
            ours = row is not None and row["key"] == semkey and row["uid"] == os.geteuid() and row["nsems"] == _NSEMS
            if ours:
                try:
                    if _getval(semid, _ALIVE[0]) or _getval(semid, _ALIVE[1]):
                        return False
                except OSError:
                    pass
        _remove_recorded(fields)
        if os.path.lexists(path) and os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
            _paths.unlink_quiet(path)
        return True
    finally:
        os.close(fd)


def _remove_recorded(fields: dict[str, str]) -> None:
    """Remove the (ours, still keyed) segment and semaphore set a stale manifest records."""
    euid = os.geteuid()
    shmid, shmkey = _int(fields, "shmid"), _int(fields, "shmkey")
    if shmid is not None and shmkey is not None:
        row = _proc_row("shm", shmid)
        if row is not None and row["key"] == shmkey and row["uid"] == euid and row["cuid"] == euid:
            try:
                _sysv_ipc().remove_shared_memory(shmid)
            except Exception:
                pass
    semid, semkey = _int(fields, "semid"), _int(fields, "semkey")
    if semid is not None and semkey is not None:
        row = _proc_row("sem", semid)
        if row is not None and row["key"] == semkey and row["uid"] == euid and row["cuid"] == euid:
            _sem_remove(semid)


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove this user's ``sysv+shm`` objects whose every end is dead; return the manifests removed.

    Scans the private manifest directory (or *directory*, e.g. one holding ``sysv+shm:///dir/name``
    rendezvous files).  Never touches objects of other users or of live processes.
    """
    base = directory or registry_dir()
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(base, entry)
        if os.path.isfile(path) and _reclaim_if_stale(path):
            removed.append(entry)
    if directory is None:
        _paths.rmdir_quiet(base)
    return removed


# --------------------------------------------------------------------------- the segment
def _detach_quiet(shm: Any) -> None:
    try:
        shm.detach()
    except Exception:
        pass


def _map(shm: Any) -> Any:
    """A ctypes array over the attachment; the segment is detached when the last view of it dies."""
    array_type = ctypes.c_ubyte * int(shm.size)
    mapping_type: Any = type("_SysvMapping", (array_type,), {})  # a Python subclass takes weak references
    obj = mapping_type.from_address(int(shm.address))
    weakref.finalize(obj, _detach_quiet, shm)
    return obj


@final
class _Segment:
    """One attachment of the segment, with its semaphore set ids and manifest location."""

    def __init__(self, shm: Any, semid: int, semkey: int, shmkey: int, nonce: int, manifest: str) -> None:
        self.shm = shm
        self.shmid = int(shm.id)
        self.semid = semid
        self.semkey = semkey
        self.shmkey = shmkey
        self.nonce = nonce
        self.manifest = manifest  # rendezvous file (named) until published, then the registry file
        self._mem: Any = _map(shm)
        self.buf: memoryview | None = memoryview(self._mem).cast("B")
        self.hdr: memoryview = self.buf[:128].cast("Q")

    @property
    def registry_file(self) -> str:
        return os.path.join(registry_dir(), f"reg.{self.nonce:032x}")

    def current_manifest(self) -> str:
        return self.registry_file if self.hdr[_H_PUBLISHED] else self.manifest

    def ring_offsets(self) -> tuple[int, int, int]:
        size = int(self.shm.size)
        return _PAGE, _PAGE + (size - _PAGE) // 2, (size - _PAGE) // 2

    def ref(self) -> tuple[int, int, int, int, int, str]:
        return self.shmid, self.semid, self.semkey, self.shmkey, self.nonce, self.manifest

    def mark_removed(self) -> None:
        """IPC_RMID the segment (freed at the last detach; attachers by id still work on Linux)."""
        try:
            self.shm.remove()
        except Exception:
            pass

    def close(self) -> None:
        self.hdr.release()
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        self._mem = None  # the finalizer detaches once no view of the mapping is left


def _shm_create(size: int, mode: int) -> tuple[int, Any]:
    sysv_ipc = _sysv_ipc()
    for _ in range(_KEY_TRIES):
        key = _random_key()
        try:
            return key, sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=mode & 0o777, size=size,
                                              init_character=b"\0")
        except sysv_ipc.ExistentialError:
            continue  # a taken key (V-4): draw another
        except (OSError, ValueError, sysv_ipc.Error) as exc:
            raise ResourceExhausted(f"cannot create a {size}-byte SysV segment (kernel.shmmax/shmall?): {exc}") from exc
    raise ResourceExhausted(f"no free SysV key after {_KEY_TRIES} random tries")


def _fault(point: str) -> None:
    """Kill points for the crash tests (``_FAULT`` is set only by tests)."""
    if point == _FAULT:
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT: str | None = None


def _create_segment(manifest: str, capacity: int, maxmsg: int, mode: int, *, rendezvous: bool) -> _Segment:
    """Create the manifest (locked while building), the semaphore set, the segment; magic last.

    Raises:
        FileExistsError: *manifest* exists (the caller checks for a stale one).
    """
    cap, _region, size = _layout(capacity)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(manifest, flags, 0o600)
    except FileExistsError:
        raise
    except OSError as exc:
        raise from_oserror(exc, f"creating {manifest}") from exc
    semid = -1
    shm: Any = None
    seg: _Segment | None = None
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A pair's manifest is its registry file, named by the nonce; a rendezvous gets a fresh one.
        nonce = secrets.randbits(128) if rendezvous else int(os.path.basename(manifest)[4:], 16)
        semkey, semid = _sem_create(mode)
        fields: dict[str, object] = {"semkey": semkey, "semid": semid}
        _write_manifest(fd, fields, False)
        shmkey, shm = _shm_create(size, mode)
        fields.update(shmkey=shmkey, shmid=shm.id, nonce=f"{nonce:032x}")
        _write_manifest(fd, fields, False)
        _fault("after_create_before_init")
        seg = _Segment(shm, semid, semkey, shmkey, nonce, manifest)
        buf = seg.buf
        assert buf is not None
        off_a, off_b, _ = seg.ring_offsets()
        _ring.initialize(buf, off_a, cap, maxmsg)
        _ring.initialize(buf, off_b, cap, maxmsg)
        hdr = seg.hdr
        hdr[_H_VERSION] = SEG_VERSION
        hdr[_H_CAPACITY] = cap
        hdr[_H_MAXMSG] = maxmsg
        hdr[_H_UID] = os.geteuid()
        hdr[_H_NONCE[0]] = nonce & 0xFFFFFFFFFFFFFFFF
        hdr[_H_NONCE[1]] = nonce >> 64
        hdr[_H_SEMID] = semid
        hdr[_H_SEMKEY] = semkey
        hdr[_H_PUBLISHED] = 0 if rendezvous else 1
        hdr[_H_MAGIC] = SEG_MAGIC  # last: openers check it (initialised handshake)
        _write_manifest(fd, fields, True)
        return seg
    except BaseException:
        if seg is not None:
            seg.close()
        if shm is not None:
            try:
                shm.remove()
            except Exception:
                pass
            if seg is None:
                _detach_quiet(shm)
        if semid >= 0:
            _sem_remove(semid)
        _paths.unlink_quiet(manifest)
        raise
    finally:
        os.close(fd)


def _attach(shm: Any, semid: int, semkey: int, shmkey: int, nonce: int | None, manifest: str, what: str) -> _Segment:
    """Validate an attachment (owner, mode, size, magic, nonce, semaphore set) and wrap it."""
    euid = os.geteuid()
    try:
        if int(shm.uid) != euid or int(shm.cuid) != euid or int(shm.mode) & 0o077:
            raise PermissionDenied(
                errno.EACCES,
                f"{what}: segment belongs to uid {shm.uid} (creator {shm.cuid}) with mode {int(shm.mode) & 0o777:o}",
            )
        if int(shm.size) < _PAGE:
            raise IncompatibleEndpoint(f"{what}: segment of {shm.size} bytes is not an ipckit ring")
        _check_sem_set(semid, semkey, what)
        seg = _Segment(shm, semid, semkey, shmkey, 0, manifest)
    except BaseException:
        _detach_quiet(shm)
        raise
    hdr = seg.hdr
    ok = hdr[_H_MAGIC] == SEG_MAGIC and hdr[_H_VERSION] == SEG_VERSION
    found = int(hdr[_H_NONCE[0]]) | int(hdr[_H_NONCE[1]]) << 64
    if (
        not ok
        or hdr[_H_UID] != euid
        or (nonce is not None and found != nonce)
        or hdr[_H_SEMID] != semid
        or _layout(int(hdr[_H_CAPACITY]))[2] != int(shm.size)
    ):
        seg.close()
        raise IncompatibleEndpoint(f"{what}: the segment has another layout, version, size or owner (foreign?)")
    seg.nonce = found
    return seg


class _SysvWaker:
    """One wake-up hint of the set (never a mutex); a no-op once the set was removed."""

    __slots__ = ("_hdr", "_sem")

    def __init__(self, semid: int, num: int, hdr: memoryview) -> None:
        self._sem = TimedSemaphore(semid, sem_num=num)
        self._hdr = hdr

    def wait(self, timeout: float) -> bool:
        if not self._hdr[_H_SEMS_GONE]:
            try:
                return self._sem.wait(timeout)
            except IPCError:
                pass
        time.sleep(max(0.0, min(timeout, 0.001)))  # the peer closed and removed the set: poll
        return False

    def post(self) -> None:
        if self._hdr[_H_SEMS_GONE]:
            return
        try:
            self._sem.post()
        except IPCError:  # removed: a hint only, the waiter re-checks anyway
            pass


# --------------------------------------------------------------------------- the channel
@final
class SysvShmChannel(Channel):
    """One end of a ``sysv+shm://`` channel.  Role 0 created the segment, role 1 attached."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __init__(self, url: str, options: SysvShmOptions, seg: _Segment, role: int) -> None:
        super().__init__(url, options, peer_trusted=True)
        self._seg = seg
        self._role = role
        self._handed_off = False
        self._alive_held = False
        buf = seg.buf
        assert buf is not None
        off_a, off_b, size = seg.ring_offsets()
        out_off, in_off = (off_a, off_b) if role == 0 else (off_b, off_a)
        hdr = seg.hdr
        self._hdr = hdr
        maxmsg = min(options.max_message_size, int(hdr[_H_MAXMSG]))
        self._w = _ring.RingWriter(buf, out_off, size, maxmsg)
        self._r = _ring.RingReader(buf, in_off, size, maxmsg)
        self._own_waker = _SysvWaker(seg.semid, _WAKE[role], hdr)
        self._peer_waker = _SysvWaker(seg.semid, _WAKE[1 - role], hdr)
        self._w.wake_peer = self._peer_waker.post
        self._r.wake_peer = self._peer_waker.post
        self._wait = WaitStrategy(spin=options.spin)
        self._peer_dead = False
        self._sends = 0
        self._handoff_since: float | None = None
        self._view_out = False
        _live.add(self)

    # -- attach / liveness --------------------------------------------------------------------
    def _claim(self, *, exclusive: bool, adopt: bool = False) -> None:
        """Hold this end's alive semaphore (SEM_UNDO) and mark the end attached."""
        role = self._role
        if not adopt:
            if exclusive:
                code = _semops(self._seg.semid, (_ALIVE[role], 0, _IPC_NOWAIT), (_ALIVE[role], 1, _SEM_UNDO))
            else:
                code = _semops(self._seg.semid, (_ALIVE[role], 1, _SEM_UNDO))
            if code == errno.EAGAIN:
                raise EndpointExists(errno.EEXIST, f"{self._url} already has a peer")
            if code:
                raise ChannelBroken(f"cannot attach to {self._url}: {os.strerror(code)} (the peer closed it?)")
        self._alive_held = True
        if exclusive and self._hdr[_H_STATE[role]] != _FREE:
            raise EndpointExists(errno.EEXIST, f"{self._url} already had a peer")
        self._take_over()

    def _take_over(self) -> None:
        role = self._role
        self._hdr[_H_PID[role]] = os.getpid()
        self._hdr[_H_STATE[role]] = _ATTACHED
        peer_pid = int(self._hdr[_H_PID[1 - role]])
        self._wait.set_peer(peer_pid if peer_pid and peer_pid != os.getpid() else None)
        if role == 1:
            self._peer_waker.post()  # a listener waiting in accept()

    def _release_alive(self) -> None:
        if self._alive_held:
            self._alive_held = False
            if not self._hdr[_H_SEMS_GONE]:
                _semops(self._seg.semid, (_ALIVE[self._role], -1, _SEM_UNDO | _IPC_NOWAIT))

    def _peer_gone(self) -> bool:
        """True when the peer end was attached and its process no longer holds its alive semaphore."""
        if self._peer_dead:
            return True
        peer = 1 - self._role
        hdr = self._hdr
        state = hdr[_H_STATE[peer]]
        if state not in (_ATTACHED, _HANDOFF) or hdr[_H_SEMS_GONE]:
            return False
        try:
            alive = _getval(self._seg.semid, _ALIVE[peer])
        except OSError:
            alive = 0  # the set vanished while the peer is attached: nobody can wake it any more
        if alive:
            self._handoff_since = None
            return False
        state = hdr[_H_STATE[peer]]  # a clean close sets CLOSED before releasing
        if state == _ATTACHED:
            self._peer_dead = True
        elif state == _HANDOFF:
            now = time.monotonic()
            if self._handoff_since is None:
                self._handoff_since = now
            self._peer_dead = now - self._handoff_since > _HANDOFF_GRACE
        return self._peer_dead

    def _publish(self) -> None:
        """Creator, peer attached: mark the segment for removal and free the rendezvous name."""
        seg = self._seg
        if self._role != 0 or seg.hdr[_H_PUBLISHED]:
            return
        seg.mark_removed()
        fields = {"semkey": seg.semkey, "semid": seg.semid, "shmkey": seg.shmkey, "shmid": seg.shmid,
                  "nonce": f"{seg.nonce:032x}"}
        path = seg.registry_file
        for _ in range(8):
            _ensure_private_dir(os.path.dirname(path))
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # the directory was just removed by a closing channel
                continue
            except OSError as exc:
                raise from_oserror(exc, f"creating {path}") from exc
            try:
                os.fchmod(fd, 0o600)
                _write_manifest(fd, fields, True)
            finally:
                os.close(fd)
            break
        seg.hdr[_H_PUBLISHED] = 1
        _unlink_ours(seg.manifest, seg.nonce)

    def _check(self) -> None:
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed")

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            raise UnsupportedOperation(
                f"{self._url} was inherited through a plain fork; pass it to the child as a multiprocessing "
                "argument (it re-attaches), or connect from the child"
            )

    # -- hooks ------------------------------------------------------------------------------
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            self._check_pid()
            raise EndOfChannel(f"the peer closed {self._url}")
        self._sends += 1
        if not self._sends & 31 and self._peer_gone():  # a dead reader, even while the ring has room
            raise PeerDied(f"the peer of {self._url} died")
        if w.try_write(view):
            return
        self._finish_send(deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            raise EndOfChannel(f"the peer closed {self._url}")
        self._sends += 1
        if not self._sends & 31 and self._peer_gone():
            raise PeerDied(f"the peer of {self._url} died")
        if w.write(views, total):
            return
        self._finish_send(deadline)

    def _finish_send(self, deadline: Deadline) -> None:
        self._check_pid()
        w = self._w
        while True:
            try:
                ok = self._wait.wait(w.can_progress, deadline, self._own_waker, w.set_sleeping, self._send_check)
            except IPCError:
                w.abort()
                raise
            if w.peer_closed():
                w.abort()
                raise EndOfChannel(f"the peer closed {self._url}")
            if w.pump():
                return
            if not ok:
                w.abort()
                raise SendTimeout(f"send on {self._url} timed out (the ring is full)")

    def _send_check(self) -> None:
        self._check()
        if self._peer_gone():
            raise PeerDied(f"the peer of {self._url} died")

    def _recv_ready(self) -> bool:
        return self._r.has_data() or self._r.writer_closed()

    def _recv_check(self) -> None:
        self._check()
        if self._peer_gone() and not self._r.has_data():
            raise PeerDied(f"the peer of {self._url} died; every message it committed was received")

    def _next(self, deadline: Deadline, into: memoryview | None = None) -> memoryview:
        r = self._r
        if self._view_out:  # the previous recv_view's message: consumed now
            self._view_out = False
            r.release()
        view = r.peek(into)
        while view is None:
            self._check_pid()
            if r.writer_closed():
                view = r.peek(into)
                if view is not None:
                    break
                raise EndOfChannel(f"the peer closed {self._url} and every message was received")
            ok = self._wait.wait(self._recv_ready, deadline, self._own_waker, r.set_sleeping, self._recv_check)
            view = r.peek(into)
            if view is None and not ok:
                if self._peer_gone() and not r.has_data():
                    raise PeerDied(f"the peer of {self._url} died; every message it committed was received")
                raise RecvTimeout(f"no message on {self._url} before the deadline")
        return view

    def _recv_message(self, deadline: Deadline) -> Any:
        view = self._next(deadline)
        obj = view.obj
        if isinstance(obj, bytearray) and len(obj) == len(view):
            self._r.release()  # a streamed message: its reassembly buffer is already a copy
            return obj
        data = bytes(view)
        self._r.release()
        return data

    def _recv_message_into(self, view: memoryview, deadline: Deadline) -> int:
        msg = self._next(deadline, view)
        n = len(msg)
        if n > len(view):
            data = bytes(msg)
            self._r.release()
            raise BufferTooSmall(f"message of {n} bytes does not fit the {len(view)}-byte buffer", data)
        if msg.obj is not view.obj:
            view[:n] = msg
        self._r.release()
        return n

    def _recv_view(self, deadline: Deadline) -> Any:
        view = self._next(deadline)
        self._view_out = True
        return view

    def _poll(self, deadline: Deadline) -> bool:
        # poll() runs without the receive lock, so close() may release the views under it.
        try:
            return self._poll_views(deadline)
        except ValueError as exc:
            if self._closed:
                raise ChannelClosed(f"{self._url} was closed while polling") from exc
            raise

    def _poll_views(self, deadline: Deadline) -> bool:
        r = self._r
        while True:
            if r.peek() is not None or r.writer_closed() or self._peer_gone():
                return True
            self._check_pid()
            if not self._wait.wait(self._recv_ready, deadline, self._own_waker, r.set_sleeping, self._check):
                return r.peek() is not None or self._peer_gone()

    def _wakeup(self) -> None:
        self._own_waker.post()
        self._own_waker.post()

    def _close(self) -> None:
        seg = self._seg
        hdr = self._hdr
        mine = self._pid == os.getpid() and not self._handed_off
        try:
            if mine:
                hdr[_H_STATE[self._role]] = _CLOSED  # before releasing alive: not a crash
                self._w.close()
                self._r.close()
                self._peer_waker.post()
                self._release_alive()
                # The creator removes everything; the other end only what a dead creator left.
                if self._role == 0 or self._peer_gone():
                    _remove_all(seg)
            else:
                self._w.detach()
                self._r.detach()
                self._release_alive()
        finally:
            seg.close()

    def __reduce__(self) -> Any:
        from multiprocessing import context

        if context.get_spawning_popen() is None:
            raise TypeError(
                f"a {self._url} channel end can only be passed to a child process as an argument of "
                "multiprocessing.Process (it re-attaches there); connect to a named endpoint otherwise"
            )
        if self._closed:
            raise TypeError(f"{self._url} is closed")
        if self._view_out:
            self._view_out = False
            self._r.release()
        self._hdr[_H_STATE[self._role]] = _HANDOFF
        self._handed_off = True  # our copy keeps its alive count until it is closed
        return _rebuild, (self._url, self._seg.ref(), self._role, self._options)


def _unlink_ours(path: str, nonce: int) -> None:
    """Unlink the manifest *path* only if it still records our nonce (never a newer endpoint's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fields = _read_manifest(fd, path)
        same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except (OSError, IPCError):
        return
    finally:
        os.close(fd)
    if same and fields.get("nonce") == f"{nonce:032x}":
        _paths.unlink_quiet(path)


def _remove_all(seg: _Segment) -> None:
    """Remove manifest, segment (IPC_RMID) and semaphore set; the caller is still attached."""
    hdr = seg.hdr
    if hdr[_H_SEMS_GONE]:
        return
    _unlink_ours(seg.current_manifest(), seg.nonce)
    seg.mark_removed()
    hdr[_H_SEMS_GONE] = 1  # the peer stops using the set before it disappears
    _sem_remove(seg.semid)
    _paths.rmdir_quiet(registry_dir())


_live: weakref.WeakSet[SysvShmChannel] = weakref.WeakSet()


def _rebuild(url: str, ref: tuple[int, int, int, int, int, str], role: int, options: SysvShmOptions) -> SysvShmChannel:
    shmid, semid, semkey, shmkey, nonce, manifest = ref
    sysv_ipc = _sysv_ipc()
    try:
        shm = sysv_ipc.attach(shmid)
    except sysv_ipc.ExistentialError as exc:
        raise EndpointNotFound(errno.ENOENT, f"{url}: the segment is gone (every end closed?)") from exc
    except sysv_ipc.PermissionsError as exc:
        raise PermissionDenied(errno.EACCES, f"{url}: the segment is not ours") from exc
    seg = _attach(shm, semid, semkey, shmkey, nonce, manifest, url)
    try:
        ch = SysvShmChannel(url, options, seg, role)
    except BaseException:
        seg.close()
        raise
    try:
        ch._claim(exclusive=False)
    except BaseException:
        ch._handed_off = True
        ch.close()
        raise
    return ch


# --------------------------------------------------------------------------- hand-off under fork
# multiprocessing's *fork* passes Process arguments without pickling: the ends among them are
# found on the stack (as ``ipckit.fdstream`` does), and the child takes them over (its own alive
# count: SEM_UNDO adjustments are not inherited by fork).  Ends not handed over stay unusable in
# the child, and their liveness never leaks into it.
_marked: list[SysvShmChannel] = []


def _find_ends(obj: Any, depth: int = 0) -> Iterator[SysvShmChannel]:
    if isinstance(obj, SysvShmChannel):
        yield obj
    elif depth < 3 and isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _find_ends(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from _find_ends(item, depth + 1)


def _before_fork() -> None:
    if not _live:
        return
    frame: types.FrameType | None = sys._getframe(1)
    for _ in range(30):
        if frame is None:
            return
        proc = frame.f_locals.get("process_obj") if frame.f_code.co_name == "_launch" else None
        if proc is not None:
            _marked.extend(ch for ch in _find_ends((getattr(proc, "_args", ()), getattr(proc, "_kwargs", {})))
                           if not ch._closed)
            return
        frame = frame.f_back


def _after_fork_in_parent() -> None:
    for ch in _marked:
        ch._handed_off = True  # the child uses it now; closing our copy only detaches
    _marked.clear()


def _after_fork_in_child() -> None:
    handed = list(_marked)
    _marked.clear()
    _live.clear()
    for ch in handed:
        ch._pid = os.getpid()
        ch._send_lock = threading.Lock()  # a parent thread may have held them at the fork
        ch._recv_lock = threading.Lock()
        ch._alive_held = False
        try:
            ch._claim(exclusive=False)
        except IPCError:
            continue
        _live.add(ch)
        _live_channels.add(ch)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- listener & backend
@final
class SysvShmListener(Listener):
    """Owns ``sysv+shm://name`` until one peer attached (then the name is freed)."""

    def __init__(self, url: str, options: SysvShmOptions, chan: SysvShmChannel) -> None:
        super().__init__(url, options)
        self._chan: SysvShmChannel | None = chan

    def _accept(self, deadline: Deadline) -> Channel:
        ch = self._chan
        if ch is None:
            raise UnsupportedOperation(f"{self._url} accepts a single peer, and it already connected")
        hdr = ch._hdr
        try:
            while hdr[_H_STATE[1]] == _FREE:
                if self._closed:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ChannelTimeout(f"no peer connected to {self._url} before the deadline")
                ch._own_waker.wait(0.1 if left is None else min(0.1, left))
        except ValueError:  # close() from another thread released the views
            if not self._closed:
                raise
        if self._closed:
            raise ChannelClosed(f"accept on closed listener {self._url}")
        ch._wait.set_peer(int(hdr[_H_PID[1]]) or None)
        ch._publish()  # both attached: nothing can be left behind from now on
        self._chan = None
        return ch

    def _close(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None


def _rendezvous(address: str) -> tuple[str, str]:
    """``(directory, file)`` of a named endpoint; InvalidAddress for bad names."""
    if address.startswith("/"):
        path = os.path.normpath(address)
        directory, name = os.path.split(path)
        if not _NAME_RE.match(name):
            raise InvalidAddress(f"sysv+shm endpoint file name {name!r} must match [A-Za-z0-9._-]{{1,200}}")
        return directory, path
    name = address.strip("/")
    if not _NAME_RE.match(name):
        raise InvalidAddress(f"sysv+shm name {address!r} must match [A-Za-z0-9._-]{{1,200}} (or be an absolute path)")
    directory = registry_dir()
    return directory, os.path.join(directory, f"ep.{name}")


def _connect_segment(url: str, path: str, deadline: Deadline) -> _Segment:
    """Read the rendezvous file (waiting for it and for its creator) and attach by key."""
    sysv_ipc = _sysv_ipc()
    while True:
        try:
            fd = _open_manifest(path)
        except FileNotFoundError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise EndpointNotFound(errno.ENOENT, f"no {url} endpoint (no listener)") from exc
            time.sleep(0.005)
            continue
        try:
            fields = _read_manifest(fd, path)
            if "foreign" in fields:
                raise IncompatibleEndpoint(f"{path!r} is not an ipckit sysv+shm endpoint file")
            if "end" in fields:
                break
            if _paths.try_lock(fd) and _int(fields, "semid") is not None:
                raise IncompatibleEndpoint(
                    f"{url} is half-made: its creator died while creating it; listen() on the name reclaims it"
                )
        finally:
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise IncompatibleEndpoint(f"{url} was never initialised before the deadline")
        time.sleep(0.002)
    shmkey, shmid = _int(fields, "shmkey"), _int(fields, "shmid")
    semkey, semid = _int(fields, "semkey"), _int(fields, "semid")
    nonce = int(fields.get("nonce", "x"), 16) if fields.get("nonce", "").isalnum() else None
    if None in (shmkey, shmid, semkey, semid, nonce):
        raise IncompatibleEndpoint(f"{path!r} is not a complete ipckit endpoint file")
    assert shmkey is not None and shmid is not None and semkey is not None and semid is not None
    try:
        shm = sysv_ipc.SharedMemory(shmkey)
    except sysv_ipc.ExistentialError as exc:
        raise IncompatibleEndpoint(f"{url}: its segment no longer exists (stale endpoint)") from exc
    except sysv_ipc.PermissionsError as exc:
        raise PermissionDenied(errno.EACCES, f"{url}: the segment at its key is not ours") from exc
    if int(shm.id) != shmid:
        _detach_quiet(shm)
        raise IncompatibleEndpoint(f"{url}: another segment now uses its key (stale endpoint)")
    return _attach(shm, semid, semkey, shmkey, nonce, path, url)


@final
class SysvShmBackend(Backend):
    scheme: ClassVar[str] = "sysv+shm"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = SysvShmOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if not _ring.ordering_supported():
            return False, "the shm ring needs an x86-64 CPU (total store order)"
        try:
            _sysv_ipc()
        except ImportError:
            return False, "pip install sysv_ipc"
        if _semop is None:
            return False, "libc semop() is not reachable through ctypes"
        return True, ""

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: SysvShmOptions = options
        directory = registry_dir()
        for _ in range(8):
            _ensure_private_dir(directory)
            try:
                seg = _create_segment(os.path.join(directory, f"reg.{secrets.token_hex(16)}"), opts.capacity,
                                      opts.max_message_size, opts.mode, rendezvous=False)
                break
            except FileNotFoundError:  # the directory was removed by a closing channel: again
                continue
        else:
            raise EndpointNotFound(errno.ENOENT, f"{directory} keeps disappearing")
        try:
            a = SysvShmChannel("sysv+shm://", opts, seg, 0)
            a._claim(exclusive=False, adopt=True)
        except BaseException:
            _remove_all(seg)
            seg.close()
            raise
        try:
            seg_b = _attach(_sysv_ipc().attach(seg.shmid), seg.semid, seg.semkey, seg.shmkey, seg.nonce,
                            seg.manifest, "sysv+shm://")
            try:
                b = SysvShmChannel("sysv+shm://", opts, seg_b, 1)
            except BaseException:
                seg_b.close()
                raise
            try:
                b._claim(exclusive=True)
            except BaseException:
                b._handed_off = True
                b.close()
                raise
            seg.mark_removed()  # both attached: the kernel frees it at the last detach
        except BaseException:
            a.close()
            raise
        return a, b

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: SysvShmOptions = options
        directory, path = _rendezvous(endpoint.address)
        url = f"sysv+shm://{endpoint.address}" if endpoint.address.startswith("/") else \
            f"sysv+shm://{endpoint.address.strip('/')}"
        seg: _Segment | None = None
        for _ in range(8):
            if path.startswith(registry_dir() + os.sep):
                _ensure_private_dir(directory)
            else:
                _check_private_dir(directory)
            try:
                seg = _create_segment(path, opts.capacity, opts.max_message_size, opts.mode, rendezvous=True)
                break
            except FileNotFoundError:
                continue
            except FileExistsError as exc:
                if not _reclaim_if_stale(path):
                    try:
                        _paths.check_owned(path, os.lstat(path), "endpoint file")
                    except FileNotFoundError:
                        continue
                    raise EndpointExists(errno.EEXIST, f"{url} is in use by a live listener") from exc
        if seg is None:
            raise EndpointExists(errno.EEXIST, f"{url}: the name keeps being taken")
        try:
            ch = SysvShmChannel(url, opts, seg, 0)
            ch._claim(exclusive=False, adopt=True)
        except BaseException:
            _remove_all(seg)
            seg.close()
            raise
        return SysvShmListener(url, opts, ch)

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts: SysvShmOptions = options
        directory, path = _rendezvous(endpoint.address)
        url = f"sysv+shm://{endpoint.address}" if endpoint.address.startswith("/") else \
            f"sysv+shm://{endpoint.address.strip('/')}"
        if os.path.lexists(directory):
            _check_private_dir(directory)
        seg = _connect_segment(url, path, deadline)
        try:
            ch = SysvShmChannel(url, opts, seg, 1)
        except BaseException:
            seg.close()
            raise
        try:
            ch._claim(exclusive=True)
        except BaseException:
            ch._handed_off = True  # never mark the listener's segment closed for a failed attach
            ch.close()
            raise
        return ch
