"""A Jepsen-style load checker: stream self-describing messages through a channel, several senders
at once, and count what arrived lost, duplicated, reordered, corrupt or unexpected.

Every message names its sender (an id per sending thread), its sequence number within that
sender's stream, its body size and a crc32 of the body.  The body is a slice of a seeded random
pool, so the receiver knows what every byte must be (it compares the crc32 of what arrived with
the header's and with the crc32 of the planned slice: a memoryview comparison would cost ten times
as much).  Sizes follow a :class:`Mix`: a share of
"large" messages log-uniform in 0 B .. ``large_max`` (1 MiB) and the rest "small", log-uniform in
0 B .. ``small_max`` (4 KiB) -- all large would be ~75 KB a message on average, far too many bytes
for a 200,000-message run on a slow transport, and the small ones are where per-message bugs
(framing, locking, sequence numbers) show.  A share of the messages goes through ``send()`` as a
dict (the channel's serializer, pickle-5 out-of-band parts included), the rest through
``send_bytes()``.

Use it on your own backend (``a`` sends, ``b`` receives; run the senders in threads or in
another process that builds the same plan)::

    from ipckit.serializers import decoder
    from ipckit.testing.load import Checker, Mix, Plan, receive_all, send_stream

    plan = Plan(seed=1, mix=Mix(), cap=a.max_message_size)
    # sender side, one thread (or process) per stream:
    send_stream(a, plan, sender=0, count=10_000)
    # receiver side:
    tally = receive_all(b, Checker(plan, {0: 10_000}, decoder(b.serializer)))
    assert tally.clean and tally.ended == "complete", tally.describe()

A receiver cannot know whether the next message was sent with ``send()`` or ``send_bytes()`` (two
senders interleave), so :func:`receive_all` takes every message with ``recv_bytes()`` and decodes
the object ones with the channel's own decoder: ``recv()`` is exactly that (one
``_recv_payload``, then the serializer's decoder), so both receive paths are exercised.
"""

from __future__ import annotations

import math
import random
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..channel import Channel
from ..errors import EndOfChannel, IPCError, PeerDied

__all__ = ["Mix", "Plan", "Tally", "Checker", "send_stream", "receive_all", "HEADER_SIZE", "MAGIC"]

MAGIC = b"IKLD"
_HEADER = struct.Struct("<4sIQII")  # magic, sender, seq, body size, crc32(body)
#: Bytes a ``send_bytes`` message carries before its body.
HEADER_SIZE = _HEADER.size
#: Room kept below the channel's ``max_message_size`` for the header and the dict's encoding.
_OVERHEAD = 512
_OBJECT_KIND = "ipckit-load"


@dataclass(frozen=True)
class Mix:
    """The size and kind distribution of a load run."""

    #: fraction of messages whose body is log-uniform in 0 .. ``large_max``
    large_share: float = 0.05
    large_max: int = 1 << 20
    #: the others: log-uniform in 0 .. ``small_max``
    small_max: int = 4096
    #: fraction sent with ``send()`` as a dict (the rest: ``send_bytes()``)
    object_share: float = 0.1

    def describe(self) -> str:
        return (f"{self.large_share:.1%} log-uniform 0..{self.large_max} B, rest log-uniform "
                f"0..{self.small_max} B; {self.object_share:.0%} send()/dict, rest send_bytes()")

    def mean_body(self) -> float:
        """Expected body size in bytes (``E[2**U - 1]`` for U uniform in 0 .. log2(max + 1))."""

        def log_uniform_mean(top: int) -> float:
            span = math.log2(top + 1)
            return top / (span * math.log(2)) - 1 if top > 0 else 0.0

        return (self.large_share * log_uniform_mean(self.large_max)
                + (1 - self.large_share) * log_uniform_mean(self.small_max))


def _log_uniform(rng: random.Random, top: int) -> int:
    return min(top, int(2 ** (rng.random() * math.log2(top + 1))) - 1)


