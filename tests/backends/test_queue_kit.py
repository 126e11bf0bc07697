"""A fuzz of the queue kit's fragment reassembler (issue 12): arbitrary fragment streams fed to the
real Reassembler and QueueChannel of ipckit/backends/common/queue.py.

Three runs of the same property:

* over an in-process test double of the *kernel queue* only (:class:`_FakeQueue`, a deque per
  direction): the fragmenter, the reassembler and the channel are the kit's own, and the streams
  mix random bytes, well-formed headers with random fields, and real messages' fragments
  (the sending end's fragmenter made them) reordered, duplicated, dropped, truncated, re-numbered,
  interleaved, abandoned part-way (so the next one carries RESTART), over ``max_message_size``;
* over a real ``mq://`` channel, forged fragments written with posix_ipc into the queue the
  server end reads;
* over a real ``sysv+mq://`` pair, forged fragments of the receiving end's message type written
  with sysv_ipc (test_sysv_mq.py's Q-7 test puts one fixed garbage message; this one a stream).

The property, for every stream:

* each receive either returns a message that the stream holds whole -- the payloads of one
  contiguous run of DATA fragments with the same number and total, indices 0, 1, 2 ..., FIRST on
  the first, LAST on the last, sizes adding up to the total (a forged but well-formed message is
  indistinguishable from a sent one) -- in stream order, or raises an ipckit error of the
  documented types; nothing else escapes and no receive waits (``timeout=0``; a RecvTimeout only
  once every fragment was taken);
* the reassembler holds at most one partial message of at most ``max_message_size`` bytes (the
  bound the module docstring of queue.py documents: "memory never exceeds max_message_size plus
  one fragment per direction");
* afterwards the channel stays usable (docs/backends/mq.md, "Bounded reassembly": "The channel
  stays usable, and the next whole message arrives"): the next messages the real sending end
  sends arrive whole, in order, preceded at most by ProtocolErrors about what the garbage left
  (a partial message, a broken numbering).  The one exception is a GOODBYE fragment in the
  stream: a forged goodbye is indistinguishable from the peer's clean close, and the kit
  documents that the peer then reads EndOfChannel after every message; the run asserts that
  every later receive says EndOfChannel.
"""

from __future__ import annotations

import os
import random
import secrets
import struct
import subprocess
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ipckit
from ipckit.backends.common.queue import (
    DATA,
    FIRST,
    GOODBYE,
    HEADER,
    HELLO,
    LAST,
    MAGIC,
    RESTART,
    QueueChannel,
    QueueTransport,
    encode_control,
    encode_hello,
)
from ipckit.channel import Channel
from ipckit.errors import (
    EndOfChannel,
    IPCError,
    MessageTooLarge,
    ProtocolError,
    RecvTimeout,
    SendTimeout,
)
from ipckit.framing import PROTOCOL, hello_payload
from ipckit.options import Options

pytestmark = pytest.mark.timeout(120)

FRAG: Final = 64  # the test double's kernel message size: the kit's smallest, so messages take many fragments
ROOM: Final = FRAG - HEADER.size
LIMIT: Final = 300  # max_message_size of the test double's channels: up to 7 fragments, and totals above it

#: What a receive may raise on a forged stream (exact types): ProtocolError for a bad stream,
#: MessageTooLarge for a total above max_message_size, EndOfChannel after a (forged) goodbye.
_ALLOWED: Final = (ProtocolError, MessageTooLarge, EndOfChannel)

