"""Load correctness on every backend (issue 14, bullet 2): a Jepsen-style checker over real peer
processes.

``test_load_both_directions``: the parent and a child process each send two streams at once (two
threads sending on one end, each its own sender id -- docs/contract.md "Threads": sends from
several threads are serialised, each message stays whole) while each also receives the other's
two streams.  Every message carries sender id, sequence number, size and a crc32 of its body
(:mod:`ipckit.testing.load`); each receiver counts lost, duplicated, reordered (per sender),
corrupt and unexpected messages, and all five must be 0.

``test_sender_killed_mid_stream``: a child sends two streams until the parent SIGKILLs it at a
random point (after READY and after the parent received a random number of messages): what
arrives is, per sender, a gap-free prefix of whole, verified messages, then ``PeerDied``.  The
message a sender had in flight is *indeterminate* (delivered whole or not at all); the report
counts how many were not delivered.  On zmq a returned send is only "queued in libzmq"
(docs/backends/zmq.md, Z-3), so there the prefix may also stop before the last returned send.

``test_checker_counts_every_fault``: the checker's zeros mean something -- a stream with a known
duplicate, reordering, corruption, loss and foreign messages is counted exactly, on every backend.

``test_close_right_after_a_burst``: a peer that sends 20,000 messages and closes at once, while
this end still reads: every message, then ``EndOfChannel``.  zmq fails it (``ZMQ_CLOSE_GAP``, found
by the load test: the closing end's queued tail and its goodbye are lost when the reader is a few
hundred messages behind); it is an ``xfail`` there, and the load test's zmq child waits for the
parent's word before it closes.

Sizes: :func:`scaled` -- 5,000 messages per backend by default, 200,000 in CI's proof stage
(``IPCKIT_PROOF=1``).  The size mix (:class:`Mix`) keeps a proof run's bytes bounded; backends
that move large messages slowly get a smaller large-message share (``LARGE_SHARE``), never fewer
messages, and the report row says so.  The seed is random per run (``IPCKIT_LOAD_SEED`` fixes
it) and is part of every failure message.
"""

from __future__ import annotations

import mmap
import os
import random
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from reliability_report import Recorder, proof_only, scaled

import ipckit
from ipckit.channel import Channel, Listener
from ipckit.errors import EndOfChannel
from ipckit.registry import get_backend
from ipckit.serializers import decoder
from ipckit.testing import ready, spawn_peer
from ipckit.testing.contract.helpers import ResultThread
from ipckit.testing.load import Checker, Mix, Plan, Tally, receive_all, send_stream
from ipckit.testing.workers import Dial, attach

pytestmark = [pytest.mark.timeout(120), proof_only]

SEED = int(os.environ.get("IPCKIT_LOAD_SEED") or random.SystemRandom().randrange(1 << 32))

#: Messages per backend (all four streams together).
MESSAGES = scaled(5_000, 200_000)
#: Kill rounds per backend.
KILL_ROUNDS = scaled(3, 10)

#: Share of large (0..1 MiB) messages.  The default keeps a 200,000-message proof run near 0.85 GB
#: (~4,200 B a message on average) and every backend within ~20 s on 2 shared vCPUs.  sysv+mq moves
#: a large message as 4 KiB kernel messages (its queues' msgmnb) and took 24 s at the default share
#: and 15-24 s at 3 % (mq: 9-17 s at 5 %), so it gets 2 % -- never fewer messages; its report row
#: says so.
DEFAULT_LARGE_SHARE = 0.05
LARGE_SHARE: dict[str, float] = {"sysv+mq": 0.02}


@dataclass(frozen=True)
class Subject:
    name: str
    scheme: str
    options: dict[str, Any] = field(default_factory=dict)


SUBJECTS = [Subject("fifo", "fifo"), Subject("memory", "memory"), Subject("mq", "mq"), Subject("pipe", "pipe"),
            Subject("shm", "shm"), Subject("sysv+mq", "sysv+mq"), Subject("sysv+shm", "sysv+shm"),
            Subject("unix", "unix"), Subject("unix+seqpacket", "unix", {"type": "seqpacket"}),
            Subject("zmq+ipc", "zmq+ipc"), Subject("zmq+tcp", "zmq+tcp")]


