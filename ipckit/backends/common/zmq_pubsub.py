"""ZeroMQ pub/sub fan-out: one publisher, many subscribers, over ``ipc://`` or ``tcp://``.

Why not libzmq's PUB/SUB sockets: PUB drops silently at its high-water mark (it cannot block), a
subscriber that connects is not known to the publisher until its subscription travelled (the slow
joiner, so connect() cannot promise anything), and PUB never tells which subscriber went away.
This kit uses a ROUTER on the publisher and a DEALER per subscriber instead, and does the fan-out,
the flow control and the accounting itself:

* **Handshake** (slow joiner).  ``subscribe()`` sends a hello and waits for the publisher's
  welcome, which carries the first sequence number the subscriber is owed (the publisher's
  next one).  The publisher registers the subscriber before it answers, and every message is
  numbered and sent under the publisher's lock, so everything published after ``subscribe()``
  returned is sent to that subscriber, or counted as dropped for it.
* **Credit** (the slow-subscriber policy).  A subscriber gives a window of messages (its
  ``window``) and reports how many its user took (``A`` + count), every ``window // 4`` taken.
  A subscriber with ``window`` messages sent and not taken is *slow*: under ``policy="drop-new"``
  the message is not sent to it and counted; under ``policy="block"`` the publisher's send waits
  (within its timeout: ``SendTimeout``, and then the message went to nobody) until every
  subscriber has credit.  libzmq's own queues never fill (the ROUTER's high-water mark is off:
  the credit bounds what is queued per subscriber), so a send is never refused below ipckit.
* **Accounting.**  Every message carries the publisher's sequence number; the publisher also
  sends ticks (``T`` + the last number it published) each heartbeat when the number moved, and
  a goodbye (``G`` + the last number) at close.  One pipe per subscriber keeps order, so a subscriber's count of
  numbers it saw and did not get is exact: ``sent == delivered + dropped + pending`` at every
  moment, and ``sent == delivered + dropped`` once the goodbye arrived and everything was read.
* **Peer death.**  The subscriber's DEALER is monitored: its connection dropping (the publisher
  died, or missed ZMTP heartbeats for ``heartbeat_timeout``) is PeerDied after what arrived.  The
  ROUTER runs with ``ROUTER_MANDATORY``, so a send (a tick or a message) to a subscriber whose
  connection is gone raises ``EHOSTUNREACH`` and the subscriber leaves the set: a blocked send
  probes the subscribers it waits for every 50 ms, a background thread ticks each heartbeat.
  libzmq 4.3.5's ``ROUTER_NOTIFY`` (which would say it directly) is a draft API not built into pyzmq.

Wire format (one zmq message each; the first byte of the first frame is its kind):

publisher → subscriber: ``W`` + json welcome; ``D`` + seq(8) + payload; ``L`` + seq(8), payload
parts...; ``T`` + seq(8) tick; ``G`` + seq(8) goodbye.
subscriber → publisher: hello ``[PROTOCOL, json]``; ``A`` + taken(8) credit; ``G`` goodbye.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import zmq
from zmq import zmq_poll

from ...channel import Channel, resolve_serializer
from ...deadline import Deadline, deadline_from, poll_ms, remaining
from ...errors import (
    ChannelBroken,
    ChannelClosed,
    ConfigurationError,
    ConnectFailed,
    EndOfChannel,
    EndpointNotFound,
    InvalidAddress,
    IPCError,
    PeerDied,
    PeerRejected,
    ProtocolError,
    RecvTimeout,
    SendTimeout,
    UnsupportedOperation,
    from_oserror,
)
from ...options import Capabilities, option
from ...serializers import Buffer
from . import paths as _paths
from . import zmq as _z
from . import zmq_security as _sec

__all__ = ["PubSubOptions", "PubSubTcpOptions", "Publisher", "Subscriber", "FanoutStats", "SubscriberStats",
           "publish", "subscribe", "PROTOCOL"]

#: The hello's first frame: protocol name and version.
PROTOCOL = b"IPCKIT-ZMQ-PUBSUB/1"
_SEQ = struct.Struct("<Q")
_HEADER = 1 + _SEQ.size
_COPY_THRESHOLD = _z.COPY_THRESHOLD
_D, _L, _T, _G, _A, _W = (ord(c) for c in "DLTGAW")
_SLICE = 0.02
#: Seconds between probes of a subscriber a blocked send waits for (a probe is a 9-byte tick).
_PROBE_EVERY = 0.05
#: Sends between two reads of credit and hellos when no subscriber looks slow.
_PUMP_EVERY = 16
#: Unread ticks a subscriber with a full window may have queued before ticks to it slow down.
_UNREAD_CAP = 64
_MONITOR = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_EVENT = struct.Struct("=HI")
# Plain ints: pyzmq's flags are enums, and enum arithmetic per frame costs more than the send.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


@dataclass
class PubSubOptions(_z.ZmqOptions):
    """Options of ``ipckit.publish`` / ``ipckit.subscribe`` over ``zmq+ipc://`` (the kit's, plus these)."""

    #: publisher: what a send does when a subscriber is slow (``window`` messages not taken)
    policy: str = option("drop-new", choices=("drop-new", "block"))
    #: subscriber: messages the publisher may send it that its user has not taken yet
    window: int = option(1000, minimum=1, maximum=1 << 20)

    def validate(self) -> None:
        self.policy = self.policy.lower()
        if self.ack:
            raise ConfigurationError("ack=True is for point-to-point channels; pub/sub fan-out is lossy by design "
                                     "and counts its drops instead (policy='block' makes the publisher wait)")