_SETTINGS: Final = settings(max_examples=300, deadline=None, database=None,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- the kernel queue double
class _FakeQueue(QueueTransport):
    """One end of a pretend kernel queue pair: *inbox* and *outbox* are deques of whole kernel
    messages shared with the other end.  Nothing waits (a get on an empty inbox answers -1 at
    once, whatever the timeout), so a stuck receive shows as the test's timeout, not a hang here.
    ``room`` caps how many more puts go in (None: no cap): a way to make a real send stop part-way."""

    fragment_size = FRAG

    def __init__(self, inbox: deque[bytes], outbox: deque[bytes]) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.room: int | None = None
        self.closed = False
        self.marked = False

    def put(self, buf: bytearray, n: int, timeout: float) -> bool:
        assert not self.closed, "put on a closed transport"
        assert 0 <= n <= self.fragment_size
        if self.room is not None:
            if self.room <= 0:
                return False
            self.room -= 1
        self.outbox.append(bytes(buf[:n]))
        return True

    def get(self, buf: bytearray, timeout: float) -> int:
        assert not self.closed, "get on a closed transport"
        if not self.inbox:
            return -1
        data = self.inbox.popleft()
        buf[: len(data)] = data
        return len(data)

    def peer_alive(self) -> bool:
        return True

    def mark_closed(self) -> None:
        self.marked = True

    def peer_closed(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _fake_pair() -> tuple[QueueChannel, QueueChannel, deque[bytes]]:
    """Two kit channels over the double: ``a`` sends into the deque ``b`` reads (returned too)."""
    a_to_b: deque[bytes] = deque()
    b_to_a: deque[bytes] = deque()
    opts = Options(max_message_size=LIMIT)
    a = QueueChannel("test-queue://a", opts, _FakeQueue(b_to_a, a_to_b), peer_trusted=True, peer_max=LIMIT)
    b = QueueChannel("test-queue://b", opts, _FakeQueue(a_to_b, b_to_a), peer_trusted=True, peer_max=LIMIT)
    return a, b, a_to_b


# ----------------------------------------------------------------------------- fragments
def _frag(kind: int, flags: int, msg_id: int, index: int, total: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, kind, flags, msg_id, index, total) + payload


def _fields(frag: bytes) -> list[int]:
    return list(HEADER.unpack_from(frag, 0))


def _with(frag: bytes, **changes: int) -> bytes:
    """*frag* with header fields replaced (``flags=``, ``msg_id=``, ``index=``, ``total=``)."""
    f = _fields(frag)
    for name, value in changes.items():
        f[("magic", "kind", "flags", "msg_id", "index", "total").index(name)] = value
    return HEADER.pack(*f) + frag[HEADER.size :]


def _wrong_version_hello() -> bytes:
    good = hello_payload(100)  # the version field is the two bytes after the magic
    return encode_control(HELLO, good[:4] + struct.pack("<H", PROTOCOL + 1) + good[6:])


def _is_hello_shaped(frag: bytes) -> bool:
    """A control fragment the reassembler takes as a HELLO (whatever its payload): it does not touch
    a partial message, so it may sit inside a message's run."""
    if len(frag) < HEADER.size:
        return False
    magic, kind, flags, msg_id, index, _total = HEADER.unpack_from(frag, 0)
    return (magic == MAGIC and kind == HELLO and not flags & ~(FIRST | LAST | RESTART)
            and flags & (FIRST | LAST) == FIRST | LAST and not index and not msg_id)


def whole_messages(stream: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """Every message *stream* holds whole, as ``(position of its last fragment, payload)``.

    A whole message is a contiguous run (hello-shaped control fragments aside) of DATA fragments
    with known flags, one msg_id and one total, indices 0, 1, 2 ..., FIRST (RESTART allowed) on
    the first only, LAST on the last only, every fragment but the last non-empty, and payload sizes
    adding up to the total.  The oracle reads the format from the module docstring, not from the
    reassembler's code."""
    frags = [(pos, f) for pos, f in enumerate(stream) if not _is_hello_shaped(f)]
    found: list[tuple[int, bytes]] = []
    for start in range(len(frags)):
        _, f0 = frags[start]
        if len(f0) < HEADER.size:
            continue
        magic, kind, flags, msg_id, index, total = HEADER.unpack_from(f0, 0)
        if magic != MAGIC or kind != DATA or flags & ~(FIRST | LAST | RESTART) or not flags & FIRST or index:
            continue
        payload = bytearray()
        for k in range(start, len(frags)):
            pos, f = frags[k]
            if len(f) < HEADER.size:
                break
            m, kd, fl, mid, ix, tot = HEADER.unpack_from(f, 0)
            if (m != MAGIC or kd != DATA or fl & ~(FIRST | LAST | RESTART) or mid != msg_id or tot != total
                    or ix != k - start or (k > start and fl & FIRST)):
                break
            size = len(f) - HEADER.size
            payload += f[HEADER.size :]
            if fl & LAST:
                if len(payload) == total:
                    found.append((pos, bytes(payload)))
                break
            if size == 0 or len(payload) >= total:
                break
    return found


# ----------------------------------------------------------------------------- the property
def _check_bound(ch: QueueChannel) -> None:
    """The documented reassembly bound: one partial message, of at most max_message_size bytes."""
    asm = ch._asm
    buf = asm._buf
    assert buf is None or len(buf) <= asm.limit, f"a {len(buf)}-byte reassembly buffer over the limit {asm.limit}"
    assert 0 <= asm.pending <= asm.limit
    assert len(ch._rx) == ch._t.fragment_size  # the one fragment buffer, never grown


def drain(ch: Channel, left: Any, *, polls: Iterator[bool] | None = None, cap: int = 10_000) -> list[Any]:
    """Receive with ``timeout=0`` until a RecvTimeout, checking each outcome; the outcomes in order
    (bytes, or the exception instance).  *left*: how many kernel messages wait (a callable), so a
    RecvTimeout is only accepted once none does.  *polls*: when the next draw is True, a
    ``poll(0)`` goes first (poll takes a message, or an error, ahead of recv)."""
    out: list[Any] = []
    for _ in range(cap):
        if polls is not None and next(polls, False):
            assert ch.poll(0) in (True, False)
        try:
            msg = ch.recv_bytes(timeout=0)
        except RecvTimeout:
            assert left() == 0, f"RecvTimeout with {left()} kernel messages still queued"
            return out
        except IPCError as exc:
            assert type(exc) in _ALLOWED, f"{type(exc).__name__} escaped a receive: {exc}"
            out.append(exc)
            if isinstance(exc, EndOfChannel):
                return out
        else:
            assert type(msg) is bytes
            out.append(msg)
        if isinstance(ch, QueueChannel):
            _check_bound(ch)
    raise AssertionError(f"no RecvTimeout after {cap} receives")


def check_outcomes(stream: Sequence[bytes], out: Sequence[Any]) -> bool:
    """Every returned message is a whole message of *stream*, in stream order (no mix of two, no
    partial, none twice from one run).  True when the stream ended the channel (EndOfChannel)."""
    whole = whole_messages(stream)
    for kind in sorted({type(x).__name__ for x in out}):
        event(f"outcome: {kind}")  # (pytest --hypothesis-show-statistics: what the streams reached)
    after = -1
    for item in out:
        if isinstance(item, bytes):
            ends = [pos for pos, payload in whole if payload == item and pos > after]
            assert ends, f"a {len(item)}-byte message that the stream does not hold whole (after position {after})"
            after = min(ends)
    return any(isinstance(item, EndOfChannel) for item in out)


def check_usable(sender: Channel, receiver: Channel, left: Any, ended: bool, finals: Sequence[bytes]) -> None:
    """After the garbage: the next messages the real sending end sends arrive whole and in order,
    after at most ProtocolErrors (or, once a goodbye ended the direction, only EndOfChannel)."""
    for m in finals:
        sender.send_bytes(m, timeout=1)
    out = drain(receiver, left)
    if ended:
        assert out and all(isinstance(x, EndOfChannel) for x in out), out
        with pytest.raises(EndOfChannel):
            receiver.recv_bytes(timeout=0)
        return
    got = [x for x in out if isinstance(x, bytes)]
    errors = [x for x in out if not isinstance(x, bytes)]
    assert got == list(finals), (f"the messages sent after the garbage: {[len(m) for m in finals]} bytes; "
                                 f"received {[len(m) for m in got]}, errors {[type(e).__name__ for e in errors]}")
    event(f"after the garbage: {'a ProtocolError, then ' if errors else ''}the messages")
    first = out.index(got[0]) if got else len(out)
    assert all(type(e) is ProtocolError for e in out[:first]) and len(errors) == first, out


# ----------------------------------------------------------------------------- strategies
def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


_ids = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1), st.sampled_from([2**31 - 1, 2**31, 2**32 - 1]))
_indices = st.one_of(st.integers(0, 8), st.sampled_from([2**31, 2**32 - 1]))
_totals = st.one_of(st.integers(0, LIMIT + 2), st.integers(0, 2**64 - 1),
                    st.sampled_from([LIMIT, LIMIT + 1, 2**63, 2**64 - 1]))
_flags = st.one_of(st.sampled_from([0, FIRST, LAST, FIRST | LAST, FIRST | RESTART, FIRST | LAST | RESTART, RESTART]),
                   st.integers(0, 255))
_kinds = st.one_of(st.just(DATA), st.sampled_from([0, HELLO, GOODBYE, 4, 255]))


@st.composite
def _forged(draw: st.DrawFn, room: int = ROOM) -> bytes:
    """A well-formed header with random fields, and a payload that often fits its total."""
    kind, flags, msg_id, index, total = draw(_kinds), draw(_flags), draw(_ids), draw(_indices), draw(_totals)
    n = draw(st.one_of(st.integers(0, room), st.just(min(total, room))))
    return _frag(kind, flags, msg_id, index, total, draw(st.binary(min_size=n, max_size=n)))


def _control(room: int = ROOM) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(encode_hello, st.integers(0, 2**40)),
        st.builds(lambda p: encode_control(HELLO, p), st.binary(max_size=min(room, 40))),
        st.builds(_wrong_version_hello),
        st.just(encode_control(GOODBYE)),
        st.just(_frag(GOODBYE, FIRST | LAST, 0, 0, 3, b"bye")),
    )