@pytest.fixture(params=SUBJECTS, ids=[s.name for s in SUBJECTS])
def subject(request: pytest.FixtureRequest) -> Subject:
    s: Subject = request.param
    if not ipckit.available_backends().get(s.scheme, False):
        pytest.skip(f"{s.scheme} is not available here")
    return s


def _seed_note(seed: int) -> str:
    return f"seed {seed} (rerun with IPCKIT_LOAD_SEED={seed})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ends(subject: Subject, tmp: str) -> Iterator[Callable[[], tuple[Channel, Channel | Dial, Callable[[], Channel]]]]:
    """Makes ``(mine, theirs, finish)``: *theirs* goes to the peer; *finish()* (after the peer
    started) closes this process's copy of an inherited end, or accepts the peer's connection."""
    owned: list[Channel | Listener] = []

    def make() -> tuple[Channel, Channel | Dial, Callable[[], Channel]]:
        caps = get_backend(subject.scheme).capabilities
        if caps.inheritable or not caps.cross_process:
            a, b = ipckit.pair(f"{subject.scheme}://", **subject.options)
            owned.extend((a, b))

            def finish() -> Channel:
                if caps.cross_process:
                    b.close()  # the child has its own copy now
                return a

            return a, b, finish
        url = (f"zmq+ipc://{tmp}/{secrets.token_hex(4)}.ipc" if subject.scheme == "zmq+ipc"
               else f"zmq+tcp://127.0.0.1:{_free_port()}")
        lst = ipckit.listen(url, **subject.options)
        owned.append(lst)

        def accept() -> Channel:
            ch = lst.accept(timeout=20.0)
            owned.append(ch)
            return ch

        return lst, Dial(lst.url, dict(subject.options)), accept  # type: ignore[return-value]

    try:
        yield make
    finally:
        for o in reversed(owned):
            o.close()


def _mix(subject: Subject) -> Mix:
    return Mix(large_share=LARGE_SHARE.get(subject.name, DEFAULT_LARGE_SHARE))


def _cap(subject: Subject, ch: Channel) -> int:
    caps = get_backend(subject.scheme).capabilities
    return min(ch.max_message_size, caps.max_message_size or ch.max_message_size)


# --------------------------------------------------------------------------- the checker itself
def test_checker_counts_every_fault(subject: Subject) -> None:
    """The checker is only worth its zeros if it counts what it claims: a stream with one duplicate,
    one reordering, one corrupt byte, one lost message and two unexpected ones (a foreign sender, a
    foreign object) plus undecodable junk, sent over the backend, gives exactly those counts."""
    a, b = ipckit.pair(f"{subject.scheme}://", **subject.options)
    try:
        plan = Plan(SEED, Mix(large_share=0.2, object_share=0.5), _cap(subject, a))
        sizes, objects = plan.schedule(0, 8)

        def msg(seq: int) -> bytes | dict[str, Any]:
            return plan.message(0, seq, sizes[seq], bool(objects[seq]))

        corrupt = msg(4)
        if isinstance(corrupt, dict):
            corrupt["body"] = corrupt["body"][:-1] + b"?" if corrupt["body"] else b"?"
        else:
            corrupt = corrupt[:-1] + bytes([corrupt[-1] ^ 1])  # the last body byte (or the crc)
        stream: list[bytes | dict[str, Any]] = [msg(0), msg(1), msg(1), msg(3), msg(2), corrupt, msg(5), msg(7),
                                                 plan.message(9, 0, 10, False), {"not": "ours"}, b"junk"]

        def send_all() -> None:
            for m in stream:
                if isinstance(m, dict):
                    a.send(m, timeout=10.0)
                else:
                    a.send_bytes(m, timeout=10.0)

        sender = ResultThread(send_all, name="ipckit-load-faults")
        sender.start()
        checker = Checker(plan, {0: 8}, decoder(b.serializer))
        for _ in stream:
            checker.check(b.recv_bytes(timeout=10.0))
        sender.outcome(10.0)
    finally:
        a.close()
        b.close()
    t = checker.tally()
    assert (t.messages, t.duplicated, t.reordered, t.corrupt, t.unexpected, t.lost) == (11, 1, 1, 2, 2, 2), \
        f"{_seed_note(SEED)}: {t.describe()}"
    assert checker.prefix_lengths() == {0: 4} and not t.clean


