"""``sysv+mq://`` — a duplex channel over one SysV message queue (sysv_ipc).

Features:
    One queue carries both directions: role 0 (the end that made the channel: a listener's, or
    ``pair()``'s first) receives message type 1, role 1 receives type 2.  Messages of any size up
    to ``max_message_size`` are cut into fragments of at most ``kernel.msgmax`` bytes (read live)
    and put together again by the queue kit (``ipckit.backends.common.queue``: bounded
    reassembly, a sender killed or interrupted mid-message never yields a partial message).

    sysv_ipc has no timeouts, only ``block=True`` (forever) or ``IPC_NOWAIT``.  Every queue call
    here is ``IPC_NOWAIT``.  A receiver with nothing to take waits in the kernel on its own
    *wake-up* semaphore (``semtimedop``: a real timeout, no CPU while waiting, woken as soon as the
    sender posts it after putting a fragment); the count is a hint only (the queue is always
    tried first), so a wake-up lost to a crash or an interrupt costs at most the kit's 50 ms slice
    and never a fragment.  A sender whose direction is out of credit (the receiver is behind) waits
    for the credit in the kernel the same way (``semtimedop`` on the credit semaphore itself).
    Without ipckit's C module both waits are a bounded back-off (:class:`Waiter`): ~50 us of
    retries that yield the CPU, then sleeps doubling from 50 us to 10 ms.  Before a receive waits
    in the kernel it looks again for ~30 us, yielding (the kit's ReplySpin: off for a while
    after a yield that ran some other process).  Waits keep their deadline across signals (a
    handler that raises ends the call) and see ``close()`` from another thread and a dead peer
    within the kit's 50 ms slice.

    Liveness: SysV queues have no end-of-file.  Each channel has a *record* (a 0600 file in the
    private per-user registry directory ``ipckit-sysv-<uid>``) naming the queue's key and id; each
    end holds an OFD lock on its own byte of it (byte 0: role 0, byte 1: role 1) through a
    description of its own.  The kernel drops the lock when the last descriptor of that
    description closes -- also on SIGKILL -- so a free byte proves the end gone: PeerDied once
    every fragment it queued was received.  A clean close appends ``closed<role>`` to the record
    (the queue may be too full for the kit's goodbye fragment): EndOfChannel.  The descriptor
    travels with an end handed to a child (inherited under fork, duplicated under spawn and
    forkserver), and the lock with it, so a hand-off never looks like a death.  Whichever end
    leaves last (its peer's byte is free) removes the queue and the record.

    Security: queues at random keys created with ``IPC_CREAT|IPC_EXCL`` (a taken key is never
    used: another key is drawn; never ``ftok``), mode 0600; an opener checks the queue's
    ``uid``/``cuid`` (root passes the kernel's permission check, so this check is ipckit's own)
    and that its mode grants no more than the opener's ``mode``; records are owner-checked and
    never opened through symlinks.  No ghost messages: a queue is never reused -- every channel
    gets a new one, and what a crashed run left is removed (next ``listen()`` on the name, or
    ``ipckit cleanup``), never attached to.

    Doorbell (``fileno()``; docs/aio.md): a SysV queue is not a file, so each end has a FIFO
    (``/dev/shm/ipckit.bell.sysvmq-<nonce>.<role>``), and both ends map an 8-byte flags file
    (``...flags``: word *role* set while that end is watched, ring/doorbell.py BellFlags).  A
    sender loads its peer's word after each fragment and writes the peer's FIFO only when set, so
    an unwatched channel makes no extra call.  ``fileno()`` sets our word for good; each receive
    then settles the FIFO's level (readable exactly while a fragment waits).  Each end opens its
    own FIFO for reading when made and holds its peer's open ``O_RDWR`` once the peer's read end
    exists (after the claim; in pair() at once): when the peer's process ends, cleanly or by
    SIGKILL, our FIFO hangs up, which selectors report readable.  The descriptors travel with a
    hand-off (so it never hangs up).  The files are made with the channel and removed with its
    queue (the last end, ``remove_channel``; a sweep through ``RecordFormat.files``).

Rendezvous (``listen``/``connect``):
    The listener's record (``ep.<name>`` in the registry directory, or the path given) holds its
    ``max_message_size`` and the nonce of the *next* channel, which the listener made ahead (its
    record and queue, role 0's lock held).  ``connect()`` claims that channel: it takes byte 1's
    lock, checks that nobody claimed it before (``claimed`` in the record) and that the queue is
    empty, then writes ``claimed`` and its own ``max_message_size`` into the channel's record.
    Both limits come from records, so no hello travels through the queue and a client may send
    (and even close) before ``accept()``.  ``accept()`` waits for the claim, returns the server
    end and makes the next channel.  A queue that received fragments without a claim (a writer
    below ipckit) is dropped and replaced.  A client that finds the next channel claimed waits
    (within its deadline) for ``accept()`` to make a new one.

URL format:
    ``sysv+mq://`` for ``pair()``; ``sysv+mq://name`` (``[A-Za-z0-9._-]``, up to 200 characters)
    or ``sysv+mq:///dir/name`` (the listener's record is ``/dir/name``; the directory must be ours
    and private) for ``listen``/``connect``.

Options:
    Common options only: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``,
    ``trust``.

Platform notes:
    Linux.  ``kernel.msgmax`` (bytes per kernel message: the fragment size), ``kernel.msgmnb``
    (bytes in one queue -- both directions share them) and ``kernel.msgmni`` (queues
    system-wide) are read when a channel is made; reaching msgmni is ResourceExhausted naming it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from ..backend import Backend
from ..channel import Channel, Listener
from ..cleanup import StaleObject, Sweep
from ..deadline import Deadline
from ..errors import (
    ChannelBroken,
    ChannelClosed,
    ChannelTimeout,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    from_oserror,
)
from ..limits import KernelLimit, sysctl
from ..options import Capabilities, Options
from ..url import Endpoint
from .common import paths as _paths
from .common import posix as _locks
from .common.paths import NAME_RE
from .common.queue import MIN_FRAGMENT, QueueChannel, QueueTransport, ReplySpin
from .common.ring import doorbell as _bell
from .common.sysv import (
    IPC_NOWAIT,
    RecordFormat,
    SemAdjust,
    SemWait,
    check_private_dir,
    check_sem_set,
    ensure_registry_dir,
    import_sysv_ipc,
    locate_record,
    msg_create,
    msg_limits,
    open_record,
    owned_row,
    record_int,
    registry_candidates,
    registry_dir,
    registry_dirs,
    sem_create,
    sem_remove,
    semop_available,
    semops,
    sysv_error,
)

__all__ = ["SysvMqBackend", "SysvMqChannel", "SysvMqListener", "SysvQueueTransport", "cleanup_stale"]

#: Message types: role r receives type _TYPE[r] and sends type _TYPE[1 - r].
_TYPE: Final = (1, 2)
#: The record's byte that serialises the ends' appends (closed marks).
_MUTEX: Final = 2
#: The largest value of a SysV semaphore (a direction's credit is counted in one).
_SEMVMX: Final = 32767

#: This scheme's records.  A channel's: ``msgkey``, ``msgid``, ``nonce``, ``max`` (role 0's
#: limit), then ``claimed`` and ``cmax`` (role 1's) once claimed; ``closed0``/``closed1`` appended
#: at a clean close.  A listener's: ``next`` (the next channel's nonce), ``nonce``, ``max``.
#: Liveness: OFD locks on byte 0 (role 0 / the listener) and byte 1 (role 1).
#: The channel's semaphore set: 0 and 1, the credit (bytes) of the direction role 0 / role 1
#: receives; 2 and 3, the wake-ups of role 0 / role 1 (fragments put for it).
_NSEMS: Final = 4

try:  # the C calls (no ctypes, no exception per empty try); sysv_ipc's otherwise
    from .common import _queuefast as _fast
except ImportError:
    _fast = None  # type: ignore[assignment]
if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
    _fast = None  # type: ignore[assignment]
_WAKE: Final = 2

def _bell_files(nonce: str) -> tuple[str, str, str]:
    """The doorbell files of the channel *nonce*: role 0's FIFO, role 1's, the shared flags."""
    name = f"sysvmq-{nonce}"
    return (_bell.bell_path(name, 0), _bell.bell_path(name, 1),
            os.path.join(_bell.BELL_DIR, f"ipckit.bell.{name}.flags"))


def _recorded_bells(fields: dict[str, str]) -> tuple[str, ...]:
    nonce = fields.get("nonce", "")
    return _bell_files(nonce) if nonce.isalnum() else ()


_RECORD: Final = RecordFormat(tag="ipckit-sysv-mq/2", what="sysv+mq", nsems=0, alive=(), locked=(0, 1),
                              files=_recorded_bells)
_DIR_WHAT: Final = "a sysv+mq:// rendezvous directory"

_CAPS: Final = Capabilities(
    duplex=True,
    message_oriented=True,
    max_message_size=None,  # fragmented: only max_message_size applies
    selectable=True,  # a doorbell FIFO per end (see "Doorbell" in the module docstring)
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=True,
    multi_client=True,
    proves_same_user=True,
    # Each direction owns half of the queue's kernel.msgmnb (16 KiB by default): 8 KiB of
    # fragments, each with a 20-byte header: 4 KiB of payload in up to 100 messages fit.
    buffered_bytes=4096,
    buffered_messages=100,
)

# Waiting on a queue without a kernel timeout: retries that yield the CPU for a short while,
# then sleeps doubling up to a cap: at the cap ~100 wake-ups a second.  Measured here, a wake-up
# (the sleep's timer, a try, the bookkeeping) costs ~80 us of CPU: ~1.3 % of a core (2.2 % with
# a 5 ms cap, 3.5 % with 2.5 ms).  A message that comes after a long idle waits <= 10 ms.
_SPIN: Final = 50e-6
_FIRST_SLEEP: Final = 50e-6
_MAX_SLEEP: Final = 10e-3


@final
class Waiter:
    """The back-off of one wait: yield-and-retry for ``_SPIN`` s, then sleeps doubling to the cap."""

    __slots__ = ("_delay", "_last", "_start")

    def __init__(self) -> None:
        self._start = self._last = time.monotonic()
        self._delay = _FIRST_SLEEP

    def stale(self) -> bool:
        """True when this wait ended a while ago (a new wait starts from the short steps again)."""
        return time.monotonic() - self._last > 4 * _MAX_SLEEP

    def pause(self, end: float | None) -> bool:
        """Wait one step, never past *end* (monotonic; None: no end); False once *end* has passed."""
        now = time.monotonic()
        if end is not None and now >= end:
            return False
        if now - self._start < _SPIN:
            os.sched_yield()
        else:
            step = self._delay
            if end is not None and end - now < step:
                step = end - now
            time.sleep(step)  # a signal handler that raises ends the wait here (PEP 475 retries otherwise)
            self._delay = min(self._delay * 2.0, _MAX_SLEEP)
        self._last = time.monotonic()
        return True


# --------------------------------------------------------------------------- the queue of one channel
def _interrupted(exc: BaseException) -> bool:
    """sysv_ipc's EINTR (its base Error, 'Signaled while waiting'): nothing happened, try again."""
    return type(exc).__name__ == "Error" and "Signaled" in str(exc)