#: Perturbations of one real message's fragments, applied in order, indices modulo the count.
_perturb = st.lists(st.one_of(
    st.tuples(st.just("swap"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("dup"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("drop"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("cut"), st.integers(0, 50), st.integers(0, FRAG)),
    st.tuples(st.just("total"), st.integers(0, 50), _totals),
    st.tuples(st.just("index"), st.integers(0, 50), _indices),
    st.tuples(st.just("id"), st.integers(0, 50), _ids),
    st.tuples(st.just("flags"), st.integers(0, 50), _flags),
    st.tuples(st.just("empty"), st.integers(0, 50), st.just(0)),
), max_size=3)


def _apply(frags: list[bytes], ops: Sequence[tuple[str, int, int]]) -> list[bytes]:
    frags = list(frags)
    for op, i, v in ops:
        if not frags:
            break
        i %= len(frags)
        if op == "swap":
            j = v % len(frags)
            frags[i], frags[j] = frags[j], frags[i]
        elif op == "dup":
            frags.insert(v % (len(frags) + 1), frags[i])
        elif op == "drop":
            del frags[i]
        elif op == "cut":
            frags[i] = frags[i][: max(0, len(frags[i]) - v)]
        elif op == "empty":
            frags[i] = b""
        elif len(frags[i]) >= HEADER.size:
            frags[i] = _with(frags[i], **{{"total": "total", "index": "index", "id": "msg_id",
                                           "flags": "flags"}[op]: v})
    return frags


_sizes = st.one_of(st.integers(0, 2 * ROOM + 1), st.integers(0, LIMIT), st.sampled_from([ROOM, 2 * ROOM, LIMIT]))

#: One step of a stream for the test double: garbage, or a real send (perturbed, abandoned, interleaved).
_step = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=FRAG)),
    st.tuples(st.just("forged"), _forged()),
    st.tuples(st.just("control"), _control()),
    st.tuples(st.just("send"), _sizes, st.integers(0, 2**16), _perturb),
    st.tuples(st.just("abandon"), st.integers(ROOM + 1, LIMIT), st.integers(0, 2**16), st.integers(0, 6)),
    st.tuples(st.just("interleave"), _sizes, _sizes, st.integers(0, 2**16),
              st.lists(st.booleans(), min_size=1, max_size=16)),
    st.tuples(st.just("big"), st.integers(LIMIT + 1, 4 * LIMIT), st.integers(0, 2**16)),
)