# --------------------------------------------------------------------------- both directions
def _duplex(ch: Channel, plan: Plan, senders: dict[int, int], expected: dict[int, int],
            started: Callable[[], None]) -> Tally:
    """Send *senders*' streams (a thread each) while this thread receives and checks *expected*."""
    for s, n in senders.items():
        plan.schedule(s, n)  # drawn before the clock starts
    checker = Checker(plan, expected, decoder(ch.serializer))
    threads = [ResultThread(lambda s=s, n=n: send_stream(ch, plan, s, n), name=f"ipckit-load-send-{s}")  # type: ignore[misc]
               for s, n in senders.items()]
    started()
    for t in threads:
        t.start()
    try:
        tally = receive_all(ch, checker, timeout=30.0)
    finally:
        for t in threads:
            t.join(60.0)
    for t in threads:
        t.outcome(0.0)  # a sender's error fails the run
    return tally


_DONE = b"ipckit-load: all received"


def _duplex_peer(end: Channel | Dial, plan: Plan, senders: dict[int, int], expected: dict[int, int],
                 wait_done: bool) -> Tally:
    """The child's side; with *wait_done* it keeps its end open until the parent says it received
    everything (zmq: a close right after a burst loses the tail, see ZMQ_CLOSE_GAP)."""
    ch = attach(end)
    try:
        tally = _duplex(ch, plan, senders, expected, ready)
        if wait_done and tally.clean:
            assert ch.recv_bytes(timeout=30.0) == _DONE
        return tally
    finally:
        ch.close()


#: A real bug the checker found (test_close_right_after_a_burst shows it on its own): a zmq end
#: that closes while its peer is still behind (a few hundred messages queued) loses that tail and
#: the goodbye: the peer reads a prefix, then PeerDied, where docs/backends/zmq.md promises every
#: message sent before close(), then EndOfChannel.  Raw pyzmq (libzmq 4.3.5, PAIR, linger 2 s)
#: loses the same way, so close() has to wait for the peer to confirm what it read.
ZMQ_CLOSE_GAP = ("zmq: close() right after a burst, while the peer is still behind, loses the messages still "
                 "queued and the goodbye (the peer gets a prefix, then PeerDied); libzmq's linger does not cover "
                 "them (seen on zmq+ipc, in about 1 run of 3; zmq+tcp has the same close path)")


def _record_summary(reliability: Recorder) -> None:
    """The section's summary fragment, from every row recorded so far (both tests add to it)."""
    rows = [r for subj in reliability.sections.get("load", {}).get("rows", {}).values() for r in subj]
    both = [r for r in rows if r.get("variant") == "both directions"]
    kills = [r for r in rows if r.get("variant") == "sender SIGKILLed mid-stream"]
    parts = []
    if both:
        tot = {k: sum(r[k] for r in both) for k in ("messages", "lost", "dup", "reordered", "corrupt")}
        parts.append(f"{tot['messages']:,} msgs under load ({len(both)} backends): {tot['lost']} lost / "
                     f"{tot['dup']} dup / {tot['reordered']} reordered / {tot['corrupt']} corrupt")
    if kills:
        parts.append(f"{sum(r['rounds'] for r in kills)} sender processes SIGKILLed mid-stream "
                     f"({len(kills)} backends): "
                     f"{sum(r['partial'] for r in kills)} partial, {sum(r['in_flight'] for r in kills)} in flight, "
                     f"{sum(r['indeterminate'] for r in kills)} of them not delivered")
    if parts:
        reliability.summary("load", ", ".join(parts))