@dataclass
class PubSubTcpOptions(PubSubOptions):
    """``zmq+tcp://`` adds the security options of the scheme (docs/backends/zmq-security.md)."""

    curve: Any = field(default=None, repr=False)
    allow: Any = field(default=None, repr=False)
    server_key: Any = None
    insecure: bool = False

    def validate(self) -> None:
        super().validate()
        if self.curve is not None:
            _sec.as_keypair(self.curve)
            if self.allow is not None or self.server_key is not None:
                self.trust = True  # CURVE authenticated the peer: the proof the trust rule asks for
        if self.server_key is not None:
            _sec.as_server_key(self.server_key)
        if self.allow is not None:
            _sec.load_public_keys(self.allow)


def _caps(tcp: bool, *, sending: bool) -> Capabilities:
    return Capabilities(duplex=False, message_oriented=True, selectable=False, detects_peer_close=not sending,
                        named=True, anonymous_pair=False, inheritable=False, cross_process=True, cross_host=tcp,
                        multi_client=sending, proves_same_user=not tcp)


@dataclass(frozen=True)
class FanoutStats:
    """A subscriber's exact counters (docs/backends/zmq.md, "Pub/sub fan-out").

    ``sent``: messages the publisher published since this subscriber joined, as far as it knows
    (up to the last sequence number it saw: a message, a tick or the goodbye); ``delivered``:
    returned by ``recv``; ``dropped``: numbers it saw skipped; ``pending``: received, not yet
    returned.  ``sent == delivered + dropped + pending`` always.
    """

    sent: int
    delivered: int
    dropped: int
    pending: int


@dataclass(frozen=True)
class SubscriberStats:
    """The publisher's view of one subscriber: messages sent to it, dropped for it, taken by it."""

    ident: str
    sent: int
    dropped: int
    taken: int


@dataclass
class _Sub:
    ident: bytes
    window: int
    max: int
    ack_every: int
    sent: int = 0
    dropped: int = 0
    taken: int = 0
    probed: float = 0.0
    ticked: int = 0  # the sequence number its last tick carried
    unread: int = 0  # ticks sent while its window was full, since its last credit report


_F = TypeVar("_F", bound=Callable[..., Any])