def _take_sent(q: deque[bytes], before: int) -> list[bytes]:
    """The fragments a send just put (they are at the deque's end), taken off to be perturbed."""
    frags = list(q)[before:]
    for _ in frags:
        q.pop()
    return frags


def _build_stream(a: QueueChannel, q: deque[bytes], steps: Sequence[tuple[Any, ...]]) -> None:
    """Queue *steps* into *q* (what ``b`` reads): garbage put straight in, real messages through
    ``a``'s fragmenter (then perturbed in place)."""
    t = a._t
    assert isinstance(t, _FakeQueue)
    for step in steps:
        kind = step[0]
        if kind in ("bytes", "forged", "control"):
            q.append(step[1])
        elif kind == "send":
            _, n, seed, ops = step
            before = len(q)
            a.send_bytes(_payload(n, seed), timeout=0)
            q.extend(_apply(_take_sent(q, before), ops))
        elif kind == "abandon":  # the queue takes k fragments, then stays full: the next send carries RESTART
            _, n, seed, k = step
            t.room = k % -(-n // ROOM)  # fewer fragments than the message has (0: the first put fails)
            try:
                with pytest.raises(SendTimeout):
                    a.send_bytes(_payload(n, seed), timeout=0)
            finally:
                t.room = None
        elif kind == "interleave":
            _, n1, n2, seed, pattern = step
            before = len(q)
            a.send_bytes(_payload(n1, seed), timeout=0)
            one = _take_sent(q, before)
            a.send_bytes(_payload(n2, seed + 1), timeout=0)
            two = _take_sent(q, before)
            picks = iter(pattern * (len(one) + len(two)))
            while one or two:
                src = one if (next(picks) and one) or not two else two
                q.append(src.pop(0))
        else:  # "big": a forged message over max_message_size, whole, with its own numbering
            _, n, seed = step
            data = _payload(n, seed)
            count = -(-n // ROOM)
            for i in range(count):
                flags = (FIRST if i == 0 else 0) | (LAST if i == count - 1 else 0)
                q.append(_frag(DATA, flags, seed, i, n, data[i * ROOM : (i + 1) * ROOM]))


# ----------------------------------------------------------------------------- 1. the test double
@_SETTINGS
@given(steps=st.lists(_step, max_size=12), polls=st.lists(st.booleans(), max_size=40),
       finals=st.lists(st.tuples(_sizes, st.integers(0, 2**16)), min_size=1, max_size=3))
def test_fuzz_fragment_streams_over_a_queue_double(steps: list[tuple[Any, ...]], polls: list[bool],
                                                   finals: list[tuple[int, int]]) -> None:
    a, b, q = _fake_pair()
    try:
        _build_stream(a, q, steps)
        stream = list(q)
        out = drain(b, lambda: len(q), polls=iter(polls))
        ended = check_outcomes(stream, out)
        check_usable(a, b, lambda: len(q), ended, [_payload(n, seed) for n, seed in finals])
    finally:
        a.close()
        b.close()


def test_whole_messages_oracle_reads_the_format() -> None:
    """The oracle itself: a real message's fragments are one whole message; cut, reordered or
    re-totalled they are none; a hello inside the run does not break it."""
    a, b, q = _fake_pair()
    try:
        data = _payload(3 * ROOM + 5, 1)
        a.send_bytes(data, timeout=0)
        frags = list(q)
        q.clear()
        assert len(frags) == 4
        assert whole_messages(frags) == [(3, data)]
        assert whole_messages([*frags[:2], encode_hello(5), *frags[2:]]) == [(4, data)]
        assert whole_messages([frags[1], frags[0], *frags[2:]]) == []
        assert whole_messages([*frags[:3], frags[3][:-1]]) == []
        assert whole_messages([*frags[:3], _with(frags[3], total=len(data) + 1)]) == []
        assert whole_messages([_frag(DATA, FIRST | LAST, 9, 0, 0)]) == [(0, b"")]
    finally:
        a.close()
        b.close()


def test_a_partial_message_left_by_garbage_does_not_cost_the_next_real_message() -> None:
    """The shortest stream of the kind the fuzz explores: a forged first fragment that never gets
    its last one, then a real message.  The partial one is reported (ProtocolError), the real one
    arrives whole (docs/backends/mq.md: "the next whole message arrives")."""
    a, b, q = _fake_pair()
    try:
        q.append(_frag(DATA, FIRST, 7, 0, 100, b"x" * ROOM))
        a.send_bytes(b"real", timeout=0)
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=0)
        assert b.recv_bytes(timeout=0) == b"real"
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0)
    finally:
        a.close()
        b.close()