def test_load_both_directions(subject: Subject, ends: Callable[..., Any], reliability: Recorder) -> None:
    mine, theirs, finish = ends()
    caps = get_backend(subject.scheme).capabilities
    per = MESSAGES // 4
    mix = _mix(subject)
    plan = Plan(SEED, mix, _cap(subject, mine) if isinstance(mine, Channel) else mix.large_max + 4096)
    ours, peers = {0: per, 1: per}, {2: per, 3: per}
    for s, n in {**ours, **peers}.items():
        plan.schedule(s, n)  # a forked child inherits the drawn schedules
    note = f"{subject.name}: {_seed_note(SEED)}, {mix.describe()}"
    clock: list[float] = []
    if caps.cross_process:
        # zmq: the child waits for our word before closing (ZMQ_CLOSE_GAP): this test is about
        # what arrives under load; the close is test_close_right_after_a_burst's.
        wait_done = subject.scheme.startswith("zmq")
        with spawn_peer(_duplex_peer, theirs, plan, peers, ours, wait_done) as peer:
            ch = finish()
            peer.wait_ready()
            clock.append(time.monotonic())
            got = _duplex(ch, plan, ours, peers, lambda: None)
            if wait_done:
                ch.send_bytes(_DONE, timeout=30.0)
            theirs_got: Tally = peer.join(60.0)
            seconds = time.monotonic() - clock[0]
    else:  # threads only (memory://): the peer is a thread of this process
        ch = finish()
        assert isinstance(theirs, Channel)
        peer_thread = ResultThread(lambda: _duplex(theirs, plan, peers, ours, lambda: None), name="ipckit-load-peer")
        clock.append(time.monotonic())
        peer_thread.start()
        got = _duplex(ch, plan, ours, peers, lambda: None)
        theirs_got = peer_thread.outcome(60.0)
        seconds = time.monotonic() - clock[0]
    total = {k: got.figures()[k] + theirs_got.figures()[k] for k in got.figures()}
    reliability.add("load", subject.name, variant="both directions", seconds=round(seconds, 2),
                    msg_per_s=round(total["messages"] / seconds), seed=SEED, distribution=mix.describe(),
                    large_share=mix.large_share, streams="2 threads per end, both directions at once",
                    peer="process" if caps.cross_process else "thread (in-process backend)",
                    note=f"large-message share {mix.large_share:.0%} instead of {DEFAULT_LARGE_SHARE:.0%}: "
                    "the kernel queue moves a large message in 4 KiB fragments"
                    if subject.name in LARGE_SHARE else "", **total)
    _record_summary(reliability)
    assert got.clean and got.ended == "complete", f"{note}: parent received: {got.describe()}"
    assert theirs_got.clean and theirs_got.ended == "complete", f"{note}: child received: {theirs_got.describe()}"
    assert total["messages"] == 4 * per


# --------------------------------------------------------------------------- close after a burst
_BURST = 20_000


def _burst_then_close(end: Channel | Dial) -> None:
    ch = attach(end)
    ready()
    for i in range(_BURST):
        ch.send_bytes(i.to_bytes(8, "little") + bytes(100), timeout=30.0)
    ch.close()


def test_close_right_after_a_burst(subject: Subject, ends: Callable[..., Any], request: pytest.FixtureRequest) -> None:
    """A peer that sends a burst and closes at once, while this end is still reading: every
    message arrives, then EndOfChannel (docs/contract.md: a clean close is never PeerDied)."""
    caps = get_backend(subject.scheme).capabilities
    if not caps.cross_process:
        pytest.skip(f"{subject.scheme} is threads-only: the burst test needs a peer process")
    if subject.scheme.startswith("zmq"):
        request.node.add_marker(pytest.mark.xfail(reason=ZMQ_CLOSE_GAP, strict=False))
    _, theirs, finish = ends()
    with spawn_peer(_burst_then_close, theirs) as peer:
        ch = finish()
        peer.wait_ready()
        got = 0
        with pytest.raises(EndOfChannel):
            while True:
                data = ch.recv_bytes(timeout=30.0)
                assert int.from_bytes(data[:8], "little") == got, f"message {got} arrived out of place"
                got += 1
        assert got == _BURST
        peer.join(30.0)


# --------------------------------------------------------------------------- SIGKILL mid-stream
_LIMIT = 20_000  # per sender: far more than any backend buffers, so the kill lands mid-stream
_KILL_MIX = Mix(large_share=0.3)  # many large messages: the kill often lands inside one


