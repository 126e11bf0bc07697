"""``sysv+shm://`` — the shared-memory ring on SysV shared memory and SysV semaphores.

Features:
    The same two single-producer/single-consumer rings as ``shm://`` (``ipckit.backends.common.ring.buffer``,
    same wait strategy), in one SysV segment (``sysv_ipc.SharedMemory``).  A send copies into
    the ring once, a receive copies out once, ``recv_view`` is copy-free, pickle protocol 5
    buffers are written straight into the ring.  One SysV semaphore set of four holds the two
    wake-up hints (counting, never ``SEM_UNDO``) and the two "alive" semaphores (each end holds
    +1 with ``SEM_UNDO``; the kernel undoes it when the holder dies, so a SIGKILLed peer is
    PeerDied once its committed messages are drained).  Every semaphore wait is timed, through
    ``semtimedop`` (``ipckit.backends.common.sysv``), whichever sysv_ipc build is installed.

    Lifecycle: keys are random, created with ``IPC_CREAT|IPC_EXCL`` (a taken key is retried
    with a new one; never ``ftok``), mode 0600 (SysV ignores the umask).  Each segment is
    recorded in a 0600 manifest file in a private 0700 directory (``$XDG_RUNTIME_DIR`` or
    ``/tmp``, ``ipckit-sysv-<uid>``; ``~/.cache/ipckit-sysv-<uid>`` if another user took that
    name in ``/tmp`` first); a named endpoint's manifest is its rendezvous file.
    Openers check the file's and the objects' owner and mode (``IPC_STAT`` uid/cuid, no
    group/other bits beyond the opener's ``mode``) and the segment's initialised magic and nonce.
    A ``mode`` with group bits (pass it to both ends) makes the channel untrusted: a group member
    could attach by id and write into the rings, so pickle then needs ``trust=True``.  The segment is marked
    ``IPC_RMID`` as soon as both ends are attached from their own processes (the kernel frees it
    at the last detach, even after ``kill -9``) -- not while an end may still travel to a child,
    which re-attaches by id; the creator removes the semaphores and the manifest when it closes,
    the other end when the creator died, or closed while that end was travelling.  Objects of
    crashed processes are reclaimed when the name is used again and by :func:`cleanup_stale`.

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
    the end you hand over in the parent, right after ``start()`` if you like: until the child
    has claimed it the end is "handing off", which the peer's liveness check honours.  One
    thread may send while another receives.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
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
    ChannelBroken,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    PermissionDenied,
    from_oserror,
)
from ..limits import KernelLimit, sysctl
from ..options import Options
from ..url import Endpoint
from .common import paths as _paths
from .common.faults import fault
from .common.paths import NAME_RE
from .common.ring.channel import (
    ATTACHED,
    CLOSED,
    FREE,
    H_MAGIC,
    H_PID,
    H_STATE,
    H_WORDS,
    HANDOFF,
    PAGE,
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
from .common.sysv import (
    RecordFormat,
    TimedSemaphore,
    check_private_dir,
    check_sem_set,
    ensure_registry_dir,
    getval,
    hold_alive,
    import_sysv_ipc,
    locate_record,
    open_record,
    owned_row,
    record_int,
    registry_candidates,
    registry_dir,
    registry_dirs,
    release_alive,
    sem_create,
    sem_remove,
    semop_available,
    shm_create,
    sysv_error,
)

__all__ = ["SysvShmBackend", "SysvShmChannel", "SysvShmListener", "SysvShmOptions", "cleanup_stale"]

SEG_MAGIC: Final = 0x31565953484B4349  # b"ICKHSYV1"
SEG_VERSION: Final = 2  # 2: each end's max_message_size in the header (H_LIMIT)

# Segment header words (u64) on page 0: the common ones of the ring channel (magic .. pid), then ours.
_H_NONCE: Final = (H_WORDS, H_WORDS + 1)
_H_SEMID, _H_SEMKEY, _H_PUBLISHED, _H_SEMS_GONE = H_WORDS + 2, H_WORDS + 3, H_WORDS + 4, H_WORDS + 5
_HDR_BYTES: Final = (_H_SEMS_GONE + 1) * 8  # the header view: every word above

# The semaphore set: two wake-up hints (counting), two "alive" semaphores (SEM_UNDO).
_WAKE: Final = (0, 1)
_ALIVE: Final = (2, 3)
_NSEMS: Final = 4

_HANDOFF_GRACE: Final = 10.0  # seconds a handed-over end may take to re-attach before it counts as dead



def _in_transit(fields: dict[str, str]) -> bool:
    """An end of the channel a record names is on its way to a child (read from the segment's
    header, attached read-only for a moment): its record is kept for TRAVEL_GRACE seconds."""
    shmid, shmkey = record_int(fields, "shmid"), record_int(fields, "shmkey")
    if shmid is None or shmkey is None or owned_row("shm", shmid, shmkey) is None:
        return False
    try:
        sysv_ipc = import_sysv_ipc()
        shm = sysv_ipc.attach(shmid, flags=sysv_ipc.SHM_RDONLY)
    except Exception:  # gone meanwhile (ExistentialError, or ValueError for a freed id)
        return False
    try:
        data = bytes(shm.read(_HDR_BYTES, 0))
    except Exception:
        return False
    finally:
        _detach_quiet(shm)
    words = struct.unpack(f"{_HDR_BYTES // 8}Q", data)
    nonce = words[_H_NONCE[0]] | words[_H_NONCE[1]] << 64
    return fields.get("nonce") == f"{nonce:032x}" and in_transit(words, SEG_MAGIC, SEG_VERSION)


#: This scheme's manifests (rendezvous records); the tag is the one every release wrote.
_RECORD: Final = RecordFormat(tag="ipckit-sysv-shm/1", what="sysv+shm", nsems=_NSEMS, alive=_ALIVE,
                              in_transit=_in_transit)
_DIR_WHAT: Final = "a sysv+shm:// rendezvous directory"


@dataclass
class SysvShmOptions(RingOptions):
    """Same options as ``shm://``: ``capacity`` and ``spin`` plus the common ones."""