def test_a_message_out_of_numbering_is_reported_and_still_delivered() -> None:
    """Forged whole messages move the expected number; the real sender's next message is then out
    of sequence: ProtocolError (messages lost or repeated), and that message still arrives."""
    a, b, q = _fake_pair()
    try:
        q.append(_frag(DATA, FIRST | LAST, 40, 0, 6, b"forged"))
        multi = _payload(2 * ROOM + 3, 2)
        a.send_bytes(multi, timeout=0)
        assert b.recv_bytes(timeout=0) == b"forged"  # well-formed: indistinguishable from a sent one
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=0)
        assert b.recv_bytes(timeout=0) == multi
        a.send_bytes(b"next", timeout=0)
        assert b.recv_bytes(timeout=0) == b"next"
    finally:
        a.close()
        b.close()


def test_poll_reports_the_gap_before_the_message_after_it() -> None:
    """poll() takes the error and the message after the gap ahead of recv: recv raises the error
    first, then returns the message."""
    a, b, q = _fake_pair()
    try:
        q.append(_frag(DATA, FIRST, 7, 0, 100, b"x" * ROOM))
        a.send_bytes(b"real", timeout=0)
        assert b.poll(0)
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=0)
        assert b.recv_bytes(timeout=0) == b"real"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("polled", [False, True])
