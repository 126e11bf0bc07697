"""``shm://`` — a shared-memory ring pair (posix_ipc shared memory + named semaphores).

Features:
    The fast path.  One segment holds two single-producer/single-consumer rings (one per
    direction, ``ipckit.backends.ring``); sending copies the message into the ring once and
    receiving copies it out once (``recv_view`` returns a view into the ring: no copy;
    ``recv_bytes_into`` copies straight into the caller's buffer).  Messages larger than the ring
    stream through it in chunks, so a small ring carries large messages.  Waiting spins briefly,
    yields, then blocks on a semaphore that is only a wake-up hint (``ipckit.backends.waiting``).
    pickle protocol 5 out-of-band buffers (numpy) are written straight from the object's memory
    into the ring.

    Lifecycle: the segment is created exclusively (``O_CREAT|O_EXCL``), mode 0600, with an
    unguessable ``ipckit``-prefixed name, its size reserved with ``posix_fallocate`` (a full
    /dev/shm is ResourceExhausted, never SIGBUS later); openers check the owner and wait for
    the creator's initialised magic.  Each end holds an OFD lock on its own byte of the
    segment; the kernel drops it when the holder dies, so a SIGKILLed peer is PeerDied (after
    its committed messages are drained).  Once both ends are attached from their processes the
    names are removed (once, under a lock, and only if they still name this segment), so nothing
    is left behind, even after ``kill -9``.  Stale names of crashed creators are reclaimed when
    the name is used again (``cleanup_stale``).

URL format:
    ``shm://`` for ``pair()``; ``shm://name`` (``[A-Za-z0-9._-]``, up to 200 characters) for
    ``listen``/``connect`` (objects are named ``/ipckit.<name>``).

Options:
    ``capacity`` — bytes per direction (default 4 MiB; rounded up to a page).
    ``spin`` — spin briefly before blocking (default True; False never spins).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``, ``trust``.

Platform notes:
    Linux x86-64 (the ring relies on total store order).  An end passes to a child process as a
    ``multiprocessing.Process`` argument: under *spawn*/*forkserver* it is pickled as its name
    and the child re-attaches; under *fork* the child takes over the inherited end.  Close the
    end you handed over in the parent.  Any other end inherited through ``fork`` raises
    UnsupportedOperation in the child.  One thread may send while another receives.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import signal
import stat
import struct
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NoReturn, cast, final

from ..backend import Backend, Capabilities, Options
from ..channel import USE_DEFAULT, Channel, Listener, as_byte_view
from ..deadline import Deadline
from ..errors import (
    BufferTooSmall,
    ChannelBusy,
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    MessageTooLarge,
    PeerDied,
    PermissionDenied,
    RecvTimeout,
    ResourceExhausted,
    SendTimeout,
    UnsupportedOperation,
    from_oserror,
)
from ..url import Endpoint
from . import ring as _ring
from .waiting import WaitStrategy

__all__ = ["ShmBackend", "ShmChannel", "ShmListener", "ShmOptions", "cleanup_stale"]

_PAGE: Final = mmap.PAGESIZE
SEG_MAGIC: Final = 0x314D48534B435049  # b"IPCKSHM1"
SEG_VERSION: Final = 2
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_PREFIX: Final = "/ipckit."
_TMP_PREFIX: Final = "/ipckit.tmp."  # segments being built, before link(2) publishes them
_TMP_GRACE: Final = 10.0  # seconds before an unlocked temporary segment counts as stale
_SHM_DIR: Final = "/dev/shm"

# Segment header words (u64) on page 0.
_H_MAGIC, _H_VERSION, _H_CAPACITY, _H_MAXMSG, _H_UID = 0, 1, 2, 3, 4
_H_STATE: Final = (5, 6)  # per end: 0 free, 1 attached, 2 handing off, 3 closed
_H_PID: Final = (7, 8)
_H_UNLINKED: Final = 9  # 1 once the names were removed (under the unlink lock)
_FREE, _ATTACHED, _HANDOFF, _CLOSED = 0, 1, 2, 3

# OFD lock bytes: 0 and 1 = liveness of each end, 2 = mutex around removing the names.
_UNLINK_BYTE: Final = 2

# struct flock on Linux x86-64: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK: Final = struct.Struct("hhqqi4x")
_F_OFD_GETLK: Final = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW: Final = getattr(fcntl, "F_OFD_SETLKW", 38)

_LIVENESS_EVERY: Final = 64  # sends between checks of the reader's liveness lock
_INIT_DEAD_CHECK: Final = 0.02
_PID_LIMIT: Final = 1 << 22  # Linux PID_MAX_LIMIT  # an opener re-checks a lock-less uninitialised segment after this

#: Fault injection for tests (reliability.md kill points), read once: zero cost when unset.
_FAULT: Final = os.environ.get("IPCKIT_FAULT", "")


def _fault(point: str) -> None:
    if point == _FAULT:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ShmOptions(Options):
    capacity: int = 4 * 1024 * 1024
    spin: bool = True


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


def _posix_ipc() -> Any:
    import posix_ipc

    return posix_ipc


def _layout(capacity: int) -> tuple[int, int, int]:
    """(rounded capacity, region size, segment size) -- rings start on page boundaries."""
    cap = _ring.round_capacity(max(capacity, _ring.MIN_CAPACITY))
    cap = (cap + _PAGE - 1) // _PAGE * _PAGE
    region = _ring.region_size(cap)
    region_pages = (region + _PAGE - 1) // _PAGE * _PAGE
    return cap, region, _PAGE + 2 * region_pages


def _map(fd: int, size: int) -> mmap.mmap:
    """Map the segment with its pages populated up front: otherwise the first lap of each ring
    takes a page fault per 4 KiB in each process (measured: 256 faults per MiB written)."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