def _mapped(what: str) -> Callable[[_F], _F]:
    """A public path's hook: a ``ZMQError`` leaves as the ipckit error for it (never raw; the base
    class maps OSError, and pyzmq's errors are not OSErrors)."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except zmq.ZMQError as exc:
                raise _z.zmq_error(exc, f"{what} on {self._url}") from exc

        return call  # type: ignore[return-value]

    return wrap


def _ms(seconds: float) -> int:
    return int(seconds * 1000) if seconds < 2**31 / 1000 else 2**31 - 1


# --------------------------------------------------------------------------- the publisher
class Publisher(Channel):
    """The sending end of a fan-out: ``send`` / ``send_bytes`` go to every subscriber.

    One-way: ``recv`` and ``poll`` raise UnsupportedOperation.  :attr:`url` is what subscribers
    pass to ``ipckit.subscribe``; :attr:`published` counts the messages sent (the last sequence
    number); :meth:`subscribers` gives each subscriber's counters as the publisher sees them.
    """

    capabilities: ClassVar[Capabilities] = _caps(False, sending=True)

    def __init__(self, url: str, options: PubSubOptions, ctx: zmq.Context[Any], router: zmq.Socket[Any], *,
                 peer_trusted: bool, release: Callable[[], None]) -> None:
        self._ctx: zmq.Context[Any] | None = None
        super().__init__(url, options, peer_trusted=peer_trusted)
        self._opts = options
        self._ctx = ctx
        self._router = router
        self._release = release
        self._block = options.policy == "block"
        self._zlock = threading.Lock()  # every call on the ROUTER (not thread-safe) is made under it
        self._fd = int(router.getsockopt(zmq.FD))
        self._subs: dict[bytes, _Sub] = {}
        self._gone: list[SubscriberStats] = []
        self._seq = 0
        self._partial = False
        self._since_pump = _PUMP_EVERY  # sends since credit and hellos were last read
        self._sending = False  # a send is running: the service thread leaves the socket's wake-ups to it
        self._stop = threading.Event()
        self._tick_every = options.heartbeat if options.heartbeat > 0 else 1.0
        self._thread = threading.Thread(target=self._serve, name=f"ipckit-zmq-publisher {url}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ for users
    def __enter__(self) -> Publisher:
        return self

    @property
    def published(self) -> int:
        """Messages published so far (the last sequence number)."""
        return self._seq

    @property
    def policy(self) -> str:
        """``"drop-new"`` or ``"block"``."""
        return self._opts.policy

    def subscribers(self) -> list[SubscriberStats]:
        """Counters of each subscriber in the set now (sent to it, dropped for it, taken by its user)."""
        with self._zlock:
            return [SubscriberStats(s.ident.hex(), s.sent, s.dropped, s.taken) for s in self._subs.values()]

    def departed(self) -> list[SubscriberStats]:
        """Counters of the subscribers that left the set (closed, died, unreachable), last state."""
        with self._zlock:
            return list(self._gone)

    @_mapped("wait_for_subscribers")
    def wait_for_subscribers(self, count: int, timeout: float | None = 10.0) -> bool:
        """Wait until at least *count* subscribers are in the set; False at the deadline."""
        deadline = deadline_from(timeout)
        while True:
            if self._closed:
                raise self._closed_error("wait_for_subscribers")
            with self._zlock:
                self._pump()
                if len(self._subs) >= count:
                    return True
            left = remaining(deadline)
            if left is not None and left <= 0:
                return False
            self._wait(deadline)

    # ------------------------------------------------------------------ under _zlock
    def _pump(self) -> None:
        router = self._router
        _z.check_pid(self._ctx, f"using {self._url}")  # type: ignore[arg-type]
        while int(router.getsockopt(_EVENTS)) & _POLLIN:
            frames = router.recv_multipart(_NOBLOCK)
            if len(frames) < 2:
                continue
            ident, head = frames[0], frames[1]
            sub = self._subs.get(ident)
            if head == PROTOCOL and len(frames) == 3:
                if sub is None:
                    self._welcome(ident, frames[2])
            elif sub is None or not head:
                continue  # a subscriber that already left (or garbage): nothing to do
            elif head[0] == _A and len(head) == _HEADER:
                taken = _SEQ.unpack_from(head, 1)[0]
                if sub.taken < taken <= sub.sent:
                    sub.taken = taken
                sub.unread = 0
            elif head[0] == _G:
                self._forget(sub)

    def _welcome(self, ident: bytes, body: bytes) -> None:
        hello = _z.decode_json(body)
        if hello is None or not isinstance(hello.get("window"), int) or not isinstance(hello.get("max"), int):
            return  # not an ipckit subscriber: ignored, it times out
        window = max(1, hello["window"])
        sub = _Sub(ident, window, max(0, hello["max"]), max(1, window // 4))
        answer = {"start": self._seq + 1, "max": self._max, "policy": self._opts.policy}
        if self._unicast(ident, [b"W" + _z.encode_json(answer)]):
            self._subs[ident] = sub

    def _unicast(self, ident: bytes, frames: list[Any]) -> bool:
        """Send *frames* to one subscriber; False (and it leaves the set) if its connection is gone."""
        if self._partial:
            raise ChannelBroken(f"a send on {self._url} was interrupted between the frames of a message; the "
                                "publisher is broken (its next frame would complete that message): publish anew")
        router = self._router
        # Marked before the first frame: a signal handler's exception between two frames leaves a
        # half message in libzmq that the next frame would complete, for whichever subscriber.
        self._partial = True
        try:
            router.send(ident, _MORE)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            self._partial = False
            sub = self._subs.get(ident)
            if sub is not None:
                self._forget(sub)
            return False
        # The routing frame is in: libzmq takes the rest of the message (its high-water mark is off).
        if len(frames) == 1:  # a small message, a tick, a goodbye: one copied frame
            router.send(frames[0], _NOBLOCK)
            self._partial = False
            return True
        last = len(frames) - 1
        for i, part in enumerate(frames):
            immutable = isinstance(part, bytes) or (isinstance(part, memoryview) and isinstance(part.obj, bytes))
            router.send(part, _MORE if i < last else _NOBLOCK,
                        copy=not (immutable and len(part) > _COPY_THRESHOLD and _z.zero_copy_ok()))
        self._partial = False
        return True

    def _forget(self, sub: _Sub) -> None:
        if self._subs.pop(sub.ident, None) is not None:
            self._gone.append(SubscriberStats(sub.ident.hex(), sub.sent, sub.dropped, sub.taken))
            del self._gone[:-1000]  # a long-lived publisher keeps the last thousand only

    def _probe(self, subs: list[_Sub], now: float, every: float, *, periodic: bool = False) -> None:
        """Tick *subs* (the last number, and a send that finds a gone subscriber drops it).

        A subscriber that never reads keeps every tick queued, so the ticks are bounded: a
        periodic tick goes only when there is a new number to tell, and once a full-window
        subscriber has :data:`_UNREAD_CAP` ticks unread, periodic ticks to it slow to one per
        ``_UNREAD_CAP`` heartbeats and a blocked send's probes to one per heartbeat (so a dead
        subscriber still leaves a blocked publisher within a heartbeat)."""
        tick = b"T" + _SEQ.pack(self._seq)
        for sub in subs:
            if periodic and sub.ticked == self._seq:
                continue
            slow = sub.sent - sub.taken >= sub.window
            gap = every
            if slow and sub.unread >= _UNREAD_CAP:
                gap = self._tick_every * (_UNREAD_CAP if periodic else 1)
            if now - sub.probed >= gap:
                sub.probed = now
                sub.ticked = self._seq
                sub.unread += slow
                self._unicast(sub.ident, [tick])

    def _wait(self, deadline: Deadline, slice_: float = _SLICE) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.poll(poll_ms(deadline, slice_))
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed while waiting")

    # ------------------------------------------------------------------ the service thread
    def _serve(self) -> None:
        """Answers hellos and credit while nobody sends, and ticks every heartbeat: the ticks tell
        idle subscribers the last number (so drops at the end are counted) and find the dead."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        last_tick = time.monotonic()
        while not self._stop.is_set():
            poller.poll(int(_SLICE * 1000))
            if self._sending or not self._zlock.acquire(timeout=_SLICE):
                continue
            try:
                if self._stop.is_set():
                    return
                self._pump()
                now = time.monotonic()
                if now - last_tick >= self._tick_every:
                    last_tick = now
                    self._probe(list(self._subs.values()), now, 0.0, periodic=True)
            except (zmq.ZMQError, IPCError):
                return  # the context is going away: the publisher is closing
            finally:
                self._zlock.release()

    # ------------------------------------------------------------------ hooks
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        self._send_frames([view], view.nbytes, deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        self._send_frames(views, total, deadline)

    @_mapped("send")
    def _send_frames(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        self._sending = True
        try:
            while True:
                with self._zlock:
                    # Credit and hellos are read every _PUMP_EVERY sends, and at once when a
                    # subscriber looks slow: its credit may be waiting in the socket (a look
                    # costs a libzmq call per message otherwise; the service thread reads
                    # hellos meanwhile too).
                    pumped = self._since_pump >= _PUMP_EVERY
                    if pumped:
                        self._pump()
                    subs = [s for s in self._subs.values() if s.max >= total]
                    slow = [s for s in subs if s.sent - s.taken >= s.window]
                    if slow and not pumped:
                        self._pump()
                        pumped = True
                        subs = [s for s in self._subs.values() if s.max >= total]
                        slow = [s for s in subs if s.sent - s.taken >= s.window]
                    self._since_pump = 0 if pumped else self._since_pump + 1
                    if slow and self._block:
                        self._probe(slow, time.monotonic(), _PROBE_EVERY)
                        slow = [s for s in slow if s.ident in self._subs]
                    if not slow or not self._block:
                        self._fan_out(views, total, subs, slow)
                        return
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise SendTimeout(f"send on {self._url} timed out: {len(slow)} subscriber(s) did not take their "
                                      f"window of messages (policy='block'); the message went to nobody")
                self._wait(deadline, 0.005)
        finally:
            self._sending = False

    def _fan_out(self, views: list[memoryview], total: int, subs: list[_Sub], slow: list[_Sub]) -> None:
        self._seq += 1
        seq = _SEQ.pack(self._seq)
        if total <= _COPY_THRESHOLD and len(views) <= 1:
            frames: list[Any] = [b"D" + seq + (views[0] if views else b"")]
        else:
            # Large: each part its own frame, sent to every subscriber without a copy when immutable.
            frames = [b"L" + seq, *(v if isinstance(v.obj, bytes) else bytes(v) for v in views)]
        skipped = {s.ident for s in slow}
        for sub in self._subs.values():
            if sub.max < total or sub.ident in skipped:
                sub.dropped += 1
        for sub in subs:
            if sub.ident not in skipped and self._unicast(sub.ident, frames):
                sub.sent += 1

    def _recv_message(self, deadline: Deadline) -> Buffer:
        raise UnsupportedOperation(f"{self._url} is a publisher: one-way, it only sends (subscribe to receive)")

    def _poll(self, deadline: Deadline) -> bool:
        raise UnsupportedOperation(f"{self._url} is a publisher: one-way, it only sends (subscribe to receive)")

    @_mapped("close")
    def _close(self) -> None:
        self._stop.set()
        if self._ctx is None or getattr(self._ctx, "ipckit_pid", None) != os.getpid():
            return  # a forked copy: the parent's sockets are not ours
        self._thread.join(5.0)
        ctx, self._ctx = self._ctx, None
        try:
            with self._zlock:
                bye = b"G" + _SEQ.pack(self._seq)
                for ident in list(self._subs) if not self._partial else ():
                    try:
                        self._unicast(ident, [bye])
                    except zmq.ZMQError:
                        pass  # (a half message pending: no goodbye, the subscribers see PeerDied)
                self._router.close(linger=_ms(self._opts.linger))
        finally:
            try:
                ctx.term()
            finally:
                self._release()

    def _fork_handed(self) -> None:
        pass  # libzmq is not fork-safe: a child publishes with a publisher of its own

    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        self._disown_after_fork(True)

    def __del__(self) -> None:
        if getattr(self._ctx, "ipckit_pid", None) != os.getpid():
            return
        super().__del__()


# --------------------------------------------------------------------------- the subscriber
class Subscriber(Channel):
    """The receiving end of a fan-out; one-way: ``send`` raises UnsupportedOperation.

    Counters (exact; see :class:`FanoutStats`): :attr:`sent`, :attr:`delivered`, :attr:`dropped`,
    :attr:`pending`, or all at once from :meth:`stats`.  ``recv`` raises EndOfChannel after the
    publisher's goodbye and everything before it, PeerDied when its connection dropped.
    """

    capabilities: ClassVar[Capabilities] = _caps(False, sending=False)

    def __init__(self, url: str, options: PubSubOptions, ctx: zmq.Context[Any], sock: zmq.Socket[Any],
                 monitor: zmq.Socket[Any], *, start: int, peer_max: int, peer_trusted: bool) -> None:
        self._ctx: zmq.Context[Any] | None = None
        super().__init__(url, options, peer_trusted=peer_trusted)
        self._opts = options
        self._ctx = ctx
        self._sock = sock
        self._monitor = monitor
        self._zlock = threading.Lock()
        self._start = start
        self._last = start - 1  # the last sequence number accounted for (received, dropped or ticked)
        self._delivered = 0
        self._dropped = 0
        self._acked = 0
        self._ack_every = max(1, options.window // 4)
        self._inbox: deque[Buffer] = deque()
        self._bye = False
        self._disconnected = False
        self._parts: list[zmq.Frame] = []
        self._probe_items = [(sock, zmq.POLLIN), (monitor, zmq.POLLIN)]
        self._poller = select.poll()
        self._poller.register(int(sock.getsockopt(zmq.FD)), select.POLLIN)
        self._poller.register(int(monitor.getsockopt(zmq.FD)), select.POLLIN)
        self._learn_peer_limit(peer_max)

    # ------------------------------------------------------------------ counters
    def __enter__(self) -> Subscriber:
        return self

    @property
    def sent(self) -> int:
        """Messages published since this subscriber joined, as far as it knows."""
        return self._last - self._start + 1

    @property
    def delivered(self) -> int:
        """Messages ``recv`` returned."""
        return self._delivered

    @property
    def dropped(self) -> int:
        """Messages published for this subscriber that it never got (sequence gaps)."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Messages received from the publisher and not yet returned by ``recv``."""
        return len(self._inbox)

    def stats(self) -> FanoutStats:
        """The four counters at one moment (``sent == delivered + dropped + pending``)."""
        with self._zlock:
            return FanoutStats(self.sent, self._delivered, self._dropped, len(self._inbox))

    # ------------------------------------------------------------------ one-way
    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Raises UnsupportedOperation: a subscriber only receives."""
        if self._closed:
            raise self._closed_error("send")
        raise UnsupportedOperation(f"{self._url}: a subscriber is one-way, it only receives; publish with "
                                   "ipckit.publish() to send")

    def send_bytes(self, data: Any, timeout: float | None = None) -> None:
        """Raises UnsupportedOperation: a subscriber only receives."""
        self.send(data, timeout)

    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        self.send(view)

    # ------------------------------------------------------------------ under _zlock
    def _pump(self) -> None:
        if self._ctx is None:
            raise ChannelClosed(f"{self._url} is closed")
        _z.check_pid(self._ctx, f"using {self._url}")
        got = zmq_poll(self._probe_items, 0)
        if not got:
            return
        for sock, _ in got:
            if sock is self._monitor:
                self._pump_monitor()
        sock = self._sock
        while int(sock.getsockopt(_EVENTS)) & _POLLIN:
            parts = self._parts
            while not parts or parts[-1].more:
                parts.append(sock.recv(_NOBLOCK, copy=False))
            self._parts = []
            self._take(parts)

    def _pump_monitor(self) -> None:
        while True:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = _EVENT.unpack_from(frames[0])[0] if frames and len(frames[0]) >= 6 else 0
            if event & (zmq.EVENT_DISCONNECTED | _FAILED):
                self._disconnected = True

    def _take(self, parts: list[zmq.Frame]) -> None:
        head = parts[0].buffer
        if len(head) < _HEADER:
            raise ProtocolError(f"{self._url}: the publisher sent a short frame; no ipckit publisher of this version")
        kind, seq = head[0], _SEQ.unpack_from(head, 1)[0]
        if seq < self._last or (seq == self._last and kind in (_D, _L)):
            raise ProtocolError(f"{self._url}: message {seq} after {self._last}: out of order")
        if kind == _D:
            self._inbox.append(bytes(head[_HEADER:]) if len(head) <= _COPY_THRESHOLD else head[_HEADER:])
            self._dropped += seq - self._last - 1
        elif kind == _L:
            frames = parts[1:]
            self._inbox.append(frames[0].buffer if len(frames) == 1 else b"".join(f.buffer for f in frames))
            self._dropped += seq - self._last - 1
        elif kind in (_T, _G):
            # Every message up to seq that was sent to us came before this frame (one ordered pipe).
            self._dropped += seq - self._last
            if kind == _G:
                self._bye = True
        else:
            raise ProtocolError(f"{self._url}: an unknown frame kind {kind!r} from the publisher")
        self._last = seq

    def _acknowledge(self, force: bool = False) -> None:
        if self._delivered - self._acked >= (1 if force else self._ack_every):
            try:
                self._sock.send(b"A" + _SEQ.pack(self._delivered), _NOBLOCK)
                self._acked = self._delivered
            except zmq.Again:
                pass  # the way back is full: the next receive tries again

    def _raise_if_gone(self) -> None:
        if self._bye:
            raise EndOfChannel(f"the publisher closed {self._url} ({self.stats_text()})")
        if self._disconnected:
            raise PeerDied(f"the connection to the publisher of {self._url} dropped without its goodbye: it died or "
                           f"was unreachable for heartbeat_timeout={self._opts.heartbeat_timeout} s "
                           f"({self.stats_text()})")

    def stats_text(self) -> str:
        return f"sent {self.sent}, delivered {self._delivered}, dropped {self._dropped}"

    def _wait(self, deadline: Deadline) -> bool:
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed while waiting")
        left = remaining(deadline)
        if left is not None and left <= 0:
            return False
        self._poller.poll(poll_ms(deadline, _SLICE))
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed while waiting")
        return True

    @_mapped("recv")
    def _recv_message(self, deadline: Deadline) -> Buffer:
        while True:
            with self._zlock:
                if not self._inbox:
                    self._pump()
                if self._inbox:
                    msg = self._inbox.popleft()
                    self._delivered += 1
                    self._acknowledge()
                    return msg
                self._acknowledge(force=True)  # nothing left here: all we took may be sent again
                self._raise_if_gone()
            if not self._wait(deadline):
                raise RecvTimeout(f"recv on {self._url} timed out; nothing was consumed")

    @_mapped("poll")
    def _poll(self, deadline: Deadline) -> bool:
        while True:
            with self._zlock:
                self._pump()
                if self._inbox or self._bye or self._disconnected:
                    return True
            if not self._wait(deadline):
                return False

    @_mapped("close")
    def _close(self) -> None:
        with self._zlock:
            ctx, self._ctx = self._ctx, None
        if ctx is None or getattr(ctx, "ipckit_pid", None) != os.getpid():
            return
        linger = 0 if self._disconnected or self._bye else _ms(min(self._opts.linger, 1.0))
        try:
            if linger:
                try:
                    self._sock.send(b"G", zmq.NOBLOCK)  # leave the set now, not at the next probe
                except zmq.ZMQError:
                    pass
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._sock.close(linger=linger)
        finally:
            ctx.term()

    def _fork_handed(self) -> None:
        pass

    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        self._disown_after_fork(True)

    def __del__(self) -> None:
        if getattr(self._ctx, "ipckit_pid", None) != os.getpid():
            return
        super().__del__()


class TcpPublisher(Publisher):
    """A publisher over ``zmq+tcp://`` (its capabilities: across hosts, no same-user proof)."""

    capabilities: ClassVar[Capabilities] = _caps(True, sending=True)


class TcpSubscriber(Subscriber):
    """A subscriber over ``zmq+tcp://``."""

    capabilities: ClassVar[Capabilities] = _caps(True, sending=False)


# --------------------------------------------------------------------------- the factories
def _split(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (the scheme's syntax)."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidAddress(f"zmq+tcp address {address!r} must be host:port with a port from 0 to 65535")
    return host, int(port_text)


def _zaddr(host: str, port: int | str) -> str:
    try:
        v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        v6 = False
    return f"tcp://[{host}]:{port}" if v6 else f"tcp://{host}:{port}"


def _router(ctx: zmq.Context[Any], opts: PubSubOptions) -> zmq.Socket[Any]:
    router: zmq.Socket[Any] = ctx.socket(zmq.ROUTER)
    _z.configure(router, opts, channel=True)
    router.setsockopt(zmq.SNDHWM, 0)  # credit bounds each subscriber's queue; libzmq never refuses
    router.setsockopt(zmq.MAXMSGSIZE, 4096)  # subscribers send hellos and credit only
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone subscriber raises EHOSTUNREACH
    return router


def publish(scheme: str, address: str, opts: PubSubOptions) -> Publisher:
    """Bind a publisher (``ipckit.publish`` checked the URL and options)."""
    tcp = scheme == "zmq+tcp"
    peer_trusted = not tcp or (isinstance(opts, PubSubTcpOptions) and opts.curve is not None)
    resolve_serializer(opts, peer_trusted)  # refuse pickle before anything exists
    return _publish_tcp(address, opts) if tcp else _publish_ipc(address, opts)  # type: ignore[arg-type]


def _publish_ipc(address: str, opts: PubSubOptions) -> Publisher:
    own_dir: str | None = None
    if address:
        path = _z.ipc_path_of(address)
        url = f"zmq+ipc://{address}"
    else:
        own_dir = _paths.make_private_dir()
        path = os.path.join(own_dir, _paths.generated_name(".ipc"))
        url = f"zmq+ipc://{path}"
    lock_fd = -1
    ctx = None
    ident: tuple[int, int] | None = None

    def release() -> None:
        _z.unlink_if_ours(path, ident)
        if lock_fd >= 0:
            _paths.unlink_quiet(path + ".lock")
            os.close(lock_fd)
        if own_dir is not None:
            _paths.rmdir_quiet(own_dir)

    try:
        _z.check_ipc_length(path)
        _paths.check_parent_dir(path)
        lock_fd = _paths.lock_path_exclusively(path + ".lock")
        _z.clear_stale_ipc(path)  # under the lock: a dead publisher's file goes, a live one is refused
        ctx = _z.new_context()
        router = _router(ctx, opts)
        ident = _z.bind_ipc(router, path, opts.mode)
        return Publisher(url, opts, ctx, router, peer_trusted=True, release=release)
    except BaseException as exc:
        if ctx is not None:
            ctx.destroy(linger=0)
        release()
        if isinstance(exc, zmq.ZMQError):
            raise _z.zmq_error(exc, f"publish on {url}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, IPCError):
            raise from_oserror(exc, f"publish on {url}") from exc
        raise


def _publish_tcp(address: str, opts: PubSubTcpOptions) -> Publisher:
    host, port = _split(address or "127.0.0.1:0")
    _sec.check_bind_address(host, curve=opts.curve is not None, insecure=opts.insecure)
    curve: _sec.CurveServer | None = None
    ctx = _z.new_context()
    try:
        if opts.curve is not None:
            if opts.allow is None:
                raise ConfigurationError("a CURVE publisher needs allow= (the public keys of the subscribers it "
                                         "admits, or a file of them)")
            curve = _sec.CurveServer(ctx, _sec.as_keypair(opts.curve), _sec.load_public_keys(opts.allow))
        router = _router(ctx, opts)
        if ":" in host:
            router.setsockopt(zmq.IPV6, 1)
        if curve is not None:
            curve.apply(router)
        try:
            router.bind(_zaddr(host, port))
        except zmq.ZMQError as exc:
            raise _z.zmq_error(exc, f"publish on zmq+tcp://{address}") from exc
        last = router.getsockopt(zmq.LAST_ENDPOINT)
        real = (last.decode() if isinstance(last, bytes) else str(last)).rpartition(":")[2]
        shown = f"[{host}]" if ":" in host else host
        server = curve
        return TcpPublisher(f"zmq+tcp://{shown}:{real}", opts, ctx, router, peer_trusted=curve is not None,
                         release=(lambda: server.close()) if server is not None else (lambda: None))
    except BaseException:
        if curve is not None:
            curve.close()
        ctx.destroy(linger=0)
        raise


def subscribe(scheme: str, address: str, opts: PubSubOptions, deadline: Deadline) -> Subscriber:
    """Connect a subscriber and complete the handshake (``ipckit.subscribe`` checked the URL)."""
    tcp = scheme == "zmq+tcp"
    url = f"{scheme}://{address}"
    curve: Callable[[zmq.Socket[Any]], None] | None = None
    if tcp:
        assert isinstance(opts, PubSubTcpOptions)
        host, port = _split(address)
        if port == 0:
            raise InvalidAddress(f"{url}: subscribe needs the publisher's real port (its url tells it)")
        if opts.curve is not None or opts.server_key is not None:
            if opts.curve is None or opts.server_key is None:
                raise ConfigurationError("a CURVE subscriber needs both curve= (its own key pair) and server_key= "
                                         "(the publisher's public key)")
            keypair, server = _sec.as_keypair(opts.curve), _sec.as_server_key(opts.server_key)
            curve = lambda sock: _sec.apply_curve_client(sock, keypair, server)  # noqa: E731
        endpoint = _zaddr(host, port)
    else:
        if not address:
            raise InvalidAddress("zmq+ipc:// subscribe needs the publisher's url")
        path = _z.ipc_path_of(address)
        endpoint = "ipc://" + path
    resolve_serializer(opts, not tcp or curve is not None)
    _await_endpoint(url, deadline,
                    (lambda: _reachable_tcp(host, port)) if tcp else (lambda: _reachable_ipc(path, opts)))
    ctx = _z.new_context()
    try:
        sock = ctx.socket(zmq.DEALER)
        _z.configure(sock, opts, channel=True)
        sock.setsockopt(zmq.RCVHWM, 0)  # our window bounds what the publisher sends us
        if tcp and ":" in host:
            sock.setsockopt(zmq.IPV6, 1)
        if curve is not None:
            curve(sock)
        monitor = sock.get_monitor_socket(_MONITOR)
        sock.connect(endpoint)
        sock.send_multipart([PROTOCOL, _z.encode_json({"window": opts.window, "max": opts.max_message_size,
                                                       "pid": os.getpid()})], zmq.NOBLOCK)
        welcome = _await_welcome(url, sock, monitor, opts, deadline)
        start, peer_max = welcome.get("start"), welcome.get("max")
        if not isinstance(start, int) or not isinstance(peer_max, int) or start < 1:
            raise ConnectFailed(errno.EPROTO, f"{url} answered, but not as an ipckit publisher")
        return (TcpSubscriber if tcp else Subscriber)(url, opts, ctx, sock, monitor, start=start, peer_max=peer_max,
                          peer_trusted=not tcp or curve is not None)
    except BaseException as exc:
        ctx.destroy(linger=0)
        if isinstance(exc, zmq.ZMQError):
            raise _z.zmq_error(exc, f"subscribe to {url}") from exc
        raise


def _reachable_ipc(path: str, opts: PubSubOptions) -> bool:
    try:
        _z.check_ipc_mode(path, opts.mode)
    except EndpointNotFound:
        return False
    return _z.probe_live(path)


def _reachable_tcp(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except (ConnectionRefusedError, TimeoutError):
        return False
    return True


def _await_endpoint(url: str, deadline: Deadline, reachable: Callable[[], bool]) -> None:
    """Wait (within *deadline*) until a publisher is bound at *url*: as connect() waits for a listener."""
    while True:
        try:
            if reachable():
                return
        except OSError as exc:
            if isinstance(exc, IPCError):
                raise
            raise EndpointNotFound(exc.errno or errno.EHOSTUNREACH, f"cannot reach {url}: {exc.strerror}") from exc
        left = remaining(deadline)
        if left is not None and left <= 0:
            raise EndpointNotFound(errno.ECONNREFUSED, f"no publisher at {url}: is it running?")
        time.sleep(min(_SLICE, left) if left is not None else _SLICE)


def _await_welcome(url: str, sock: zmq.Socket[Any], monitor: zmq.Socket[Any], opts: PubSubOptions,
                   deadline: Deadline) -> dict[str, Any]:
    end = deadline_from(_z.handshake_left(opts, deadline))
    poller = select.poll()
    poller.register(int(sock.getsockopt(zmq.FD)), select.POLLIN)
    poller.register(int(monitor.getsockopt(zmq.FD)), select.POLLIN)
    while True:
        while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            frames = sock.recv_multipart(zmq.NOBLOCK)
            if len(frames) == 1 and frames[0][:1] == b"W":
                answer = _z.decode_json(frames[0][1:])
                if answer is not None:
                    return answer
            raise ConnectFailed(errno.EPROTO, f"{url} answered, but not as an ipckit publisher")
        while True:
            try:
                event = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if event and len(event[0]) >= 6 and _EVENT.unpack_from(event[0])[0] & _FAILED:
                raise PeerRejected(errno.EACCES, f"{url}: the publisher refused the ZeroMQ handshake (CURVE keys?)")
        left = remaining(end)
        if left is not None and left <= 0:
            raise EndpointNotFound(errno.ETIMEDOUT, f"no ipckit publisher answered at {url} in time")
        poller.poll(poll_ms(end, _SLICE))