@dataclass(frozen=True)
class ChannelRef:
    """What names one channel's objects: its record file, the queue's key and id, the nonce."""

    path: str
    msgkey: int
    msgid: int
    nonce: str
    semkey: int
    semid: int
    credit: int  # bytes of fragments each direction may have in the queue


@final
class SysvQueueTransport(QueueTransport):
    """One end's hold on a channel: the queue (both directions, told apart by message type), and
    the record's descriptor whose OFD lock on byte *role* proves this end alive.

    The descriptor travels with the end (inherited under fork, duplicated under spawn), and with
    it the lock: a process that handed the end over closes its copy without unlocking, and the
    peer never sees a gap.
    """

    def __init__(self, url: str, mq: Any, fd: int, role: int, ref: ChannelRef,
                 bell_fds: tuple[int, int] | None = None) -> None:
        self.url = url
        self.mq = mq
        self.fd = fd
        self.role = role
        self.ref = ref
        # One kernel message, header included: msgmax (live), within this direction's credit.
        self.fragment_size = min(msg_limits()["msgmax"], ref.credit)
        # The credit semaphores: of the direction this end sends in (taken before each fragment,
        # given back when the fragment could not be queued), and of the one it receives from
        # (given back for each fragment taken out).
        self._take_out = SemAdjust(ref.semid, 1 - role, IPC_NOWAIT)
        self._give_out = SemAdjust(ref.semid, 1 - role, 0)
        self._give_in = SemAdjust(ref.semid, role, 0)
        # Wake-ups: a receiver with nothing to take waits on its own in the kernel (semtimedop:
        # a real timeout, the GIL released, woken the moment a fragment is put), and the sender
        # posts one after each fragment.  The count is only a hint -- the receiver always tries
        # the queue before it waits and takes one count per fragment it took without waiting --
        # so a count lost to an interrupt or a crash costs at most one slice of latency, and an
        # extra one a spurious wake-up; neither ever loses or reorders a fragment.
        self._wake_peer = SemAdjust(ref.semid, _WAKE + 1 - role, 0)
        self._wake_take = SemAdjust(ref.semid, _WAKE + role, IPC_NOWAIT)
        self._wake_wait = SemWait(ref.semid, _WAKE + role)
        self._woken = False
        self._spin = ReplySpin()
        self._rtype = _TYPE[role]
        self._stype = _TYPE[1 - role]
        self._sargs = ((False,), (self._stype,))
        self._rargs = ((False,), (self._rtype,))
        self._send = mq.send
        self._msqid = (ref.msgid,)
        self._semid = (ref.semid,)
        self._out_num = (1 - role,)  # the credit semaphore of the direction this end sends in
        self._rmax = (self.fragment_size + 1,)  # (one byte more than a fragment: a longer message is told, cut)
        self._receive = mq.receive
        self._sysv = import_sysv_ipc()
        self._busy = self._sysv.BusyError
        self._failures = (self._sysv.Error, OSError, ValueError, MemoryError)
        self._stash: bytes | None = None  # a fragment taken out but not delivered (an interrupt)
        self._inbox: list[Any] = []  # ((text, type) or, from the C call, a negative errno)
        self._paid = False
        self._took: list[int] = []
        self._took_n = 0
        self._sent: list[Any] = []
        self._view: tuple[bytearray, memoryview] | None = None
        self._peer_closed = False
        self.handed_off = False  # set by the channel before close(): release only, say nothing
        # The doorbell (module docstring): our FIFO's read end (opened before any peer opens it
        # to ring, so that its hang-up is seen), the peer's FIFO held open to ring it (and, by
        # being held, to hang up when this process dies), and the shared sleeping words.
        self._bell_paths = _bell_files(ref.nonce)
        self._bell_r, self._bell_w = bell_fds if bell_fds is not None else (-1, -1)
        self._flags: _bell.BellFlags | None = None
        try:
            self._flags = _bell.BellFlags(self._bell_paths[2], False)
            if self._bell_r < 0:
                self._bell_r = _bell.open_fifo(self._bell_paths[role], os.O_RDONLY)
        except OSError as exc:
            self._drop_bell()
            if not isinstance(exc, (FileNotFoundError, PermissionError)):
                raise from_oserror(exc, f"opening the doorbell of {url}") from exc
            raise IncompatibleEndpoint(f"{url}: its doorbell files in {_bell.BELL_DIR} are missing or not ours "
                                       f"({exc}); a channel made by an older ipckit? Make a new one") from exc
        self._words = self._flags.words
        self._peer_word = 1 - role
        #: fileno() was called: our word stays BELL, every receive keeps the FIFO's level.
        self._sticky = self._words[role] == _bell.BELL

    # -- moving fragments ------------------------------------------------------------------
    # Both directions share the queue's msgmnb bytes.  Unchecked, one direction's backlog would
    # fill the queue and block the other (a peer that echoes while we send would deadlock both),
    # so each direction owns half, as credit in a semaphore: a sender takes a fragment's bytes
    # before it queues the fragment, the receiver gives them back once it took it out.  Both
    # directions together never exceed msgmnb, so msgsnd itself never finds the queue full.
    # Every call that moves credit or a fragment stores its answer from C (list.extend over map)
    # in a list that outlives the call, so an exception a signal handler raises anywhere in
    # between never loses credit: the next call settles what the interrupted one left (at worst
    # a fragment's credit is given back twice, which lets one more fragment in; credit lost
    # would stall the direction for good).
    def _try_put(self, piece: memoryview, wait: float = 0.0) -> bool:
        """Queue *piece* if this direction has the credit, waiting up to *wait* seconds for it
        (in the kernel, with the C module; else the caller backs off and tries again)."""
        took, sent = self._took, self._sent
        if took and not took[0] and (not sent or sent[0] == -errno.EAGAIN):
            # An interrupted try held credit and queued nothing.
            self._give_out.adjust(self._took_n, [])
        took.clear()
        sent.clear()
        n = self._took_n = piece.nbytes
        if wait > 0.0 and _fast is not None and n:
            took.extend(map(_fast.semtake, self._semid, self._out_num, (-n,), (wait,)))
        else:
            self._take_out.adjust(-n, took)
        if took[0]:
            code = self._take_out.errno(took[0])
            took.clear()
            if code in (errno.EAGAIN, errno.EINTR):
                return False  # this direction's half is in the queue: the receiver is behind
            raise self._gone_error(code, "sending")
        if _fast is not None:
            sent.extend(map(_fast.msgput, self._msqid, (piece,), self._sargs[1]))
            code = -sent[0]
            if not code:
                self._wake_peer.adjust(1, [])
                if self._words[self._peer_word]:  # (a memory load: the peer's fileno() armed it)
                    self._ring_peer()
                return True
            if code == errno.EAGAIN:  # (another program's messages fill the queue): the credit back
                self._give_out.adjust(n, [])
                took.clear()
                return False
            raise self._gone_error(code, "sending")
        flag, kind = self._sargs
        while True:
            try:
                sent.extend(map(self._send, (piece,), flag, kind))
                self._wake_peer.adjust(1, [])  # (a failure, e.g. ERANGE of a saturated hint, changes nothing)
                if self._words[self._peer_word]:
                    self._ring_peer()
                return True
            except self._busy:  # (another program's messages fill the queue): the credit back
                self._give_out.adjust(n, [])
                took.clear()
                return False
            except self._failures as exc:  # (a signal handler's exception passes as it is)
                if _interrupted(exc):
                    continue
                raise self._error(exc, "sending") from exc

    def put(self, buf: bytearray, n: int, timeout: float) -> bool:
        view = self._view
        if view is None or view[0] is not buf:
            view = self._view = (buf, memoryview(buf))
        piece = view[1][:n]
        if self._try_put(piece):
            return True
        if timeout <= 0.0:
            return False
        if _fast is not None:  # wait for the credit in the kernel (semtimedop), woken as it comes
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0.0:
                    return False
                if self._try_put(piece, left):
                    return True
        waiter = Waiter()
        end = time.monotonic() + timeout
        while waiter.pause(end):
            if self._try_put(piece):
                return True
        return False

    def _try_get(self) -> bytes | None:
        piece = self._stash
        if piece is not None:
            self._stash = None
            return piece
        inbox = self._inbox  # the fragment taken out of the queue (0 or 1), until returned
        if inbox and type(inbox[0]) is int:
            inbox.clear()  # a failed C call's answer that an interrupt left behind: nothing was taken
        if not inbox:
            self._paid = False
            flag, kind = self._rargs
            while _fast is not None:
                inbox.extend(map(_fast.msgget, self._msqid, kind, self._rmax))
                if type(inbox[0]) is int:
                    code = -inbox.pop()
                    if code == errno.ENOMSG:
                        return None
                    if code != errno.EINTR:
                        raise self._gone_error(code, "receiving")
                    continue
                self._take_wakeup()
                break
            while _fast is None:
                try:
                    inbox.extend(map(self._receive, flag, kind))
                    self._take_wakeup()
                    break
                except self._busy:
                    return None
                except self._failures as exc:
                    if _interrupted(exc):
                        continue
                    raise self._error(exc, "receiving") from exc
        if not self._paid:  # the sender's credit back (no SEM_UNDO: it is the sender's, whatever becomes of us)
            n = len(inbox[0][0])
            if n:  # (a semop of 0 means "wait for zero": an empty, forged message gives nothing back)
                self._give_in.adjust(n, [])
            self._paid = True
        text: bytes = inbox.pop()[0]
        return text

    def _take_wakeup(self) -> None:
        """A fragment was taken: take its wake-up count too (unless the wait that found it did)."""
        if self._woken:
            self._woken = False
        else:
            self._wake_take.adjust(-1, [])

    def _peek(self) -> int:
        """For the kit's spin: 0 once a fragment is there (taken into the inbox), else -1."""
        if self._stash is not None or self._inbox:
            return 0
        data = self._try_get()
        if data is None:
            return -1
        self._stash = data  # (handed out by the _try_get that follows)
        return 0

    def get(self, buf: bytearray, timeout: float) -> int:
        data = self._try_get()
        if data is None and timeout > 0.0:
            end = time.monotonic() + timeout
            if self._spin.look(self._peek, timeout) >= 0:  # (the kit's short look before the kernel wait)
                data = self._try_get()
            while data is None:
                left = end - time.monotonic()
                if left <= 0.0:
                    break
                if self._wake_wait.wait(left):  # (a signal handler's exception ends the wait here)
                    self._woken = True
                data = self._try_get()
        if data is None:
            return -1
        try:
            n = len(data)
            if n > len(buf):
                raise ProtocolError(f"a {n}-byte kernel message on {self.url}, over the {len(buf)} bytes of a "
                                    "fragment")
            buf[:n] = data
        except ProtocolError:
            raise
        except BaseException:
            self._stash = data  # not delivered: the next get() returns it
            raise
        if self._sticky:
            self._settle()
        return n

    # -- the doorbell --------------------------------------------------------------------------
    def attach_peer(self) -> None:
        """Open the peer's FIFO to ring it (after the peer opened its read end: see the module
        docstring); a peer that is gone or not there yet is tried again at the next ring."""
        if self._bell_w < 0:
            try:
                self._bell_w = _bell.open_fifo(self._bell_paths[1 - self.role], os.O_RDWR)
            except OSError:
                pass

    def _ring_peer(self) -> None:
        if self._bell_w < 0:
            self.attach_peer()
        if self._bell_w >= 0:
            _bell.ring_fd(self._bell_w)  # (O_RDWR: never EPIPE, never SIGPIPE)

    def _ring_self(self) -> None:
        # A descriptor opened for this one write: holding a writer of our own FIFO would hide
        # the peer's hang-up.
        try:
            fd = _bell.open_fifo(self._bell_paths[self.role], os.O_WRONLY)
        except OSError:
            return
        try:
            _bell.ring_fd(fd)
        finally:
            os.close(fd)

    def _settle(self) -> None:
        """After a receive while watched: the FIFO readable exactly while a fragment waits.  A
        fragment found is taken into the stash (the next get() returns it) and its ring left in
        place; with none, the rings are drained and the queue asked again, so a fragment put
        during the drain is never left without a ring."""
        try:
            if self._peek() == 0:
                return
            _bell.drain_fd(self._bell_r)
            if self._peek() == 0:
                self._ring_self()
        except IPCError:
            self._ring_self()  # the next receive raises it: a selector must wake to see it

    def fileno(self) -> int:
        """Our doorbell FIFO, armed for good: readable while a fragment waits for this end, and
        (hang-up) once the peer closed or died.  From now on the peer rings after every fragment
        (one write) and each receive here settles the level (a read and a queue look)."""
        if self._bell_r < 0:
            raise ChannelClosed(f"fileno on {self.url}: this end was released")
        if not self._sticky:
            self.arm(True)
        return self._bell_r

    def arm(self, settle: bool) -> None:
        """Watched from now on.  *settle*: the caller holds the receive lock, so the queue may be
        looked at (what was queued before the arm rang nothing); else a ring of our own makes the
        FIFO readable at once and the receiving thread's next take settles it."""
        self._sticky = True
        self._words[self.role] = _bell.BELL
        if settle:
            self._settle()
        else:
            self._ring_self()

    def _drop_bell(self) -> None:
        for attr in ("_bell_r", "_bell_w"):
            fd = getattr(self, attr)
            setattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
        flags, self._flags = self._flags, None
        if flags is not None:
            flags.close()

    def waiting(self) -> int:
        """Kernel messages in the queue, both directions (one ``IPC_STAT``)."""
        try:
            return int(self.mq.current_messages)
        except Exception as exc:
            raise self._error(exc, "inspecting the queue") from exc

    def _gone_error(self, code: int, doing: str) -> IPCError:
        if code in (errno.EIDRM, errno.EINVAL):
            return ChannelBroken(f"{doing} on {self.url}: the channel's semaphores were removed (by ipcrm or "
                                 "another program)")
        return from_oserror(OSError(code, os.strerror(code)), f"{doing} on {self.url}")

    def _error(self, exc: BaseException, doing: str) -> IPCError:
        if isinstance(exc, IPCError):
            return exc
        if isinstance(exc, ValueError) and "max_message_size" in str(exc):
            return ChannelBroken(f"{doing} on {self.url}: {exc} (kernel.msgmax was lowered while the channel was open)")
        err = sysv_error(exc, f"{doing} on {self.url}", kind="msg")
        if isinstance(err, (EndpointNotFound, IncompatibleEndpoint)) or \
                (isinstance(err, ChannelBroken) and "removed" in str(err)):
            return ChannelBroken(f"{doing} on {self.url}: the queue was removed (by ipcrm or another program)")
        return err

    # -- liveness ----------------------------------------------------------------------------
    def peer_alive(self) -> bool:
        try:
            return _locks.lock_held(self.fd, 1 - self.role)
        except OSError as exc:
            raise from_oserror(exc, f"checking the peer of {self.url}") from exc

    def mark_closed(self) -> None:
        # Appended under the record's mutex byte (the peer may mark at the same moment); no new
        # descriptor is needed, so a close at the descriptor limit still marks.
        fd = self.fd
        with _locks.holding(fd, _MUTEX):
            os.pwrite(fd, f" closed{self.role}\n".encode(), os.fstat(fd).st_size)

    def peer_closed(self) -> bool:
        if not self._peer_closed:
            try:
                words = os.pread(self.fd, 4096, 0).split()
            except OSError:
                return False
            self._peer_closed = f"closed{1 - self.role}".encode() in words
        return self._peer_closed

    # -- leaving -----------------------------------------------------------------------------
    def release(self) -> None:
        """Drop this process's copy only (handed over, or a forked copy): close, never unlock."""
        fd, self.fd = self.fd, -1
        try:
            if fd >= 0:
                os.close(fd)
        finally:
            self._drop_bell()

    def close(self) -> None:
        """This end is done: give up its lock, and remove queue and record if the peer is gone too.

        Both ends leave the same way, so whichever leaves last removes (both may, at the same
        moment: removal checks key, owner and nonce, so a second one is harmless).  An end that
        was handed to another process only closes its copy.
        """
        fd = self.fd
        if fd < 0:
            return
        if self.handed_off:
            self.release()
            return
        last = False
        try:
            _locks.unlock(fd, self.role)
            last = _locks.lock(fd, 1 - self.role)  # the peer's byte is free: it closed or died
        except OSError:
            pass
        finally:
            self.release()  # first: the removal may need a descriptor (at the limit, this one)
        if last:
            remove_channel(self.ref)

    def fork_release(self) -> None:
        self.release()

    # -- hand-off ----------------------------------------------------------------------------
    def handoff(self) -> tuple[Sequence[int], tuple[Any, ...]]:
        if self.fd < 0:
            raise TypeError(f"{self.url}: this end was released and cannot be handed over")
        fds = [self.fd, self._bell_r] + ([self._bell_w] if self._bell_w >= 0 else [])
        return fds, (self.url, self.ref, self.role)

    @classmethod
    def rebuild(cls, fds: Sequence[int], state: tuple[Any, ...]) -> SysvQueueTransport:
        url, ref, role = state
        # The parent checked the queue's mode against its options; the owner is checked again.
        mq = open_queue(url, ref.msgkey, ref.msgid, 0o777, missing=EndpointNotFound)
        return cls(url, mq, fds[0], role, ref, (fds[1], fds[2] if len(fds) > 2 else -1))