def test_a_hello_of_another_version_inside_the_stream_is_a_protocol_error(polled: bool) -> None:
    """Found by the fuzz: decode_hello's IncompatibleEndpoint (an EndpointError, for a rendezvous)
    escaped recv, and poll(), whose only documented error is ChannelClosed."""
    a, b, q = _fake_pair()
    try:
        q.append(_wrong_version_hello())
        if polled:
            assert b.poll(0)
        with pytest.raises(ProtocolError, match="protocol 2"):
            b.recv_bytes(timeout=0)
        a.send_bytes(b"after", timeout=0)
        assert b.recv_bytes(timeout=0) == b"after"
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- 2. real kernel queues
posix_ipc = pytest.importorskip("posix_ipc")


def _queue_names() -> set[str] | None:
    """This IPC namespace's ipckit POSIX queues (through a private mqueue mount, as test_mq.py), or
    None where they cannot be listed (not root)."""
    if os.geteuid() != 0:
        return None
    script = 'd=$(mktemp -d) && mount -t mqueue none "$d" && ls -1 "$d"; umount "$d" 2>/dev/null; rmdir "$d"'
    try:
        out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=20,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line for line in out.split() if line.startswith("ipckit.")}


@pytest.fixture
def no_queue_left() -> Iterator[None]:
    before = _queue_names()
    yield
    after = _queue_names()
    if before is not None and after is not None:
        assert not after - before, f"POSIX queues left behind: {sorted(after - before)}"


_MQ_FRAG: Final = 256
_MQ_ROOM: Final = _MQ_FRAG - HEADER.size
_MQ_DEPTH: Final = 4
_MQ_LIMIT: Final = 1000

#: Forged kernel messages for a real queue of *room* payload bytes a fragment (at most one fragment
#: each: the kernel refuses larger ones).
def _kernel_garbage(room: int, limit: int, *, empty: bool = True) -> st.SearchStrategy[list[bytes]]:
    frag = room + HEADER.size
    totals = st.one_of(st.integers(0, limit + 2), st.integers(0, 2**64 - 1))
    forged = st.builds(lambda kind, flags, mid, ix, tot, body: _frag(kind, flags, mid, ix, tot, body),
                       _kinds, _flags, _ids, _indices, totals, st.binary(max_size=min(room, 64)))
    first_only = st.builds(lambda mid, tot: _frag(DATA, FIRST, mid, 0, tot, b"p" * min(room, max(tot - 1, 1))),
                           _ids, st.integers(room + 1, limit))
    whole = st.builds(lambda mid, body: _frag(DATA, FIRST | LAST, mid, 0, len(body), body), _ids,
                      st.binary(max_size=32))
    one = st.one_of(st.binary(min_size=0 if empty else 1, max_size=min(frag, 64)), forged, first_only, whole,
                    st.sampled_from([encode_hello(limit), encode_control(HELLO, b"junk"), _wrong_version_hello()]))
    return st.lists(one, min_size=1, max_size=10)


def _kernel_finals(room: int) -> st.SearchStrategy[list[bytes]]:
    sizes = st.one_of(st.integers(0, 40), st.sampled_from([room, 2 * room + 1, 3 * room]))
    return st.lists(st.builds(_payload, sizes, st.integers(0, 2**16)), min_size=1, max_size=2)


