"""``shm://`` — a shared-memory ring pair (posix_ipc shared memory + named semaphores).

Features:
    The fast path.  One segment holds two single-producer/single-consumer rings (one per
    direction, ``ipckit.backends.ring``); sending copies the message into the ring once and
    receiving copies it out once (``recv_view`` returns a view into the ring: no copy).
    Messages larger than the ring stream through it in chunks, so a small ring carries large
    messages.  Waiting spins briefly, yields, then blocks on a semaphore that is only a wake-up
    hint (``ipckit.backends.waiting``).  pickle protocol 5 out-of-band buffers (numpy) are
    written straight from the object's memory into the ring.

    Lifecycle: the segment is created exclusively (``O_CREAT|O_EXCL``), mode 0600, with an
    unguessable ``ipckit``-prefixed name, its size reserved with ``posix_fallocate`` (a full
    /dev/shm is ResourceExhausted, never SIGBUS later); openers check the owner and wait for
    the creator's initialised magic.  Each end holds an OFD lock on its own byte of the
    segment; the kernel drops it when the holder dies, so a SIGKILLed peer is PeerDied (after
    its committed messages are drained).  Once both ends are attached from their processes the
    creator unlinks every name, so nothing is left behind, even after ``kill -9``.  Stale
    names of crashed creators are reclaimed when the name is used again (``cleanup_stale``).

URL format:
    ``shm://`` for ``pair()``; ``shm://name`` (``[A-Za-z0-9._-]``, up to 200 characters) for
    ``listen``/``connect`` (objects are named ``/ipckit.<name>``).

Options:
    ``capacity`` — bytes per direction (default 4 MiB; rounded up to a page).
    ``spin`` — spin briefly before blocking (default True; False never spins).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``, ``trust``.

Platform notes:
    Linux x86-64 (the ring relies on total store order).  An end passes to a child process
    pickled as its name (multiprocessing *spawn*/*forkserver*), the child re-attaches; an end
    inherited through a plain ``fork`` must not be used by the child.  Close the end you hand
    over in the parent.  One thread may send while another receives.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from ..backend import Backend, Capabilities, Options
from ..channel import Channel, Listener
from ..deadline import Deadline
from ..errors import (
    ChannelBusy,
    ChannelClosed,
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
from . import ring as _ring
from .waiting import WaitStrategy

__all__ = ["ShmBackend", "ShmChannel", "ShmListener", "ShmOptions", "cleanup_stale"]

_PAGE: Final = mmap.PAGESIZE
SEG_MAGIC: Final = 0x314D48534B435049  # b"IPCKSHM1"
SEG_VERSION: Final = 1
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_PREFIX: Final = "/ipckit."

# Segment header words (u64) on page 0.
_H_MAGIC, _H_VERSION, _H_CAPACITY, _H_MAXMSG, _H_UID = 0, 1, 2, 3, 4
_H_STATE: Final = (5, 6)  # per end: 0 free, 1 attached, 2 handing off, 3 closed
_H_PID: Final = (7, 8)
_FREE, _ATTACHED, _HANDOFF, _CLOSED = 0, 1, 2, 3

# struct flock on Linux x86-64: l_type, l_whence, l_start, l_len, l_pid (+ padding).
_FLOCK: Final = struct.Struct("hhqqi4x")
_F_OFD_GETLK: Final = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK: Final = getattr(fcntl, "F_OFD_SETLK", 37)

_RECHECK: Final = 0.05  # liveness/attach poll interval while handing off


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


def _lock(fd: int, byte: int) -> bool:
    """Take an OFD write lock on *byte* of *fd*; False if another description holds it."""
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _lock_held(fd: int, byte: int) -> bool:
    """True when some open file description (another end) holds a lock on *byte*."""
    res = fcntl.fcntl(fd, _F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
    return int(_FLOCK.unpack(res)[0]) != fcntl.F_UNLCK


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
    """One mapped segment with its two semaphores; knows how to unlink its names once."""

    def __init__(
        self, name: str, *, create: bool, capacity: int, max_message_size: int, mode: int, deadline: Deadline
    ) -> None:
        p = _posix_ipc()
        self.name = name
        self.names_linked = create
        self.shm_fd = -1
        self.mm: mmap.mmap | None = None
        self.sems: list[Any] = []
        try:
            if create:
                self._create(p, capacity, max_message_size, mode)
            else:
                self._open(p, deadline)
        except BaseException:
            self.close()
            raise

    # -- creation / opening ------------------------------------------------------------------
    def _create(self, p: Any, capacity: int, maxmsg: int, mode: int) -> None:
        cap, _region, size = _layout(capacity)
        try:
            shm = p.SharedMemory(self.name, p.O_CREX, mode=mode, size=0)
        except p.ExistentialError as exc:
            raise EndpointExists(errno.EEXIST, f"shared memory {self.name} already exists") from exc
        self.shm_fd = shm.fd
        os.set_inheritable(self.shm_fd, False)
        os.fchmod(self.shm_fd, mode)  # independent of the umask
        try:
            os.ftruncate(self.shm_fd, size)
            os.posix_fallocate(self.shm_fd, 0, size)
        except OSError as exc:
            raise from_oserror(exc, f"reserving {size} bytes for {self.name} in /dev/shm") from exc
        for suffix in (".a", ".b"):
            try:
                sem = p.Semaphore(self.name + suffix, p.O_CREX, mode=mode, initial_value=0)
            except p.ExistentialError as exc:
                raise EndpointExists(errno.EEXIST, f"semaphore {self.name}{suffix} already exists") from exc
            self.sems.append(sem)
        self.mm = mmap.mmap(self.shm_fd, size)
        words = memoryview(self.mm)[:64].cast("Q")
        off_a, off_b = _PAGE, _PAGE + (size - _PAGE) // 2
        _ring.initialize(memoryview(self.mm), off_a, cap, maxmsg)
        _ring.initialize(memoryview(self.mm), off_b, cap, maxmsg)
        words[_H_VERSION] = SEG_VERSION
        words[_H_CAPACITY] = cap
        words[_H_MAXMSG] = maxmsg
        words[_H_UID] = os.geteuid()
        words[_H_MAGIC] = SEG_MAGIC  # last: openers wait for it (initialised handshake)
        words.release()

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
        while True:
            size = os.fstat(self.shm_fd).st_size
            if size >= _PAGE:
                if self.mm is None:
                    self.mm = mmap.mmap(self.shm_fd, size)
                words = memoryview(self.mm)[:64].cast("Q")
                ok = words[_H_MAGIC] == SEG_MAGIC
                good = ok and words[_H_VERSION] == SEG_VERSION and words[_H_UID] == os.geteuid()
                cap = words[_H_CAPACITY]
                words.release()
                if ok:
                    if not good or _layout(cap)[2] != size:
                        raise IncompatibleEndpoint(f"{self.name} has another layout, version or owner")
                    break
            if deadline is not None and time.monotonic() >= deadline:
                raise IncompatibleEndpoint(f"{self.name} was never initialised (creator crashed?)")
            time.sleep(0.002)
        for suffix in (".a", ".b"):
            try:
                self.sems.append(p.Semaphore(self.name + suffix, 0))
            except p.ExistentialError as exc:
                raise IncompatibleEndpoint(f"semaphore {self.name}{suffix} is missing") from exc

    # -- accessors -------------------------------------------------------------------------
    def header(self) -> memoryview:
        assert self.mm is not None
        return memoryview(self.mm)[:128].cast("Q")

    def ring_offsets(self) -> tuple[int, int, int]:
        assert self.mm is not None
        size = len(self.mm)
        return _PAGE, _PAGE + (size - _PAGE) // 2, (size - _PAGE) // 2

    def unlink(self) -> None:
        """Remove the names (once; the objects live on while mapped/open)."""
        if not self.names_linked:
            return
        self.names_linked = False
        _unlink_all(self.name)

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
        if self.shm_fd >= 0:
            os.close(self.shm_fd)
            self.shm_fd = -1


def _unlink_all(name: str) -> None:
    p = _posix_ipc()
    for fn, n in (
        (p.unlink_shared_memory, name),
        (p.unlink_semaphore, name + ".a"),
        (p.unlink_semaphore, name + ".b"),
    ):
        try:
            fn(n)
        except (p.ExistentialError, p.PermissionsError):
            pass


def _is_stale(name: str) -> bool:
    """True when *name* is ours and its creator no longer holds its lock (crashed)."""
    p = _posix_ipc()
    try:
        shm = p.SharedMemory(name, 0)
    except (p.ExistentialError, p.PermissionsError):
        return False
    try:
        st = os.fstat(shm.fd)
        if st.st_uid != os.geteuid():
            return False
        return not _lock_held(shm.fd, 0) and not _lock_held(shm.fd, 1)
    finally:
        shm.close_fd()


def cleanup_stale(prefix: str = "ipckit") -> list[str]:
    """Remove this user's ``ipckit`` segments (and semaphores) whose ends are all dead."""
    removed: list[str] = []
    try:
        entries = os.listdir("/dev/shm")
    except OSError:
        return removed
    for entry in entries:
        if entry.startswith(prefix) and not entry.startswith("sem.") and _is_stale("/" + entry):
            _unlink_all("/" + entry)
            removed.append(entry)
    return removed


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
        # A private open file description for this end's liveness lock.
        self._lock_fd = os.open(f"/proc/self/fd/{seg.shm_fd}", os.O_RDWR | os.O_CLOEXEC)
        self._w = _ring.RingWriter(mm, out_off, size, maxmsg)
        self._r = _ring.RingReader(mm, in_off, size, maxmsg)
        self._own_waker = _PosixWaker(seg.sems[role])
        peer_waker = _PosixWaker(seg.sems[1 - role])
        self._w.wake_peer = peer_waker.post
        self._r.wake_peer = peer_waker.post
        self._wait = WaitStrategy(spin=options.spin)
        self._peer_dead = False
        self._view_out = False
        _live.add(self)

    # -- attach / liveness --------------------------------------------------------------------
    def _claim(self, deadline: Deadline) -> None:
        """Take this end's lock byte (waiting while a previous holder hands it over)."""
        while not _lock(self._lock_fd, self._role):
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelBusy(f"end {self._role} of {self._url} is attached elsewhere")
            time.sleep(0.002)
        self._hdr[_H_PID[self._role]] = os.getpid()
        self._hdr[_H_STATE[self._role]] = _ATTACHED
        peer_pid = self._hdr[_H_PID[1 - self._role]]
        self._wait.set_peer(peer_pid if peer_pid and peer_pid != os.getpid() else None)
        self._seg.sems[1 - self._role].release()  # a listener waiting in accept()

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
        # The creator removes the names once the peer attached from its own process.
        seg = self._seg
        if seg.names_linked and self._role == 0:
            peer = self._hdr[_H_PID[1]]
            if self._hdr[_H_STATE[1]] == _ATTACHED and peer and peer != os.getpid():
                seg.unlink()

    def _check(self) -> None:
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed")
        self._maybe_unlink()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            raise UnsupportedOperation(
                f"{self._url} was inherited through fork; pass it to the child as a multiprocessing "
                "argument under the spawn start method (it re-attaches by name)"
            )

    # -- hooks ------------------------------------------------------------------------------
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            self._check_pid()
            raise EndOfChannel(f"the peer closed {self._url}")
        if w.try_write(view):
            return
        self._finish_send(deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            raise EndOfChannel(f"the peer closed {self._url}")
        if w.write(views, total):
            return
        self._finish_send(deadline)

    def _finish_send(self, deadline: Deadline) -> None:
        self._check_pid()
        w = self._w
        while True:
            try:
                ok = self._wait.wait(
                    w.can_progress, deadline, self._own_waker, w.set_sleeping, self._send_check
                )
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
            ok = self._wait.wait(
                self._recv_ready, deadline, self._own_waker, r.set_sleeping, self._recv_check
            )
            view = r.peek(into)
            if view is None and not ok:
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
            from ..errors import BufferTooSmall

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
        mine = self._pid == os.getpid() and not self._handed_off
        try:
            if mine:
                self._hdr[_H_STATE[self._role]] = _CLOSED  # before dropping the lock: not a crash
                self._w.close()
                self._r.close()
                seg.sems[1 - self._role].release()
            else:
                self._w.detach()
                self._r.detach()
            if self._role == 0 and mine:
                seg.unlink()
        finally:
            self._hdr.release()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # drops the OFD lock
                self._lock_fd = -1
            seg.close()

    def __reduce__(self) -> Any:
        if not os.path.exists("/dev/shm" + self._seg.name):
            raise TypeError(
                f"{self._url}: this end can no longer be handed to another process (the peer attached "
                "and the names were removed); pass it to the child before using the channel"
            )
        if self._closed:
            raise TypeError(f"{self._url} is closed")
        self._r.release()
        self._hdr[_H_STATE[self._role]] = _HANDOFF
        self._handed_off = True
        if self._lock_fd >= 0:  # hand the liveness lock over: the receiving process takes it
            os.close(self._lock_fd)
            self._lock_fd = -1
        return _rebuild, (self._url, self._seg.name, self._role, self._options)


_live: weakref.WeakSet[ShmChannel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child must not keep the parent's liveness locks alive (the kernel drops an OFD
    # lock only when the last descriptor of it closes), or the parent's death would go unseen.
    for ch in list(_live):
        if ch._lock_fd >= 0:
            try:
                os.close(ch._lock_fd)
            except OSError:
                pass
            ch._lock_fd = -1
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        ch.close()
        raise
    return ch


@final
class ShmListener(Listener):
    """Owns ``shm://name`` until one peer attached (then the names are removed)."""

    def __init__(self, url: str, options: ShmOptions, seg: _Segment) -> None:
        super().__init__(url, options)
        self._seg: _Segment | None = seg
        self._chan: ShmChannel | None = ShmChannel(url, options, seg, 0)
        self._chan._claim(None)

    def _accept(self, deadline: Deadline) -> Channel:
        ch = self._chan
        if ch is None:
            raise UnsupportedOperation(f"{self._url} accepts a single peer, and it already connected")
        hdr = ch._hdr
        waker = ch._own_waker
        while hdr[_H_STATE[1]] != _ATTACHED:
            if self._closed:
                raise ChannelClosed(f"accept on closed listener {self._url}")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                from ..errors import ChannelTimeout

                raise ChannelTimeout(f"no peer connected to {self._url} before the deadline")
            waker.wait(0.1 if left is None else min(0.1, left))
        ch._wait.set_peer(int(hdr[_H_PID[1]]) or None)
        ch._seg.unlink()  # both attached: nothing can be left behind from now on
        self._chan = None
        return ch

    def _close(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None


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
        if not os.path.isdir("/dev/shm"):
            return False, "/dev/shm is not mounted"
        return True, ""

    def _create(self, name: str, opts: ShmOptions) -> _Segment:
        try:
            return _Segment(
                name,
                create=True,
                capacity=opts.capacity,
                max_message_size=opts.max_message_size,
                mode=opts.mode,
                deadline=None,
            )
        except EndpointExists:
            if not _is_stale(name):
                raise
            _unlink_all(name)  # a crashed creator's leftovers (ours, no live end)
            return _Segment(
                name,
                create=True,
                capacity=opts.capacity,
                max_message_size=opts.max_message_size,
                mode=opts.mode,
                deadline=None,
            )

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
            if not _lock(ch._lock_fd, 1):
                raise EndpointExists(errno.EEXIST, f"shm://{name[len(_PREFIX) :]} already has a peer")
            ch._claim(deadline)
        except BaseException:
            ch._handed_off = True  # never mark the listener's segment closed for a failed attach
            ch.close()
            raise
        return ch


_ = ResourceExhausted
