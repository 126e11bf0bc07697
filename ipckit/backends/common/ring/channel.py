"""The channel end both shared-memory ring backends share (``shm://`` and ``sysv+shm://``).

A provider (``shm.py``: POSIX shared memory + posix_ipc semaphores, OFD-lock liveness;
``sysv_shm.py``: SysV shared memory + a SysV semaphore set, ``SEM_UNDO`` liveness) makes the
segment and its two wake-up hints; :class:`RingChannel` runs the two rings in it
(``ipckit.backends.common.ring.buffer``, one per direction) with the wait strategy of
``ipckit.backends.common.ring.waiting``: the send/receive hooks and their fast paths, the waits, the
peer-death checks, copy-free ``recv_view``, pickle protocol 5 out-of-band parts, closing, and the
skeleton of the hand-off to a child process (spawn: ``__reduce__``; fork: the Channel base's
``_fork_handed``/``_fork_adopt``/``_fork_release`` hooks).  :class:`RingListener` is the
single-peer listener both use.

What a provider supplies (see each hook's docstring): ``_peer_gone`` (its liveness test),
``_end_closed`` / ``_release_segment`` (what closing leaves or removes), ``_check_handoff`` /
``_handoff_args`` (spawn hand-off), ``_take_over_after_fork`` / ``_drop_liveness_copy`` (fork),
``_both_attached`` (a listener's peer arrived).

The segment's page 0 starts with the header words of :data:`H_MAGIC` .. :data:`H_LIMIT`; a
provider adds its own words after them.  Each end publishes its ``max_message_size`` there
(:data:`H_LIMIT`: the creator's when it initialises the segment, the other end's before it marks
itself attached), so each end's sends are limited to what the peer receives (issue 10, A.3).
An end on its way to a spawned child is HANDOFF, with the time it left (:data:`H_TRAVEL`), until
the child claims it: nothing holds the channel's liveness meanwhile, so a stale sweep reads the
header (:func:`in_transit`) and keeps such a channel for :data:`TRAVEL_GRACE` seconds.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NoReturn, TypeVar, overload

from ipckit import _handoff
from ipckit.backend import Backend
from ipckit.channel import USE_DEFAULT, Channel, Listener
from ipckit.deadline import Deadline, deadline_from, remaining
from ipckit.errors import (
    BufferTooSmall,
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    IPCError,
    PeerDied,
    RecvTimeout,
    ResourceExhausted,
    SendTimeout,
    UnsupportedOperation,
    from_oserror,
)
from ipckit.options import Capabilities, Options, option

from . import buffer as _ring
from . import doorbell as _doorbell
from . import protocol as _protocol
from . import side as _side
from .protocol import W_RSLEEP as _W_RSLEEP
from .waiting import WaitStrategy, Waker, Watch

__all__ = [
    "RING_CAPS",
    "RingBackend",
    "RingChannel",
    "RingListener",
    "RingOptions",
    "TRAVEL_GRACE",
    "header_matches",
    "in_transit",
    "initialize_segment",
    "layout",
    "open_end",
]

PAGE: Final = mmap.PAGESIZE
_WRITE_POS: Final = _ring.WRITE_POS
_WRITER_CLOSED: Final = _ring.WRITER_CLOSED

# Segment header words (u64) on page 0, common to both providers.
H_MAGIC, H_VERSION, H_CAPACITY, H_MAXMSG, H_UID = 0, 1, 2, 3, 4
H_STATE: Final = (5, 6)  # per end: FREE, ATTACHED, HANDOFF, CLOSED
H_PID: Final = (7, 8)  # per end: the pid that holds it (untrusted: a hint for the wait strategy)
# Per end: its max_message_size (end 1's is valid once that end left FREE).  Untrusted like the pid:
# it only bounds what this end sends; the receiver checks every message against its own limit.
H_LIMIT: Final = (H_MAXMSG, 9)
# Per end: when it started travelling to a child (travel_clock_ns), meaningful while it is HANDOFF.
H_TRAVEL: Final = (10, 11)
H_WORDS: Final = 12  # the common words; a provider's start here
FREE, ATTACHED, HANDOFF, CLOSED = 0, 1, 2, 3

_PID_LIMIT: Final = 1 << 22  # Linux PID_MAX_LIMIT
# A ring's (and the header's) limit is a u64 below the counters' 2**63: no message can be larger.
_LIMIT_MAX: Final = _protocol.COUNTER_MAX - 1

#: Seconds an end travelling to a child (pickled for spawn/forkserver, or forked, and not yet
#: claimed there) keeps a channel nobody else holds from being reclaimed as stale (``ipckit
#: cleanup``, a backend's ``cleanup_stale``, a ``listen()`` on its name).  A child that never
#: arrives leaves a channel that is reclaimed once this has passed.  docs/contract.md states it.
TRAVEL_GRACE: Final = 60.0

RING_CAPS: Final = Capabilities(
    duplex=True,
    message_oriented=True,
    selectable=False,
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=True,
    proves_same_user=True,
)


@dataclass
class RingOptions(Options):
    """``capacity``: bytes per direction (rounded up to a page); ``spin``: spin briefly before blocking."""

    capacity: int = option(4 * 1024 * 1024, minimum=1, maximum=_ring.MAX_CAPACITY)
    spin: bool = True


def layout(capacity: int) -> tuple[int, int, int]:
    """(rounded capacity, region size, segment size) -- rings start on page boundaries."""
    cap = _ring.round_capacity(max(capacity, _ring.MIN_CAPACITY))
    cap = (cap + PAGE - 1) // PAGE * PAGE
    region = _ring.region_size(cap)
    region_pages = (region + PAGE - 1) // PAGE * PAGE
    return cap, region, PAGE + 2 * region_pages


def ring_offsets(segment_size: int) -> tuple[int, int, int]:
    """(offset of ring A, offset of ring B, region size) in a segment of *segment_size* bytes."""
    half = (segment_size - PAGE) // 2
    return PAGE, PAGE + half, half


def initialize_segment(buf: memoryview, segment_size: int, capacity: int, max_message_size: int,
                       version: int) -> None:
    """Initialise both rings and the common header words of a new segment (the creator writes
    its own words, then the magic, last)."""
    off_a, off_b, _ = ring_offsets(segment_size)
    max_message_size = min(max_message_size, _LIMIT_MAX)
    _ring.initialize(buf, off_a, capacity, max_message_size)
    _ring.initialize(buf, off_b, capacity, max_message_size)
    hdr = buf[:PAGE].cast("Q")
    hdr[H_VERSION] = version
    hdr[H_CAPACITY] = capacity
    hdr[H_LIMIT[0]] = max_message_size
    hdr[H_UID] = os.geteuid()
    hdr.release()


def travel_clock_ns() -> int:
    """The clock of :data:`H_TRAVEL`: one for every process of the machine, never set back, and
    counting a suspend (a grace period is wall time)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def in_transit(words: Sequence[int], magic: int, version: int) -> bool:
    """True when a segment header (its first :data:`H_WORDS` words, as a stale sweep reads them)
    shows an end that left for a child less than :data:`TRAVEL_GRACE` seconds ago.

    A sweep asks only once no live process holds the channel: the handing end marks itself
    HANDOFF before it lets its liveness go.  A header of another layout is never in transit.
    """
    if len(words) < H_WORDS or words[H_MAGIC] != magic or words[H_VERSION] != version:
        return False
    now = travel_clock_ns()
    grace = int(TRAVEL_GRACE * 1e9)
    return any(words[H_STATE[end]] == HANDOFF and 0 <= now - words[H_TRAVEL[end]] < grace for end in (0, 1))