class Plan:
    """What every sender sends: the same *seed*, *mix* and *cap* give the same messages in every
    process, so a receiver checks a message against what its sender was bound to send."""

    def __init__(self, seed: int, mix: Mix, cap: int) -> None:
        self.seed = seed
        self.mix = mix
        #: largest body (the channel's ``max_message_size`` less room for header and encoding)
        self.body_max = max(0, min(mix.large_max, cap - _OVERHEAD))
        self.small_max = min(mix.small_max, self.body_max)
        self._pool = random.Random(seed).randbytes(self.body_max + 65_537)
        self._schedules: dict[int, tuple[list[int], bytearray]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:  # travels to spawn children without the pool
        return (Plan, (self.seed, self.mix, self.body_max + _OVERHEAD))

    def schedule(self, sender: int, count: int) -> tuple[list[int], bytearray]:
        """``(sizes, is_object)`` of *sender*'s first *count* messages (drawn once, then kept)."""
        with self._lock:
            have = self._schedules.get(sender)
            if have is not None and len(have[0]) >= count:
                return have
            rng = random.Random(f"{self.seed}:{sender}")
            sizes: list[int] = []
            objects = bytearray(count)
            for i in range(count):
                large = rng.random() < self.mix.large_share
                sizes.append(_log_uniform(rng, self.body_max if large else self.small_max))
                objects[i] = rng.random() < self.mix.object_share
            self._schedules[sender] = (sizes, objects)
            return sizes, objects

    def body(self, sender: int, seq: int, size: int) -> memoryview:
        """The body of *sender*'s message *seq*: a slice of the pool at an offset both sides derive."""
        off = (seq * 2_654_435_761 + sender * 40_503) % (len(self._pool) - size)
        return memoryview(self._pool)[off:off + size]

    def message(self, sender: int, seq: int, size: int, as_object: bool) -> bytes | dict[str, Any]:
        body = self.body(sender, seq, size)
        crc = zlib.crc32(body)
        if as_object:
            return {"kind": _OBJECT_KIND, "sender": sender, "seq": seq, "size": size, "crc": crc,
                    "body": bytes(body)}
        return _HEADER.pack(MAGIC, sender, seq, size, crc) + body


def send_stream(ch: Channel, plan: Plan, sender: int, count: int, timeout: float = 30.0,
                progress: Callable[[int, bool], None] | None = None) -> int:
    """Send *sender*'s messages 0 .. *count* - 1 on *ch*; return the body bytes sent.

    *progress* (if given) is called with ``(seq, False)`` before each send and ``(seq, True)``
    after it returned: a crash test records there which message was in flight.
    """
    sizes, objects = plan.schedule(sender, count)
    sent = 0
    for seq in range(count):
        size = sizes[seq]
        msg = plan.message(sender, seq, size, bool(objects[seq]))
        if progress is not None:
            progress(seq, False)
        if isinstance(msg, dict):
            ch.send(msg, timeout=timeout)
        else:
            ch.send_bytes(msg, timeout=timeout)
        if progress is not None:
            progress(seq, True)
        sent += size
    return sent


@dataclass
class Tally:
    """What a receiver saw.  ``received[s]`` is how many distinct messages of sender *s* arrived."""

    expected: dict[int, int]
    received: dict[int, int] = field(default_factory=dict)
    messages: int = 0
    bytes: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupt: int = 0
    unexpected: int = 0
    #: the first few problems, in words (with the seed, for a reproducer)
    problems: list[str] = field(default_factory=list)
    #: how the stream ended: "complete", or the name of the error that ended it
    ended: str = "complete"

    @property
    def lost(self) -> int:
        return sum(n - self.received.get(s, 0) for s, n in self.expected.items())

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.corrupt or self.unexpected)

    def figures(self) -> dict[str, int]:
        return {"messages": self.messages, "bytes": self.bytes, "lost": self.lost, "dup": self.duplicated,
                "reordered": self.reordered, "corrupt": self.corrupt, "unexpected": self.unexpected}

    def describe(self) -> str:
        f = self.figures()
        head = ", ".join(f"{k}={v}" for k, v in f.items()) + f", ended={self.ended}"
        return head + "".join(f"\n  {p}" for p in self.problems)


