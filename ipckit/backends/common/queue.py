"""The message-queue kit: fragments, reassembly and a Channel over any kernel message queue.

``mq://`` (POSIX queues) and ``sysv+mq://`` (SysV queues) share everything here; each scheme
supplies only a :class:`QueueTransport` (how to put and get one kernel message, and how to tell
whether the peer is alive) and its rendezvous.  Kernel queues carry small messages (8 KiB by
default on Linux), so an ipckit message is cut into *fragments*, one kernel message each, and
put together again on the other side.

Fragment format
    Every kernel message is a fragment: a 20-byte little-endian header (:data:`HEADER`,
    ``<HBBIIQ``) and up to ``fragment_size - 20`` payload bytes.

    ======== ===== =============================================================================
    field    type  meaning
    ======== ===== =============================================================================
    magic    u16   :data:`MAGIC` (``0x4B51``): anything else is not an ipckit fragment
    kind     u8    :data:`DATA` (a piece of a message), :data:`HELLO` (the sender's
                   ``max_message_size``, payload :func:`ipckit.framing.hello_payload`),
                   :data:`GOODBYE` (the sender closed cleanly; empty)
    flags    u8    :data:`FIRST` (first fragment of a message), :data:`LAST` (last one),
                   :data:`RESTART` (on a FIRST: the sender abandoned the message before this
                   one part-way -- a timeout or an interrupt -- so its fragments are dropped)
    msg_id   u32   the message's number: 0, 1, 2 ... per direction (wraps at 2**32); a
                   message abandoned after a put attempt consumes its number
    index    u32   the fragment's index within the message: 0, 1, 2 ...
    total    u64   the whole message's length, the same in each of its fragments
    ======== ===== =============================================================================

    HELLO and GOODBYE are single fragments (FIRST|LAST, index 0, msg_id 0) outside the numbering.
    An empty message is one DATA fragment with FIRST|LAST and no payload.

Transport interface (:class:`QueueTransport`)
    ``fragment_size``                 the largest kernel message, header included (>= 64)
    ``put(buf, n, timeout) -> bool``  queue ``buf[:n]`` as one kernel message, waiting at most
                                      *timeout* s (0: do not wait); False when it did not go in
                                      time or a signal interrupted the wait (the kit retries
                                      within its deadline, so Python signal handlers run between
                                      calls and their exceptions propagate)
    ``get(buf, timeout) -> int``      take one kernel message into *buf* (a bytearray of
                                      ``fragment_size`` bytes), waiting at most *timeout* s;
                                      its length, or -1 (nothing in time, or interrupted)
    ``peer_alive() -> bool``          the peer end still exists (an OS-released lock or
                                      counter proves it; not yet attached counts as alive)
    ``mark_closed()``                 persistently record "this end closed cleanly" where the
                                      peer can read it after this end is gone (the GOODBYE
                                      fragment may not fit a full queue)
    ``peer_closed() -> bool``         the peer's mark
    ``close()``                       release this end's handles (never removes the peer's data);
                                      idempotent, and may come early: once the peer is gone and
                                      everything was received (no thread in put/get then), the
                                      kit closes the transport to give its kernel memory back
    ``fileno() -> int``               optional: a descriptor readable when a fragment waits
    ``handoff()``                     optional: ``(fds, state)`` to rebuild the transport in a
                                      child with ``cls.rebuild(fds, state)`` (spawn/forkserver)
    ``fork_adopt()``                  optional: a forked child that was handed the end takes it over
    ``fork_release()``                optional: a forked child drops its inherited copies

    The kit calls ``put``/``get`` in slices of at most :data:`SLICE` seconds, checking between
    slices whether the channel was closed and the peer is alive; a transport never needs to
    wait longer than the timeout it was given.

Reassembly (:class:`Reassembler`)
    Bounded: a message's buffer is allocated from its first fragment's ``total``, which must be
    within ``max_message_size`` (else MessageTooLarge, and the message's fragments are skipped);
    so memory never exceeds ``max_message_size`` plus one fragment per direction.  Duplicate,
    missing, reordered, overlapping or oversized fragments raise ProtocolError (the partial
    message is dropped and the reassembler waits for the next FIRST fragment).  When the gap shows
    only at a valid FIRST fragment (a message began while another lacked its end, or out of the
    numbering), that fragment still begins its message: the error comes first, then the message.
    A partial message is never returned.

The channel (:class:`QueueChannel`)
    Sends cut the message straight from the caller's buffers (or pickle-5 out-of-band parts)
    into one fragment buffer (one copy, the one the kernel interface needs); receives copy each
    fragment's payload into the message buffer once.  Before a send the peer's liveness is
    checked; blocked waits re-check it every :data:`SLICE`.  A clean close marks the outbox
    (``mark_closed``) and tries to put a GOODBYE; the peer reads EndOfChannel after every message,
    PeerDied when the peer's end vanished without that mark.  An exception (timeout, signal
    handler, KeyboardInterrupt) part-way through a send abandons the message: the next one
    carries RESTART, so the peer drops the partial one and the channel stays usable.  One
    part-way through a receive resumes on the next call, or -- when a fragment may have been
    taken but not stored -- drops that one message and resumes with the next whole one.

KIT REQUESTS from scheme authors go to the kit's owner (/tmp/s5/kit-requests.md during its
construction); schemes never copy this code.
"""