def _send_until_killed(end: Channel | Dial, plan: Plan, senders: list[int], progress: mmap.mmap) -> None:
    """Send *senders*' streams (a thread each) until SIGKILLed; *progress* records, per sender, how
    many sends had begun and how many had returned (shared memory: it survives the kill)."""
    ch = attach(end)

    def recorder(index: int) -> Callable[[int, bool], None]:
        def record(seq: int, done: bool) -> None:
            struct.pack_into("<q", progress, (2 * index + done) * 8, seq + 1)
        return record

    threads = [ResultThread(lambda i=i, s=s: send_stream(ch, plan, s, _LIMIT, progress=recorder(i)),  # type: ignore[misc]
                            name=f"ipckit-load-send-{s}") for i, s in enumerate(senders)]
    ready()
    for t in threads:
        t.start()
    for t in threads:
        t.outcome(120.0)
    raise AssertionError(f"sent all {_LIMIT} messages per sender before the test killed this process")


def test_sender_killed_mid_stream(subject: Subject, ends: Callable[..., Any], reliability: Recorder) -> None:
    caps = get_backend(subject.scheme).capabilities
    if not caps.cross_process:
        pytest.skip(f"{subject.scheme} is threads-only: there is no sender process to kill")
    if not caps.detects_peer_close:
        pytest.skip(f"{subject.scheme} does not detect a peer's death (capabilities.detects_peer_close)")
    durable = not subject.scheme.startswith("zmq")  # zmq: a returned send is only queued in libzmq (Z-3)
    rng = random.Random(f"{SEED}:kill:{subject.name}")
    senders = [0, 1]
    rounds = received_total = indeterminate = lost_after_send = partial = in_flight = 0
    for rnd in range(KILL_ROUNDS):
        mine, theirs, finish = ends()
        plan = Plan(SEED + rnd, _KILL_MIX, _cap(subject, mine) if isinstance(mine, Channel) else 1 << 21)
        for s in senders:
            plan.schedule(s, _LIMIT)
        kill_after = rng.randint(1, 200)
        note = f"{subject.name} round {rnd}: {_seed_note(SEED)}, killed after {kill_after} received"
        progress = mmap.mmap(-1, 8 * 2 * len(senders))
        ch = mine
        try:
            with spawn_peer(_send_until_killed, theirs, plan, senders, progress) as peer:
                ch = finish()
                checker = Checker(plan, dict.fromkeys(senders, _LIMIT), decoder(ch.serializer))
                peer.wait_ready()
                for _ in range(kill_after):
                    checker.check(ch.recv_bytes(timeout=30.0))
                peer.kill()
                assert peer.wait_exit() == -9, f"{note}: the sender was not killed mid-stream"
                tally = receive_all(ch, checker, timeout=30.0, until_error=True)
            begun = [struct.unpack_from("<q", progress, 16 * i)[0] for i in range(len(senders))]
            returned = [struct.unpack_from("<q", progress, 16 * i + 8)[0] for i in range(len(senders))]
        finally:
            progress.close()
            ch.close()
        prefix = checker.prefix_lengths()
        partial += tally.corrupt  # a cut message fails the crc or the size check
        assert tally.ended == "PeerDied", f"{note}: the stream ended with {tally.ended}, not PeerDied"
        assert not (tally.duplicated or tally.reordered or tally.corrupt or tally.unexpected), \
            f"{note}: {tally.describe()}"
        for i, s in enumerate(senders):
            got = tally.received.get(s, 0)
            in_flight += begun[i] - returned[i]  # 0 or 1: begun before the kill, never returned
            assert got == prefix[s], f"{note}: sender {s}: {got} arrived but only 0..{prefix[s] - 1} without a gap"
            assert got <= begun[i], f"{note}: sender {s}: {got} arrived, only {begun[i]} sends had begun"
            if durable:
                assert got >= returned[i], (f"{note}: sender {s}: {returned[i]} sends returned, only {got} "
                                            "arrived: a returned send was lost")
                indeterminate += begun[i] - got
            else:
                lost_after_send += max(0, returned[i] - got)
                indeterminate += begun[i] - max(got, returned[i])
        assert max(begun) < _LIMIT, f"{note}: a sender finished its stream before the kill"
        rounds += 1
        received_total += tally.messages
    reliability.add("load", subject.name, variant="sender SIGKILLed mid-stream", rounds=rounds,
                    messages=received_total, partial=partial, in_flight=in_flight, indeterminate=indeterminate,
                    lost_after_send=lost_after_send if not durable else 0,
                    distribution=_KILL_MIX.describe(), seed=SEED,
                    note="" if durable else "zmq: a returned send is queued in libzmq, lost with the process (Z-3)")
    _record_summary(reliability)