_KERNEL_SETTINGS: Final = settings(max_examples=150, deadline=None, database=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@_KERNEL_SETTINGS
@given(garbage=_kernel_garbage(_MQ_ROOM, _MQ_LIMIT), finals=_kernel_finals(_MQ_ROOM))
def test_fuzz_forged_fragments_in_a_real_posix_queue(no_queue_left: None, garbage: list[bytes],
                                                     finals: list[bytes]) -> None:
    """mq://: posix_ipc writes the forged stream into the anchor queue (client to server) beside a
    real client; the server end reads it, in chunks of the queue's depth."""
    name = f"fz{os.getpid()}-{secrets.token_hex(6)}"
    opts = {"depth": _MQ_DEPTH, "fragment_size": _MQ_FRAG, "max_message_size": _MQ_LIMIT}
    with ipckit.listen(f"mq://{name}", **opts) as lst:
        raw = posix_ipc.MessageQueue(f"/ipckit.{name}", 0)  # opened before connect removes the names
        try:
            with ipckit.connect(f"mq://{name}", timeout=5, **opts) as client, lst.accept(timeout=5) as server:
                assert isinstance(server, QueueChannel)
                left = lambda: raw.current_messages  # noqa: E731 - the server's inbox, as the kernel counts it
                out: list[Any] = []
                for at in range(0, len(garbage), _MQ_DEPTH):
                    for g in garbage[at : at + _MQ_DEPTH]:
                        raw.send(g, timeout=1)
                    out += drain(server, left)
                    if any(isinstance(x, EndOfChannel) for x in out):
                        break
                ended = check_outcomes(garbage, out)
                for m in finals:  # one at a time: a direction holds _MQ_DEPTH fragments
                    check_usable(client, server, left, ended, [m])
        finally:
            raw.close()


sysv_ipc = pytest.importorskip("sysv_ipc")


@_KERNEL_SETTINGS
@given(garbage=_kernel_garbage(256, _MQ_LIMIT), finals=_kernel_finals(4096))
def test_fuzz_forged_fragments_in_a_real_sysv_queue(garbage: list[bytes], finals: list[bytes]) -> None:
    """sysv+mq://: sysv_ipc puts the forged stream as messages of the receiving end's type."""
    from ipckit.backends import sysv_mq

    a, b = ipckit.pair("sysv+mq", max_message_size=64 * 1024)
    with a, b:
        assert isinstance(b, QueueChannel)
        raw = sysv_ipc.MessageQueue(b._t.ref.msgkey)  # type: ignore[attr-defined]
        rtype = sysv_mq._TYPE[1]
        left = lambda: raw.current_messages  # noqa: E731 - both directions, but only b's is ever used here
        out: list[Any] = []
        for g in garbage:
            raw.send(g, block=False, type=rtype)
        out += drain(b, left)
        ended = check_outcomes(garbage, out)
        room = b._t.fragment_size - HEADER.size
        for m in finals:  # one fragment at a time: a sender waits for credit while nobody reads
            check_usable(a, b, left, ended, [m[:room]])


class _StillBlocked(Exception):
    """Raised by the SIGALRM handler (not an OSError: the channel would translate that)."""


def test_an_empty_kernel_message_of_our_type_does_not_block_recv() -> None:
    """Found by the fuzz: a zero-length SysV message
    of the receiving end's type.  SIGALRM bounds the wait (the blocked semop returns EINTR and the
    handler's exception ends the call); the test expects ProtocolError and no wait at all."""
    import signal

    from ipckit.backends import sysv_mq

    def alarm(signum: int, frame: Any) -> None:
        raise _StillBlocked("recv(timeout=0) still blocked after 1 s")

    a, b = ipckit.pair("sysv+mq")
    old = signal.signal(signal.SIGALRM, alarm)
    try:
        with a, b:
            raw = sysv_ipc.MessageQueue(b._t.ref.msgkey)  # type: ignore[attr-defined]
            raw.send(b"", block=False, type=sysv_mq._TYPE[1])
            signal.alarm(1)
            try:
                with pytest.raises(ProtocolError):
                    b.recv_bytes(timeout=0)
            finally:
                signal.alarm(0)
            a.send_bytes(b"after", timeout=1)
            assert b.recv_bytes(timeout=1) == b"after"
    finally:
        signal.signal(signal.SIGALRM, old)