from __future__ import annotations

import os
import select
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from ... import _handoff
from ...channel import USE_DEFAULT, Channel
from ...deadline import Deadline, remaining
from ...errors import (
    BufferTooSmall,
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    IncompatibleEndpoint,
    IPCError,
    MessageTooLarge,
    PeerDied,
    ProtocolError,
    RecvTimeout,
    SendTimeout,
    UnsupportedOperation,
    again,
    from_oserror,
)
from ...framing import decode_hello, hello_payload
from ...options import Options
from ...serializers import Buffer

__all__ = [
    "DATA",
    "FIRST",
    "GOODBYE",
    "HEADER",
    "HELLO",
    "LAST",
    "MAGIC",
    "RESTART",
    "SLICE",
    "QueueChannel",
    "QueueTransport",
    "Reassembler",
    "ReplySpin",
    "encode_control",
    "encode_hello",
    "parse_hello",
    "fragment_count",
    "fragments",
]

HEADER: Final = struct.Struct("<HBBIIQ")
MAGIC: Final = 0x4B51
DATA: Final = 1
HELLO: Final = 2
GOODBYE: Final = 3
FIRST: Final = 1
LAST: Final = 2
RESTART: Final = 4
_KNOWN_FLAGS: Final = FIRST | LAST | RESTART
_ID_MASK: Final = 0xFFFFFFFF

#: Longest single wait on the transport, in seconds: how soon a blocked call notices close() or
#: a dead peer.
SLICE: Final = 0.05

#: Smallest fragment size the kit accepts (header plus a useful payload).
MIN_FRAGMENT: Final = 64

_HS: Final = HEADER.size
_WHOLE: Final = FIRST | LAST
_NOWAIT: Final = (False,)


# ----------------------------------------------------------------------------- waiting
class ReplySpin:
    """The moment a transport's receive looks again before it waits in the kernel.

    A reply is often microseconds away, and a kernel wake-up costs more here than a whole round
    trip, so a receive that finds nothing tries again for up to ``SPIN`` seconds, yielding the
    CPU between tries (to the peer, when both share a core).  On a busy machine a yield hands
    the CPU to an unrelated CPU-bound process for its whole slice (milliseconds): a yield that
    comes back later than ``SLOW_YIELD`` without the answer turns the spin off for the next
    ``SKIP`` waits, which go straight to the kernel (as the shm ring's waits do, see
    ``common/ring/waiting.py``).
    """

    SPIN: Final = 30e-6
    SLOW_YIELD: Final = 50e-6
    SKIP: Final = 256

    __slots__ = ("_skip",)

    def __init__(self) -> None:
        self._skip = 0

    def look(self, take: Callable[[], int], timeout: float) -> int:
        """Call ``take()`` (>= 0: got something) until it gets something or the spin is over;
        -1 when it did not.  Spends at most ``min(timeout, SPIN)`` (plus one slow yield)."""
        if self._skip:
            self._skip -= 1
            return -1
        now = time.perf_counter()
        end = now + min(timeout, self.SPIN)
        while now < end:
            os.sched_yield()
            n = take()
            if n >= 0:
                return n
            after = time.perf_counter()
            if after - now > self.SLOW_YIELD:
                self._skip = self.SKIP
                return -1
            now = after
        return -1