# ----------------------------------------------------------------------------- OFD locks
def _lock(fd: int, byte: int) -> bool:
    """Take an OFD write lock on *byte* of *fd*; False if another description holds it."""
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _lock_wait(fd: int, byte: int) -> None:
    """Take an OFD write lock on *byte*, waiting for the holder (held only for a few syscalls)."""
    fcntl.fcntl(fd, _F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))


def _unlock(fd: int, byte: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))


def _lock_held(fd: int, byte: int) -> bool:
    """True when some other open file description (another end) holds a lock on *byte*."""
    res = fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    return int(_FLOCK.unpack(res)[0]) != fcntl.F_UNLCK


def _names_this_segment(name: str, fd: int) -> bool:
    """True when the name *name* still refers to the segment open as *fd* (not a newer object)."""
    try:
        st = os.stat(_SHM_DIR + name, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return st.st_ino == mine.st_ino and st.st_dev == mine.st_dev


def _unlink_names(name: str) -> None:
    """Remove the semaphores first, then the segment: while the segment's name exists nobody can
    create a new object of that name, so the semaphore names removed here are never a newer
    channel's."""
    p = _posix_ipc()
    for fn, n in (
        (p.unlink_semaphore, name + ".a"),
        (p.unlink_semaphore, name + ".b"),
        (p.unlink_shared_memory, name),
    ):
        try:
            fn(n)
        except (p.ExistentialError, p.PermissionsError):
            pass


class _PosixWaker:
    """posix_ipc semaphore as a wake-up hint (never a mutex)."""

    __slots__ = ("_busy", "_signal", "sem")

    def __init__(self, sem: Any) -> None:
        p = _posix_ipc()
        self.sem = sem
        self._busy = p.BusyError
        self._signal = p.SignalError

    def wait(self, timeout: float) -> bool:
        try:
            self.sem.acquire(timeout)
            return True
        except (self._busy, self._signal):  # timeout, or EINTR: the caller re-checks its deadline
            return False

    def post(self) -> None:
        try:
            self.sem.release()
        except Exception:  # overflow or closed: a hint only, the waiter re-checks anyway
            pass


class _Segment:
    """One mapped segment with its two semaphores (one handle per end)."""

    def __init__(
        self, name: str, *, create: bool, capacity: int, max_message_size: int, mode: int, deadline: Deadline
    ) -> None:
        p = _posix_ipc()
        self.name = name
        self.shm_fd = -1
        self.lock_fd = -1  # the creator's liveness lock (byte 0), taken before anything else
        self.mm: mmap.mmap | None = None
        self.sems: list[Any] = []
        self.unlink_done = False
        self._made: list[tuple[Any, str]] = []  # names this handle created, for a failed create
        try:
            if create:
                self._create(p, capacity, max_message_size, mode)
            else:
                self._open(p, deadline)
        except BaseException:
            for unlink, made in reversed(self._made):  # semaphores first, the segment's name last
                try:
                    unlink(made)
                except p.Error:
                    pass
            self.close()
            raise
        self._made = []

    # -- creation / opening ------------------------------------------------------------------
    def _create(self, p: Any, capacity: int, maxmsg: int, mode: int) -> None:
        """Build the segment under a private temporary name, then publish it with ``link(2)``.

        ``link`` fails if the name exists, so it is the exclusive create (reliability S-10); and
        a segment appears under its name only fully initialised and with its creator's liveness
        lock held, so a racing creator never mistakes a segment being built for a stale one.
        """
        cap, _region, size = _layout(capacity)
        tmp = f"{_TMP_PREFIX}{secrets.token_hex(12)}"
        try:
            shm = p.SharedMemory(tmp, p.O_CREX, mode=mode, size=0)
        except p.Error as exc:
            raise from_oserror(OSError(errno.EEXIST if isinstance(exc, p.ExistentialError) else errno.EACCES,
                                       str(exc)), f"create {tmp}") from exc
        self._made.append((p.unlink_shared_memory, tmp))
        self.shm_fd = shm.fd
        os.set_inheritable(self.shm_fd, False)
        self.lock_fd = os.open(f"/proc/self/fd/{self.shm_fd}", os.O_RDWR | os.O_CLOEXEC)
        _lock(self.lock_fd, 0)
        _fault("shm.after_create_before_init")
        os.fchmod(self.shm_fd, mode)  # independent of the umask
        try:
            os.ftruncate(self.shm_fd, size)
            os.posix_fallocate(self.shm_fd, 0, size)
        except OSError as exc:
            raise from_oserror(exc, f"reserving {size} bytes for {self.name} in /dev/shm") from exc
        self.mm = _map(self.shm_fd, size)
        words = memoryview(self.mm)[:_PAGE].cast("Q")
        off_a, off_b = _PAGE, _PAGE + (size - _PAGE) // 2
        _ring.initialize(memoryview(self.mm), off_a, cap, maxmsg)
        _ring.initialize(memoryview(self.mm), off_b, cap, maxmsg)
        words[_H_VERSION] = SEG_VERSION
        words[_H_CAPACITY] = cap
        words[_H_MAXMSG] = maxmsg
        words[_H_UID] = os.geteuid()
        words[_H_MAGIC] = SEG_MAGIC
        words.release()
        try:
            os.link(_SHM_DIR + tmp, _SHM_DIR + self.name)
        except FileExistsError as exc:
            raise EndpointExists(errno.EEXIST, f"shared memory {self.name} already exists") from exc
        except OSError as exc:
            raise from_oserror(exc, f"publish {self.name} in /dev/shm") from exc
        self._made.append((p.unlink_shared_memory, self.name))
        try:
            p.unlink_shared_memory(tmp)
        except p.Error:
            pass
        del self._made[0]
        for suffix in (".a", ".b"):
            try:
                sem = p.Semaphore(self.name + suffix, p.O_CREX, mode=mode, initial_value=0)
            except p.ExistentialError:
                # We own the segment's name, so a semaphore of that name is a crashed run's leftover.
                try:
                    p.unlink_semaphore(self.name + suffix)
                    sem = p.Semaphore(self.name + suffix, p.O_CREX, mode=mode, initial_value=0)
                except p.Error as exc:
                    raise EndpointExists(errno.EEXIST, f"semaphore {self.name}{suffix} already exists") from exc
            self._made.insert(1, (p.unlink_semaphore, self.name + suffix))
            self.sems.append(sem)

    def _open(self, p: Any, deadline: Deadline) -> None:
        while True:
            try:
                shm = p.SharedMemory(self.name, 0)
                break
            except p.ExistentialError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise EndpointNotFound(errno.ENOENT, f"no shm endpoint {self.name}") from exc
                time.sleep(0.005)
            except p.PermissionsError as exc:
                raise PermissionDenied(errno.EACCES, f"cannot open {self.name}: not ours") from exc
        self.shm_fd = shm.fd
        os.set_inheritable(self.shm_fd, False)
        st = os.fstat(self.shm_fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 & ~0o060:
            raise PermissionDenied(
                errno.EACCES,
                f"{self.name} belongs to uid {st.st_uid} with mode {oct(stat.S_IMODE(st.st_mode))}",
            )
        # Wait for the creator's magic (it sizes the segment first, writes the magic last).
        dead_since: float | None = None
        while True:
            size = os.fstat(self.shm_fd).st_size
            magic = 0
            if size >= _PAGE:
                if self.mm is None:
                    self.mm = _map(self.shm_fd, size)
                words = memoryview(self.mm)[:64].cast("Q")
                magic = words[_H_MAGIC]
                good = words[_H_VERSION] == SEG_VERSION and words[_H_UID] == os.geteuid()
                cap = words[_H_CAPACITY]
                words.release()
                if magic == SEG_MAGIC:
                    if not good or _layout(cap)[2] != size:
                        raise IncompatibleEndpoint(f"{self.name} has another layout, version or owner")
                    break
                if magic != 0:
                    raise IncompatibleEndpoint(f"{self.name} is not an ipckit segment (magic {magic:#x})")
            # Not initialised yet.  A creator that holds no lock is dead (or foreign): give up early.
            now = time.monotonic()
            if _lock_held(self.shm_fd, 0) or _lock_held(self.shm_fd, 1):
                dead_since = None
            elif dead_since is None:
                dead_since = now
            elif now - dead_since >= _INIT_DEAD_CHECK:
                raise IncompatibleEndpoint(
                    f"{self.name} was never initialised and no process holds it (creator crashed, or "
                    "a foreign object); listen() on the name again reclaims it"
                )
            if deadline is not None and now >= deadline:
                raise IncompatibleEndpoint(f"{self.name} was never initialised (creator crashed?)")
            time.sleep(0.002)
        for suffix in (".a", ".b"):
            while True:  # the creator makes its semaphores right after publishing the segment
                try:
                    self.sems.append(p.Semaphore(self.name + suffix, 0))
                    break
                except p.ExistentialError as exc:
                    if not _lock_held(self.shm_fd, 0) or (deadline is not None and time.monotonic() >= deadline):
                        raise IncompatibleEndpoint(f"semaphore {self.name}{suffix} is missing") from exc
                    time.sleep(0.001)
                except p.PermissionsError as exc:
                    raise PermissionDenied(errno.EACCES, f"cannot open {self.name}{suffix}: not ours") from exc

    # -- accessors -------------------------------------------------------------------------
    def header(self) -> memoryview:
        assert self.mm is not None
        return memoryview(self.mm)[:128].cast("Q")

    def ring_offsets(self) -> tuple[int, int, int]:
        assert self.mm is not None
        size = len(self.mm)
        return _PAGE, _PAGE + (size - _PAGE) // 2, (size - _PAGE) // 2

    def unlink(self) -> None:
        """Remove the names, once for the whole channel (both ends, all processes).

        Under the segment's unlink lock: skipped if the other end did it already (header flag)
        or if the name now refers to a newer object (reliability S-5: never unlink a name twice).
        """
        if self.unlink_done or self.shm_fd < 0 or self.mm is None:
            return
        self.unlink_done = True
        words = memoryview(self.mm)[:_PAGE].cast("Q")
        try:
            _lock_wait(self.shm_fd, _UNLINK_BYTE)
            try:
                if words[_H_UNLINKED] == 0:
                    if _names_this_segment(self.name, self.shm_fd):
                        _unlink_names(self.name)
                    words[_H_UNLINKED] = 1
            finally:
                _unlock(self.shm_fd, _UNLINK_BYTE)
        finally:
            words.release()

    def names_exist(self) -> bool:
        return self.shm_fd >= 0 and _names_this_segment(self.name, self.shm_fd)

    def close(self) -> None:
        for sem in self.sems:
            try:
                sem.close()
            except Exception:
                pass
        self.sems = []
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a recv_view still exported: leave it to the GC
                pass
            self.mm = None
        for fd in (self.lock_fd, self.shm_fd):
            if fd >= 0:
                os.close(fd)
        self.lock_fd = self.shm_fd = -1


def _reclaim_stale(name: str) -> bool:
    """Remove *name*'s objects if they are ours and no end is alive; True if the name is free now.

    Holds the stale segment's unlink lock while checking and removing, so two processes
    reclaiming at once never remove the object the faster one created afterwards.
    """
    p = _posix_ipc()
    try:
        shm = p.SharedMemory(name, 0)
    except p.ExistentialError:
        return True
    except p.PermissionsError:
        return False
    fd = shm.fd
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return False
        if name.startswith(_TMP_PREFIX) and time.time() - st.st_ctime < _TMP_GRACE:
            return False  # possibly a segment being built right now
        if st.st_size >= 8:
            magic = struct.unpack("Q", os.pread(fd, 8, 0))[0]
            if magic not in (0, SEG_MAGIC):
                return False  # not an ipckit segment: never remove it
        _lock_wait(fd, _UNLINK_BYTE)
        try:
            if _lock_held(fd, 0) or _lock_held(fd, 1):
                return False
            if _names_this_segment(name, fd):
                _unlink_names(name)
            return True
        finally:
            _unlock(fd, _UNLINK_BYTE)
    finally:
        os.close(fd)


def _sweep_temporaries() -> None:
    """Remove temporary segments of creators that crashed before publishing (reliability S-11)."""
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return
    tmp = _TMP_PREFIX[1:]
    for entry in entries:
        if entry.startswith(tmp):
            try:
                _reclaim_stale("/" + entry)
            except OSError:
                pass


def _refuse_foreign(name: str) -> None:
    """Raise PermissionDenied when *name* exists but belongs to another user (a squatter)."""
    try:
        st = os.stat(_SHM_DIR + name, follow_symlinks=False)
    except OSError:
        return
    if st.st_uid != os.geteuid():
        raise PermissionDenied(
            errno.EACCES,
            f"{name} already exists and belongs to uid {st.st_uid} (mode {oct(stat.S_IMODE(st.st_mode))}); "
            "refusing to use an object someone else created",
        )


def cleanup_stale(prefix: str = "ipckit") -> list[str]:
    """Remove this user's ``ipckit`` segments (and semaphores) whose ends are all dead."""
    removed: list[str] = []
    try:
        entries = os.listdir(_SHM_DIR)
    except OSError:
        return removed
    for entry in entries:
        if entry.startswith(prefix) and not entry.startswith("sem.") and _reclaim_stale("/" + entry):
            removed.append(entry)
    return removed


class _ForkedRing:
    """Stands in for the rings of an end a forked child inherited but was not handed."""

    __slots__ = ("_msg",)

    def __init__(self, url: str) -> None:
        self._msg = (
            f"{url} was inherited through fork without being handed over; pass the end to the child "
            "as a multiprocessing.Process argument (or connect by name)"
        )

    def detach(self) -> None:
        pass

    def __getattr__(self, name: str) -> NoReturn:
        raise UnsupportedOperation(self._msg)


@final
class ShmChannel(Channel):
    """One end of a ``shm://`` channel.  Role 0 created the segment, role 1 attached to it."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __init__(self, url: str, options: ShmOptions, seg: _Segment, role: int) -> None:
        super().__init__(url, options, peer_trusted=True)
        self._seg = seg
        self._role = role
        self._handed_off = False
        self._lock_fd = -1
        mm = seg.mm
        assert mm is not None
        off_a, off_b, size = seg.ring_offsets()
        out_off, in_off = (off_a, off_b) if role == 0 else (off_b, off_a)
        hdr = seg.header()
        # Receive limit: the smaller of ours and the creator's (the peer's sends are checked by it).
        maxmsg = min(options.max_message_size, int(hdr[_H_MAXMSG]))
        self._hdr = hdr
        # A private open file description for this end's liveness lock (the creator's is ready).
        if seg.lock_fd >= 0 and role == 0:
            self._lock_fd, seg.lock_fd = seg.lock_fd, -1
        else:
            self._lock_fd = os.open(f"/proc/self/fd/{seg.shm_fd}", os.O_RDWR | os.O_CLOEXEC)
        self._w = _ring.RingWriter(mm, out_off, size, maxmsg)
        self._r = _ring.RingReader(mm, in_off, size, maxmsg)
        self._own_waker = _PosixWaker(seg.sems[role])
        peer_waker = _PosixWaker(seg.sems[1 - role])
        self._w.wake_peer = peer_waker.post
        self._r.wake_peer = peer_waker.post
        self._wait = WaitStrategy(spin=options.spin)
        self._peer_pid = 0
        self._peer_dead = False
        self._view_out = False
        self._live_countdown = _LIVENESS_EVERY
        _live.add(self)

    # -- attach / liveness --------------------------------------------------------------------
    def _claim(self, deadline: Deadline) -> None:
        """Take this end's lock byte (waiting while a previous holder hands it over)."""
        while not _lock(self._lock_fd, self._role):
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelBusy(f"end {self._role} of {self._url} is attached elsewhere")
            time.sleep(0.002)
        self._attached_here()
        self._seg.sems[1 - self._role].release()  # a listener waiting in accept()

    def _attached_here(self) -> None:
        """Publish this process as the end's holder; remove the names once both ends are placed."""
        hdr = self._hdr
        hdr[_H_PID[self._role]] = os.getpid()
        hdr[_H_STATE[self._role]] = _ATTACHED
        self._refresh_peer()
        self._maybe_unlink()

    def _refresh_peer(self) -> None:
        pid = int(self._hdr[_H_PID[1 - self._role]])
        if pid != self._peer_pid:
            self._peer_pid = pid  # untrusted: only a hint for the wait strategy
            self._wait.set_peer(pid if 0 < pid < _PID_LIMIT and pid != os.getpid() else None)

    def _peer_gone(self) -> bool:
        """True when the peer end was attached and its lock is free (it died)."""
        if self._peer_dead:
            return True
        peer = 1 - self._role
        state = self._hdr[_H_STATE[peer]]
        if state != _ATTACHED:
            return False
        if _lock_held(self._seg.shm_fd, peer):
            return False
        # Re-read: a clean close sets CLOSED before dropping the lock.
        self._peer_dead = self._hdr[_H_STATE[peer]] == _ATTACHED
        return self._peer_dead

    def _maybe_unlink(self) -> None:
        # The names are needed only until both ends are in their processes (or one closed).
        seg = self._seg
        if seg.unlink_done:
            return
        hdr = self._hdr
        peer_state = hdr[_H_STATE[1 - self._role]]
        peer_pid = hdr[_H_PID[1 - self._role]]
        if peer_state == _CLOSED or (peer_state == _ATTACHED and peer_pid and peer_pid != os.getpid()):
            seg.unlink()

    def _check(self) -> None:
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed")
        self._refresh_peer()
        self._maybe_unlink()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            raise UnsupportedOperation(
                f"{self._url} was inherited through fork; pass it to the child as a multiprocessing "
                "argument (it is handed over) or connect by name"
            )

    # -- hot paths ----------------------------------------------------------------------------
    # send_bytes / recv_bytes keep the base class's semantics (Channel's docstrings) but skip its
    # layers when the call completes at once: no deadline arithmetic, one non-blocking lock try,
    # one ring call.  Anything unusual (contention, a full ring, the peer closed, a streamed
    # message, a pending recv_view) goes through the general path in Channel.
    def send_bytes(self, data: Any, timeout: float | None = USE_DEFAULT) -> None:
        if self._closed:
            raise ChannelClosed(f"send on closed channel {self._url}")
        if type(data) is not bytes:
            data = as_byte_view(data)
        n = len(data)
        if n > self._max:
            raise MessageTooLarge(self._too_large(n))
        lock = self._send_lock
        if lock.acquire(False):
            try:
                if self._live_countdown > 0 and self._w.try_send(data):
                    self._live_countdown -= 1
                    return
            finally:
                lock.release()
        Channel.send_bytes(self, data, timeout)

    def recv_bytes(self, timeout: float | None = USE_DEFAULT) -> bytes:
        if self._closed:
            raise ChannelClosed(f"recv on closed channel {self._url}")
        lock = self._recv_lock
        if lock.acquire(False):
            try:
                if not self._view_out:
                    r = self._r
                    data = r.try_read_bytes()
                    if data is not None:
                        return data
                    # The answer is usually microseconds away: across cores spin on the counter
                    # itself, on a shared core hand the CPU over (sched_yield), no callbacks.
                    ws = self._wait
                    words = r.counters
                    rp = r.read_pos
                    if ws.spin_while_equal(words, _ring.WRITE_POS, rp) or ws.yield_while_equal(
                        words, _ring.WRITE_POS, rp, _ring.WRITER_CLOSED
                    ):
                        data = r.try_read_bytes()
                        if data is not None:
                            return data
            finally:
                lock.release()
        return Channel.recv_bytes(self, timeout)

    # -- hooks ------------------------------------------------------------------------------
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            self._check_pid()
            raise EndOfChannel(f"the peer closed {self._url}")
        self._live_countdown -= 1
        if self._live_countdown < 0:
            self._send_liveness()
        if w.try_write(view):
            return
        self._finish_send(deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            self._check_pid()
            raise EndOfChannel(f"the peer closed {self._url}")
        self._send_liveness()
        if w.write(views, total):
            return
        self._finish_send(deadline)

    def _finish_send(self, deadline: Deadline) -> None:
        self._check_pid()
        if self._wait.peer_pid is None:
            self._refresh_peer()
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
                if self._peer_gone():
                    raise PeerDied(f"the peer of {self._url} died")
                raise SendTimeout(f"send on {self._url} timed out (the ring is full)")

    def _send_liveness(self) -> None:
        # A dead reader never frees space, but a large ring would accept many messages first:
        # check its lock every _LIVENESS_EVERY sends (one fcntl), and before every multi-part send.
        self._live_countdown = _LIVENESS_EVERY
        self._check_pid()
        if self._peer_gone():
            raise PeerDied(f"the peer of {self._url} died")

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
            if self._wait.peer_pid is None:  # learn where the peer runs (same CPU: never spin)
                self._refresh_peer()
            if r.writer_closed():
                view = r.peek(into)
                if view is not None:
                    break
                raise EndOfChannel(f"the peer closed {self._url} and every message was received")
            if self._peer_dead:
                raise PeerDied(f"the peer of {self._url} died; every message it committed was received")
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
        if obj is not self._seg.mm and isinstance(obj, bytearray) and len(obj) == len(view):
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
        # Under the receive lock, so close() waits for a poll blocked in another thread.
        lock = self._recv_lock
        if deadline is None:
            lock.acquire()
        elif not lock.acquire(True, max(0.0, deadline - time.monotonic())):
            return False
        try:
            if self._closed:
                raise ChannelClosed(f"poll on closed channel {self._url}")
            self._check_pid()
            r = self._r
            while True:
                if r.peek() is not None or r.writer_closed() or self._peer_gone():
                    return True
                if not self._wait.wait(self._recv_ready, deadline, self._own_waker, r.set_sleeping, self._check):
                    return r.peek() is not None or r.writer_closed() or self._peer_gone()
        finally:
            lock.release()

    def _wakeup(self) -> None:
        if self._pid == os.getpid() and not self._handed_off:
            self._own_waker.post()
            self._own_waker.post()

    def _close(self) -> None:
        seg = self._seg
        mine = self._pid == os.getpid() and not self._handed_off
        try:
            if mine:
                self._hdr[_H_STATE[self._role]] = _CLOSED  # before dropping the lock: not a crash
                self._w.close()
                self._r.close()
                seg.sems[1 - self._role].release()
                # Names are no longer needed, unless the peer end is on its way to another process.
                if self._hdr[_H_STATE[1 - self._role]] != _HANDOFF:
                    seg.unlink()
            else:
                self._w.detach()
                self._r.detach()
        finally:
            self._hdr.release()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # drops the OFD lock
                self._lock_fd = -1
            seg.close()

    def __reduce__(self) -> Any:
        from multiprocessing import context

        if context.get_spawning_popen() is None:
            return Channel.__reduce__(self)  # plain pickling: refused, with advice
        if self._closed:
            raise TypeError(f"{self._url} is closed")
        if not self._seg.names_exist():
            raise TypeError(
                f"{self._url}: this end can no longer be handed to another process (the peer attached "
                "and the names were removed); pass it to the child before using the channel"
            )
        self._r.release()
        self._hdr[_H_STATE[self._role]] = _HANDOFF
        self._handed_off = True
        if self._lock_fd >= 0:  # hand the liveness lock over: the receiving process takes it
            os.close(self._lock_fd)
            self._lock_fd = -1
        return _rebuild, (self._url, self._seg.name, self._role, self._options)

    # -- fork hand-off ---------------------------------------------------------------------
    def _adopt_after_fork(self) -> None:
        """In a multiprocessing fork child that was handed this end: it is ours now.  The lock
        descriptor is a copy of the parent's, so the liveness lock stays held across the fork."""
        self._pid = os.getpid()
        self._handed_off = False
        self._attached_here()

    def _disown_after_fork(self) -> None:
        """In a forked child that was not handed this end: never touch the shared rings."""
        if self._lock_fd >= 0:
            try:
                os.close(self._lock_fd)  # the parent's death must stay visible to the peer
            except OSError:
                pass
            self._lock_fd = -1
        forked = cast(Any, _ForkedRing(self._url))
        self._w = forked
        self._r = forked


_live: weakref.WeakSet[ShmChannel] = weakref.WeakSet()

# ---------------------------------------------------------------- hand-off under fork
# multiprocessing's *spawn* pickles an end (``__reduce__``); *fork* passes Process arguments
# without pickling.  Before a fork, find the multiprocessing Process being started on the
# caller's stack and mark the ends among its arguments as handed over: the parent's later close
# of its copy must not tell the peer "closed", and the child adopts them.
_fork_handed: list[ShmChannel] = []


def _ends_in(obj: Any, depth: int = 0) -> Iterator[ShmChannel]:
    if isinstance(obj, ShmChannel):
        yield obj
    elif depth < 3 and isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _ends_in(item, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for item in obj.values():
            yield from _ends_in(item, depth + 1)


def _before_fork() -> None:
    _fork_handed.clear()
    if not _live:
        return
    frame: types.FrameType | None = sys._getframe(1)
    for _ in range(30):
        if frame is None:
            return
        proc = frame.f_locals.get("process_obj") if frame.f_code.co_name == "_launch" else None
        if proc is not None:
            for ch in _ends_in((getattr(proc, "_args", ()), getattr(proc, "_kwargs", {}))):
                if not ch._closed and ch._pid == os.getpid():
                    ch._handed_off = True
                    _fork_handed.append(ch)
            return
        frame = frame.f_back


def _after_fork_in_parent() -> None:
    _fork_handed.clear()


def _after_fork_in_child() -> None:
    handed = {id(ch) for ch in _fork_handed}
    for ch in list(_live):
        if ch._closed:
            continue
        try:
            if id(ch) in handed:
                ch._adopt_after_fork()
            else:
                ch._disown_after_fork()
        except Exception:  # never fail the fork; a broken end raises on use instead
            pass
    _fork_handed.clear()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def _rebuild(url: str, name: str, role: int, options: ShmOptions) -> ShmChannel:
    deadline = time.monotonic() + 10.0
    seg = _Segment(name, create=False, capacity=0, max_message_size=0, mode=0, deadline=deadline)
    try:
        ch = ShmChannel(url, options, seg, role)
    except BaseException:
        seg.close()
        raise
    try:
        ch._claim(deadline)
    except BaseException:
        ch._handed_off = True  # a failed take-over must not mark the end closed
        ch.close()
        raise
    return ch


@final
class ShmListener(Listener):
    """Owns ``shm://name`` until one peer attached (then the names are removed)."""

    def __init__(self, url: str, options: ShmOptions, seg: _Segment) -> None:
        super().__init__(url, options)
        self._busy = threading.Lock()
        self._chan: ShmChannel | None = None
        ch = ShmChannel(url, options, seg, 0)
        self._chan = ch
        ch._claim(None)

    def _accept(self, deadline: Deadline) -> Channel:
        if not self._busy.acquire(False):
            raise ChannelBusy(f"another thread is accepting on {self._url}")
        try:
            ch = self._chan
            if self._closed:
                raise ChannelClosed(f"accept on closed listener {self._url}")
            if ch is None:
                raise UnsupportedOperation(f"{self._url} accepts a single peer, and it already connected")
            hdr = ch._hdr
            waker = ch._own_waker
            while hdr[_H_STATE[1]] in (_FREE, _HANDOFF):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ChannelTimeout(f"no peer connected to {self._url} before the deadline")
                waker.wait(0.1 if left is None else min(0.1, left))
                if self._closed:
                    raise ChannelClosed(f"accept on closed listener {self._url}")
            ch._refresh_peer()
            ch._seg.unlink()  # both attached: nothing can be left behind from now on
            self._chan = None
            return ch
        finally:
            self._busy.release()

    def _close(self) -> None:
        ch = self._chan
        if ch is None:
            return
        ch._own_waker.post()  # wake a blocked accept(); it sees _closed and leaves
        got = self._busy.acquire(True, 2.0)
        try:
            if self._chan is not None:
                self._chan = None
                ch.close()
        finally:
            if got:
                self._busy.release()


def _check_name(address: str) -> str:
    name = address.strip("/")
    if not _NAME_RE.match(name):
        raise InvalidAddress(f"shm name {address!r} must match [A-Za-z0-9._-]{{1,200}}")
    return _PREFIX + name


@final
class ShmBackend(Backend):
    scheme: ClassVar[str] = "shm"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = ShmOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if not _ring.ordering_supported():
            return False, "the shm ring needs an x86-64 CPU (total store order)"
        try:
            _posix_ipc()
        except ImportError:
            return False, "pip install posix_ipc"
        if not os.path.isdir(_SHM_DIR):
            return False, "/dev/shm is not mounted"
        return True, ""

    def _create(self, name: str, opts: ShmOptions) -> _Segment:
        def make() -> _Segment:
            return _Segment(
                name, create=True, capacity=opts.capacity, max_message_size=opts.max_message_size,
                mode=opts.mode, deadline=None,
            )

        _sweep_temporaries()
        try:
            return make()
        except EndpointExists:
            if not _reclaim_stale(name):  # a crashed creator's leftovers (ours, no live end)?
                _refuse_foreign(name)
                raise
            return make()

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: ShmOptions = options
        name = _PREFIX + secrets.token_hex(16)
        seg = self._create(name, opts)
        try:
            a = ShmChannel("shm://", opts, seg, 0)
        except BaseException:
            seg.unlink()
            seg.close()
            raise
        try:
            a._claim(None)
            seg_b = _Segment(
                name, create=False, capacity=0, max_message_size=0, mode=0, deadline=time.monotonic() + 5
            )
            try:
                b = ShmChannel("shm://", opts, seg_b, 1)
            except BaseException:
                seg_b.close()
                raise
            b._claim(None)
        except BaseException:
            a.close()
            raise
        return a, b

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: ShmOptions = options
        name = _check_name(endpoint.address)
        seg = self._create(name, opts)
        try:
            return ShmListener(f"shm://{name[len(_PREFIX) :]}", opts, seg)
        except BaseException:
            seg.unlink()
            seg.close()
            raise

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts: ShmOptions = options
        name = _check_name(endpoint.address)
        try:
            seg = _Segment(name, create=False, capacity=0, max_message_size=0, mode=0, deadline=deadline)
        except OSError as exc:
            if isinstance(exc, IPCError):
                raise
            raise from_oserror(exc, f"open {name}") from exc
        try:
            ch = ShmChannel(f"shm://{name[len(_PREFIX) :]}", opts, seg, 1)
        except BaseException:
            seg.close()
            raise
        try:
            if not _lock(ch._lock_fd, 1) or ch._hdr[_H_STATE[1]] != _FREE:
                raise EndpointExists(errno.EEXIST, f"shm://{name[len(_PREFIX) :]} already has a peer")
            ch._claim(deadline)
        except BaseException:
            ch._handed_off = True  # never mark the listener's segment closed for a failed attach
            ch.close()
            raise
        return ch


_ = ResourceExhausted
