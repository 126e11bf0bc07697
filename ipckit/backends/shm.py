"""``shm://`` — a shared-memory ring pair (posix_ipc shared memory + named semaphores).

Features:
    The fast path.  One segment holds two single-producer/single-consumer rings (one per
    direction, ``ipckit.backends.common.ring.buffer``); sending copies the message into the ring once and
    receiving copies it out once (``recv_view`` returns a view into the ring: no copy;
    ``recv_bytes_into`` copies straight into the caller's buffer).  Messages larger than the ring
    stream through it in chunks, so a small ring carries large messages.  Waiting spins briefly,
    yields, then blocks on a semaphore that is only a wake-up hint (``ipckit.backends.common.ring.waiting``).
    pickle protocol 5 out-of-band buffers (numpy) are written straight from the object's memory
    into the ring.  A message of ``large_message`` bytes or more is written once into a slot of
    the segment's file beyond the rings and received as a view of it (``recv()`` of a numpy array,
    ``recv_view``: no copy at any ring capacity; ``ring/side.py``).

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
    ``large_message`` — messages of at least this many bytes go in a slot beside the rings and are
    received without a copy (default 1 MiB; 0: every message through the ring; docs/shm.md).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``, ``trust``.

Platform notes:
    Linux x86-64 (the ring relies on total store order).  An end passes to a child process as a
    ``multiprocessing.Process`` argument: under *spawn*/*forkserver* it is pickled as its name
    and the child re-attaches; under *fork* the child takes over the inherited end.  Close the
    end you handed over in the parent.  Any other end inherited through ``fork`` raises
    UnsupportedOperation in the child.  One thread may send while another receives.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import secrets
import struct
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from ..channel import Channel, Listener
from ..cleanup import StaleObject, Sweep
from ..deadline import Deadline
from ..errors import (
    ChannelBusy,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    from_oserror,
)
from ..limits import KernelLimit, fmt_bytes
from ..options import Options, option
from ..url import Endpoint
from .common.faults import fault
from .common.paths import NAME_RE, check_mode
from .common.posix import (
    SEM,
    SHM,
    SHM_DIR,
    NameSet,
    PosixName,
    check_opened,
    holding,
    import_posix_ipc,
    lock,
    lock_held,
    new_description,
    posix_error,
    reclaim_stale,
    refuse_foreign,
    sweep,
)
from .common.ring.channel import (
    ATTACHED,
    CLOSED,
    FREE,
    H_CAPACITY,
    H_MAGIC,
    H_PID,
    H_STATE,
    H_WORDS,
    HANDOFF,
    PAGE,
    TRAVEL_GRACE,
    RingBackend,
    RingChannel,
    RingListener,
    RingOptions,
    header_matches,
    in_transit,
    initialize_segment,
    layout,
    open_end,
)

__all__ = ["ShmBackend", "ShmChannel", "ShmListener", "ShmOptions", "cleanup_stale"]

SEG_MAGIC: Final = 0x314D48534B435049  # b"IPCKSHM1"
SEG_VERSION: Final = 4  # 3: each end's max_message_size in the header (H_LIMIT); 4: large-message slots
_PREFIX: Final = "/ipckit."
_TMP_PREFIX: Final = "/ipckit.tmp."  # segments being built, before link(2) publishes them
_TMP_GRACE: Final = 10.0  # seconds before an unlocked temporary segment counts as stale

# Segment header words (u64) on page 0: the common ones of the ring channel (magic .. pid), then ours.
_H_UNLINKED: Final = H_WORDS  # 1 once the names were removed (under the unlink lock)
_H_SIDE_NEXT: Final = H_WORDS + 1  # and + 2: the next unused slot offset of each direction (side.py)

# OFD lock bytes of the segment: 0 and 1 = liveness of each end, 2 = mutex around removing the names.
_LIVE_BYTES: Final = (0, 1)
_UNLINK_BYTE: Final = 2

_INIT_DEAD_CHECK: Final = 0.02  # an opener re-checks a lock-less uninitialised segment after this


@dataclass
class ShmOptions(RingOptions):
    """``capacity`` (bytes per direction) and ``spin`` plus the common options.

    ``large_message``: messages of at least this many bytes travel in a slot of their own beside
    the rings, received without a copy at any ring capacity (side.py); 0 keeps every message in
    the ring (default 1 MiB).
    """

    large_message: int = option(1024 * 1024, minimum=0, maximum=1 << 62)


def _names(name: str) -> NameSet:
    """A channel's POSIX names: the segment (the anchor) and its two wake-up semaphores."""
    return NameSet(PosixName(SHM, name), (PosixName(SEM, name + ".a"), PosixName(SEM, name + ".b")))