def _sem_create(mode: int) -> tuple[int, int]:
    """The channel's set of four semaphores: ``(key, semid)``, with the creator's alive held."""
    key, semid = sem_create(_NSEMS, mode)
    code = hold_alive(semid, _ALIVE[0])
    if code:
        sem_remove(semid)
        raise from_oserror(OSError(code, os.strerror(code)), "claiming the creator's alive semaphore")
    return key, semid


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove this user's ``sysv+shm`` objects whose every end is dead; return the manifests removed.

    Scans the private manifest directory (or *directory*, e.g. one holding ``sysv+shm:///dir/name``
    rendezvous files).  Never touches objects of other users or of live processes.
    """
    return _RECORD.sweep(directory)


# --------------------------------------------------------------------------- the segment
def _detach_quiet(shm: Any) -> None:
    try:
        shm.detach()
    except Exception:
        pass


def _map(shm: Any) -> Any:
    """A ctypes array over the attachment (detached by :meth:`_Segment.close`'s finalizer)."""
    array_type = ctypes.c_ubyte * int(shm.size)
    mapping_type: Any = type("_SysvMapping", (array_type,), {})  # a Python subclass takes weak references
    return mapping_type.from_address(int(shm.address))


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
        self.removed = False  # this attachment marked the segment IPC_RMID (or saw it done)
        self._mem: Any = _map(shm)
        self.buf: memoryview | None = memoryview(self._mem).cast("B")
        self.hdr: memoryview = self.buf[:_HDR_BYTES].cast("Q")

        # The registry directory this channel's record goes to: the one its manifest is in (a pair's,
        # or a named endpoint's there), chosen when it was created and kept, so that the record is
        # found where it was put even if registry_dir() changes meanwhile (issue 10, B.11).
        directory = os.path.dirname(manifest)
        self.registry: str | None = directory if directory in registry_candidates() else None

    @property
    def registry_file(self) -> str:
        if self.registry is None:  # a rendezvous file elsewhere: the registry of the day, then kept
            self.registry = registry_dir()
        return os.path.join(self.registry, f"reg.{self.nonce:032x}")

    def current_manifest(self) -> str:
        return self.registry_file if self.hdr[_H_PUBLISHED] else self.manifest

    def ref(self) -> tuple[int, int, int, int, int, str]:
        return self.shmid, self.semid, self.semkey, self.shmkey, self.nonce, self.manifest

    def mark_removed(self) -> None:
        """IPC_RMID the segment (freed at the last detach; attachers by id still work on Linux)."""
        self.removed = True
        try:
            self.shm.remove()
        except Exception:
            pass

    def close(self) -> None:
        mem, self._mem = self._mem, None
        if mem is None:
            return
        self.hdr.release()
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        # Detach once no view of the mapping is left (a recv_view the caller still holds keeps it
        # mapped).  The finalizer is armed only now, once nothing of ipckit's uses the mapping any
        # more: armed earlier, it ran before an open end's close in two places, which then wrote
        # into a detached segment, a segfault (issue 10, B.7c) -- at interpreter exit (the atexit
        # hook of weakref.finalize may run before ipckit's close-at-exit), and when the garbage
        # collector breaks a cycle holding an end (weakref callbacks run before __del__).  A
        # segment never closed stays attached until the process exits; the kernel detaches it.
        weakref.finalize(mem, _detach_quiet, self.shm).atexit = False


def _create_segment(manifest: str, capacity: int, maxmsg: int, mode: int, *, rendezvous: bool) -> _Segment:
    """Create the manifest (locked while building), the semaphore set, the segment; magic last.

    Raises:
        FileExistsError: *manifest* exists (the caller checks for a stale one).
    """
    cap, _region, size = layout(capacity)
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
        _RECORD.write(fd, fields, False)
        shmkey, shm = shm_create(size, mode)
        fields.update(shmkey=shmkey, shmid=shm.id, nonce=f"{nonce:032x}")
        _RECORD.write(fd, fields, False)
        fault("sysv+shm.after_create_before_init")
        seg = _Segment(shm, semid, semkey, shmkey, nonce, manifest)
        buf = seg.buf
        assert buf is not None
        initialize_segment(buf, size, cap, maxmsg, SEG_VERSION)
        hdr = seg.hdr
        hdr[_H_NONCE[0]] = nonce & 0xFFFFFFFFFFFFFFFF
        hdr[_H_NONCE[1]] = nonce >> 64
        hdr[_H_SEMID] = semid
        hdr[_H_SEMKEY] = semkey
        hdr[_H_PUBLISHED] = 0 if rendezvous else 1
        hdr[H_MAGIC] = SEG_MAGIC  # last: openers check it (initialised handshake)
        _RECORD.write(fd, fields, True)
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
            sem_remove(semid)
        _paths.unlink_quiet(manifest)
        raise
    finally:
        os.close(fd)


def _attach(shm: Any, semid: int, semkey: int, shmkey: int, nonce: int | None, manifest: str, what: str,
            mode: int) -> _Segment:
    """Validate an attachment (owner, mode, size, magic, nonce, semaphore set) and wrap it.

    The segment and the set may grant group and others no more than this end's *mode* (S5): a
    wider one is no proof that the peer is this user, and this end's serializer was chosen from
    its mode (issue 10, B.9).
    """
    euid = os.geteuid()
    try:
        if int(shm.uid) != euid or int(shm.cuid) != euid:
            raise PermissionDenied(
                errno.EACCES,
                f"{what}: segment belongs to uid {shm.uid} (creator {shm.cuid}) with mode {int(shm.mode) & 0o777:o}",
            )
        _paths.check_mode(f"{what}: the segment", int(shm.mode), mode)
        if int(shm.size) < PAGE:
            raise IncompatibleEndpoint(f"{what}: segment of {shm.size} bytes is not an ipckit ring")
        check_sem_set(semid, semkey, _NSEMS, what, mode=mode)
        seg = _Segment(shm, semid, semkey, shmkey, 0, manifest)
    except BaseException:
        _detach_quiet(shm)
        raise
    hdr = seg.hdr
    found = int(hdr[_H_NONCE[0]]) | int(hdr[_H_NONCE[1]]) << 64
    if (
        not header_matches(hdr, SEG_MAGIC, SEG_VERSION, int(shm.size))
        or (nonce is not None and found != nonce)
        or hdr[_H_SEMID] != semid
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
class SysvShmChannel(RingChannel):
    """One end of a ``sysv+shm://`` channel.  Role 0 created the segment, role 1 attached."""

    liveness_every: ClassVar[int] = 32  # sends between checks of the reader's alive semaphore (one semctl)

    def __init__(self, url: str, options: SysvShmOptions, seg: _Segment, role: int) -> None:
        buf = seg.buf
        assert buf is not None
        hdr = seg.hdr
        super().__init__(url, options, role, buf, hdr, int(seg.shm.size), _SysvWaker(seg.semid, _WAKE[role], hdr),
                         _SysvWaker(seg.semid, _WAKE[1 - role], hdr))
        self._seg = seg
        self._alive_held = False
        self._handoff_since: float | None = None

    def _bell_name(self) -> str:
        # The doorbell FIFO's name (ring/doorbell.py): the segment's nonce, which both ends read.
        return f"sysv.{self._seg.nonce:032x}"

    # -- attach / liveness --------------------------------------------------------------------
    def _claim(self, *, exclusive: bool, adopt: bool = False) -> None:
        """Hold this end's alive semaphore (SEM_UNDO) and mark the end attached."""
        role = self._role
        if not adopt:
            code = hold_alive(self._seg.semid, _ALIVE[role], exclusive=exclusive)
            if code == errno.EAGAIN:
                raise EndpointExists(errno.EEXIST, f"{self._url} already has a peer")
            if code:
                raise ChannelBroken(f"cannot attach to {self._url}: {os.strerror(code)} (the peer closed it?)")
        self._alive_held = True
        if exclusive and self._hdr[H_STATE[role]] != FREE:
            raise EndpointExists(errno.EEXIST, f"{self._url} already had a peer")
        self._mark_attached()  # after the alive count is held: see _peer_gone
        if role == 1:
            self._peer_waker.post()  # a listener waiting in accept()
        self._maybe_remove()

    def _maybe_remove(self) -> None:
        """IPC_RMID the segment once both ends are attached from their own processes.

        Not before, as ``shm://`` keeps its names: until then an end may still travel to a
        spawned child, which re-attaches by id, and a segment marked for removal is freed at its
        last detach -- the parent closing both ends of a pair right after starting the two
        children would free it under them (issue 10, B.7a).  A named endpoint's segment waits for
        ``accept()`` too (its rendezvous record names the key).  Until the mark, the segment is
        in the channel's record, so a crash leaves nothing :func:`cleanup_stale` cannot find.
        """
        seg = self._seg
        hdr = self._hdr
        if seg.removed or not hdr[_H_PUBLISHED] or self._handed_off or self._pid != os.getpid():
            return  # (a copy in a process that does not own the end decides nothing)
        peer = 1 - self._role
        pid = hdr[H_PID[peer]]
        if hdr[H_STATE[peer]] == ATTACHED and pid and pid != os.getpid():
            seg.mark_removed()

    def _check(self) -> None:
        super()._check()
        # Before each sleep of a wait: two children that claimed their ends at the same moment
        # may each have read the other as still travelling.
        if not self._seg.removed:
            self._maybe_remove()

    def _release_alive(self) -> None:
        if self._alive_held:
            self._alive_held = False
            if not self._hdr[_H_SEMS_GONE]:
                release_alive(self._seg.semid, _ALIVE[self._role])

    def _peer_gone(self) -> bool:
        """True when the peer end was attached and its process no longer holds its alive semaphore.

        A zero count alone is not death: a clean close sets CLOSED before it releases; an end on
        its way to a child is HANDOFF (set by the parent before the fork or the pickling) until
        the child, which takes its count *before* it publishes its pid and ATTACHED, has claimed
        it -- the parent's close may release the parent's count first (issue 10, B.7b).  So the
        words are read around the count, and only an end that stayed ATTACHED in the same
        process throughout is dead; a hand-off that never completes is, after a grace period.
        """
        if self._peer_dead:
            return True
        peer = 1 - self._role
        hdr = self._hdr
        pid = hdr[H_PID[peer]]
        state = hdr[H_STATE[peer]]
        if state not in (ATTACHED, HANDOFF) or hdr[_H_SEMS_GONE]:
            return False
        try:
            alive = getval(self._seg.semid, _ALIVE[peer])
        except OSError:
            alive = 0  # the set vanished while the peer is attached: nobody can wake it any more
        if alive:
            self._handoff_since = None
            return False
        now_state = hdr[H_STATE[peer]]
        if now_state == ATTACHED:
            # Claimed by another process meanwhile (it held its count before these words): alive.
            self._peer_dead = state == ATTACHED and hdr[H_PID[peer]] == pid
        elif now_state == HANDOFF:
            now = time.monotonic()
            if self._handoff_since is None:
                self._handoff_since = now
            self._peer_dead = now - self._handoff_since > _HANDOFF_GRACE
        return self._peer_dead

    def _publish(self) -> None:
        """Creator, peer attached: free the rendezvous name (the record moves to the registry),
        and mark the segment for removal if the peer is in another process."""
        seg = self._seg
        if self._role != 0 or seg.hdr[_H_PUBLISHED]:
            return
        fields = {"semkey": seg.semkey, "semid": seg.semid, "shmkey": seg.shmkey, "shmid": seg.shmid,
                  "nonce": f"{seg.nonce:032x}"}
        path = seg.registry_file
        for _ in range(8):
            ensure_registry_dir(os.path.dirname(path), _DIR_WHAT)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # the directory was just removed by a closing channel
                continue
            except OSError as exc:
                raise from_oserror(exc, f"creating {path}") from exc
            try:
                os.fchmod(fd, 0o600)
                _RECORD.write(fd, fields, True)
            finally:
                os.close(fd)
            break
        seg.hdr[_H_PUBLISHED] = 1
        _RECORD.unlink_if_ours(seg.manifest, f"{seg.nonce:032x}")
        self._maybe_remove()  # the peer connected from its own process (as it usually does)

    def _both_attached(self) -> None:
        self._publish()  # nothing can be left behind from now on

    # -- closing / hand-off ------------------------------------------------------------------
    def _end_closed(self, mine: bool) -> None:
        self._release_alive()
        if not mine:
            return
        # The creator removes everything -- unless the other end is still on its way to a child,
        # which re-attaches by id (as shm:// keeps its names for it): that end removes it all when
        # it closes, as it does what a dead creator left.  Both ends publish their state before
        # reading the other's, with a semaphore call in between, so one of them always sees the
        # other closed.
        peer_state = self._hdr[H_STATE[1 - self._role]]
        if self._role == 0:
            if peer_state != HANDOFF:
                _remove_all(self._seg)
        elif peer_state == CLOSED or self._peer_gone():
            _remove_all(self._seg)

    def _release_segment(self) -> None:
        self._seg.close()

    def _check_handoff(self) -> None:
        # The other end closed and removed the objects: the segment lives on only through this
        # process's attachment, which the close advised after start() would free under the child.
        if self._hdr[_H_SEMS_GONE]:
            raise TypeError(
                f"{self._url}: this end can no longer be handed to another process (the peer closed the "
                "channel and removed its objects); receive what is left here, or hand the end over before "
                "the peer closes"
            )

    def _handoff_args(self) -> tuple[Any, ...]:
        # Our copy keeps its alive count until it is closed, so the peer never sees a false death.
        return _rebuild, (self._url, self._seg.ref(), self._role, self._options)

    def _fork_handed(self) -> None:
        # As the spawn hand-off does (RingChannel.__reduce__): the end travels until the child
        # claims it.  The child's count is its own (SEM_UNDO is not inherited), so our close may
        # release ours before the child took one: the peer must not read that gap as a death.
        super()._fork_handed()
        self._mark_travelling()

    def _take_over_after_fork(self) -> None:
        # A fresh alive count: SEM_UNDO adjustments are not inherited by fork.
        self._alive_held = False
        self._claim(exclusive=False)

    def _drop_liveness_copy(self) -> None:
        self._alive_held = False  # the parent's count is the parent's (and undone at its exit)


def _remove_all(seg: _Segment) -> None:
    """Remove manifest, segment (IPC_RMID) and semaphore set; the caller is still attached."""
    hdr = seg.hdr
    if hdr[_H_SEMS_GONE]:
        return
    _RECORD.unlink_if_ours(seg.current_manifest(), f"{seg.nonce:032x}")
    seg.mark_removed()
    hdr[_H_SEMS_GONE] = 1  # the peer stops using the set before it disappears
    sem_remove(seg.semid)
    if seg.registry is not None:
        _paths.rmdir_quiet(seg.registry)  # once empty



def _rebuild(url: str, ref: tuple[int, int, int, int, int, str], role: int, options: SysvShmOptions) -> SysvShmChannel:
    shmid, semid, semkey, shmkey, nonce, manifest = ref
    sysv_ipc = import_sysv_ipc()
    try:
        shm = sysv_ipc.attach(shmid)
    except sysv_ipc.ExistentialError as exc:
        raise EndpointNotFound(errno.ENOENT, f"{url}: the segment is gone (every end closed?)") from exc
    except sysv_ipc.PermissionsError as exc:
        raise PermissionDenied(errno.EACCES, f"{url}: the segment is not ours") from exc
    except ValueError as exc:
        # sysv_ipc.attach() of an id whose segment was already freed raises ValueError, not
        # ExistentialError: the same "gone" for the child that came to take the end over.
        raise EndpointNotFound(errno.ENOENT, f"{url}: the segment is gone (every end closed?)") from exc
    seg = _attach(shm, semid, semkey, shmkey, nonce, manifest, url, options.mode)
    return open_end(lambda: SysvShmChannel(url, options, seg, role), seg.close,
                    lambda ch: ch._claim(exclusive=False))


# --------------------------------------------------------------------------- listener & backend
@final
class SysvShmListener(RingListener):
    """Owns ``sysv+shm://name`` until one peer attached (then the name is freed)."""


def _rendezvous(address: str) -> tuple[str, str]:
    """``(directory, file)`` of a named endpoint; InvalidAddress for bad names."""
    if address.startswith("/"):
        path = os.path.normpath(address)
        directory, name = os.path.split(path)
        if not NAME_RE.match(name):
            raise InvalidAddress(f"sysv+shm endpoint file name {name!r} must match [A-Za-z0-9._-]{{1,200}}")
        return directory, path
    name = address.strip("/")
    if not NAME_RE.match(name):
        raise InvalidAddress(f"sysv+shm name {address!r} must match [A-Za-z0-9._-]{{1,200}} (or be an absolute path)")
    path = locate_record(f"ep.{name}")  # where a listener put it (or would put it now)
    return os.path.dirname(path), path


def _connect_segment(url: str, path: str, deadline: Deadline, mode: int) -> _Segment:
    """Read the rendezvous file (waiting for it and for its creator) and attach by key."""
    sysv_ipc = import_sysv_ipc()
    while True:
        try:
            fd = open_record(path)
        except FileNotFoundError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise EndpointNotFound(errno.ENOENT, f"no {url} endpoint (no listener)") from exc
            time.sleep(0.005)
            continue
        try:
            fields = _RECORD.read(fd, path)
            if "foreign" in fields:
                raise IncompatibleEndpoint(f"{path!r} is not an ipckit sysv+shm endpoint file")
            if "end" in fields:
                break
            # Fields read before the lock may predate the creator's last write: a creator that
            # finished between our read and our lock leaves the lock free and the record complete,
            # so read it again under the lock before calling it half-made.
            # An empty record is never locked here: its creator may not have taken its lock yet,
            # and holding it then would make that creator's listen() fail.
            if record_int(fields, "semid") is not None and _paths.try_lock(fd) \
                    and "end" not in (fields := _RECORD.read(fd, path)):
                raise IncompatibleEndpoint(
                    f"{url} is half-made: its creator died while creating it; listen() on the name reclaims it"
                )
            if "end" in fields:
                break
        finally:
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise IncompatibleEndpoint(f"{url} was never initialised before the deadline")
        time.sleep(0.002)
    shmkey, shmid = record_int(fields, "shmkey"), record_int(fields, "shmid")
    semkey, semid = record_int(fields, "semkey"), record_int(fields, "semid")
    try:
        nonce: int | None = int(fields.get("nonce", ""), 16)
    except ValueError:  # absent, or not hex ("zz" is alphanumeric too): a forged or foreign record
        nonce = None
    if None in (shmkey, shmid, semkey, semid, nonce):
        raise IncompatibleEndpoint(f"{path!r} is not a complete ipckit endpoint file")
    assert shmkey is not None and shmid is not None and semkey is not None and semid is not None
    try:
        shm = sysv_ipc.SharedMemory(shmkey)
    except sysv_ipc.Error as exc:  # gone: a stale endpoint; or not ours
        raise sysv_error(exc, f"{url}: opening its segment", missing=IncompatibleEndpoint) from exc
    except (ValueError, TypeError) as exc:  # a forged key: 0 (IPC_PRIVATE) or out of key_t's range
        raise IncompatibleEndpoint(f"{path!r} records an invalid segment key {shmkey}") from exc
    if int(shm.id) != shmid:
        _detach_quiet(shm)
        raise IncompatibleEndpoint(f"{url}: another segment now uses its key (stale endpoint)")
    return _attach(shm, semid, semkey, shmkey, nonce, path, url, mode)


@final
class SysvShmBackend(RingBackend):
    scheme: ClassVar[str] = "sysv+shm"
    options_class: ClassVar[type[Options]] = SysvShmOptions

    @classmethod
    def _provider_available(cls) -> tuple[bool, str]:
        try:
            import_sysv_ipc()
        except ImportError:
            return False, "pip install sysv_ipc"
        if not semop_available():
            return False, "libc semget()/semop()/semctl() are not reachable through ctypes"
        return True, ""

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        return [
            sysctl("/proc/sys/kernel/shmmax", "SysV shm: largest segment (bytes)"),
            sysctl("/proc/sys/kernel/shmmni", "SysV shm: segments system-wide"),
            sysctl("/proc/sys/kernel/sem", "SysV sem: SEMMSL SEMMNS SEMOPM SEMMNI"),
        ]

    @classmethod
    def reserved_names(cls) -> tuple[str, ...]:
        # The manifests' liveness is in SysV semaphores, which no /proc holder scan sees: the
        # file sweeps must not take an unheld manifest for a leftover.
        return ("ipckit-sysv-",)

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        # The manifests cleanup_stale() would reclaim, judged by the same rule without removing
        # anything; the registry directory too once nothing live is left in it.
        found: list[StaleObject] = []
        for base in registry_dirs():  # (a directory another user put at a candidate is never ours to judge)
            name = os.path.basename(base)
            if not name.startswith(sweep.prefix):
                continue
            try:
                entries = sorted(os.listdir(base))
            except OSError:
                continue
            stale = [
                StaleObject(path, "sysv+shm:// object", "every end is dead: no alive semaphore is held",
                            name=name, label=entry)
                for entry in entries
                if os.path.isfile(path := os.path.join(base, entry)) and _RECORD.reclaim_if_stale(path, dry_run=True)
            ]
            if len(stale) == len(entries):
                why = "every record in it is stale" if entries else "empty"
                stale.append(StaleObject(base, "directory", why, name=name))
            found += stale
        return found

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        if obj.kind == "directory":
            return super().remove_stale(obj)
        # Judged again under the manifest's lock: an end that attached meanwhile keeps it alive.
        return os.path.lexists(obj.path) and _RECORD.reclaim_if_stale(obj.path)

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: SysvShmOptions = options
        for _ in range(8):
            # A squatted shared name moves the record to the fallback (registry_dir), so a pair never
            # fails because another user created a directory first (issue 10, B.11).
            directory = registry_dir()
            ensure_registry_dir(directory, _DIR_WHAT)
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
            seg_b = _attach(import_sysv_ipc().attach(seg.shmid), seg.semid, seg.semkey, seg.shmkey, seg.nonce,
                            seg.manifest, "sysv+shm://", opts.mode)
            # Both ends are attached, but in this process: the segment is marked for removal once
            # they are in their own processes (_maybe_remove), or when the creator's end closes.
            b = open_end(lambda: SysvShmChannel("sysv+shm://", opts, seg_b, 1), seg_b.close,
                         lambda ch: ch._claim(exclusive=True))
        except BaseException:
            a.close()
            raise
        a._learn_peer_from_header()
        return a, b

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: SysvShmOptions = options
        url = f"sysv+shm://{endpoint.address}" if endpoint.address.startswith("/") else \
            f"sysv+shm://{endpoint.address.strip('/')}"
        seg: _Segment | None = None
        for _ in range(8):
            directory, path = _rendezvous(endpoint.address)  # (again after a race: the registry may move)
            if directory in registry_candidates():
                ensure_registry_dir(directory, _DIR_WHAT)
            else:
                check_private_dir(directory, _DIR_WHAT)
            try:
                seg = _create_segment(path, opts.capacity, opts.max_message_size, opts.mode, rendezvous=True)
                break
            except FileNotFoundError:
                continue
            except FileExistsError as exc:
                if not _RECORD.reclaim_if_stale(path):
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
            check_private_dir(directory, _DIR_WHAT)
        seg = _connect_segment(url, path, deadline, opts.mode)
        # A failed attach never marks the listener's segment closed.
        return open_end(lambda: SysvShmChannel(url, opts, seg, 1), seg.close, lambda ch: ch._claim(exclusive=True))