# ----------------------------------------------------------------------------- fragmenter
def fragment_count(total: int, room: int) -> int:
    """How many fragments of *room* payload bytes a *total*-byte message takes (an empty one: 1)."""
    return max(1, -(-total // room))


def fragments(views: Sequence[memoryview], room: int) -> Iterator[list[memoryview]]:
    """Cut the message made of *views* (in order) into fragment payloads of at most *room* bytes.

    Yields one list of slices per fragment; the slices are views of *views* (nothing is copied),
    and every fragment but the last is exactly *room* bytes.  An empty message yields one empty
    list.
    """
    if room <= 0:
        raise ValueError("room must be positive")
    piece: list[memoryview] = []
    have = 0
    emitted = False
    for view in views:
        offset = 0
        n = view.nbytes
        while offset < n:
            take = min(room - have, n - offset)
            piece.append(view[offset : offset + take])
            have += take
            offset += take
            if have == room:
                yield piece
                emitted = True
                piece, have = [], 0
    if have or not emitted:
        yield piece


def encode_control(kind: int, payload: bytes = b"") -> bytes:
    """A HELLO or GOODBYE fragment (outside the message numbering)."""
    return HEADER.pack(MAGIC, kind, FIRST | LAST, 0, 0, len(payload)) + payload


def encode_hello(max_message_size: int) -> bytes:
    """The HELLO fragment announcing *max_message_size*."""
    return encode_control(HELLO, hello_payload(max_message_size))


def parse_hello(frag: memoryview | bytes, what: str) -> int:
    """The ``max_message_size`` a HELLO fragment announces.

    Raises:
        ProtocolError: *frag* is not an ipckit HELLO fragment (garbage, or data before the hello).
        IncompatibleEndpoint: a hello of another protocol version.
    """
    view = memoryview(frag)
    if view.nbytes < HEADER.size:
        raise ProtocolError(f"the peer of {what} sent {view.nbytes} bytes instead of a hello: it is not an ipckit peer")
    magic, kind, flags, msg_id, index, total = HEADER.unpack_from(view, 0)
    size = view.nbytes - HEADER.size
    if magic != MAGIC or kind != HELLO or flags != FIRST | LAST or msg_id or index or total != size:
        raise ProtocolError(f"the peer of {what} did not begin with a hello fragment: it is not an ipckit peer")
    return decode_hello(view[HEADER.size :], f"the peer of {what}")


# ----------------------------------------------------------------------------- reassembler
def _ahead(msg_id: int, base: int) -> bool:
    """*msg_id* comes after *base* (modulo 2**32, within half the number space): RESTART skips
    the numbers of every message abandoned in a row."""
    return 0 < (msg_id - base) & _ID_MASK < 1 << 31


class Reassembler:
    """Puts fragments back together, one direction, with bounded memory.

    :meth:`feed` takes one kernel message and returns ``None`` (more fragments needed) or an
    event ``(kind, value)``: ``(DATA, message)``, ``(HELLO, peer_max_message_size)`` or
    ``(GOODBYE, None)``.  Bad streams raise ProtocolError (or MessageTooLarge for a message
    above *limit*); the reassembler then drops what it held and waits for the next FIRST
    fragment, so a valid message after any garbage is still delivered.
    """

    __slots__ = ("_buf", "_expect", "_filled", "_held", "_id", "_index", "_limit", "_lost", "_skip", "_total",
                 "_what")

    def __init__(self, limit: int, what: str) -> None:
        self._limit = limit
        self._what = what
        self._buf: bytearray | None = None  # the message being reassembled (None: none)
        self._id = 0
        self._index = 0  # the next fragment index expected
        self._total = 0
        self._filled = 0
        #: the msg_id the next message must carry; None until the first message (and after an error)
        self._expect: int | None = None
        self._skip: int | None = None  # a message whose fragments are dropped (it was too large)
        self._lost = False  # a fragment may have been lost (interrupt): drop until the next FIRST
        self._held: bytes | None = None  # see take_held()

    @property
    def pending(self) -> int:
        """Bytes of a partial message held (0: none)."""
        return self._filled if self._buf is not None else 0

    @property
    def limit(self) -> int:
        return self._limit

    def drop(self) -> None:
        """Forget a partial message (its sender died or gave up)."""
        self._buf = None

    def lost(self) -> None:
        """A fragment may have been taken from the queue and not fed (an interrupt landed in
        between): drop the partial message and everything up to the next FIRST fragment."""
        self._buf = None
        self._lost = True
        self._expect = None

    def _fail(self, why: str, cls: type[IPCError] = ProtocolError) -> IPCError:
        self._buf = None
        self._expect = None
        return cls(f"{why} on {self._what}; the partial message was dropped")

    def feed(self, frag: memoryview) -> tuple[int, Any] | None:
        """Take one fragment (the whole kernel message)."""
        stale: str | None = None  # what the stream before a valid first fragment broke
        n = frag.nbytes
        if n < HEADER.size:
            raise self._fail(f"a {n}-byte kernel message, shorter than a fragment header")
        magic, kind, flags, msg_id, index, total = HEADER.unpack_from(frag, 0)
        if magic != MAGIC or flags & ~_KNOWN_FLAGS:
            raise self._fail(f"a kernel message that is not an ipckit fragment (magic {magic:#06x}, flags {flags:#x})")
        size = n - HEADER.size
        if kind != DATA:
            if kind not in (HELLO, GOODBYE) or flags & (FIRST | LAST) != FIRST | LAST or index or msg_id:
                raise self._fail(f"a malformed control fragment (kind {kind}, flags {flags:#x})")
            if total != size:
                raise self._fail("a control fragment whose length field disagrees with its size")
            if kind == GOODBYE:
                if size:
                    raise self._fail("a goodbye with a payload")
                self._buf = None  # a close while a message was part-way: that message never completes
                return GOODBYE, None
            try:
                return HELLO, decode_hello(frag[HEADER.size :], f"the peer of {self._what}")
            except IncompatibleEndpoint as exc:
                # Not a rendezvous: a hello of another protocol version inside a channel's stream
                # breaks this channel's protocol (and an EndpointError out of recv/poll says nothing).
                raise ProtocolError(f"{exc.strerror} (a hello inside the stream of {self._what})") from exc
        if self._buf is not None:
            if not flags & FIRST:
                if msg_id != self._id or index != self._index or total != self._total:
                    if self._lost:
                        self._buf = None
                        return None
                    raise self._fail(f"fragment {index} of message {msg_id} where fragment {self._index} of "
                                     f"message {self._id} was due (lost, repeated or reordered fragments)")
                return self._append(frag, flags, size)
            # A first fragment while a message is part-way: what went before is broken (unless the
            # sender said it abandoned that one), but this fragment is not -- it still begins its
            # message (below), so the next whole message after any garbage is delivered.
            if not (flags & RESTART and _ahead(msg_id, self._id)) and not self._lost:
                stale = (f"message {msg_id} began while message {self._id} lacked its last fragment "
                         "(fragments were lost)")
            self._buf = None  # the partial one is dropped
        elif not flags & FIRST:
            if self._lost or msg_id == self._skip:
                return None  # the rest of a message we are not reassembling
            raise self._fail(f"fragment {index} of message {msg_id} without its first fragment")
        # A FIRST fragment, no partial message held.
        if index:
            raise self._fail(f"a first fragment with index {index}")
        expect = self._expect
        if (stale is None and expect is not None and not self._lost and msg_id != expect
                and not (flags & RESTART and _ahead(msg_id, expect))):
            stale = f"message {msg_id} where message {expect} was due (messages were lost or repeated)"
        self._lost = False
        self._skip = None
        if total > self._limit:
            self._skip = msg_id
            self._expect = (msg_id + 1) & _ID_MASK
            also = f" (and before it, {stale})" if stale else ""
            raise MessageTooLarge(f"the peer sent a message of {total} bytes, over max_message_size={self._limit} "
                                  f"on {self._what}; it was dropped (raise max_message_size on this end){also}")
        if size > total or (flags & LAST and size != total) or (not flags & LAST and (size == 0 or size == total)):
            raise self._fail(f"a first fragment of {size} bytes for a {total}-byte message")
        if flags & LAST:
            self._expect = (msg_id + 1) & _ID_MASK
            if stale:
                # The error is reported first; this whole message is what the channel returns next.
                self._held = bytes(frag[HEADER.size :])
                raise ProtocolError(f"{stale} on {self._what}; the message after the gap is delivered next")
            return DATA, bytes(frag[HEADER.size :])
        buf = bytearray(total)
        buf[:size] = frag[HEADER.size :]
        self._buf = buf
        self._id = msg_id
        self._index = 1
        self._total = total
        self._filled = size
        if stale:  # (not _fail: the message this fragment began is kept)
            raise ProtocolError(f"{stale} on {self._what}; the message after the gap is still reassembled")
        return None

    def whole(self, msg_id: int, total: int) -> bool:
        """Accept a message that came in one fragment (kind DATA, flags exactly FIRST|LAST, index 0,
        its length field equal to its payload), when :meth:`feed` would take it without a word:
        no partial message, the expected id (or none expected, or fragments were lost), within
        the limit.  False: let :meth:`feed` judge it."""
        if self._buf is not None or total > self._limit:
            return False
        expect = self._expect
        if expect is not None and msg_id != expect and not self._lost:
            return False
        self._lost = False
        self._skip = None
        self._expect = (msg_id + 1) & _ID_MASK
        return True

    def take_held(self) -> bytes | None:
        """The whole message whose first fragment revealed the ProtocolError :meth:`feed` just
        raised (a gap before it): the channel returns it after the error.  None: no such message."""
        held, self._held = self._held, None
        return held

    def _append(self, frag: memoryview, flags: int, size: int) -> tuple[int, Any] | None:
        buf = self._buf
        assert buf is not None
        filled = self._filled
        end = filled + size
        last = bool(flags & LAST)
        if end > self._total or (last and end != self._total) or (not last and (size == 0 or end == self._total)):
            raise self._fail(f"fragment {self._index} of message {self._id} carries {size} bytes at offset "
                             f"{filled} of a {self._total}-byte message (overlapping or short fragments)")
        buf[filled:end] = frag[HEADER.size :]
        if last:
            self._buf = None
            self._expect = (self._id + 1) & _ID_MASK
            return DATA, buf
        self._filled = end
        self._index += 1
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# ----------------------------------------------------------------------------- transport
class QueueTransport(ABC):
    """One channel end's two kernel queues (or one queue and a direction), as the kit needs them.

    See the module docstring for the contract of each method.  Errors: raise ipckit errors (or
    OSError, which the channel translates); never block longer than the timeout given.
    """

    #: The largest kernel message this transport carries, header included.
    fragment_size: int

    @abstractmethod
    def put(self, buf: bytearray, n: int, timeout: float) -> bool:
        """Queue ``buf[:n]``; False if not queued within *timeout* s (or interrupted)."""

    @abstractmethod
    def get(self, buf: bytearray, timeout: float) -> int:
        """Take one kernel message into *buf*; its length, or -1 if none within *timeout* s."""

    @abstractmethod
    def peer_alive(self) -> bool:
        """True while the peer end exists (or has not attached yet)."""

    @abstractmethod
    def mark_closed(self) -> None:
        """Record, where the peer can read it after this end is gone, that this end closed cleanly."""

    @abstractmethod
    def peer_closed(self) -> bool:
        """True when the peer recorded a clean close (:meth:`mark_closed`)."""

    @abstractmethod
    def close(self) -> None:
        """Release this end's handles."""

    def fileno(self) -> int:
        """A descriptor that is readable while a fragment waits to be taken."""
        raise UnsupportedOperation("this queue has no selectable descriptor")

    def handoff(self) -> tuple[Sequence[int], tuple[Any, ...]]:
        """``(fds, state)`` for :meth:`rebuild` in a spawned child; TypeError if it cannot travel."""
        raise TypeError("this queue end cannot be handed to a spawned child")

    @classmethod
    def rebuild(cls, fds: Sequence[int], state: tuple[Any, ...]) -> QueueTransport:
        """The transport of a handed-over end, in the child."""
        raise TypeError(f"{cls.__name__} cannot be rebuilt in a child")

    def fork_adopt(self) -> None:  # noqa: B027 - optional hook
        """A forked child that was handed this end: take it over (default: nothing to do)."""

    def fork_release(self) -> None:  # noqa: B027 - optional hook
        """A forked child that was not handed this end: drop the inherited copies (default: none)."""


# ----------------------------------------------------------------------------- the channel
class QueueChannel(Channel):
    """A Channel over a :class:`QueueTransport`: the Channel hooks, written once for every queue.

    A scheme makes one with its transport, then (for a named endpoint) uses :meth:`_say_hello`
    and :meth:`_await_hello` during its rendezvous, or passes ``peer_max`` when the rendezvous
    told it the peer's limit already (a hello arriving later is then taken silently); ``pair()``
    ends pass each other's limit as ``peer_max``.  Spawn hand-off goes through the transport's
    ``handoff()`` / ``rebuild()``; fork through ``fork_adopt()`` / ``fork_release()``.
    """

    def __init__(self, url: str, options: Options, transport: QueueTransport, *, peer_trusted: bool,
                 peer_max: int | None = None) -> None:
        super().__init__(url, options, peer_trusted=peer_trusted)
        self._closed = True  # until fully built
        size = transport.fragment_size
        if size < MIN_FRAGMENT:
            raise IncompatibleEndpoint(f"{url}: kernel messages of {size} bytes are too small for ipckit fragments "
                                       f"(at least {MIN_FRAGMENT})")
        self._t = transport
        self._trusted = peer_trusted
        self._room = size - HEADER.size
        self._tx = bytearray(size)
        self._txv = memoryview(self._tx)
        self._rx = bytearray(size)
        self._rxv = memoryview(self._rx)
        self._asm = Reassembler(self._max, url)
        self._tx_id = 0
        self._restart = False
        self._ready: Buffer | None = None  # a whole message poll() took ahead of recv
        self._gone: IPCError | None = None  # the peer is known gone (EndOfChannel / PeerDied)
        self._drained = False  # ... and everything it sent was received
        self._failed: IPCError | None = None  # a bad fragment stream poll() met, for the next recv
        self._released = False  # the transport was closed early (_set_drained)
        self._sel: tuple[Any, int] | None = None  # fileno(): (epoll, eventfd), made on first use
        self._fast_max = min(self._room, self._send_max)  # largest message of the send fast path
        if peer_max is not None:  # known from the rendezvous: a hello arriving later is taken silently
            self._learn_peer_limit(peer_max)
        self._closed = False

    # ------------------------------------------------------------------ the peer
    def _peer_end(self) -> IPCError | None:
        """The error for a peer that is gone (None while it lives); remembered once found."""
        if self._gone is not None:
            return self._gone
        if self._t.peer_alive():
            return None
        if self._t.peer_closed():
            self._gone = EndOfChannel(f"the peer of {self._url} closed the channel")
        else:
            self._gone = PeerDied(f"the peer of {self._url} died without closing the channel")
        return self._gone

    def _learn_peer_limit(self, peer_max: int) -> None:
        super()._learn_peer_limit(peer_max)
        self._fast_max = min(self._room, self._send_max)

    # ------------------------------------------------------------------ fast paths
    # send()/send_bytes() and recv()/recv_bytes() of a message that fits one kernel message skip
    # the general path's layers when the call completes at once: the lock is free, the queue has
    # room (send) or a fragment comes within one slice (recv).  Anything else -- a larger
    # message, another thread in the call, a full queue, an end known gone, a message poll()
    # holds, a fragment that is not a whole message -- goes on through the general path, within
    # the same deadline.  The object path is the bytes path: Channel.send/recv call these hooks.
    def _send_one(self, data: Any, timeout: float | None) -> None:
        if type(data) is bytes and self._gone is None and not self._closed and not self._restart:
            n = len(data)
            if n <= self._fast_max:
                if not self._t.peer_alive():  # (one lock test: a send to a closed peer fails at once)
                    Channel._send_one(self, data, timeout)  # which raises the end
                    return
                lock = self._send_lock
                held: list[bool] = []
                try:
                    held.extend(map(lock.acquire, _NOWAIT))  # (stored from C: see Channel._locked_send)
                    if held[0]:
                        msg_id = self._tx_id
                        tx = self._tx
                        HEADER.pack_into(tx, 0, MAGIC, DATA, _WHOLE, msg_id, 0, n)
                        end = _HS + n
                        tx[_HS:end] = data
                        # Until put() answers, the message counts as possibly queued: an interrupt
                        # from here on leaves the next message a new id and RESTART, as the
                        # general path does (a RESTART that was not needed costs nothing).
                        self._restart = True
                        self._tx_id = (msg_id + 1) & _ID_MASK
                        if self._t.put(tx, end, 0.0):
                            self._restart = False
                            return
                        self._tx_id = msg_id  # not queued (the queue is full): as if never tried
                        self._restart = False
                except OSError as exc:
                    raise from_oserror(exc, f"send on {self._url}") from exc
                finally:
                    if held and held[0]:
                        lock.release()
        Channel._send_one(self, data, timeout)

    def _recv_payload(self, timeout: float | None) -> Any:
        if timeout is USE_DEFAULT:
            timeout = self._default_timeout
        if self._ready is not None or self._failed is not None or self._gone is not None or self._closed:
            return Channel._recv_payload(self, timeout)
        start = 0.0 if timeout is None else time.monotonic()
        lock = self._recv_lock
        held: list[bool] = []
        box: list[int] = []
        asm = self._asm
        try:
            held.extend(map(lock.acquire, _NOWAIT))
            if held[0]:
                rx = self._rx
                # Stored from C (list.extend over map), as in _take.
                box.extend(map(self._t.get, (rx,), (SLICE if timeout is None else min(max(timeout, 0.0), SLICE),)))
                n = box[0]
                if n >= _HS:
                    magic, kind, flags, msg_id, index, total = HEADER.unpack_from(rx, 0)
                    if (magic == MAGIC and kind == DATA and flags == _WHOLE and not index and total == n - _HS
                            and asm.whole(msg_id, total)):
                        box.append(n)
                        return self._rxv[_HS:n].tobytes()
                if n >= 0:
                    data = self._took(n, box)
                    if data is not None:
                        return data
        except IPCError:
            self._keep_held()
            raise
        except OSError as exc:
            raise from_oserror(exc, f"recv on {self._url}") from exc
        except BaseException:
            if held and held[0] and (not box or (box[0] >= 0 and len(box) == 1)):
                # A fragment may have left the queue without reaching the reassembler (get() is
                # Python: an exception can land after its kernel call and before *box* has it).
                asm.lost()
            raise
        finally:
            if held and held[0]:
                lock.release()
        # Another thread receiving, a slice of waiting passed, or a fragment that did not finish a
        # message: the general path goes on, within what is left of the same deadline (it also
        # tells a dead or closed peer from a timeout).
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - start))
        return Channel._recv_payload(self, timeout)

    def _took(self, n: int, box: list[int]) -> Any:
        """Feed the *n*-byte fragment in the receive buffer to the reassembler (``box`` gets
        *n* appended once it did); the message it completes, or None."""
        event = self._asm.feed(self._rxv[:n])
        box.append(n)
        if event is None:
            return None
        kind, value = event
        if kind == DATA:
            return value
        if kind == HELLO:
            self._learn_peer_limit(value)
            return None
        self._gone = EndOfChannel(f"the peer of {self._url} closed the channel")
        self._set_drained()
        raise again(self._gone)

    def _keep_held(self) -> None:
        """After the reassembler raised: the whole message after a gap is returned by the next call."""
        held = self._asm.take_held()
        if held is not None:
            self._ready = held
            self._sync_readable()

    # ------------------------------------------------------------------ sending
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        self._send_parts([view], view.nbytes, deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        end = self._peer_end()
        if end is not None:
            raise again(end)
        tx, txv, room = self._tx, self._txv, self._room
        msg_id = self._tx_id
        flags = FIRST | (RESTART if self._restart else 0)
        count = fragment_count(total, room)
        attempted = False
        try:
            for index, piece in enumerate(fragments(views, room)):
                if index == count - 1:
                    flags |= LAST
                HEADER.pack_into(tx, 0, MAGIC, DATA, flags, msg_id, index, total)
                at = HEADER.size
                for part in piece:
                    nxt = at + part.nbytes
                    txv[at:nxt] = part
                    at = nxt
                attempted = True
                self._put(at, deadline)
                flags = 0
        except BaseException:
            if attempted:
                # Part of the message may be in the queue: it is abandoned, and the next message
                # tells the peer to drop it (RESTART), so the channel stays usable.
                self._tx_id = (msg_id + 1) & _ID_MASK
                self._restart = True
            raise
        self._tx_id = (msg_id + 1) & _ID_MASK
        self._restart = False

    def _put(self, n: int, deadline: Deadline) -> None:
        """Queue ``tx[:n]`` before *deadline*, re-checking close and the peer every SLICE."""
        t = self._t
        while True:
            left = remaining(deadline)
            if t.put(self._tx, n, SLICE if left is None else min(left, SLICE)):
                return
            if self._closed:
                raise ChannelClosed(f"send on {self._url}: the channel was closed by another thread")
            end = self._peer_end()
            if end is not None:
                raise again(end)
            if deadline is not None and time.monotonic() >= deadline:
                raise SendTimeout(f"send on {self._url} timed out: the peer's queue stayed full (nothing of the "
                                  "message will be delivered; the channel stays usable)")

    def _say_hello(self, deadline: Deadline) -> None:
        """Put this end's HELLO (its max_message_size): the first fragment of its direction."""
        frag = encode_hello(self._max)
        self._tx[: len(frag)] = frag
        self._put(len(frag), deadline)

    def _await_hello(self, deadline: Deadline, stop: Callable[[], bool] | None = None) -> None:
        """Take the peer's HELLO, which must be the first fragment of its direction, and learn its limit.

        For a listener's accept: waits in SLICEs until *deadline* (ChannelTimeout), or until
        ``stop()`` is true (ChannelClosed); anything but a hello first raises ProtocolError (the
        caller drops that peer).  Nothing after the hello is consumed.
        """
        t, rx = self._t, self._rx
        while True:
            if stop is not None and stop():
                raise ChannelClosed(f"{self._url}: closed while waiting for the peer's hello")
            left = remaining(deadline)
            n = t.get(rx, SLICE if left is None else min(left, SLICE))
            if n >= 0:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelTimeout(f"no peer's hello on {self._url} before the deadline")
        peer_max = parse_hello(self._rxv[:n], self._url)
        self._learn_peer_limit(peer_max)

    # ------------------------------------------------------------------ receiving
    def _take(self, deadline: Deadline) -> Buffer:
        """The next whole message, waiting until *deadline*."""
        if self._failed is not None:  # (before _ready: a message held back by the error comes after it)
            exc, self._failed = self._failed, None
            raise exc
        if self._ready is not None:
            msg, self._ready = self._ready, None
            self._sync_readable()
            return msg
        if self._drained:
            assert self._gone is not None
            raise again(self._gone)
        t, rx, asm = self._t, self._rx, self._asm
        box: list[int] = []
        while True:
            left = remaining(deadline)
            wait = SLICE if left is None else min(left, SLICE)
            if self._gone is not None:
                wait = 0.0  # the peer is gone: only what is queued remains
            box.clear()
            try:
                # The length is stored from C (list.extend over map), so an exception a signal
                # handler raises right after get() returns finds it in *box* (and _took appends
                # to it once the fragment reached the reassembler).
                box.extend(map(t.get, (rx,), (wait,)))
                n = box[0]
                if n >= 0:
                    data = self._took(n, box)
                    if data is not None:
                        return data  # type: ignore[no-any-return]
                    continue
            except IPCError:
                self._keep_held()
                raise
            except BaseException:
                if not box or (box[0] >= 0 and len(box) == 1):
                    asm.lost()  # a fragment may have left the queue without reaching the reassembler
                raise
            if self._closed:
                raise ChannelClosed(f"recv on {self._url}: the channel was closed by another thread")
            if self._gone is not None or self._peer_end() is not None:
                if self._gone is not None and wait == 0.0:
                    asm.drop()  # the dead sender's partial message never completes
                    self._set_drained()
                    raise again(self._gone)
                continue  # one more look: it may have queued something just before it went
            if deadline is not None and time.monotonic() >= deadline:
                raise RecvTimeout(f"recv on {self._url} timed out")

    def _set_drained(self) -> None:
        """The peer is gone and everything it sent was received: the queues are of no more use,
        so their kernel memory (RLIMIT_MSGQUEUE) is given back now rather than at close() --
        unless a send runs in another thread (it may be inside the transport).  Called under the
        receive lock; every later call raises the recorded end without touching the transport."""
        self._drained = True
        self._sync_readable()
        if self._send_lock.acquire(blocking=False):
            try:
                self._released = True
                self._t.close()
            finally:
                self._send_lock.release()

    def _abandon(self) -> None:
        """Release this end without a goodbye: a rendezvous that failed half-way (the peer never
        learns of this end, so nothing may be put in its queue)."""
        if self._closed:
            return
        self._closed = True
        self._handed_off = True  # no goodbye from _close
        self._release()

    def _recv_message(self, deadline: Deadline) -> Buffer:
        return self._take(deadline)

    def _recv_message_into(self, view: memoryview, deadline: Deadline) -> int:
        data = self._take(deadline)
        n = len(data)
        if n > view.nbytes:
            raise BufferTooSmall(f"message of {n} bytes does not fit the {view.nbytes}-byte buffer; it is in .message",
                                 bytes(data))
        view[:n] = data
        return n

    def _poll(self, deadline: Deadline) -> bool:
        if self._ready is not None or self._drained or self._failed is not None:
            return True
        # poll() takes fragments ahead of recv, so it runs under the receive lock (Channel.poll
        # does not take it): a receive in another thread and this poll never feed the reassembler
        # at once.  The lock's answer is stored from C (see Channel._locked_send).
        left = remaining(deadline)
        held: list[bool] = []
        lock = self._recv_lock
        try:
            held.extend(map(lock.acquire, (True,), (-1 if left is None else left,)))
            if not held[0]:
                return self._ready is not None or self._drained
            if self._closed:
                raise ChannelClosed(f"poll on closed channel {self._url}")
            return self._poll_locked(deadline)
        finally:
            if held and held[0]:
                lock.release()

    def _poll_locked(self, deadline: Deadline) -> bool:
        if self._ready is not None or self._drained or self._failed is not None:
            return True
        try:
            self._ready = self._take(deadline)
        except RecvTimeout:
            return False
        except (EndOfChannel, PeerDied):
            self._sync_readable()
            return True
        except (ProtocolError, MessageTooLarge) as exc:
            self._failed = exc  # recv raises it at once, then goes on with the next message
            return True
        self._sync_readable()
        return True

    # ------------------------------------------------------------------ fileno
    def _fileno(self) -> int:
        """An epoll descriptor over the queue's own (readable while a fragment waits) and an
        eventfd set while a message poll() took ahead is buffered here, or the end is known."""
        if self._sel is None:
            fd = -1 if self._released else self._t.fileno()
            ep = select.epoll()
            try:
                ev = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            except BaseException:
                ep.close()
                raise
            if fd >= 0:
                ep.register(fd, select.EPOLLIN)
            ep.register(ev, select.EPOLLIN)
            self._sel = (ep, ev)
            self._sync_readable()
        return int(self._sel[0].fileno())

    def _sync_readable(self) -> None:
        sel = self._sel
        if sel is None:
            return
        if self._ready is not None or self._drained:
            os.eventfd_write(sel[1], 1)
        else:
            try:
                os.eventfd_read(sel[1])
            except BlockingIOError:
                pass

    # ------------------------------------------------------------------ closing
    def _close(self) -> None:
        t = self._t
        try:
            if not self._handed_off and not self._released:
                # The mark first: it outlives us, and a full queue may have no room for the goodbye.
                try:
                    t.mark_closed()
                except OSError:
                    pass
                frag = encode_control(GOODBYE)
                self._tx[: len(frag)] = frag
                try:
                    t.put(self._tx, len(frag), 0.0)
                except (OSError, IPCError):
                    pass
        finally:
            self._release()

    def _release(self) -> None:
        sel, self._sel = self._sel, None
        if sel is not None:
            sel[0].close()
            os.close(sel[1])
        self._t.close()

    # ------------------------------------------------------------------ hand-off
    def __reduce__(self) -> Any:
        fds, state = self._t.handoff()
        return _handoff.reduce_fds(
            self, _rebuild_queue_channel, fds,
            (type(self), type(self._t), state, self._url, self._options, self._trusted, self._kit_state()),
        )

    def _kit_state(self) -> tuple[Any, ...]:
        return (self._tx_id, self._restart, self._peer_max, self._asm, self._ready, self._gone, self._drained)

    def _resume(self, state: tuple[Any, ...]) -> None:
        self._tx_id, self._restart, peer_max, self._asm, self._ready, self._gone, self._drained = state
        if peer_max is not None:
            self._learn_peer_limit(peer_max)

    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        self._t.fork_adopt()

    def _fork_release(self, multiprocessing_child: bool) -> None:
        sel, self._sel = self._sel, None
        if sel is not None:
            sel[0].close()
            os.close(sel[1])
        self._t.fork_release()


def _rebuild_queue_channel(handed: _handoff.HandedFds, cls: type[QueueChannel], tcls: type[QueueTransport],
                           tstate: tuple[Any, ...], url: str, options: Options, trusted: bool,
                           kit: tuple[Any, ...]) -> QueueChannel:
    fds = _handoff.take_fds(handed)
    try:
        transport = tcls.rebuild(fds, tstate)
    except BaseException:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise
    try:
        ch = cls(url, options, transport, peer_trusted=trusted)
    except BaseException:
        transport.close()
        raise
    ch._resume(kit)
    return ch