def _map(fd: int, size: int) -> mmap.mmap:
    """Map the segment with its pages populated up front: otherwise the first lap of each ring
    takes a page fault per 4 KiB in each process (measured: 256 faults per MiB written)."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc_sem() -> tuple[Any, Any, Any] | None:
    """libc's ``sem_open``, ``sem_timedwait`` and ``sem_close`` through ctypes, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc (and libpthread)
        sem_open, timedwait, sem_close = libc.sem_open, libc.sem_timedwait, libc.sem_close
    except (OSError, AttributeError):
        return None
    sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
    sem_open.restype = ctypes.c_void_p
    timedwait.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Timespec)]
    timedwait.restype = ctypes.c_int
    sem_close.argtypes = [ctypes.c_void_p]
    sem_close.restype = ctypes.c_int
    return sem_open, timedwait, sem_close


_LIBC_SEM = _libc_sem()


class _PosixWaker:
    """posix_ipc semaphore as a wake-up hint (never a mutex).

    The wait is libc's ``sem_timedwait`` through ctypes, on a handle of the same semaphore
    opened by name, not posix_ipc's ``acquire``: when a signal interrupts that, posix_ipc runs the
    Python handlers itself and replaces whatever they raised (all but KeyboardInterrupt) with its
    SignalError, so a handler's exception was lost and the wait ran on to its deadline.  ctypes
    returns EINTR untouched; the handler then runs as ``wait`` returns, and its exception
    propagates at once.  Without libc's functions (or if the name is gone already) the wait
    falls back to posix_ipc.
    """

    __slots__ = ("__weakref__", "_busy", "_handle", "_signal", "_ts", "sem")

    def __init__(self, sem: Any) -> None:
        p = import_posix_ipc()
        self.sem = sem
        self._busy = p.BusyError
        self._signal = p.SignalError
        self._ts = _Timespec()
        self._handle: int | None = None
        if _LIBC_SEM is not None:
            handle = _LIBC_SEM[0](os.fsencode(sem.name), 0)
            if handle:  # SEM_FAILED is NULL on glibc and musl
                self._handle = handle
                weakref.finalize(self, _LIBC_SEM[2], handle)

    def wait(self, timeout: float) -> bool:
        handle = self._handle
        if handle is None:
            try:
                self.sem.acquire(timeout)
                return True
            except (self._busy, self._signal):  # timeout, or EINTR: the caller re-checks its deadline
                return False
        ts = self._ts
        # sem_timedwait takes an absolute CLOCK_REALTIME time; a wake-up is a hint the caller
        # re-checks, so a day stands in for any longer wait (inf and 2**63 would not convert).
        when = time.time() + max(0.0, min(timeout, 86_400.0))
        sec = int(when)
        ts.tv_sec = sec
        ts.tv_nsec = min(int((when - sec) * 1e9), 999_999_999)
        # 0: a post was consumed; -1 with ETIMEDOUT or EINTR: the caller re-checks its deadline.
        assert _LIBC_SEM is not None
        return bool(_LIBC_SEM[1](handle, ctypes.byref(ts)) == 0)

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
        p = import_posix_ipc()
        self.name = name
        self.names = _names(name)
        self.shm_fd = -1
        self.lock_fd = -1  # the creator's liveness lock (byte 0), taken before anything else
        self.mm: mmap.mmap | None = None
        self.sems: list[Any] = []
        self.unlink_done = False
        self._made: list[PosixName] = []  # names this handle created, for a failed create
        try:
            if create:
                self._create(p, capacity, max_message_size, mode)
            else:
                self._open(p, deadline, mode)
        except BaseException as exc:
            for made in reversed(self._made):  # semaphores first, the segment's name last
                made.unlink()
            self.close()
            if isinstance(exc, (OSError, MemoryError)) and not isinstance(exc, IPCError):
                # Any step may meet a limit (descriptors for the lock, the mapping or a semaphore;
                # room in /dev/shm; memory): ResourceExhausted naming it, with nothing left behind.
                raise posix_error(exc, f"{'creating' if create else 'opening'} {name}") from exc
            raise
        self._made = []

    # -- creation / opening ------------------------------------------------------------------
    def _create(self, p: Any, capacity: int, maxmsg: int, mode: int) -> None:
        """Build the segment under a private temporary name, then publish it with ``link(2)``.

        ``link`` fails if the name exists, so it is the exclusive create (racing creators: one
        wins, the others see EndpointExists); and a segment appears under its name only fully
        initialised and with its creator's liveness lock held, so a racing creator never
        mistakes a segment being built for a stale one.
        """
        cap, _region, size = layout(capacity)
        tmp = PosixName(SHM, f"{_TMP_PREFIX}{secrets.token_hex(12)}")
        try:
            shm = p.SharedMemory(tmp.name, p.O_CREX, mode=mode, size=0)
        except (p.Error, OSError, ValueError) as exc:
            raise posix_error(exc, f"create {tmp.name}", creating=True) from exc
        self._made.append(tmp)
        self.shm_fd = shm.fd
        os.set_inheritable(self.shm_fd, False)
        self.lock_fd = new_description(self.shm_fd)
        lock(self.lock_fd, _LIVE_BYTES[0])
        fault("shm.after_create_before_init")
        os.fchmod(self.shm_fd, mode)  # independent of the umask
        try:
            os.ftruncate(self.shm_fd, size)
            os.posix_fallocate(self.shm_fd, 0, size)
        except OSError as exc:
            raise from_oserror(exc, f"reserving {size} bytes for {self.name} in /dev/shm") from exc
        self.mm = _map(self.shm_fd, size)
        initialize_segment(memoryview(self.mm), size, cap, maxmsg, SEG_VERSION)
        words = memoryview(self.mm)[:PAGE].cast("Q")
        words[H_MAGIC] = SEG_MAGIC  # last: openers wait for it
        words.release()
        try:
            os.link(tmp.path, self.names.anchor.path)
        except FileExistsError as exc:
            raise EndpointExists(errno.EEXIST, f"shared memory {self.name} already exists") from exc
        except OSError as exc:
            raise from_oserror(exc, f"publish {self.name} in {SHM_DIR}") from exc
        self._made.append(self.names.anchor)
        tmp.unlink()
        del self._made[0]
        for suffix in (".a", ".b"):
            try:
                sem = p.Semaphore(self.name + suffix, p.O_CREX, mode=mode, initial_value=0)
            except p.ExistentialError:
                # We own the segment's name, so a semaphore of that name is a crashed run's leftover
                # -- if it is ours: another user's is a squatter, refused and left alone (S2, S18).
                refuse_foreign(PosixName(SEM, self.name + suffix))
                try:
                    p.unlink_semaphore(self.name + suffix)
                    sem = p.Semaphore(self.name + suffix, p.O_CREX, mode=mode, initial_value=0)
                except p.Error as exc:
                    raise EndpointExists(errno.EEXIST, f"semaphore {self.name}{suffix} already exists") from exc
            self._made.insert(1, PosixName(SEM, self.name + suffix))
            self.sems.append(sem)

    def _open(self, p: Any, deadline: Deadline, mode: int) -> None:
        while True:
            try:
                shm = p.SharedMemory(self.name, 0)
                break
            except p.ExistentialError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise posix_error(exc, f"no shm endpoint {self.name}") from exc
                time.sleep(0.005)
            except (p.Error, OSError, ValueError) as exc:
                raise posix_error(exc, f"cannot open {self.name}") from exc
        self.shm_fd = shm.fd
        os.set_inheritable(self.shm_fd, False)
        check_opened(self.shm_fd, self.name)
        # No wider than this end's own mode (S5): a segment the group may map is no proof that the
        # peer is this user, and this end's serializer was chosen from its mode (issue 10, B.9).
        check_mode(f"shared memory {self.name}", os.fstat(self.shm_fd).st_mode, mode)
        # Wait for the creator's magic (it sizes the segment first, writes the magic last).
        dead_since: float | None = None
        while True:
            size = os.fstat(self.shm_fd).st_size
            magic = 0
            if size >= PAGE:
                # The header first, through the file: the file grows past the rings once large
                # messages use slots (side.py), and only the rings are mapped here.
                words = struct.unpack(f"{H_WORDS}Q", os.pread(self.shm_fd, H_WORDS * 8, 0))
                magic = words[H_MAGIC]
                if magic == SEG_MAGIC:
                    try:
                        ring_bytes = layout(int(words[H_CAPACITY]))[2]
                    except ValueError:
                        ring_bytes = 0
                    if not ring_bytes or ring_bytes > size or not header_matches(words, SEG_MAGIC, SEG_VERSION,
                                                                                 ring_bytes):
                        raise IncompatibleEndpoint(f"{self.name} has another layout, version or owner")
                    self.mm = _map(self.shm_fd, ring_bytes)
                    break
                if magic != 0:
                    raise IncompatibleEndpoint(f"{self.name} is not an ipckit segment (magic {magic:#x})")
            # Not initialised yet.  A creator that holds no lock is dead (or foreign): give up early.
            now = time.monotonic()
            if lock_held(self.shm_fd, _LIVE_BYTES[0]) or lock_held(self.shm_fd, _LIVE_BYTES[1]):
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
                    if not lock_held(self.shm_fd, _LIVE_BYTES[0]) or (
                        deadline is not None and time.monotonic() >= deadline
                    ):
                        raise IncompatibleEndpoint(f"semaphore {self.name}{suffix} is missing") from exc
                    time.sleep(0.001)
                except p.Error as exc:
                    raise posix_error(exc, f"cannot open {self.name}{suffix}", kind=SEM) from exc

    # -- accessors -------------------------------------------------------------------------
    def header(self) -> memoryview:
        assert self.mm is not None
        return memoryview(self.mm)[:128].cast("Q")

    def unlink(self) -> None:
        """Remove the names, once for the whole channel (both ends, all processes).

        Under the segment's unlink lock: skipped if the other end did it already (header flag)
        or if the name now refers to a newer object (a name is never unlinked twice, so a newer
        channel's names are never removed).
        """
        if self.unlink_done or self.shm_fd < 0 or self.mm is None:
            return
        self.unlink_done = True
        words = memoryview(self.mm)[:PAGE].cast("Q")
        try:
            with holding(self.shm_fd, _UNLINK_BYTE):
                if words[_H_UNLINKED] == 0:
                    self.names.unlink_if_ours(self.shm_fd)
                    words[_H_UNLINKED] = 1
        finally:
            words.release()

    def names_exist(self) -> bool:
        return self.shm_fd >= 0 and self.names.names_object(self.shm_fd)

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