@final
class SysvMqChannel(QueueChannel):
    """One end of a ``sysv+mq://`` channel (role 0: the creator / listener side; 1: the other)."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __init__(self, url: str, options: Options, transport: QueueTransport, *, peer_trusted: bool = True,
                 peer_max: int | None = None) -> None:
        # Same user proven: only this user can open the queue and the records (0600, owner-checked;
        # a wider ``mode`` voids it, in resolve_serializer).
        # peer_max comes from the records: no hello travels through the queue.
        super().__init__(url, options, transport, peer_trusted=peer_trusted, peer_max=peer_max)

    def _close(self) -> None:
        t = self._t
        assert isinstance(t, SysvQueueTransport)
        t.handed_off = self._handed_off
        super()._close()

    def _fileno(self) -> int:
        # Arming looks at the queue (the transport's stash), which only the holder of the receive
        # lock may touch; a receive blocked in another thread holds it, and fileno() must not
        # wait for that receive.
        t = self._t
        assert isinstance(t, SysvQueueTransport)
        if not t._sticky and not self._released:
            got = self._recv_lock.acquire(blocking=False)
            try:
                t.arm(got)
            finally:
                if got:
                    self._recv_lock.release()
        return super()._fileno()


# --------------------------------------------------------------------------- records and queues
def remove_channel(ref: ChannelRef) -> None:
    """Remove a channel's queue (only if still ours at its key) and its record (only if it is still
    the record of this channel)."""
    if owned_row("msg", ref.msgid, ref.msgkey) is not None:
        try:
            import_sysv_ipc().remove_message_queue(ref.msgid)
        except Exception:  # gone meanwhile
            pass
    if owned_row("sem", ref.semid, ref.semkey) is not None:
        sem_remove(ref.semid)
    for extra in _bell_files(ref.nonce):
        _paths.unlink_quiet(extra)
    _RECORD.unlink_if_ours(ref.path, ref.nonce)
    directory = os.path.dirname(ref.path)
    if directory in registry_candidates():
        _paths.rmdir_quiet(directory)  # once empty


def _new_record(path: str) -> int:
    """Create the record *path* (0600, exclusive), ``flock``-ed while its creator builds it and
    OFD-locked on byte 0 (the creator's end) for its whole life.

    Raises:
        FileExistsError: *path* exists.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise
    except OSError as exc:
        raise from_oserror(exc, f"creating {path}") from exc
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _locks.lock(fd, 0):
            raise ChannelBroken(f"{path}: another process locked a record just created")
    except BaseException:
        _paths.unlink_quiet(path)
        os.close(fd)
        raise
    return fd


def _create_channel(directory: str, url: str, mode: int, limit: int) -> tuple[SysvQueueTransport, dict[str, object]]:
    """A new channel in *directory*: its record and its (empty) queue; role 0's transport."""
    nonce = secrets.token_hex(16)
    path = os.path.join(directory, f"mq.{nonce}")
    fd = _new_record(path)
    mq: Any = None
    semid = -1
    bells = _bell_files(nonce)
    try:
        try:
            for fifo in bells[:2]:
                _bell.make_fifo(fifo)
            _bell.BellFlags(bells[2], True).close()
        except OSError as exc:
            raise from_oserror(exc, f"creating the doorbell files of a {url} channel in {_bell.BELL_DIR}") from exc
        limits = msg_limits()
        credit = min(limits["msgmnb"] // 2, _SEMVMX)
        if credit < MIN_FRAGMENT:
            raise ResourceExhausted(f"kernel.msgmnb={limits['msgmnb']} bytes leaves too little room per direction of "
                                    "a SysV queue; raise it (sysctl -w kernel.msgmnb=16384)")
        semkey, semid = sem_create(_NSEMS, mode)
        fields: dict[str, object] = {"semkey": semkey, "semid": semid}
        _RECORD.write(fd, fields, False)
        if semops(semid, (0, credit, 0), (1, credit, 0)):
            raise ChannelBroken(f"{path}: cannot set up the credit semaphores of a new channel")
        key, mq = msg_create(mode, limits["msgmax"])
        fields.update(msgkey=key, msgid=int(mq.id), nonce=nonce, max=limit, credit=credit)
        _RECORD.write(fd, fields, True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        ref = ChannelRef(path, key, int(mq.id), nonce, semkey, semid, credit)
        return SysvQueueTransport(url, mq, fd, 0, ref), fields
    except BaseException:
        if mq is not None:
            try:
                mq.remove()
            except Exception:
                pass
        if semid >= 0:
            sem_remove(semid)
        for extra in bells:
            _paths.unlink_quiet(extra)
        _paths.unlink_quiet(path)
        os.close(fd)
        raise


def open_queue(url: str, msgkey: int, msgid: int, mode: int,
               missing: type[EndpointNotFound] | type[IncompatibleEndpoint] = IncompatibleEndpoint) -> Any:
    """The queue at *msgkey*, if it is still the one with id *msgid*, ours, and no wider than *mode*."""
    sysv_ipc = import_sysv_ipc()
    try:
        mq = sysv_ipc.MessageQueue(msgkey, 0, max_message_size=msg_limits()["msgmax"])
    except sysv_ipc.ExistentialError as exc:
        raise missing(errno.ENOENT, f"{url}: its queue is gone (stale endpoint)") from exc
    except (sysv_ipc.Error, OSError, ValueError, MemoryError) as exc:  # not a signal handler's exception (FS09)
        raise sysv_error(exc, f"{url}: opening its queue", kind="msg", missing=missing) from exc
    euid = os.geteuid()
    if int(mq.id) != msgid:
        raise missing(errno.ENOENT, f"{url}: another queue now uses its key (stale endpoint)")
    if int(mq.uid) != euid or int(mq.cuid) != euid:
        raise PermissionDenied(errno.EACCES, f"{url}: its queue belongs to uid {mq.uid} (creator {mq.cuid}) "
                                             f"with mode {int(mq.mode) & 0o777:o}; refusing to use it")
    _paths.check_mode(f"{url}: its queue", int(mq.mode), mode)
    return mq


def _open_rw(path: str) -> int:
    """Open a record read-write (an OFD write lock needs it), never through a symlink."""
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionDenied(errno.ELOOP, f"{path!r} is a symlink; refusing to follow it") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(exc.errno, f"cannot open {path!r}: not ours") from exc
        raise from_oserror(exc, f"opening {path}") from exc


def _ref_of(fields: dict[str, str], path: str, url: str, mode: int) -> ChannelRef:
    """The channel a complete record names; its semaphore set checked (ours, *mode*, two)."""
    ints = [record_int(fields, k) for k in ("msgkey", "msgid", "semkey", "semid", "credit", "max")]
    nonce = fields.get("nonce", "")
    if None in ints or not nonce.isalnum() or "end" not in fields:
        raise IncompatibleEndpoint(f"{url}: {path!r} is not a complete sysv+mq channel record")
    msgkey, msgid, semkey, semid, credit, _ = (int(v) for v in ints if v is not None)
    if not MIN_FRAGMENT <= credit <= _SEMVMX:
        raise IncompatibleEndpoint(f"{url}: {path!r} records a credit of {credit} bytes")
    check_sem_set(semid, semkey, _NSEMS, url, mode=mode)
    return ChannelRef(path, msgkey, msgid, nonce, semkey, semid, credit)


def _claim(fd: int, fields: dict[str, str], limit: int) -> None:
    """Mark the channel claimed, with this (role 1) end's limit; the claimer holds byte 1."""
    kept = {k: v for k, v in fields.items() if k not in ("end", "claimed", "cmax") and not k.startswith("closed")}
    _RECORD.write(fd, {**kept, "claimed": 1, "cmax": limit}, True)


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove this user's ``sysv+mq`` records (and their queues) whose every end is gone; the
    record names removed.  Never touches another user's objects or those of live processes."""
    return _RECORD.sweep(directory)


# --------------------------------------------------------------------------- the listener
def _rendezvous(address: str) -> tuple[str, str, str]:
    """``(directory, record path, url)`` of a named endpoint; InvalidAddress for bad names."""
    if address.startswith("/"):
        path = os.path.normpath(address)
        directory, name = os.path.split(path)
        if not NAME_RE.match(name):
            raise InvalidAddress(f"sysv+mq endpoint file name {name!r} must match [A-Za-z0-9._-]{{1,200}}")
        return directory, path, f"sysv+mq://{address}"
    name = address.strip("/")
    if not NAME_RE.match(name):
        raise InvalidAddress(f"sysv+mq name {address!r} must match [A-Za-z0-9._-]{{1,200}} (or be an absolute path)")
    path = locate_record(f"ep.{name}")
    return os.path.dirname(path), path, f"sysv+mq://{name}"


def _channel_dir(directory: str) -> str:
    """Where a named endpoint's channel records go: the registry directory it is in, or (for a
    record elsewhere) the registry directory of the day."""
    if directory in registry_candidates():
        return directory
    found = registry_dir()
    ensure_registry_dir(found, _DIR_WHAT)
    return found


@final
class SysvMqListener(Listener):
    """Owns ``sysv+mq://name``: its record, and the next channel a client will claim."""

    def __init__(self, url: str, options: Options, path: str, fd: int, nonce: str) -> None:
        super().__init__(url, options)
        self._closed = True  # until armed: a listener that failed to start is never "unclosed"
        self._path = path
        self._fd = fd
        self._nonce = nonce
        self._next: SysvQueueTransport | None = None
        try:
            self._arm()
        except BaseException:
            self._drop_next()  # (made, but not named in the record)
            raise
        self._closed = False

    def _arm(self) -> None:
        """Make the next channel and name it in the listener's record."""
        opts = self._options
        t, _ = _create_channel(_channel_dir(os.path.dirname(self._path)), self._url, opts.mode, opts.max_message_size)
        self._next = t
        _RECORD.write(self._fd, {"next": t.ref.nonce, "nonce": self._nonce, "max": opts.max_message_size}, True)

    def _drop_next(self) -> None:
        t, self._next = self._next, None
        if t is not None:
            remove_channel(t.ref)
            t.release()

    def _accept(self, deadline: Deadline) -> Channel:
        waiter = Waiter()
        while True:
            if self._closed:
                raise ChannelClosed(f"accept on closed listener {self._url}")
            if self._next is None:
                self._arm()  # (a failure to make one earlier: try again)
            t = self._next
            assert t is not None
            fields = _RECORD.read(t.fd, t.ref.path)
            if "claimed" in fields:
                self._next = None
                ch = self._server_end(t, fields)
                try:
                    self._arm()
                except IPCError:
                    pass  # (the next accept() tries again; this client is served)
                return ch
            if t.waiting() and "claimed" not in _RECORD.read(t.fd, t.ref.path):
                # Fragments without a claim: a writer below ipckit.  The queue is never used.
                self._drop_next()
                self._arm()
                continue
            if not waiter.pause(deadline):
                raise ChannelTimeout(f"no peer connected to {self._url} before the deadline")

    def _server_end(self, t: SysvQueueTransport, fields: dict[str, str]) -> SysvMqChannel:
        cmax = record_int(fields, "cmax")
        try:
            if cmax is None:
                raise ProtocolError(f"{self._url}: a client claimed a channel without its max_message_size")
            t.attach_peer()  # (the client opened its FIFO before its claim)
            return SysvMqChannel(self._url, self._options, t, peer_max=cmax)
        except BaseException:
            t.close()
            raise

    def _close(self) -> None:
        t, self._next = self._next, None
        try:
            if t is not None:
                fields = _RECORD.read(t.fd, t.ref.path)
                if "claimed" in fields:
                    # A client connected but was never accepted: it reads EndOfChannel (after
                    # nothing), as from a server that accepted and closed at once.
                    try:
                        self._server_end(t, fields).close()
                    except IPCError:
                        pass
                else:
                    remove_channel(t.ref)
                    t.release()
        finally:
            _RECORD.unlink_if_ours(self._path, self._nonce)
            fd, self._fd = self._fd, -1
            os.close(fd)
            directory = os.path.dirname(self._path)
            if directory in registry_candidates():
                _paths.rmdir_quiet(directory)


# --------------------------------------------------------------------------- connecting
_RETRY: Final = 0.002


def _connect(url: str, path: str, options: Options, deadline: Deadline) -> SysvMqChannel:
    """Claim the listener's next channel (waiting, within *deadline*, for the record to appear,
    for another client's claim to finish and for accept() to make a fresh one)."""
    why = "no listener"
    while True:
        try:
            t = _try_claim(url, path, options)
        except FileNotFoundError:
            t, why = None, "no listener"
        except _Busy as exc:
            t, why = None, str(exc)
        if t is not None:
            return t
        if deadline is not None and time.monotonic() >= deadline:
            if why == "no listener":
                raise EndpointNotFound(errno.ENOENT, f"no {url} endpoint (no listener)")
            raise ChannelTimeout(f"connect to {url} timed out: {why}")
        time.sleep(_RETRY)


class _Busy(Exception):
    """The listener exists but has no free channel right now (says why)."""


def _try_claim(url: str, path: str, options: Options) -> SysvMqChannel | None:
    fd = open_record(path)  # FileNotFoundError: no listener (yet)
    try:
        fields = _RECORD.read(fd, path)
        if "foreign" in fields:
            raise IncompatibleEndpoint(f"{path!r} is not an ipckit sysv+mq endpoint file")
        if "end" not in fields:
            return None  # being written
        if not _locks.lock_held(fd, 0):
            raise EndpointNotFound(errno.ENOENT, f"{url}: its listener is gone (a stale endpoint; listen() on the "
                                                 "name or `ipckit cleanup` removes it)")
        nonce, server_max = fields.get("next", ""), record_int(fields, "max")
        if not nonce.isalnum() or server_max is None:
            raise IncompatibleEndpoint(f"{path!r} is not a complete sysv+mq endpoint file")
    finally:
        os.close(fd)
    cpath = locate_record(f"mq.{nonce}")
    t: SysvQueueTransport | None = None
    try:
        cfd = _open_rw(cpath)
    except FileNotFoundError:
        raise _Busy("the listener is replacing its channel") from None
    try:
        if not _locks.lock(cfd, 1):
            raise _Busy("another client is connecting")
        cfields = _RECORD.read(cfd, cpath)
        if "claimed" in cfields:
            raise _Busy("the listener has not accepted its previous client yet")
        if not _locks.lock_held(cfd, 0):
            raise _Busy("the listener's channel is gone")
        ref = _ref_of(cfields, cpath, url, options.mode)
        mq = open_queue(url, ref.msgkey, ref.msgid, options.mode)
        if int(mq.current_messages):
            raise _Busy("the listener's channel received data from a writer below ipckit")
        # Our FIFO's read end is opened (by the transport) before the claim: the listener opens
        # it to ring only after it saw the claim, so its death hangs our FIFO up.
        t = SysvQueueTransport(url, mq, cfd, 1, ref)
        _claim(cfd, cfields, options.max_message_size)
        t.attach_peer()
    except BaseException:
        if t is not None:
            t.release()
        else:
            os.close(cfd)  # (our lock on byte 1 goes with the description)
        raise
    try:
        return SysvMqChannel(url, options, t, peer_max=server_max)
    except BaseException:
        t.close()
        raise


# --------------------------------------------------------------------------- the backend
@final
class SysvMqBackend(Backend):
    scheme: ClassVar[str] = "sysv+mq"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = Options

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            import_sysv_ipc()
        except ImportError:
            return False, "pip install sysv_ipc"
        if not os.path.exists("/proc/sysvipc/msg"):
            return False, "no SysV message queues here (/proc/sysvipc/msg is missing)"
        if not semop_available():
            return False, "libc semget()/semop()/semctl() are not reachable through ctypes"
        return True, ""

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        return [
            sysctl("/proc/sys/kernel/msgmax", "SysV mq: bytes in one kernel message (sysv+mq's fragment size)"),
            sysctl("/proc/sys/kernel/msgmnb", "SysV mq: bytes in one queue (sysv+mq: both directions)"),
            sysctl("/proc/sys/kernel/msgmni", "SysV mq: queues system-wide (one per sysv+mq channel)"),
        ]

    @classmethod
    def reserved_names(cls) -> tuple[str, ...]:
        return ("ipckit-sysv-",)  # records judged by their OFD locks, which no holder scan sees

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        found: list[StaleObject] = []
        for base in registry_dirs():
            name = os.path.basename(base)
            if not name.startswith(sweep.prefix):
                continue
            try:
                entries = sorted(os.listdir(base))
            except OSError:
                continue
            for entry in entries:
                path = os.path.join(base, entry)
                if os.path.isfile(path) and _is_ours(path) and _RECORD.reclaim_if_stale(path, dry_run=True):
                    found.append(StaleObject(path, "sysv+mq:// object", "no end holds its lock",
                                             name=name, label=entry))
        return found

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        # Judged again under the record's lock: an end that appeared meanwhile keeps it.
        return os.path.lexists(obj.path) and _RECORD.reclaim_if_stale(obj.path)

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: Options = options
        url = "sysv+mq://"
        for _ in range(8):
            directory = registry_dir()
            ensure_registry_dir(directory, _DIR_WHAT)
            try:
                ta, fields = _create_channel(directory, url, opts.mode, opts.max_message_size)
                break
            except EndpointNotFound:  # the directory was removed by a closing channel: again
                continue
        else:
            raise EndpointNotFound(errno.ENOENT, f"{directory} keeps disappearing")
        try:
            a = SysvMqChannel(url, opts, ta, peer_max=opts.max_message_size)
        except BaseException:
            remove_channel(ta.ref)
            ta.release()
            raise
        try:
            fd = _locks.new_description(ta.fd)
            try:
                if not _locks.lock(fd, 1):
                    raise ChannelBroken(f"{url}: another process locked a channel record just created")
                _claim(fd, {k: str(v) for k, v in fields.items()}, opts.max_message_size)
                mq = open_queue(url, ta.ref.msgkey, ta.ref.msgid, opts.mode)
                tb = SysvQueueTransport(url, mq, fd, 1, ta.ref)
            except BaseException:
                os.close(fd)
                raise
            ta.attach_peer()
            tb.attach_peer()
            b = SysvMqChannel(url, opts, tb, peer_max=opts.max_message_size)
        except BaseException:
            a.close()
            raise
        return a, b

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: Options = options
        for _ in range(8):
            directory, path, url = _rendezvous(endpoint.address)  # (again after a race: the registry may move)
            if directory in registry_candidates():
                ensure_registry_dir(directory, _DIR_WHAT)
            else:
                check_private_dir(directory, _DIR_WHAT)
            try:
                fd = _new_record(path)
            except FileNotFoundError:
                continue
            except FileExistsError as exc:
                if not _reclaim_listener(path):
                    try:
                        _paths.check_owned(path, os.lstat(path), "endpoint file")
                    except FileNotFoundError:
                        continue
                    raise EndpointExists(errno.EEXIST, f"{url} is in use by a live listener") from exc
                continue
            try:
                lst = SysvMqListener(url, opts, path, fd, secrets.token_hex(16))
            except BaseException:
                _paths.unlink_quiet(path)
                os.close(fd)
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            return lst
        raise EndpointExists(errno.EEXIST, f"sysv+mq://{endpoint.address}: the name keeps being taken")

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        directory, path, url = _rendezvous(endpoint.address)
        if os.path.lexists(directory):
            check_private_dir(directory, _DIR_WHAT)
        return _connect(url, path, options, deadline)


def _reclaim_listener(path: str) -> bool:
    """Reclaim the record of a listener that is gone, and the next channel it had made (both
    stale then: the listener held their byte 0); True if the name is free now."""
    try:
        fd = open_record(path)
    except FileNotFoundError:
        return True
    except PermissionDenied:
        return False
    try:
        nonce = _RECORD.read(fd, path).get("next", "")
    except (OSError, IPCError):
        nonce = ""
    finally:
        os.close(fd)
    if not _RECORD.reclaim_if_stale(path):
        return False
    if nonce.isalnum():
        _RECORD.reclaim_if_stale(locate_record(f"mq.{nonce}"))
    return True


def _is_ours(path: str) -> bool:
    """The file is a record of this scheme (the tag), not another SysV scheme's."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_RECORD.tag) + 1) == _RECORD.tag.encode() + b" "
    except OSError:
        return False