def header_matches(hdr: Sequence[int], magic: int, version: int, segment_size: int) -> bool:
    """True when an initialised header is ours: magic, version, owner, and a layout of this size.

    The header is shared memory another process wrote: a capacity no ring can have (beyond
    MAX_CAPACITY) is a mismatch like any other, never an error of its own.
    """
    if hdr[H_MAGIC] != magic or hdr[H_VERSION] != version or hdr[H_UID] != os.geteuid():
        return False
    try:
        return layout(int(hdr[H_CAPACITY]))[2] == segment_size
    except ValueError:
        return False


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


class RingChannel(Channel):
    """One end of a ring channel.  Role 0 created the segment, role 1 attached to it."""

    capabilities: ClassVar[Capabilities] = RING_CAPS
    #: Sends between two checks of the reader's liveness (a dead reader never frees space, but a
    #: large ring would accept many messages first); every multi-part send checks too.
    liveness_every: ClassVar[int] = 64

    def __init__(
        self,
        url: str,
        options: RingOptions,
        role: int,
        buf: object,
        hdr: memoryview,
        segment_size: int,
        own_waker: Waker,
        peer_waker: Waker,
    ) -> None:
        super().__init__(url, options, peer_trusted=True)
        self._role = role
        self._hdr = hdr
        off_a, off_b, size = ring_offsets(segment_size)
        out_off, in_off = (off_a, off_b) if role == 0 else (off_b, off_a)
        # Each ring's limit is its reader's max_message_size: ours on the ring we read, the peer's
        # (from the header, _learn_peer_from_header) on the one we write.
        own = min(options.max_message_size, _LIMIT_MAX)
        self._w = _ring.RingWriter(buf, out_off, size, own)
        self._r = _ring.RingReader(buf, in_off, size, own)
        self._own_waker = own_waker
        self._peer_waker = peer_waker
        # The writer wakes a sleeping reader through _wake_reader (semaphore, and the reader's
        # doorbell when it sleeps in ipckit.wait); the reader wakes a writer by the semaphore.
        self._wctl = self._w.control  # the reader's sleeping word, read by _wake_reader
        self._w.wake_peer = self._wake_reader
        self._r.wake_peer = peer_waker.post
        self._bell: _doorbell.FifoBell | None = None  # ours, made on the first wait that arms it
        self._peer_bell_fd = -1  # the peer's, opened on the first ring
        # The rings' per-message fast paths (ringcursor: C or pure Python), run by send_bytes /
        # recv_bytes while this direction's lock is free; the writer's budget counts sends until
        # the next liveness check of the reader.
        self._wc: Any = self._w.cursor
        self._rc: Any = self._r.cursor
        self._wc.lock = self._send_lock
        self._rc.lock = self._recv_lock
        self._wc.budget = self.liveness_every
        self._wait = WaitStrategy(spin=options.spin)
        self._peer_pid = 0
        self._peer_dead = False
        self._view_out = False
        # Large messages in slots of their own (side.py), once the provider enables them.
        self._side_w: _side.SideWriter | None = None
        self._side_r: _side.SideReader | None = None
        self._side_dead: Sequence[object] = ()  # the reader's list of messages to return (side.py)
        self._poll_budget = 1  # poll(0)s answered from the shared words before a liveness check
        self._large = 0
        if role == 1 or hdr[H_STATE[1]] != FREE:  # the peer's limit is published (a listener's learns at accept)
            self._learn_peer_from_header()

    def _enable_side(self, fd: int, ring_bytes: int, next_word: int, threshold: int) -> None:
        """Provider: send messages of at least *threshold* bytes in slots of the segment's file
        *fd* beyond its *ring_bytes* (side.py); header words ``next_word + role`` hold each
        direction's next slot offset.  0 leaves every message in the ring."""
        if threshold <= 0:
            return
        role = self._role
        self._large = threshold
        self._side_w = _side.SideWriter(fd, _side.window_base(role, ring_bytes), self._hdr[:], next_word + role)
        self._side_r = _side.SideReader(fd, _side.window_base(1 - role, ring_bytes), self._r.max_message_size,
                                        self._r.nudge)
        self._side_dead = self._side_r.dead
        self._r.side = self._side_r.open
        self._w.fast_ceiling(threshold)

    def _return_slots(self) -> None:
        """Hand the slots of received large messages whose last view died back to the peer."""
        side = self._side_r
        if side is not None:
            side.drain()

    # -- provider hooks ------------------------------------------------------------------------
    def _peer_gone(self) -> bool:
        """True when the peer end was attached and its process died (sets ``_peer_dead``)."""
        raise NotImplementedError

    def _end_closed(self, mine: bool) -> None:
        """After the rings were closed (*mine*: this process owned the end) or only detached."""

    def _release_segment(self) -> None:
        """Release this end's hold on the segment (mapping, descriptors); always called last."""
        raise NotImplementedError

    def _check_handoff(self) -> None:
        """Raise TypeError if this end can no longer be handed to a spawned process."""

    def _handoff_args(self) -> tuple[Any, ...]:
        """The ``__reduce__`` value ``(rebuild, args)`` that rebuilds this end in the spawned process."""
        raise NotImplementedError

    def _take_over_after_fork(self) -> None:
        """Child of a fork that was handed this end: hold its liveness from this process."""
        raise NotImplementedError

    def _drop_liveness_copy(self) -> None:
        """Child of a fork that was not handed this end: never keep the parent's liveness."""

    def _both_attached(self) -> None:
        """Creator's end, a listener's peer attached: the rendezvous names are not needed any more."""

    # -- attach / liveness ---------------------------------------------------------------------
    def _mark_attached(self) -> None:
        """Publish this end's limit and this process as the end's holder (the state last: a peer
        that sees the end attached reads both)."""
        hdr = self._hdr
        hdr[H_LIMIT[self._role]] = min(self._max, _LIMIT_MAX)
        hdr[H_PID[self._role]] = os.getpid()
        hdr[H_STATE[self._role]] = ATTACHED
        self._refresh_peer()

    def _mark_travelling(self) -> None:
        """This end is on its way to a child, which claims it (ATTACHED): HANDOFF, and since when
        (a stale sweep keeps the channel meanwhile, :func:`in_transit`)."""
        hdr = self._hdr
        hdr[H_TRAVEL[self._role]] = travel_clock_ns()
        hdr[H_STATE[self._role]] = HANDOFF  # before the liveness goes (the provider's _handoff_args)

    def _learn_peer_from_header(self) -> None:
        """Limit this end's sends to the peer's published ``max_message_size`` (issue 10, A.3):
        the base class's checks and the ring writer's own, which its fast path uses too."""
        self._learn_peer_limit(int(self._hdr[H_LIMIT[1 - self._role]]))
        self._w.limit_to(min(self._send_max, _LIMIT_MAX))

    def _refresh_peer(self) -> None:
        pid = int(self._hdr[H_PID[1 - self._role]])
        if pid != self._peer_pid:
            self._peer_pid = pid  # untrusted: only a hint for the wait strategy
            self._wait.set_peer(pid if 0 < pid < _PID_LIMIT and pid != os.getpid() else None)

    def _check(self) -> None:
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed")
        self._refresh_peer()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            raise UnsupportedOperation(
                f"{self._url} was inherited through fork; pass it to the child as a multiprocessing "
                "argument (it is handed over) or connect by name"
            )

    # -- hot paths ------------------------------------------------------------------------------
    # send_bytes / recv_bytes keep the base class's semantics (Channel's docstrings) but skip its
    # layers when the call completes at once: one cursor call, which runs only while this
    # direction's lock is free, on an attached ring, within the liveness budget.  Anything unusual
    # (contention, a full ring, the peer closed, a streamed message, a pending recv_view, the
    # channel closed) goes through the general path in Channel, which reports it.  send() and
    # recv() reach the same fast paths through the base class's hooks (_send_one, _recv_payload):
    # an object costs its serializer's time on top of the bytes path, nothing else (issue 11).
    # Each also hands back the slots of large messages received before whose views died (one list
    # check when there are none): a peer waiting for our reply may want to fill one again.
    def send_bytes(self, data: Any, timeout: float | None = USE_DEFAULT) -> None:
        if self._side_dead:
            self._return_slots()
        if not self._wc.send(data):
            Channel.send_bytes(self, data, timeout)

    def send(self, obj: Any, timeout: float | None = USE_DEFAULT) -> None:
        # Channel.send with its two hops (the encoder, _send_one) folded in: one encoder call,
        # then the cursor (issue 11: raw is the bytes path, pickle costs only its own time).
        try:
            data = self._encode(obj)
        except IPCError:
            raise
        except Exception as exc:
            if self._closed:
                raise self._closed_error("send") from None
            raise self._encode_error(obj, exc) from exc
        if type(data) is bytes:
            if self._side_dead:
                self._return_slots()
            if not self._wc.send(data):
                Channel._send_one(self, data, timeout)
        elif self._closed:
            raise self._closed_error("send")
        elif type(data) is list:
            self._send_encoded_parts(data, timeout)
        else:
            self._send_one(data, timeout)

    def recv(self, timeout: float | None = USE_DEFAULT) -> Any:
        # Channel.recv with _recv_payload folded in (see send).
        if self._side_dead:
            self._return_slots()
        data: Any = self._rc.recv()
        if data is None:
            data = self._recv_waiting(timeout)
        if self._sticky:
            self._settle_bell()
        try:
            return self._decode(data)
        except IPCError:
            raise
        except Exception as exc:
            raise self._decode_error(data, exc) from None

    def _send_one(self, data: Any, timeout: float | None) -> None:
        if self._side_dead:
            self._return_slots()
        if not self._wc.send(data):
            Channel._send_one(self, data, timeout)

    def recv_bytes(self, timeout: float | None = USE_DEFAULT) -> bytes:
        if self._side_dead:
            self._return_slots()
        data: bytes | None = self._rc.recv()
        if data is None:
            got = self._recv_waiting(timeout)
            data = got if type(got) is bytes else bytes(got)
        if self._sticky:
            self._settle_bell()
        return data

    def _recv_payload(self, timeout: float | None) -> Any:
        if self._side_dead:
            self._return_slots()
        data: Any = self._rc.recv()
        if data is None:
            data = self._recv_waiting(timeout)
        if self._sticky:
            self._settle_bell()
        return data

    def recv_bytes_into(self, buf: Any, timeout: float | None = USE_DEFAULT) -> int:
        n = Channel.recv_bytes_into(self, buf, timeout)
        if self._sticky:
            self._settle_bell()
        return n

    def recv_view(self, timeout: float | None = USE_DEFAULT) -> memoryview:
        view = Channel.recv_view(self, timeout)
        if self._sticky:
            self._settle_bell()
        return view

    def _recv_waiting(self, timeout: float | None) -> Any:
        """The receive fast path when nothing was ready: wait here, then one cursor call.

        Most often the ring is empty and the answer a microsecond away, so wait right here, without
        the general path's layers: under this direction's lock, in the wait every receive uses
        (_await_data), then take what came with one C call.  Anything else goes to the general
        path within the same deadline: another thread receiving, bytes that are not one whole
        record (padding, a streamed message), a pending recv_view, the end of the channel, the
        deadline, this end closed.
        """
        if timeout is USE_DEFAULT:
            timeout = self._default_timeout
        if self._closed:
            return Channel._recv_payload(self, timeout)  # which raises ChannelClosed
        deadline = None if timeout is None else deadline_from(timeout)
        lock = self._recv_lock
        data: bytes | None = None
        held: list[bool] = []
        try:
            # The lock's answer is stored from C, so an interrupt as acquire() returns never
            # leaves it taken (see Channel._locked_send).
            held.extend(map(lock.acquire, (False,)))
            if held[0] and not self._closed and not self._view_out:
                rc = self._rc
                words = self._r.counters
                rp = rc.own
                if words[_WRITE_POS] == rp and self._await_data(deadline, (words, _WRITE_POS, rp, _WRITER_CLOSED)):
                    data = rc.recv_held()
        except IPCError:
            raise
        except OSError as exc:  # reported as the general path reports them (Channel._locked_recv)
            raise from_oserror(exc, f"recv on {self._url}") from exc
        except MemoryError as exc:
            raise ResourceExhausted(f"out of memory receiving on {self._url}") from exc
        finally:
            if held and held[0]:
                lock.release()
        if data is not None:
            return data
        return Channel._recv_payload(self, remaining(deadline))

    # -- sending --------------------------------------------------------------------------------
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        w = self._w
        if w.peer_closed():
            self._check_pid()
            raise EndOfChannel(f"the peer closed {self._url}")
        if self._large and view.nbytes >= self._large and self._send_in_slot([view], view.nbytes, deadline):
            return
        wc = self._wc
        if wc.budget <= 0:
            self._send_liveness()
        if wc.send_held(view):
            return
        if w.peer_closed():  # the cursor committed it, then found the reader gone
            raise EndOfChannel(f"the peer closed {self._url}")
        wc.budget -= 1
        if w.try_write(view):
            return
        self._finish_send(deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        # pickle protocol 5: the object's out-of-band buffers are copied straight into the ring.
        w = self._w
        if w.peer_closed():
            self._check_pid()
            raise EndOfChannel(f"the peer closed {self._url}")
        self._send_liveness()
        if self._large and total >= self._large and self._send_in_slot(views, total, deadline):
            return
        if w.write(views, total):
            return
        self._finish_send(deadline)

    def _send_in_slot(self, views: list[memoryview], total: int, deadline: Deadline) -> bool:
        """Send a large message through a slot (side.py): copied once into the slot, named by a REF
        record.  False when no slot is to be had: the caller sends it through the ring."""
        side = self._side_w
        assert side is not None
        self._send_liveness()  # (one fcntl beside a large copy) a dead reader never returns a slot
        slot = side.take(total)
        if slot is None and side.behind:
            # The reader has not yet taken the messages in flight: wait for one to come back, as for
            # room in a full ring (its return wakes us), within this send's deadline.
            w = self._w
            try:
                if self._wait.peer_pid is None:
                    self._refresh_peer()
                if not self._wait.wait(side.any_returned, deadline, self._own_waker, w.set_sleeping,
                                       self._send_check):
                    raise SendTimeout(f"send on {self._url} timed out (the reader has not taken the "
                                      "large messages before it)")
            finally:
                w.set_sleeping(False)
            slot = side.take(total)
        if slot is None:
            return False
        self._check_pid()
        side.fill(slot, views)
        ref = side.ref(slot)
        w = self._w
        try:
            if not w.write_ref(ref, total):
                self._finish_send(deadline)
        except BaseException:
            # Whether the record went out decides whose the slot is: committed, the reader's (it
            # returns the slot once done with the message); otherwise the writer's again.
            if not w.committed_last(_protocol.REF, ref):
                side.unfill(slot)
            raise
        return True

    def _finish_send(self, deadline: Deadline) -> None:
        self._check_pid()  # (first: a copy in another process must never touch the ring)
        w = self._w
        try:
            if self._wait.peer_pid is None:
                self._refresh_peer()
            while True:
                ok = self._wait.wait(w.can_progress, deadline, self._own_waker, w.set_sleeping, self._send_check)
                if w.peer_closed():
                    w.abort()
                    raise EndOfChannel(f"the peer closed {self._url}")
                if w.pump():
                    return
                if not ok:
                    w.abort()
                    if self._peer_gone():
                        raise self._died(f"the peer of {self._url} died")
                    raise SendTimeout(f"send on {self._url} timed out (the ring is full)")
        except BaseException:
            # Whatever came out of the wait or a step (a check's error, a signal handler's exception):
            # the message is given up whole, the writer left ready for the next one (issue 10, B.6).
            w.recover()
            raise

    def _died(self, message: str) -> PeerDied:
        """The PeerDied to raise; from now on every send comes to :meth:`_send_liveness` and raises
        it again (the fast path's budget is spent), as every receive does once nothing is left."""
        self._wc.budget = 0
        return PeerDied(message)

    def _send_liveness(self) -> None:
        self._check_pid()
        if self._peer_gone():
            raise self._died(f"the peer of {self._url} died")
        self._wc.budget = self.liveness_every

    def _send_check(self) -> None:
        self._check()
        if self._peer_gone():
            raise self._died(f"the peer of {self._url} died")

    # -- receiving ------------------------------------------------------------------------------
    # Every receive (recv, recv_bytes, recv_bytes_into, recv_view) and poll waits in one place,
    # _await_data, through the wait strategy: one spin/yield/block policy, one deadline, one set of
    # closed and peer-death checks.
    def _recv_ready(self) -> bool:
        return self._r.has_data() or self._r.writer_closed()

    def _recv_check(self) -> None:
        """Before each sleep of a receive's wait: closed, inherited through fork, peer died."""
        self._check()
        self._check_pid()
        if self._peer_gone() and not self._r.has_data():
            raise self._died(f"the peer of {self._url} died; every message it committed was received")

    def _await_data(self, deadline: Deadline, watch: Watch | None = None) -> bool:
        """Wait until bytes are committed or the writer closed (True), or *deadline* passed (False).

        The answer is often a microsecond away, so nothing costly runs before the spin: the pid
        and liveness checks come before the wait sleeps (:meth:`_recv_check`) and at the deadline.
        *watch*: the caller's ``(counters, WRITE_POS, read_pos, WRITER_CLOSED)``, if it has it.

        Raises:
            ChannelClosed: this end was closed meanwhile.
            PeerDied: the peer died, and nothing it committed is left to read.
            UnsupportedOperation: this end was inherited through fork.
        """
        r = self._r
        if self._peer_dead and not r.has_data():
            raise self._died(f"the peer of {self._url} died; every message it committed was received")
        ws = self._wait
        if ws.peer_pid is None:  # learn where the peer runs (same CPU: never spin)
            self._refresh_peer()
        if watch is None:
            # The predicate as shared words, which the spin reads without a call: write_pos moved
            # past our read_pos, or writer_closed was raised.
            watch = (r.counters, _WRITE_POS, self._rc.own, _WRITER_CLOSED)
        if ws.wait(self._recv_ready, deadline, self._own_waker, r.set_sleeping, self._recv_check, watch):
            return True
        self._check_pid()
        if self._peer_gone() and not r.has_data():
            raise self._died(f"the peer of {self._url} died; every message it committed was received")
        return False

    @overload
    def _next(self, deadline: Deadline, into: memoryview | None = None, fast: None = None) -> memoryview: ...

    @overload
    def _next(self, deadline: Deadline, into: None, fast: Callable[[], bytes | None]) -> memoryview | bytes: ...

    def _next(
        self, deadline: Deadline, into: memoryview | None = None, fast: Callable[[], bytes | None] | None = None
    ) -> memoryview | bytes:
        """The next message as a view (:meth:`RingReader.peek`: into the ring, or into *into* or a
        reassembly buffer), waiting for it in :meth:`_await_data`.

        *fast* (the cursor's ``recv_held``) runs after every wait, so a message that arrives
        meanwhile is taken by one C call and returned as bytes.
        """
        r = self._r
        if self._view_out:  # the previous recv_view's message: consumed now
            r.release()
            self._view_out = False  # (after: an interrupted release is finished by the next call)
        expired = False
        while True:
            view = r.peek(into)
            if view is not None:
                return view
            if r.writer_closed():  # the flag, then one more look: the writer stores them in the other order
                view = r.peek(into)
                if view is not None:
                    return view
                self._check_pid()
                raise EndOfChannel(f"the peer closed {self._url} and every message was received")
            if expired:
                raise RecvTimeout(f"no message on {self._url} before the deadline")
            expired = not self._await_data(deadline)
            if fast is not None:
                data = fast()
                if data is not None:
                    return data

    def _recv_message(self, deadline: Deadline) -> Any:
        rc = self._rc
        data = rc.recv_held()  # None for anything but one whole record ready now
        if data is not None:
            return data
        view = self._next(deadline, None, rc.recv_held)
        if type(view) is bytes:
            return view
        r = self._r
        if r.holds_slot:
            r.release(keep=True)  # the view is the message, copy-free; its slot returns when it dies
            return view
        obj = view.obj
        if isinstance(obj, bytearray) and len(obj) == len(view):
            self._r.release()  # a streamed message: its reassembly buffer is already a copy
            return obj
        data = bytes(view)
        self._r.release()
        return data

    def _recv_message_into(self, view: memoryview, deadline: Deadline) -> int:
        msg = self._next(deadline, view)
        try:
            n = len(msg)
            if n > len(view):
                data = bytes(msg)
                self._r.release()
                raise BufferTooSmall(f"message of {n} bytes does not fit the {len(view)}-byte buffer", data)
            if msg.obj is not view.obj:
                view[:n] = msg
            self._r.release()
        except BaseException:
            # A message reassembled into *view* and not consumed (a signal handler's exception) is
            # moved out of it: the next receive returns it, and the caller may reuse its buffer.
            self._r.recover()
            raise
        return n

    def _recv_view(self, deadline: Deadline) -> Any:
        # A view into the ring itself: the message stays in place until the next receive.
        view = self._next(deadline)
        self._view_out = True
        return view

    def poll(self, timeout: float | None = 0.0) -> bool:
        # The common answers without the general path's layers (lock, peek, wait): a whole message
        # is waiting; or, for poll(0), nothing is, with the peer's liveness looked at (one fcntl)
        # only every liveness_every such polls, as sends do.
        # (An end a forked child inherited has a _ForkedRing here, which raises UnsupportedOperation.)
        if not self._closed and not self._view_out and not self._handed_off:
            ready = self._r.ready_now()
            if ready:
                return True
            if ready is False and timeout == 0 and not self._peer_dead:
                self._poll_budget -= 1
                if self._poll_budget > 0:
                    return False
                self._poll_budget = self.liveness_every
        return Channel.poll(self, timeout)

    def _poll(self, deadline: Deadline) -> bool:
        # Under the receive lock, so close() waits for a poll blocked in another thread.
        lock = self._recv_lock
        held: list[bool] = []
        try:
            wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            held.extend(map(lock.acquire, (True,), (wait,)))  # (stored from C: see _recv_waiting)
            if not held[0]:
                return False
            if self._closed:
                raise ChannelClosed(f"poll on closed channel {self._url}")
            self._check_pid()
            r = self._r
            if self._view_out:
                return self._poll_beyond_view(deadline)
            expired = False
            while True:
                if r.peek() is not None or r.writer_closed():
                    return True
                if expired:
                    return False
                try:
                    expired = not self._await_data(deadline)
                except PeerDied:
                    return True  # recv would raise it without blocking
        finally:
            if held and held[0]:
                lock.release()

    def _poll_beyond_view(self, deadline: Deadline) -> bool:
        """poll() while a recv_view's message is held (it stays valid until the next receive): is
        anything committed beyond it?  (A padding or abort record counts too: then a receive may
        still wait, a rare early True, never a missed message.)"""
        r = self._r
        end = r.held_end
        words = r.counters

        def beyond() -> bool:
            return words[_WRITE_POS] != end or r.writer_closed()

        if beyond():
            return True
        if self._peer_dead or self._peer_gone():
            return True  # recv would raise PeerDied once the view is released
        try:
            return self._wait.wait(beyond, deadline, self._own_waker, r.set_sleeping, self._recv_check,
                                   (words, _WRITE_POS, end, _WRITER_CLOSED))
        except PeerDied:
            return True

    # -- closing --------------------------------------------------------------------------------
    def _wakeup(self) -> None:
        if self._pid == os.getpid() and not self._handed_off:
            self._own_waker.post()
            self._own_waker.post()
            if self._bell is not None:
                _doorbell.ring_once(self._bell.path)  # a wait() in another thread sees the close

    # -- doorbell (ipckit.wait / ipckit.aio; doorbell.py) ----------------------------------------
    def _bell_name(self) -> str | None:
        """Provider: a name both ends derive alike (the segment's), or None for no doorbell."""
        return None

    def _doorbell(self) -> _doorbell.FifoBell | None:
        """This end's doorbell, for ipckit.wait / ipckit.aio (None: the provider has none)."""
        if self._bell is None:
            if self._closed:
                raise self._closed_error("wait")
            name = self._bell_name()
            if name is None:
                return None
            self._bell = _doorbell.FifoBell(_doorbell.bell_path(name, self._role), self._r.set_flag)
        return self._bell

    #: True once fileno() gave the doorbell to a selector (doorbell.FifoBell.stick): every receive
    #: then keeps the FIFO's level (readable exactly while a message or the end waits).
    _sticky = False

    def _fileno(self) -> int:
        """The doorbell's FIFO, armed for good: selectors and ``loop.add_reader`` see every
        message and a clean close (a SIGKILLed peer only through poll() or ipckit.wait, which
        check liveness).  From now on each send rings it (a write) and each receive settles it
        (a read, and a write when more is waiting): the cost of being watched."""
        bell = self._doorbell()
        if bell is None:
            return super()._fileno()
        fd = bell.stick()
        self._r.rest = _doorbell.BELL
        self._sticky = True
        self._settle_bell()  # what was committed before the arm rang nothing
        return fd

    def _settle_bell(self) -> None:
        bell = self._bell
        if bell is not None:
            r = self._r
            bell.settle(lambda: r.has_data() or r.writer_closed())

    def _wake_reader(self) -> None:
        """The writer's wake-up, called only when the reader raised its sleeping word: post its
        semaphore (1: the kit's wait), or ring its doorbell (BELL: ipckit.wait, aio, a selector).

        On the kit's slow path only (the reader is asleep), but kept lean: one load of the shared
        word beyond the post (measured: +0.2 us per wake-up, against 3-50 us for the wake-up).
        """
        try:
            rang = self._wctl[_W_RSLEEP] == _doorbell.BELL
        except ValueError:  # the ring was detached (its view released): nobody to ring
            rang = False
        if not rang:
            self._peer_waker.post()
            return
        # The reader sleeps on its doorbell, not on the semaphore: a post would only pile up
        # counts (a selector's reader is armed for good) that its next kit wait would spin off.
        name = self._bell_name()
        if name is not None:
            self._peer_bell_fd = _doorbell.ring_fifo(_doorbell.bell_path(name, 1 - self._role), self._peer_bell_fd)

    def _drop_bells(self, unlink: bool) -> None:
        bell, self._bell = self._bell, None
        fd, self._peer_bell_fd = self._peer_bell_fd, -1
        if fd >= 0:
            os.close(fd)
        if bell is not None:
            bell.close(unlink)

    def _close(self) -> None:
        mine = self._pid == os.getpid() and not self._handed_off
        try:
            if mine:
                self._hdr[H_STATE[self._role]] = CLOSED  # before the liveness goes: not a crash
                self._w.close()
                self._r.close()
                self._peer_waker.post()
            else:
                self._w.detach()
                self._r.detach()
            # After the rings: a held recv_view of a slot's message is dropped there first.
            if self._side_r is not None:
                self._side_r.close()
            if self._side_w is not None:
                if mine:
                    self._side_w.close()
                else:
                    self._side_w.detach()
            self._end_closed(mine)
        finally:
            try:
                self._drop_bells(mine)
            finally:
                self._release_segment()

    # -- hand-off ---------------------------------------------------------------------------------
    def __reduce__(self) -> Any:
        # The end travels by name (the provider's _handoff_args); once it is on its way our copy
        # only detaches when closed.
        def build() -> _handoff.ReduceValue:
            if self._closed:
                raise TypeError(f"{self._url} is closed")
            self._check_handoff()
            if self._view_out:
                self._view_out = False
                self._r.release()
            self._mark_travelling()
            return self._handoff_args()

        return _handoff.reduce_for_spawn(self, build)

    def _fork_adopt(self) -> None:
        """In a multiprocessing fork child that was handed this end: it is ours now."""
        super()._fork_adopt()  # new locks: a parent thread may have held them at the fork
        self._wc.lock = self._send_lock
        self._rc.lock = self._recv_lock
        # A message a parent thread was writing at the fork is that thread's to finish or abort.
        self._w.forget_pending()
        # The parent's doorbell descriptors: ours to drop (the FIFO itself is the end's, kept).
        self._drop_bells(False)
        try:
            self._take_over_after_fork()
        except Exception:  # never fail the fork; a broken end raises on use instead
            pass

    def _fork_release(self, multiprocessing_child: bool) -> None:
        """In any forked child that was not handed this end: never touch the shared rings, and
        never keep the parent's liveness (its death must stay visible to the peer)."""
        self._drop_liveness_copy()
        forked: Any = _ForkedRing(self._url)
        self._w = forked
        self._r = forked
        self._wc = forked  # the fast paths raise UnsupportedOperation too
        self._rc = forked


class RingBackend(Backend):
    """What both ring backends' factories share: capabilities, the CPU check, the fast-path note."""

    capabilities: ClassVar[Capabilities] = RING_CAPS

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if not _ring.ordering_supported():
            return False, "the shm ring needs an x86-64 CPU (total store order)"
        return cls._provider_available()

    @classmethod
    def _provider_available(cls) -> tuple[bool, str]:
        """The provider's own probe (its library, its kernel interface)."""
        return True, ""

    @classmethod
    def notes(cls) -> list[str]:
        """Which per-message fast path the rings run here (read at call time), and how to get the C one."""
        from . import cursor

        if cursor.IMPLEMENTATION == "c":
            return ["shm rings: C per-message fast path"]
        if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
            return ["shm rings: pure-Python fast path (IPCKIT_PURE_PYTHON is set)"]
        return ["shm rings: pure-Python fast path -- the C extension was not built; reinstall ipckit with a C "
                "compiler and the Python headers (gcc, python3-dev) for several times faster small messages"]


_C = TypeVar("_C", bound=RingChannel)


def open_end(make: Callable[[], _C], release_segment: Callable[[], object], claim: Callable[[_C], object]) -> _C:
    """Build an end on an attached segment (``make``) and take it over (``claim``).

    If building fails, the segment is released; if the take-over fails, the end is closed without
    being marked closed in the segment (it may be a listener's, or on its way to another process).
    """
    try:
        ch = make()
    except BaseException:
        release_segment()
        raise
    try:
        claim(ch)
    except BaseException:
        ch._handed_off = True
        ch.close()
        raise
    return ch


def _no_sleeping_flag(sleeping: bool) -> None:
    """The wait's flag hook for accept: the connecting end always posts, so there is no flag."""


class RingListener(Listener):
    """Owns a named ring endpoint (its creator's end) until one peer attached."""

    def __init__(self, url: str, options: RingOptions, chan: RingChannel) -> None:
        super().__init__(url, options)
        self._chan: RingChannel | None = chan
        self._wait = WaitStrategy(spin=options.spin)  # the channel's policy, with a budget of its own

    def _accept(self, deadline: Deadline) -> Channel:
        ch = self._chan
        if ch is None:
            raise UnsupportedOperation(f"{self._url} accepts a single peer, and it already connected")
        hdr = ch._hdr
        peer_state = H_STATE[1]

        def attached() -> bool:
            return hdr[peer_state] not in (FREE, HANDOFF)

        # The connecting end posts our waker once it is attached (its _claim), and close() posts it
        # too (_wakeup): a listener has no sleeping flag to raise.
        if not self._wait.wait(attached, deadline, ch._own_waker, _no_sleeping_flag, self._accept_check):
            raise ChannelTimeout(f"no peer connected to {self._url} before the deadline")
        ch._learn_peer_from_header()  # it published its limit before it marked itself attached
        ch._refresh_peer()
        ch._both_attached()  # nothing can be left behind from now on
        self._chan = None
        return ch

    def _accept_check(self) -> None:
        if self._closed:
            raise ChannelClosed(f"accept on closed listener {self._url}")

    def _wakeup(self) -> None:
        ch = self._chan
        if ch is not None:
            ch._own_waker.post()  # a blocked accept() wakes, sees _closed and leaves

    def _close(self) -> None:
        ch, self._chan = self._chan, None
        if ch is not None:
            ch.close()