def _settled_ipckit_segment(name: str, fd: int, st: os.stat_result) -> bool:
    """The segment *name*, open as *fd*, is an ipckit segment no creator is building right now."""
    if name.startswith(_TMP_PREFIX) and time.time() - st.st_ctime < _TMP_GRACE:
        return False  # possibly a segment being built right now
    if st.st_size >= 8:
        magic = struct.unpack("Q", os.pread(fd, 8, 0))[0]
        if magic not in (0, SEG_MAGIC):
            return False  # not an ipckit segment: never remove it
    return True


def _travelling(fd: int) -> bool:
    """An end of the segment open as *fd* is on its way to a child (it holds no lock until it
    arrives), for at most TRAVEL_GRACE seconds."""
    data = os.pread(fd, H_WORDS * 8, 0)
    return len(data) == H_WORDS * 8 and in_transit(struct.unpack(f"{H_WORDS}Q", data), SEG_MAGIC, SEG_VERSION)


def _reclaim_stale(name: str) -> bool:
    """Remove *name*'s objects if they are ours and no end is alive or travelling; True if the name
    is free now."""
    return reclaim_stale(_names(name), alive=_LIVE_BYTES, mutex=_UNLINK_BYTE,
                         ours=lambda fd, st: _settled_ipckit_segment(name, fd, st), in_use=_travelling)