class Checker:
    """Checks every message against *plan*: ``expected`` maps sender id -> message count."""

    MAX_PROBLEMS = 10

    def __init__(self, plan: Plan, expected: dict[int, int], decode: Callable[[Any], Any]) -> None:
        self.plan = plan
        self._decode = decode
        self._tally = Tally(expected=dict(expected))
        self._seen = {s: bytearray(n) for s, n in expected.items()}
        self._top = dict.fromkeys(expected, -1)  # highest seq seen per sender
        self._schedules = {s: plan.schedule(s, n) for s, n in expected.items()}
        self.total = sum(expected.values())

    @property
    def distinct(self) -> int:
        """Distinct expected messages received so far."""
        return sum(self._tally.received.values())

    def note_problem(self, text: str) -> None:
        """Record a problem in words (the first few are kept, with the seed)."""
        if len(self._tally.problems) < self.MAX_PROBLEMS:
            self._tally.problems.append(f"{text} (seed {self.plan.seed})")

    def check(self, data: bytes) -> None:
        """Account for one received message (its bytes, as ``recv_bytes`` gave them)."""
        t = self._tally
        t.messages += 1
        t.bytes += len(data)
        body: memoryview | bytes
        if data[:4] == MAGIC and len(data) >= HEADER_SIZE:
            _, sender, seq, size, crc = _HEADER.unpack_from(data)
            body = memoryview(data)[HEADER_SIZE:]
            as_object = False
        else:
            try:
                obj = self._decode(data)
            except Exception as exc:  # any decoder's failure: the bytes are not a message we sent
                t.corrupt += 1
                self.note_problem(f"message #{t.messages} ({len(data)} B) is neither a load frame nor "
                                  f"decodable: {exc!r}")
                return
            if not (isinstance(obj, dict) and obj.get("kind") == _OBJECT_KIND):
                t.unexpected += 1
                self.note_problem(f"message #{t.messages} decoded to something no sender sent: {obj!r:.100}")
                return
            try:
                sender, seq, size, crc = (int(obj["sender"]), int(obj["seq"]), int(obj["size"]), int(obj["crc"]))
                body = bytes(obj["body"])
            except (KeyError, TypeError, ValueError) as exc:
                t.corrupt += 1
                self.note_problem(f"message #{t.messages}: a load dict with bad fields: {exc!r}")
                return
            as_object = True
        seen = self._seen.get(sender)
        if seen is None or not 0 <= seq < len(seen):
            t.unexpected += 1
            self.note_problem(f"message #{t.messages}: sender {sender} seq {seq} is not in the plan")
            return
        sizes, objects = self._schedules[sender]
        if (size != sizes[seq] or len(body) != size or as_object != bool(objects[seq])
                or zlib.crc32(body) != crc or crc != zlib.crc32(self.plan.body(sender, seq, size))):
            t.corrupt += 1
            self.note_problem(f"sender {sender} seq {seq}: corrupt (size {len(body)}/{size}, planned {sizes[seq]}, "
                          f"object {as_object}/{bool(objects[seq])})")
            return
        if seen[seq]:
            t.duplicated += 1
            self.note_problem(f"sender {sender} seq {seq}: duplicate")
            return
        seen[seq] = 1
        t.received[sender] = t.received.get(sender, 0) + 1
        if seq < self._top[sender]:
            t.reordered += 1
            self.note_problem(f"sender {sender} seq {seq}: arrived after seq {self._top[sender]}")
        else:
            self._top[sender] = seq

    def prefix_lengths(self) -> dict[int, int]:
        """Per sender, how many messages from seq 0 on arrived without a gap."""
        out = {}
        for s, seen in self._seen.items():
            n = seen.find(0)
            out[s] = len(seen) if n < 0 else n
        return out

    def tally(self) -> Tally:
        return self._tally


def receive_all(ch: Channel, checker: Checker, timeout: float = 30.0, until_error: bool = False) -> Tally:
    """Receive and check messages until every expected one arrived (or, with *until_error*, until
    the stream ends); the error that ended it is the tally's ``ended`` (``EndOfChannel``,
    ``PeerDied``, or a ``RecvTimeout`` when the wait between two messages exceeded *timeout*)."""
    try:
        while until_error or checker.distinct < checker.total:
            checker.check(ch.recv_bytes(timeout=timeout))
    except (EndOfChannel, PeerDied) as exc:
        checker.tally().ended = type(exc).__name__
    except IPCError as exc:
        checker.tally().ended = type(exc).__name__
        checker.note_problem(f"receive failed: {type(exc).__name__}: {exc}")
    return checker.tally()