def _reclaimable(name: str) -> bool:
    """What :func:`_reclaim_stale` would decide about the segment *name* that no process holds
    (so none locks it), read-only: for the dry run of ``ipckit cleanup``."""
    try:
        fd = PosixName(SHM, name).open()
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return st.st_uid == os.geteuid() and _settled_ipckit_segment(name, fd, st) and not _travelling(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def _segment_of(semaphore: str) -> str:
    """The segment name (``/ipckit.x``) of a channel's semaphore entry (``sem.ipckit.x.a``)."""
    return "/" + semaphore.removeprefix("sem.")[:-2]


def _sweep_temporaries() -> None:
    """Remove temporary segments of creators that crashed before publishing them."""
    sweep(SHM, _TMP_PREFIX[1:], _reclaim_stale)


def cleanup_stale(prefix: str = "ipckit") -> list[str]:
    """Remove this user's ``ipckit`` segments (and semaphores) whose ends are all dead."""
    return sweep(SHM, prefix, _reclaim_stale)


@final
class ShmChannel(RingChannel):
    """One end of a ``shm://`` channel.  Role 0 created the segment, role 1 attached to it."""

    liveness_every: ClassVar[int] = 64  # sends between checks of the reader's liveness lock (one fcntl)

    def __init__(self, url: str, options: ShmOptions, seg: _Segment, role: int) -> None:
        mm = seg.mm
        assert mm is not None
        hdr = seg.header()
        try:
            super().__init__(url, options, role, mm, hdr, len(mm), _PosixWaker(seg.sems[role]),
                             _PosixWaker(seg.sems[1 - role]))
            self._seg = seg
            self._lock_fd = -1
            self._enable_side(seg.shm_fd, len(mm), _H_SIDE_NEXT, options.large_message)
            # A private open file description for this end's liveness lock (the creator's is ready).
            if seg.lock_fd >= 0 and role == 0:
                self._lock_fd, seg.lock_fd = seg.lock_fd, -1
            else:
                self._lock_fd = new_description(seg.shm_fd)
        except BaseException:
            self._closed = True  # half-built: the caller releases the segment
            for ring in (getattr(self, "_w", None), getattr(self, "_r", None)):
                if ring is not None:
                    ring.detach()
            hdr.release()
            raise

    # -- attach / liveness --------------------------------------------------------------------
    def _claim(self, deadline: Deadline) -> None:
        """Take this end's lock byte (waiting while a previous holder hands it over)."""
        while not lock(self._lock_fd, self._role):
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelBusy(f"end {self._role} of {self._url} is attached elsewhere")
            time.sleep(0.002)
        self._attached_here()
        self._peer_waker.post()  # a listener waiting in accept()

    def _attached_here(self) -> None:
        """Publish this process as the end's holder; remove the names once both ends are placed."""
        self._mark_attached()
        self._maybe_unlink()

    def _peer_gone(self) -> bool:
        """True when the peer end was attached and its lock is free (it died)."""
        if self._peer_dead:
            return True
        peer = 1 - self._role
        state = self._hdr[H_STATE[peer]]
        if state != ATTACHED:
            return False
        if lock_held(self._seg.shm_fd, peer):
            return False
        # Re-read: a clean close sets CLOSED before dropping the lock.
        self._peer_dead = self._hdr[H_STATE[peer]] == ATTACHED
        return self._peer_dead

    def _maybe_unlink(self) -> None:
        # The names are needed only until both ends are in their processes (or one closed).
        seg = self._seg
        if seg.unlink_done:
            return
        hdr = self._hdr
        peer_state = hdr[H_STATE[1 - self._role]]
        peer_pid = hdr[H_PID[1 - self._role]]
        if peer_state == CLOSED or (peer_state == ATTACHED and peer_pid and peer_pid != os.getpid()):
            seg.unlink()

    def _check(self) -> None:
        super()._check()
        self._maybe_unlink()

    def _both_attached(self) -> None:
        self._seg.unlink()

    # -- closing / hand-off ------------------------------------------------------------------
    def _end_closed(self, mine: bool) -> None:
        # Names are no longer needed, unless the peer end is on its way to another process.
        if mine and self._hdr[H_STATE[1 - self._role]] != HANDOFF:
            self._seg.unlink()

    def _release_segment(self) -> None:
        self._hdr.release()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # drops the OFD lock
            self._lock_fd = -1
        self._seg.close()

    def _check_handoff(self) -> None:
        if not self._seg.names_exist():
            raise TypeError(
                f"{self._url}: this end can no longer be handed to another process (the peer attached "
                "and the names were removed); pass it to the child before using the channel"
            )

    def _bell_name(self) -> str:
        # The doorbell FIFO's name (ring/doorbell.py): the segment's, which both ends know.
        return "shm." + self._seg.name.rpartition("/")[2].removeprefix("ipckit.")

    def _handoff_args(self) -> tuple[Any, ...]:
        if self._lock_fd >= 0:  # hand the liveness lock over: the receiving process takes it
            os.close(self._lock_fd)
            self._lock_fd = -1
        return _rebuild, (self._url, self._seg.name, self._role, self._options)

    def _take_over_after_fork(self) -> None:
        # The lock descriptor is a copy of the parent's, so the liveness lock stays held.
        self._attached_here()

    def _drop_liveness_copy(self) -> None:
        if self._lock_fd >= 0:
            try:
                os.close(self._lock_fd)  # the parent's death must stay visible to the peer
            except OSError:
                pass
            self._lock_fd = -1


def _rebuild(url: str, name: str, role: int, options: ShmOptions) -> ShmChannel:
    # The segment of a handed end exists, initialised, or is gone for good: no wait for its name.
    try:
        seg = _Segment(name, create=False, capacity=0, max_message_size=0, mode=options.mode,
                       deadline=time.monotonic())
    except EndpointNotFound as exc:
        raise EndpointNotFound(
            errno.ENOENT, f"{url}: the channel is gone (every end closed, or `ipckit cleanup` reclaimed it "
            f"after this end travelled for more than {TRAVEL_GRACE:.0f} s)") from exc
    deadline = time.monotonic() + 10.0  # the previous holder may still be handing the lock over
    return open_end(lambda: ShmChannel(url, options, seg, role), seg.close, lambda ch: ch._claim(deadline))


@final
class ShmListener(RingListener):
    """Owns ``shm://name`` until one peer attached (then the names are removed)."""

    def __init__(self, url: str, options: ShmOptions, seg: _Segment) -> None:
        ch = ShmChannel(url, options, seg, 0)
        super().__init__(url, options, ch)
        ch._claim(None)


def _check_name(address: str) -> str:
    name = address.strip("/")
    if not NAME_RE.match(name):
        raise InvalidAddress(f"shm name {address!r} must match [A-Za-z0-9._-]{{1,200}}")
    return _PREFIX + name


@final
class ShmBackend(RingBackend):
    scheme: ClassVar[str] = "shm"
    options_class: ClassVar[type[Options]] = ShmOptions

    @classmethod
    def _provider_available(cls) -> tuple[bool, str]:
        try:
            import_posix_ipc()
        except ImportError:
            return False, "pip install posix_ipc"
        if not os.path.isdir(SHM_DIR):
            return False, "/dev/shm is not mounted"
        return True, ""

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        meaning = "POSIX shared memory filesystem (shm://)"
        try:
            st = os.statvfs(SHM_DIR)
        except OSError:
            return [KernelLimit(SHM_DIR, "n/a", meaning)]
        return [KernelLimit(f"{SHM_DIR} size", fmt_bytes(st.f_blocks * st.f_frsize), meaning),
                KernelLimit(f"{SHM_DIR} free", fmt_bytes(st.f_bavail * st.f_frsize), "room for new shm:// rings")]

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        # Segments and semaphores (sem.<name>) no process has open or mapped (every end maps
        # both), judged as remove_stale judges them: not a segment being built, not one with an
        # end on its way to a child (TRAVEL_GRACE); a channel's semaphores go with its segment.
        unheld = sweep.unheld_entries(SHM_DIR, "no live process has it open or mapped", strip="sem.")
        entries = [os.path.basename(obj.path) for obj in unheld]
        stale = {"/" + entry for entry in entries if not entry.startswith("sem.") and _reclaimable("/" + entry)}
        found = []
        for obj in unheld:
            entry = os.path.basename(obj.path)
            if entry.startswith("sem."):
                seg = _segment_of(entry)
                if seg not in stale and PosixName(SHM, seg).stat() is not None:
                    continue  # its segment is kept (or held), and so is it
            elif "/" + entry not in stale:
                continue
            found.append(obj)
        return found

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        entry = os.path.basename(obj.path)
        if entry.startswith("sem."):
            seg = _segment_of(entry)
            if PosixName(SHM, seg).stat() is None:
                return super().remove_stale(obj)  # a semaphore whose segment is gone already
            return _reclaim_stale(seg) and not os.path.lexists(obj.path)  # with its segment, as judged
        if not os.path.lexists(obj.path):
            return False
        try:
            import_posix_ipc()
        except ImportError:  # without posix_ipc no end of ours can be racing for the name here
            return super().remove_stale(obj)
        # The lock-based reclaim: it removes the semaphores with the segment, and never a
        # segment a new endpoint created under the name since the sweep.
        return _reclaim_stale("/" + entry) and not os.path.lexists(obj.path)

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
                refuse_foreign(PosixName(SHM, name))
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
                name, create=False, capacity=0, max_message_size=0, mode=opts.mode, deadline=time.monotonic() + 5
            )
            b = open_end(lambda: ShmChannel("shm://", opts, seg_b, 1), seg_b.close, lambda ch: ch._claim(None))
        except BaseException:
            a.close()
            raise
        a._learn_peer_from_header()
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
            seg = _Segment(name, create=False, capacity=0, max_message_size=0, mode=opts.mode, deadline=deadline)
        except OSError as exc:
            if isinstance(exc, IPCError):
                raise
            raise from_oserror(exc, f"open {name}") from exc
        url = f"shm://{name[len(_PREFIX) :]}"

        def claim(ch: ShmChannel) -> None:
            if not lock(ch._lock_fd, 1) or ch._hdr[H_STATE[1]] != FREE:
                raise EndpointExists(errno.EEXIST, f"{url} already has a peer")
            ch._claim(deadline)

        return open_end(lambda: ShmChannel(url, opts, seg, 1), seg.close, claim)

