"""The ring's per-message cursors (ipckit.backends.common.ring.cursor and its C twin _ringfast), tested directly.

Both implementations run every contract test on real ``mmap.mmap(-1, n)`` buffers initialised with
``ring.initialize``.  The key test is a Hypothesis differential fuzz: arbitrary segment images and
operation sequences run on two identical copies with the C and the Python cursors, which must agree
on every return value, exception type, byte of the buffer and cursor counter.

Crash-type probes of the C type (uninitialised objects, re-initialisation, wrong member types) run
in subprocesses so a segfault fails one test instead of the run.  Known bugs are strict xfails
(their ``reason`` says what is wrong); see the notes on each.
"""

from __future__ import annotations

import array
import gc
import mmap
import os
import random
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ipckit.backends.common.ring import buffer as R
from ipckit.backends.common.ring import cursor as RC
from ipckit.backends.common.ring import protocol as P
from ipckit.errors import ProtocolError

try:
    from ipckit.backends.common.ring import _ringfast
except ImportError:  # reported by test_c_extension_is_in_use
    _ringfast = None  # type: ignore[assignment]

pytestmark = pytest.mark.timeout(60)

CAP = 4096
MAXMSG = 1 << 20
GUARD = 4096  # bytes after the ring region that no cursor may touch
# Control words (u64 indices into the region's control area) and record kinds: protocol.py's.
W_RSLEEP, W_RCLOSED, W_WSLEEP, W_WPOS, W_RPOS = P.W_RSLEEP, P.W_RCLOSED, P.W_WSLEEP, P.W_WPOS, P.W_RPOS
MSG, CONT, PAD, ABORT = P.MSG, P.CONT, P.PAD, P.ABORT
U64 = (1 << 64) - 1

IMPLS = ("c", "python")


def cursor_types(impl: str) -> tuple[Any, Any]:
    if impl == "python":
        return RC.PyWriter, RC.PyReader
    if _ringfast is None:
        pytest.skip("the C cursor extension is not built")
    return _ringfast.Writer, _ringfast.Reader


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    cursor_types(request.param)
    return str(request.param)


def record_size(n: int) -> int:
    return (n + 16 + 63) & ~63


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(n * 7919 + seed).randbytes(n)


class Seg:
    """One anonymous mapping holding a ring region at *offset* and an untouchable guard area after it."""

    def __init__(self, cap: int = CAP, offset: int = 0, maxmsg: int = MAXMSG, guard: int = GUARD) -> None:
        self.cap, self.offset, self.maxmsg = cap, offset, maxmsg
        self.size = offset + R.region_size(cap) + guard
        self.m = mmap.mmap(-1, self.size)
        R.initialize(memoryview(self.m), offset, cap, maxmsg)
        self.data = offset + R.CONTROL_SIZE  # data area's offset in the mapping
        self.cursors: list[Any] = []

    def writer(self, impl: str, maxmsg: int | None = None) -> Any:
        return self._add(cursor_types(impl)[0], maxmsg)

    def reader(self, impl: str, maxmsg: int | None = None) -> Any:
        return self._add(cursor_types(impl)[1], maxmsg)

    def _add(self, cls: Any, maxmsg: int | None) -> Any:
        c = cls(self.m, self.offset, self.cap, self.maxmsg if maxmsg is None else maxmsg)
        self.cursors.append(c)
        return c

    def word(self, i: int) -> int:
        at = self.offset + 8 * i
        return int.from_bytes(self.m[at : at + 8], "little")

    def set_word(self, i: int, value: int) -> None:
        at = self.offset + 8 * i
        self.m[at : at + 8] = (value & U64).to_bytes(8, "little")

    def header(self, pos: int, kind: int, chunk: int, total: int) -> None:
        R._HDR.pack_into(self.m, self.data + pos, kind, chunk, total & U64)

    def ring_bytes(self) -> bytes:
        return self.m[self.data : self.data + self.cap]

    def outside(self) -> bytes:
        """Everything of the mapping outside this ring's region (must stay zero)."""
        return self.m[: self.offset] + self.m[self.data + self.cap :]

    def position(self, w: Any, r: Any, counter: int) -> None:
        """Start both cursors (and the shared counters) at *counter*, an empty ring, as buffer.py attaches."""
        self.set_word(W_WPOS, counter)
        self.set_word(W_RPOS, counter)
        for c in (w, r):
            if c is not None:
                c.own = c.peer = counter

    def close(self) -> None:
        for c in self.cursors:
            c.detach()
        self.cursors.clear()
        self.m.close()


@pytest.fixture
def seg() -> Iterator[Callable[..., Seg]]:
    made: list[Seg] = []

    def factory(*args: Any, **kwargs: Any) -> Seg:
        s = Seg(*args, **kwargs)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


@pytest.fixture
def pair(impl: str, seg: Callable[..., Seg]) -> tuple[Seg, Any, Any]:
    s = seg()
    return s, s.writer(impl), s.reader(impl)


@contextmanager
def held_elsewhere(lock: Any) -> Iterator[None]:
    """*lock* held by another thread for the duration of the block."""
    acquired, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            acquired.set()
            release.wait(20)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert acquired.wait(10)
        yield
    finally:
        release.set()
        t.join(10)


# -- round trips and payload types --------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 64, 4096])
@pytest.mark.parametrize("size", [0, 1, 48, 49, 64, 1024, 1025, CAP - 16 - 64, CAP - 16])
def test_round_trip_sizes(impl: str, seg: Callable[..., Seg], size: int, offset: int) -> None:
    s = seg(offset=offset)
    w, r = s.writer(impl), s.reader(impl)
    msg = payload(size)
    assert w.send(msg) is True
    rec = record_size(size)
    assert w.own == rec and s.word(W_WPOS) == rec
    w0, w1 = (int.from_bytes(s.m[s.data + k : s.data + k + 8], "little") for k in (0, 8))
    assert (w0, w1) == (MSG | size << 32, size)
    got = r.recv()
    assert type(got) is bytes and got == msg
    assert r.own == rec and s.word(W_RPOS) == rec
    assert r.recv() is None
    assert s.outside() == bytes(len(s.outside()))


@pytest.mark.parametrize("start", [0, 64 * 1000 + 128, CAP * 3 + CAP - 128, 2**40])
def test_round_trips_wrap_at_any_counter(impl: str, seg: Callable[..., Seg], start: int) -> None:
    """Messages until the ring's end, then (as buffer.py does) padding, at counters far into the stream."""
    s = seg(cap=512)
    w, r = s.writer(impl), s.reader(impl)
    s.position(w, r, start)
    rnd = random.Random(start)
    sent: list[bytes] = []
    got: list[bytes] = []
    for _ in range(300):
        msg = rnd.randbytes(rnd.choice([0, 1, 30, 48, 100, 200, 496]))
        if not w.send(msg):
            while (x := r.recv()) is not None:
                got.append(x)
            if not w.send(msg):  # empty ring, but too close to its end: pad it as RingWriter._pad does
                pad_empty_ring(s, w, r)
                assert w.send(msg)
        sent.append(msg)
        if rnd.random() < 0.3:
            while (x := r.recv()) is not None:
                got.append(x)
    while (x := r.recv()) is not None:
        got.append(x)
    assert got == sent
    assert w.own > start + 10 * s.cap  # wrapped many times


def pad_empty_ring(s: Seg, w: Any, r: Any) -> None:
    """What the general paths do at the ring's end (RingWriter._pad, then RingReader.peek skipping it)."""
    pos = w.own % s.cap
    assert r.own == w.own and pos, "only an empty ring, not at a window start"
    s.header(pos, PAD, 0, 0)
    w.own += s.cap - pos
    s.set_word(W_WPOS, w.own)
    assert r.recv() is None  # the cursor leaves padding to the general path
    r.own = r.peer = w.own
    s.set_word(W_RPOS, r.own)


@pytest.mark.parametrize(
    "make_data",
    [
        pytest.param(lambda b: b, id="bytes"),
        pytest.param(bytearray, id="bytearray"),
        pytest.param(memoryview, id="memoryview"),
        pytest.param(lambda b: memoryview(bytearray(b)).cast("Q"), id="memoryview-Q"),
        pytest.param(lambda b: memoryview(b).cast("B", (8, len(b) // 8)), id="memoryview-2d"),
        pytest.param(lambda b: array.array("Q", b), id="array"),
        pytest.param(type("BytesSub", (bytes,), {}), id="bytes-subclass"),
        pytest.param(lambda b: mmap_copy(b), id="mmap"),
    ],
)
def test_payload_types(pair: tuple[Seg, Any, Any], make_data: Callable[[bytes], Any]) -> None:
    _s, w, r = pair
    msg = payload(96)
    data = make_data(msg)
    try:
        assert w.send(data) is True
        assert r.recv() == msg
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def mmap_copy(b: bytes) -> mmap.mmap:
    m = mmap.mmap(-1, len(b))
    m[:] = b
    return m


def test_numpy_contiguous_array(pair: tuple[Seg, Any, Any]) -> None:
    np = pytest.importorskip("numpy")
    s, w, r = pair
    a = np.arange(60, dtype=np.float64).reshape(6, 10)
    assert w.send(a) is True
    assert r.recv() == a.tobytes()
    before = (s.word(W_WPOS), w.own)
    assert w.send(a[:, ::2]) is False  # not C-contiguous: nothing written
    assert w.send(a.T) is False
    assert (s.word(W_WPOS), w.own) == before
    assert r.recv() is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(memoryview(bytes(range(200)))[::2], id="strided-memoryview"),
        pytest.param(memoryview(bytearray(64)).cast("B", (8, 8))[::2], id="strided-2d"),
        None,
        5,
        "text",
        3.5,
        [1, 2, 3],
        object(),
    ],
)
def test_non_contiguous_or_non_buffer_is_false(pair: tuple[Seg, Any, Any], data: Any) -> None:
    s, w, r = pair
    image = bytes(s.m)
    assert w.send(data) is False
    assert w.send_held(data) is False
    assert bytes(s.m) == image
    assert (w.own, w.budget > 0) == (0, True)
    assert r.recv() is None


@pytest.mark.parametrize("impl_", ["c", "python"])
def test_unexportable_buffer_is_false(seg: Callable[..., Seg], impl_: str) -> None:
    s = seg()
    w = s.writer(impl_)
    dead = memoryview(b"abc")
    dead.release()
    closed = mmap.mmap(-1, 10)
    closed.close()
    assert w.send(dead) is False
    assert w.send(closed) is False
    assert w.own == 0 and s.word(W_WPOS) == 0


# -- room: no padding, full ring ------------------------------------------------------------------


def test_record_needing_padding_is_refused(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    start = 10 * CAP + CAP - 128  # 128 bytes before the ring's end, ring empty
    s.position(w, r, start)
    image = bytes(s.m)
    assert w.send(b"x" * 113) is False  # a 192-byte record would need padding
    assert w.own == start and s.word(W_WPOS) == start
    assert bytes(s.m) == image
    assert w.send(b"y" * 112) is True  # 128 bytes: exactly up to the end
    assert w.own == start + 128
    assert r.recv() == b"y" * 112
    assert w.send(b"z" * 113) is True  # the next window starts at position 0
    assert r.recv() == b"z" * 113


def test_record_larger_than_ring_is_refused(pair: tuple[Seg, Any, Any]) -> None:
    s, w, _r = pair
    assert w.send(b"q" * (CAP - 15)) is False
    assert w.send(b"q" * (10 * CAP)) is False
    assert w.own == 0 and s.word(W_WPOS) == 0
    assert s.ring_bytes() == bytes(CAP)


def test_full_ring_is_refused(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    n = 0
    while w.send(b"m" * 48):  # 64-byte records
        n += 1
    assert n == CAP // 64
    assert w.own == CAP and s.word(W_WPOS) == CAP
    image = bytes(s.m)
    assert w.send(b"") is False
    assert bytes(s.m) == image
    assert r.recv() == b"m" * 48  # one slot freed
    assert w.send(b"n" * 48) is True
    assert w.send(b"") is False
    for _ in range(n - 1):
        assert r.recv() == b"m" * 48
    assert r.recv() == b"n" * 48
    assert r.recv() is None


def test_partial_room_refuses_bigger_record(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    for _ in range(CAP // 64):
        assert w.send(b"a" * 48)
    assert r.recv() == b"a" * 48  # 64 bytes free, at the start of the next window
    assert w.send(b"b" * 49) is False  # a 128-byte record does not fit
    assert w.own == CAP and s.word(W_WPOS) == CAP
    assert w.send(b"b" * 48) is True
    assert w.send(b"") is False


# -- fast_max, budget, hold, maxmsg -----------------------------------------------------------------


def test_fast_max(pair: tuple[Seg, Any, Any], seg: Callable[..., Seg], impl: str) -> None:
    s, w, r = pair
    assert w.fast_max == MAXMSG
    w.fast_max = 10
    assert w.send(b"x" * 10) is True
    assert w.send(b"x" * 11) is False
    w.fast_max = 0
    assert w.send(b"") is True
    assert w.send(b"x") is False
    w.fast_max = -1  # a message is pending: nothing may overtake it
    assert w.send(b"") is False
    assert w.send_held(b"") is False
    w.fast_max = MAXMSG
    assert r.recv() == b"x" * 10
    assert r.recv() == b""
    assert r.recv() is None
    small = seg(maxmsg=100)
    w2 = small.writer(impl)
    assert w2.fast_max == 100 and w2.max_message_size == 100
    assert w2.send(b"x" * 101) is False
    assert s.word(W_WPOS) == w.own


def test_reader_max_message_size(impl: str, seg: Callable[..., Seg]) -> None:
    s = seg()
    w, r = s.writer(impl), s.reader(impl, maxmsg=100)
    assert w.send(b"x" * 101)
    assert r.recv() is None  # above this reader's limit: the general path raises
    assert r.own == 0 and s.word(W_RPOS) == 0
    assert r.max_message_size == 100 and r.capacity == CAP


def test_budget(pair: tuple[Seg, Any, Any]) -> None:
    s, w, _r = pair
    assert w.budget >= 1 << 62  # effectively unlimited until the channel sets it
    w.budget = 3
    assert w.send(b"1") and w.send(b"2") and w.send_held(b"3")
    assert w.budget == 0
    assert w.send(b"4") is False
    assert w.own == 3 * 64
    w.budget = -5
    assert w.send(b"4") is False
    w.budget = 2
    assert w.send(b"x" * CAP) is False  # refused sends do not spend the budget
    assert w.send(object()) is False
    w.fast_max = -1
    assert w.send(b"") is False
    assert w.budget == 2
    assert s.word(W_WPOS) == 3 * 64


def test_hold(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    assert w.send(b"held") and w.send(b"next")
    r.hold = 1
    assert r.recv() is None and r.recv_held() is None
    assert r.own == 0 and s.word(W_RPOS) == 0
    r.hold = True
    assert r.recv() is None
    r.hold = 0
    assert r.recv() == b"held"
    assert r.recv_held() == b"next"


# -- lock ------------------------------------------------------------------------------------------


def test_lock_held_by_another_thread(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    wl, rl = threading.Lock(), threading.Lock()
    w.lock, r.lock = wl, rl
    assert w.lock is wl and r.lock is rl
    assert w.send(b"before")
    with held_elsewhere(wl), held_elsewhere(rl):
        image = bytes(s.m)
        assert w.send(b"blocked") is False
        assert r.recv() is None
        assert bytes(s.m) == image and (w.own, r.own) == (64, 0)
        assert w.send_held(b"held") is True  # the caller holds the lock itself
        assert r.recv_held() == b"before"
    assert not wl.locked() and not rl.locked()
    assert r.recv() == b"held"
    assert w.send(b"after") is True
    assert not wl.locked()
    assert r.recv() == b"after"
    assert not rl.locked()


def test_lock_held_by_this_thread(pair: tuple[Seg, Any, Any]) -> None:
    _s, w, r = pair
    w.lock, r.lock = threading.Lock(), threading.Lock()
    with w.lock:
        assert w.send(b"x") is False  # the caller is inside its own slow path
        assert w.send_held(b"x") is True
    with r.lock:
        assert r.recv() is None
    assert r.recv() == b"x"


def test_lock_none_and_reset(pair: tuple[Seg, Any, Any]) -> None:
    _s, w, r = pair
    assert w.lock is None and r.lock is None
    lk = threading.Lock()
    w.lock = lk
    w.lock = None
    with held_elsewhere(lk):
        assert w.send(b"free") is True
    assert r.recv() == b"free"


@pytest.mark.parametrize("bad", [object(), threading.RLock(), threading.Semaphore(), "lock"])
def test_lock_must_be_a_threading_lock(pair: tuple[Seg, Any, Any], bad: Any) -> None:
    """Only a threading.Lock (its locked() is C code, so the C cursor's check cannot switch threads
    mid-call): anything else is refused when set, the previous lock stays, nothing is written."""
    s, w, r = pair
    lk = threading.Lock()
    w.lock = lk
    for c in (w, r):
        with pytest.raises(TypeError, match=r"threading\.Lock"):
            c.lock = bad
    assert w.lock is lk and r.lock is None
    assert s.word(W_WPOS) == 0 and w.own == 0
    assert w.send(b"ok") and r.recv() == b"ok"


# -- wake-ups and the reader's close ---------------------------------------------------------------


class Boom(Exception):
    pass


def test_writer_wakes_only_a_sleeping_reader(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    calls: list[str] = []
    w.wake = lambda: calls.append("w")
    r.wake = lambda: calls.append("r")
    assert w.send(b"1")
    s.set_word(W_WSLEEP, 1)  # the writer's own flag: not the writer's business
    assert w.send(b"2")
    assert calls == []
    s.set_word(W_WSLEEP, 0)
    s.set_word(W_RSLEEP, 1)
    assert w.send(b"3")
    assert w.send_held(b"4")
    assert calls == ["w", "w"]
    w.fast_max = 0
    assert w.send(b"5") is False  # refused: no wake-up
    assert calls == ["w", "w"]
    w.wake = None
    w.fast_max = MAXMSG
    assert w.send(b"6")
    assert calls == ["w", "w"]


def test_reader_wakes_only_a_sleeping_writer(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    calls: list[str] = []
    r.wake = lambda: calls.append("r")
    for m in (b"1", b"2", b"3"):
        assert w.send(m)
    s.set_word(W_RSLEEP, 1)  # the reader's own flag
    assert r.recv() == b"1"
    assert calls == []
    s.set_word(W_WSLEEP, 1)
    assert r.recv() == b"2"
    assert r.recv_held() == b"3"
    assert calls == ["r", "r"]
    assert r.recv() is None  # nothing consumed: no wake-up
    r.hold = 1
    assert w.send(b"4") is True
    assert r.recv() is None
    assert calls == ["r", "r"]


def test_writer_wake_exception_propagates_after_commit(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair

    def boom() -> None:
        raise Boom

    w.wake = boom
    w.budget = 10
    s.set_word(W_RSLEEP, 1)
    with pytest.raises(Boom):
        w.send(b"committed")
    assert w.own == 64 and s.word(W_WPOS) == 64 and w.budget == 9
    assert r.recv() == b"committed"


def test_reader_wake_exception_propagates_after_consuming(pair: tuple[Seg, Any, Any]) -> None:
    """The message is consumed (and lost to the caller) when the wake-up raises: both agree."""
    s, w, r = pair

    def boom() -> None:
        raise Boom

    assert w.send(b"gone") and w.send(b"next")
    r.wake = boom
    s.set_word(W_WSLEEP, 1)
    with pytest.raises(Boom):
        r.recv()
    assert r.own == 64 and s.word(W_RPOS) == 64
    r.wake = None
    assert r.recv() == b"next"


def test_reader_closed_send_commits_and_returns_false(pair: tuple[Seg, Any, Any]) -> None:
    s, w, _r = pair
    calls: list[int] = []
    w.wake = lambda: calls.append(1)
    w.budget = 5
    s.set_word(W_RCLOSED, 1)
    assert w.send(b"noticed later") is True  # closed alone is not looked at (buffer.py sets both)
    s.set_word(W_RSLEEP, 1)
    assert w.send(b"into the void") is False
    assert w.own == 128 and s.word(W_WPOS) == 128 and w.budget == 3
    assert calls == []  # a closed reader is not woken


# -- corrupt shared memory -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rp",
    [
        pytest.param(lambda wp: wp + 64, id="after-write"),
        pytest.param(lambda wp: wp - 63, id="unaligned"),
        pytest.param(lambda wp: 1, id="unaligned-small"),
        pytest.param(lambda wp: wp - CAP - 64, id="beyond-capacity"),
        pytest.param(lambda wp: 0, id="way-back"),
        pytest.param(lambda wp: U64 - 63, id="near-2**64"),
        pytest.param(lambda wp: wp - 192, id="backwards"),  # valid alone, but before what was seen
    ],
)
def test_corrupt_read_counter_raises(pair: tuple[Seg, Any, Any], rp: Callable[[int], int]) -> None:
    s, w, r = pair
    start = 100 * CAP
    s.position(w, r, start)
    for _ in range(4):
        assert w.send(b"x" * 48)
    for _ in range(3):
        assert r.recv() == b"x" * 48
    w.limit = 0  # next send reloads read_pos
    assert w.send(b"y")  # sees read_pos = start + 192
    assert w.peer == start + 192
    s.set_word(W_RPOS, rp(start + 5 * 64))
    w.limit = 0
    image = bytes(s.m)
    state = (w.own, w.peer, w.budget)
    with pytest.raises(ProtocolError):
        w.send(b"z")
    with pytest.raises(ProtocolError):
        w.send_held(b"z")
    assert bytes(s.m) == image and (w.own, w.peer, w.budget) == state


def test_writer_trusts_its_bound_until_it_needs_more(pair: tuple[Seg, Any, Any]) -> None:
    """A corrupt read counter is only noticed when the writer reloads it (its cached bound ran out)."""
    s, w, _r = pair
    assert w.send(b"a")  # reload: limit = capacity
    assert w.limit == CAP
    s.set_word(W_RPOS, 12345)
    assert w.send(b"b")  # within the bound: no reload
    w.limit = 0
    with pytest.raises(ProtocolError):
        w.send(b"c")


@pytest.mark.parametrize(
    "wp",
    [
        pytest.param(lambda rp: rp - 64, id="before-read"),
        pytest.param(lambda rp: rp + 65, id="unaligned"),
        pytest.param(lambda rp: rp + CAP + 64, id="beyond-capacity"),
        pytest.param(lambda rp: U64 - 63, id="near-2**64"),
        pytest.param(lambda rp: rp, id="empty"),
    ],
)
def test_corrupt_write_counter_is_none(pair: tuple[Seg, Any, Any], wp: Callable[[int], int]) -> None:
    s, w, r = pair
    start = 7 * CAP
    s.position(w, r, start)
    assert w.send(b"ok")
    assert r.recv() == b"ok"
    assert w.send(b"m")
    s.set_word(W_WPOS, wp(r.own))
    state = (r.own, r.peer, s.word(W_RPOS))
    assert r.recv() is None
    assert r.recv_held() is None
    assert (r.own, r.peer, s.word(W_RPOS)) == state


@pytest.mark.parametrize(
    ("header", "committed"),
    [
        ((0, 3, 3), 64),  # kind 0
        ((CONT, 3, 3), 64),
        ((PAD, 0, 0), 64),
        ((ABORT, 0, 0), 64),
        ((9, 3, 3), 64),
        ((MSG, 3, 2), 64),  # chunk != total: a streamed message
        ((MSG, 2, 3), 64),
        ((MSG, 200, 200), 64),  # record beyond the committed bytes
        ((MSG, 3, 3 + (1 << 32)), 64),
        ((MSG, CAP, CAP), CAP),  # larger than the ring
        ((MSG, 5000, 5000), CAP),
        ((MSG, MAXMSG + 1, MAXMSG + 1), CAP),
        ((MSG, 0xFFFFFFFF, 0xFFFFFFFF), CAP),
    ],
)
def test_corrupt_records_are_none(pair: tuple[Seg, Any, Any], header: tuple[int, int, int], committed: int) -> None:
    s, _w, r = pair
    s.header(0, *header)
    s.set_word(W_WPOS, committed)
    assert r.recv() is None
    assert (r.own, s.word(W_RPOS)) == (0, 0)


def test_record_crossing_the_ring_end_is_none(pair: tuple[Seg, Any, Any]) -> None:
    s, _w, r = pair
    start = 3 * CAP + CAP - 64
    s.position(None, r, start)
    s.header(CAP - 64, MSG, 100, 100)  # 128 bytes from 64 before the end
    s.set_word(W_WPOS, start + 128)
    assert r.recv() is None
    assert r.own == start and s.word(W_RPOS) == start


# -- attach, detach, exports ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "cap", "size"),
    [
        (32, 512, 4096),  # region not 64-aligned
        (-64, 512, 4096),
        (0, 100, 4096),  # capacity below the minimum
        (0, 300, 4096),  # not a multiple of 64
        (0, 1 << 32, 4096),  # above the maximum
        (0, 512, 512 + 223),  # buffer too small for control + data
        (64, 512, 512 + 224),
    ],
)
def test_bad_region_is_value_error(impl: str, offset: int, cap: int, size: int) -> None:
    m = mmap.mmap(-1, size)
    try:
        for cls in cursor_types(impl):
            with pytest.raises(ValueError):
                cls(m, offset, cap, MAXMSG)
        m.close()  # no export left behind by a refused attach
    finally:
        if not m.closed:
            m.close()


def test_read_only_buffer_is_refused(impl: str) -> None:
    """Both refuse, with different types: C BufferError (from the buffer protocol), Python ValueError."""
    expected = {"c": BufferError, "python": ValueError}[impl]
    for cls in cursor_types(impl):
        with pytest.raises(expected):
            cls(bytes(R.region_size(512)), 0, 512, MAXMSG)


@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_other_writable_buffers(impl: str, kind: str) -> None:
    buf = bytearray(64 + R.region_size(512))
    R.initialize(memoryview(buf), 64, 512, MAXMSG)
    target: Any = buf if kind == "bytearray" else memoryview(buf)
    wcls, rcls = cursor_types(impl)
    w, r = wcls(target, 64, 512, MAXMSG), rcls(target, 64, 512, MAXMSG)
    assert w.send(b"over a " + kind.encode())
    assert r.recv() == b"over a " + kind.encode()
    w.detach()
    r.detach()
    if isinstance(target, memoryview):
        target.release()
    buf.extend(b"x")  # no export left: the bytearray can be resized again


def test_detach(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    assert w.attached is True and r.attached is True
    assert w.send(b"x")
    with pytest.raises(BufferError):
        s.m.close()  # the cursors hold exports of the mapping
    w.detach()
    w.detach()  # idempotent
    r.detach()
    r.detach()
    assert w.attached is False and r.attached is False
    assert w.send(b"y") is False and w.send_held(b"y") is False
    assert r.recv() is None and r.recv_held() is None
    s.cursors.clear()
    s.m.close()


def test_garbage_collection_releases_the_export(impl: str) -> None:
    m = mmap.mmap(-1, R.region_size(512))
    R.initialize(memoryview(m), 0, 512, MAXMSG)
    wcls, rcls = cursor_types(impl)
    w, r = wcls(m, 0, 512, MAXMSG), rcls(m, 0, 512, MAXMSG)
    box = [w, r]
    w.wake = r.wake = box.copy  # reference cycles through the wake-up callables
    r.lock = threading.Lock()
    del w, r, box
    gc.collect()
    m.close()


def test_detach_from_wake_callback(pair: tuple[Seg, Any, Any]) -> None:
    s, w, r = pair
    w.wake = w.detach
    r.wake = r.detach
    s.set_word(W_RSLEEP, 1)
    s.set_word(W_WSLEEP, 1)
    assert w.send(b"last") is True
    assert w.attached is False
    assert r.recv() == b"last"
    assert r.attached is False
    s.cursors.clear()
    s.m.close()


# -- interop --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wimpl", "rimpl"), [("c", "python"), ("python", "c")])
def test_interop(seg: Callable[..., Seg], wimpl: str, rimpl: str) -> None:
    s = seg(cap=1024)
    w, r = s.writer(wimpl), s.reader(rimpl)
    s.position(w, r, 5 * 1024 + 512)
    rnd = random.Random(3)
    sent, got = [], []
    for _ in range(2000):
        msg = rnd.randbytes(rnd.choice([0, 5, 48, 49, 300, 1008]))
        if not w.send(msg):
            while (x := r.recv()) is not None:
                got.append(x)
            if not w.send(msg):
                pad_empty_ring(s, w, r)
                assert w.send(msg)
        sent.append(msg)
        if rnd.random() < 0.4:
            while (x := r.recv()) is not None:
                got.append(x)
    while (x := r.recv()) is not None:
        got.append(x)
    assert got == sent


def test_c_extension_is_in_use() -> None:
    forced = os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0")
    expected = "python" if forced else "c"
    assert expected == RC.IMPLEMENTATION, (
        f"cursor.IMPLEMENTATION is {RC.IMPLEMENTATION!r}, expected {expected!r}: "
        + (
            "IPCKIT_PURE_PYTHON is set but the C cursors are in use"
            if forced
            else "the C extension ipckit.backends.common.ring._ringfast is missing, failed to import, or reports "
            "another layout than protocol.py (test_layout.py names the differences); rebuild with "
            "`python setup.py build_ext --inplace`; set IPCKIT_PURE_PYTHON=1 to test the fallback on purpose)"
        )
    )
    if not forced:
        assert _ringfast is not None
        assert (RC.Writer, RC.Reader) == (_ringfast.Writer, _ringfast.Reader)
        assert (R.RingWriter._cursor_type, R.RingReader._cursor_type) == (_ringfast.Writer, _ringfast.Reader)
    else:
        assert (RC.Writer, RC.Reader) == (RC.PyWriter, RC.PyReader)


# -- the key test: C and Python agree on arbitrary images and operation sequences ------------------


class WakeError(Exception):
    pass


@dataclass
class World:
    """One copy of a segment image with a writer and a reader cursor of one implementation."""

    impl: str
    image: bytes
    cap: int
    offset: int
    maxmsg: int
    wake_log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.m = mmap.mmap(-1, len(self.image))
        self.m[:] = self.image
        wcls, rcls = cursor_types(self.impl)
        self.w = wcls(self.m, self.offset, self.cap, self.maxmsg)
        self.r = rcls(self.m, self.offset, self.cap, self.maxmsg)
        self.raising = {"w": False, "r": False}
        self.w.wake = lambda: self._wake("w")
        self.r.wake = lambda: self._wake("r")

    def _wake(self, side: str) -> None:
        self.wake_log.append(side)
        if self.raising[side]:
            raise WakeError(side)

    def state(self) -> tuple[object, ...]:
        w, r = self.w, self.r
        return (
            int(w.own), int(w.peer), int(w.limit), int(w.fast_max), int(w.budget),
            int(r.own), int(r.peer), bool(r.hold), w.attached, r.attached, tuple(self.wake_log),
        )  # fmt: skip

    def close(self) -> None:
        self.w.detach()
        self.r.detach()
        self.m.close()


def _apply(world: World, op: tuple[Any, ...]) -> object:
    """Run one operation; returns what it returned, or ("raised", type name)."""
    w, r, cap = world.w, world.r, world.cap
    ctl = world.offset
    data = world.offset + R.CONTROL_SIZE
    kind = op[0]
    try:
        if kind == "send":
            _, n, form, held = op
            msg = payload(n, 1)
            arg: Any = {
                "bytes": msg,
                "bytearray": bytearray(msg),
                "memoryview": memoryview(msg),
                "strided": memoryview(msg + msg)[::2],
                "junk": n,
            }[form]
            return (w.send_held if held else w.send)(arg)
        if kind == "recv":
            return (r.recv_held if op[1] else r.recv)()
        if kind == "set":
            _, who, attr, value = op
            setattr(w if who == "w" else r, attr, value)
            return None
        if kind == "raising":
            world.raising[op[1]] = op[2]
            return None
        if kind == "word":  # the peer (or corruption) writes a control word
            _, idx, value = op
            world.m[ctl + 8 * idx : ctl + 8 * idx + 8] = (value & U64).to_bytes(8, "little")
            return None
        if kind == "nudge":  # the peer moves a counter by a small (maybe unaligned) step
            _, idx, delta = op
            at = ctl + 8 * idx
            value = (int.from_bytes(world.m[at : at + 8], "little") + delta) & U64
            world.m[at : at + 8] = value.to_bytes(8, "little")
            return None
        if kind == "poke":  # the peer writes into the data area
            _, pos, blob = op
            pos %= cap
            blob = blob[: cap - pos]
            world.m[data + pos : data + pos + len(blob)] = blob
            return None
        if kind == "header":
            _, pos, k, chunk, total = op
            R._HDR.pack_into(world.m, data + (pos * 64) % cap, k, chunk, total)
            return None
        if kind == "pad":  # the general path pads the ring's end (trusted: within what it saw free)
            pos = w.own % cap
            if pos and w.own + cap - pos - w.peer <= cap:
                R._HDR.pack_into(world.m, data + pos, PAD, 0, 0)
                w.own = w.own + cap - pos
                world.m[ctl + 64 : ctl + 72] = w.own.to_bytes(8, "little")
            return None
        if kind == "skip":  # the reader's general path consumes a PAD record
            pos = r.own % cap
            wp = int.from_bytes(world.m[ctl + 64 : ctl + 72], "little")
            k = int.from_bytes(world.m[data + pos : data + pos + 4], "little")
            if pos and k == PAD and r.own <= wp and wp - r.own >= cap - pos:
                r.own = r.peer = r.own + cap - pos
                world.m[ctl + 128 : ctl + 136] = r.own.to_bytes(8, "little")
            return None
        if kind == "close":  # as RingReader.close: closed, and sleeping so the writer looks
            world.m[ctl + 8 * W_RCLOSED : ctl + 8 * W_RCLOSED + 8] = (1).to_bytes(8, "little")
            world.m[ctl + 8 * W_RSLEEP : ctl + 8 * W_RSLEEP + 8] = (1).to_bytes(8, "little")
            return None
        if kind == "sync":  # the honest counters are published again (repairs a corrupt word)
            world.m[ctl + 64 : ctl + 72] = (w.own & U64).to_bytes(8, "little")
            world.m[ctl + 128 : ctl + 136] = (r.own & U64).to_bytes(8, "little")
            return None
        if kind == "drop":  # the reader's general path consumes everything committed (e.g. after an error)
            if r.own <= w.own <= r.own + cap:
                r.own = r.peer = w.own
                world.m[ctl + 128 : ctl + 136] = r.own.to_bytes(8, "little")
            return None
        if kind == "detach":
            (w if op[1] == "w" else r).detach()
            return None
        raise AssertionError(op)
    except (ProtocolError, WakeError) as exc:
        return ("raised", type(exc).__name__)


_u64 = st.one_of(
    st.integers(0, U64),
    st.integers(0, 2**20).map(lambda x: x * 64),
    st.sampled_from([0, 1, 63, 64, 2**63, U64 - 63, U64]),
)
_flag = st.sampled_from([0, 0, 0, 1, 2**63])
_send_size = st.one_of(
    st.integers(0, 80), st.integers(0, 600), st.sampled_from([0, 48, 49, 112, 113, 240, 496, 497, 1008])
)
_OPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "send": st.tuples(
        st.just("send"),
        _send_size,
        st.sampled_from(["bytes"] * 6 + ["bytearray", "memoryview", "strided", "junk"]),
        st.booleans(),
    ),
    "recv": st.tuples(st.just("recv"), st.booleans()),
    "hold": st.tuples(st.just("set"), st.just("r"), st.just("hold"), st.sampled_from([0, 1])),
    "fast_max": st.tuples(
        st.just("set"), st.just("w"), st.just("fast_max"), st.sampled_from([-1, 0, 1, 48, 100, 4096] + [2**40] * 3)
    ),
    "budget": st.tuples(
        st.just("set"), st.just("w"), st.just("budget"), st.sampled_from([-1, 0, 1, 3] + [2**40] * 3)
    ),
    "limit": st.tuples(st.just("set"), st.just("w"), st.just("limit"), st.just(0)),
    "raising": st.tuples(st.just("raising"), st.sampled_from(["w", "r"]), st.booleans()),
    "flag": st.tuples(
        st.just("word"),
        st.sampled_from([W_RSLEEP, W_RSLEEP, W_RCLOSED, W_WSLEEP, W_WSLEEP]),
        st.sampled_from([0, 1, 1, 2**63]),
    ),
    "counter": st.tuples(st.just("word"), st.sampled_from([W_WPOS, W_RPOS]), _u64),
    "nudge": st.tuples(
        st.just("nudge"),
        st.sampled_from([W_WPOS, W_RPOS]),
        st.one_of(st.sampled_from([-128, -64, -1, 1, 8, 63, 64, 65, 128, 192]), st.integers(-600, 600)),
    ),
    "poke": st.tuples(st.just("poke"), st.integers(0, 2**16), st.binary(min_size=1, max_size=24)),
    "header": st.tuples(
        st.just("header"),
        st.integers(0, 64),
        st.sampled_from([0, MSG, MSG, MSG, CONT, PAD, ABORT, 7]),
        st.one_of(st.integers(0, 600), st.just(0xFFFFFFFF)),
        st.one_of(st.integers(0, 600), st.integers(0, U64)),
    ),
    "pad": st.just(("pad",)),
    "skip": st.just(("skip",)),
    "sync": st.just(("sync",)),
    "close": st.just(("close",)),
    "drop": st.just(("drop",)),
    "detach": st.tuples(st.just("detach"), st.sampled_from(["w", "r"])),
}
# Mostly sends and receives; the rest perturbs the state or the shared memory between them.
_WEIGHTS = {"send": 24, "recv": 16, "pad": 3, "skip": 3, "sync": 3, "drop": 3, "flag": 6, "raising": 2, "nudge": 2}
_KINDS = [k for k in _OPS if k != "detach" for _ in range(_WEIGHTS.get(k, 1))]
_ops = st.sampled_from(_KINDS).flatmap(lambda k: _OPS[k])


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[bytes, int, int, int, tuple[int, int, int, int], list[tuple[Any, ...]]]:
    cap = draw(st.sampled_from([256, 320, 512, 1024]))
    offset = draw(st.sampled_from([0, 64, 192]))
    maxmsg = draw(st.sampled_from([0, 50, 300, 4096, MAXMSG, MAXMSG, MAXMSG]))
    size = offset + R.region_size(cap) + 512  # a guard area the cursors must never touch
    m = bytearray(size)
    R.initialize(memoryview(m), offset, cap, maxmsg)
    # Trusted state, as RingWriter / RingReader attach: read_pos <= write_pos <= read_pos + capacity.
    # (Counters stay below 2**62: the writer's behaviour near 2**64 is a known bug, tested below.)
    rp = draw(st.one_of(st.integers(0, 40).map(lambda k: k * 64), st.integers(0, 2**56).map(lambda k: k * 64)))
    wp = rp + 64 * draw(st.integers(0, cap // 64))
    wpeer = wp - 64 * draw(st.integers(0, (wp - rp) // 64))  # the writer may have seen an older read_pos
    rpeer = draw(st.sampled_from([rp, wp]))  # the reader may have seen write_pos already
    if draw(st.booleans()):  # words no cursor may depend on: magic, version, padding of the lines...
        m[offset : offset + R.CONTROL_SIZE] = draw(st.binary(min_size=R.CONTROL_SIZE, max_size=R.CONTROL_SIZE))
    ctl = memoryview(m)[offset : offset + R.CONTROL_SIZE].cast("Q")
    for i in (W_RSLEEP, W_RCLOSED, W_WSLEEP):
        ctl[i] = draw(_flag) if draw(st.integers(0, 3)) == 0 else 0
    ctl[W_WPOS] = wp if draw(st.integers(0, 7)) else draw(_u64)
    ctl[W_RPOS] = rp if draw(st.integers(0, 7)) else draw(_u64)
    ctl.release()
    # Data: random bytes, then plausible records from read_pos on.
    data = offset + R.CONTROL_SIZE
    m[data : data + cap] = draw(st.binary(min_size=cap, max_size=cap))
    pos = rp % cap
    for n in draw(st.lists(st.integers(0, 300), max_size=6)):
        if pos + 16 > cap:
            break
        exact = draw(st.integers(0, 9))
        total = n if exact else draw(st.integers(0, U64))
        k = MSG if exact else draw(st.sampled_from([0, MSG, CONT, PAD, ABORT, 9]))
        R._HDR.pack_into(m, data + pos, k, n, total)
        m[data + pos + 16 : data + min(cap, pos + 16 + n)] = payload(min(n, cap - pos - 16), 2)
        pos += record_size(n)
    ops = draw(st.lists(_ops, min_size=8, max_size=40))
    if ops and draw(st.integers(0, 9)) == 0:  # now and then one side detaches midway
        ops.insert(draw(st.integers(0, len(ops))), draw(_OPS["detach"]))
    return bytes(m), cap, offset, maxmsg, (wp, wpeer, rp, rpeer), ops


# No shrinking: a 40-step scenario shrinks for minutes, past the 60 s timeout.  The failure message names
# the step, the operation and both results; Hypothesis prints the whole (unshrunk) scenario with it.
@settings(
    max_examples=400,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(_scenario())
def test_differential_c_vs_python(
    scenario: tuple[bytes, int, int, int, tuple[int, int, int, int], list[tuple[Any, ...]]],
) -> None:
    cursor_types("c")
    image, cap, offset, maxmsg, (wp, wpeer, rp, rpeer), ops = scenario
    worlds = [World(impl, image, cap, offset, maxmsg) for impl in IMPLS]
    try:
        for wd in worlds:
            wd.w.own, wd.w.peer, wd.w.budget = wp, wpeer, 2**40
            wd.r.own, wd.r.peer = rp, rpeer
        region_end = offset + R.region_size(cap)
        for step, op in enumerate(ops):
            results = [_apply(wd, op) for wd in worlds]
            c, py = worlds
            where = f"step {step} {op!r}"
            assert results[0] == results[1], f"{where}: C returned {results[0]!r}, Python {results[1]!r}"
            assert type(results[0]) is type(results[1]), where  # True vs 1, b"" vs None
            assert c.state() == py.state(), f"{where}: cursor state C {c.state()} != Python {py.state()}"
            assert c.m[:] == py.m[:], f"{where}: the buffers differ"
            assert c.m[:offset] == image[:offset] and c.m[region_end:] == image[region_end:], (
                f"{where}: a cursor wrote outside its ring region"
            )
    finally:
        for wd in worlds:
            wd.close()


# -- regressions of bugs found in review --------------------------------------------------------------------


@pytest.mark.parametrize("impl_", ["c", "python"])
def test_writer_counter_near_2_64_stays_in_ring(seg: Callable[..., Seg], impl_: str) -> None:
    """Counters at or above 2**63 are left to the general path: the fast path never computes an end
    that wraps, and never writes outside the data area (it once did, in C, past the mapping)."""
    cap = 256
    s = seg(cap=cap)
    w = s.writer(impl_)
    s.position(w, None, 2**64 - 2 * cap)  # what a hostile peer could leave in the segment
    image = bytes(s.m)
    assert w.send(b"\xaa" * (2 * cap + 48)) is False
    assert w.send(b"x") is False
    assert bytes(s.m) == image and s.outside() == bytes(len(s.outside()))
    assert w.own == 2**64 - 2 * cap


def test_ring_attach_refuses_counters_near_2_64(seg: Callable[..., Seg]) -> None:
    """RingWriter/RingReader refuse such a segment when they attach (a fresh ring starts at 0; 2**62
    bytes is ~5 years of streaming at 30 GB/s)."""
    cap = 256
    s = seg(cap=cap)
    for counter in (2**62, 2**64 - 2 * cap):
        s.set_word(W_WPOS, counter)
        s.set_word(W_RPOS, counter)
        with pytest.raises(ProtocolError):
            R.RingWriter(s.m, 0, R.region_size(cap), MAXMSG)
        with pytest.raises(ProtocolError):
            R.RingReader(s.m, 0, R.region_size(cap), MAXMSG)


def test_python_writer_counter_reaching_2_64(seg: Callable[..., Seg]) -> None:
    s = seg(cap=256)
    w = s.writer("python")
    s.position(w, None, 2**64 - 64)
    try:
        assert w.send(b"x") is False
    except ProtocolError:
        pass
    assert w.own == 2**64 - 64


def test_c_writer_failed_limit_assignment_stays_in_ring(seg: Callable[..., Seg]) -> None:
    cursor_types("c")
    s = seg(cap=512)
    w = s.writer("c")
    with pytest.raises(OverflowError):
        w.limit = -1
    w.send(b"\xbb" * 2000)
    assert s.outside() == bytes(len(s.outside())), f"limit is {w.limit}; send wrote past the ring"


@pytest.mark.parametrize("impl_", ["c", "python"])
def test_send_of_a_view_into_the_ring_itself(seg: Callable[..., Seg], impl_: str) -> None:
    for n in (200, 2000, 3000):
        s = seg()
        w, r = s.writer(impl_), s.reader(impl_)
        s.m[s.data + 8 : s.data + 8 + n] = payload(n)
        src = memoryview(s.m)[s.data + 8 : s.data + 8 + n]  # overlaps the record the send writes
        try:
            assert w.send(src) is True
        finally:
            src.release()
        assert r.recv() == payload(n), f"{n}-byte payload corrupted"


# -- C memory hygiene ---------------------------------------------------------------------------------


def _busy_lock() -> tuple[threading.Lock, Callable[[], None]]:
    lock = threading.Lock()
    started, stop = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            started.set()
            stop.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert started.wait(10)

    def done() -> None:
        stop.set()
        t.join(10)

    return lock, done


def test_c_refcounts_do_not_grow(seg: Callable[..., Seg]) -> None:
    cursor_types("c")
    s = seg(cap=1024)
    w, r = s.writer("c"), s.reader("c")
    data = b"p" * 100
    ba = bytearray(b"q" * 100)
    junk = 12345678
    calls = [0]

    def wake() -> None:
        calls[0] += 1

    def boom() -> None:
        raise Boom

    lock, unlock = _busy_lock()
    objs = (data, ba, junk, wake, boom, lock, True, False, None)
    base = [sys.getrefcount(o) for o in objs]

    def rounds() -> None:
        s.set_word(W_RSLEEP, 1)
        s.set_word(W_WSLEEP, 1)
        w.wake = r.wake = wake
        for _ in range(10_000):
            w.send(data)  # True, wakes
            r.recv()  # bytes, wakes
            w.send(ba)  # through the buffer protocol
            r.recv_held()
            r.recv()  # None: empty
            w.send(junk)  # False: not a buffer
            w.send(b"x" * 2000)  # False: no room
        w.wake = r.wake = boom
        for _ in range(1000):
            try:
                w.send(data)
            except Boom:
                pass
            try:
                r.recv()
            except Boom:
                pass
        w.wake = r.wake = wake
        w.limit = 0
        s.set_word(W_RPOS, 1)
        for _ in range(1000):
            try:
                w.send(data)
            except ProtocolError:
                pass
        s.set_word(W_RPOS, r.own)
        w.lock, r.lock = lock, lock
        for _ in range(1000):
            w.send(data)  # False: lock busy
            r.recv()  # None: lock busy
        w.lock = r.lock = None
        s.set_word(W_RCLOSED, 1)
        for _ in range(1000):
            w.send(data)  # committed, False: the reader closed
            r.recv()
        s.set_word(W_RCLOSED, 0)
        w.wake = r.wake = None

    try:
        rounds()
        after = [sys.getrefcount(o) for o in objs]
    finally:
        unlock()
    growth = {repr(o)[:20]: a - b for o, a, b in zip(objs, after, base, strict=True) if abs(a - b) > 50}
    assert not growth, f"reference counts moved: {growth}"
    assert calls[0] >= 20_000
    ba.extend(b"!")  # every buffer export was released
    got = r.recv()
    assert got is None or sys.getrefcount(got) == 2


def test_c_no_memory_growth(seg: Callable[..., Seg]) -> None:
    cursor_types("c")
    s = seg(cap=2048)
    w, r = s.writer("c"), s.reader("c")
    msgs = [payload(n) for n in (0, 10, 100, 1000)]

    def cycle(k: int) -> None:
        for _ in range(k):
            for m in msgs:
                w.send(m)
                r.recv()
            r.recv()
            w.send(memoryview(msgs[2]))
            r.recv()

    cycle(200)  # warm-up
    gc.collect()
    tracemalloc.start()
    try:
        cycle(100)
        gc.collect()
        start, _ = tracemalloc.get_traced_memory()
        cycle(20_000)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end - start < 64 * 1024, f"{end - start} bytes more traced after 20000 cycles"


# -- crash-type probes of the C type (each in its own interpreter) ------------------------------------

_PROBE_PRELUDE = """
import gc, mmap, threading, sys
from ipckit.backends.common.ring import _ringfast as F, buffer as R
W, Rd = F.Writer, F.Reader
def seg(cap=512):
    m = mmap.mmap(-1, R.region_size(cap))
    R.initialize(memoryview(m), 0, cap, 1 << 20)
    return m
def raises(exc, fn, *a):
    try:
        fn(*a)
    except exc:
        return True
    raise AssertionError(f"{fn} did not raise {exc}")
"""

_PROBES = {
    "uninitialised-writer": """
        w = W.__new__(W)
        assert w.send(b"x") is False and w.send_held(b"x") is False and w.send(object()) is False
        assert w.attached is False and w.lock is None and (w.own, w.peer, w.limit) == (0, 0, 0)
        raises(AttributeError, getattr, w, "wake")  # T_OBJECT_EX, never set
        w.lock = threading.Lock(); w.wake = print; w.own = 64
        assert w.send(b"x") is False
        w.detach(); w.detach()
        del w; gc.collect()
    """,
    "uninitialised-reader": """
        r = Rd.__new__(Rd)
        assert r.recv() is None and r.recv_held() is None
        r.hold = 0; r.lock = threading.Lock()
        assert r.recv() is None
        r.detach()
        del r; gc.collect()
    """,
    "init-twice": """
        m = seg()
        w = W(m, 0, 512, 1 << 20)
        w.lock = threading.Lock()
        raises(RuntimeError, w.__init__, m, 0, 512, 1 << 20)
        assert w.attached and w.lock is not None and w.send(b"still attached")
        raises(TypeError, w.__init__, m)
        raises(RuntimeError, w.__init__, "not a buffer", 0, 512, 1)  # attached: refused before anything else
        w.detach()
        raises(TypeError, w.__init__, "not a buffer", 0, 512, 1)
        raises(ValueError, w.__init__, m, 32, 512, 1 << 20)
        assert w.attached is False and w.send(b"x") is False
        w.__init__(m, 0, 512, 1 << 20)  # re-attach after detach: fresh state
        assert w.attached and w.own == 0 and w.lock is None
        w.detach()
        m.close()  # no export left by the refused or repeated inits
    """,
    "init-refused-keeps-no-export": """
        m = seg()
        for args in [(m, 0, 100, 1), (m, 64, 512, 1), (m, -64, 512, 1), (m, 0, 2**40, 1)]:
            raises((ValueError, OverflowError), W, *args)
        raises(BufferError, W, bytes(1000), 0, 512, 1)
        m.close()
    """,
    "member-types": """
        m = seg()
        w, r = W(m, 0, 512, 1 << 20), Rd(m, 0, 512, 1 << 20)
        for name, bad in [("own", "x"), ("peer", 1.5), ("limit", None), ("fast_max", "1"), ("budget", []),
                          ("own", -1), ("limit", -1), ("fast_max", -2), ("fast_max", 2**63), ("budget", 2**64)]:
            raises((TypeError, OverflowError), setattr, w, name, bad)
        for name in ("capacity", "max_message_size", "attached"):
            raises(AttributeError, setattr, w, name, 1)
            raises(AttributeError, delattr, w, name)
        for name in ("own", "fast_max", "hold"):
            raises(TypeError, delattr, w, name)
        w.lock = threading.Lock()
        del w.lock  # same as None
        assert w.lock is None
        raises(TypeError, setattr, w, "lock", object())
        w.hold = "yes"; assert w.hold is True; w.hold = 0
        assert (w.own, w.limit, w.fast_max) == (0, 0, 1 << 20)  # refused values left no trace
        assert w.lock is None
        w.own = w.peer = w.limit = 0; w.fast_max = 100; w.budget = 10
        del w.wake  # NULL wake: not called
        raises(AttributeError, getattr, w, "wake")
        m[32:40] = (1).to_bytes(8, "little")  # reader sleeping
        assert w.send(b"a") is True
        w.wake = 5  # not callable: TypeError after the commit
        raises(TypeError, w.send, b"b")
        assert w.own == 128
        assert r.recv() == b"a" and r.recv() == b"b"
        r.detach(); w.detach(); m.close()
    """,
    "wake-reenters": """
        m = seg()
        w, r = W(m, 0, 512, 1 << 20), Rd(m, 0, 512, 1 << 20)
        m[32:40] = (1).to_bytes(8, "little")
        m[48:56] = (1).to_bytes(8, "little")
        depth = [0]
        def wake():
            depth[0] += 1
            if depth[0] < 50:
                w.send(b"again")  # re-entrant send from the wake-up
        w.wake = wake
        assert w.send(b"first")
        def rwake():
            r.detach()  # detach while recv is returning
        r.wake = rwake
        assert r.recv() == b"first"
        assert r.attached is False and r.recv() is None
        w.detach(); m.close()
    """,
    "lock-refused": """
        m = seg()
        w = W(m, 0, 512, 1 << 20)
        class L:
            def locked(self): return False
        raises(TypeError, setattr, w, "lock", L())
        class Sub:  # not even a subclass of the lock type can be made; a foreign type is refused
            locked = staticmethod(lambda: w.detach())
        raises(TypeError, setattr, w, "lock", Sub())
        assert w.lock is None and w.send(b"x") is True
        w.detach(); m.close()
    """,
    "gc-cycles": """
        m = seg()
        for _ in range(200):
            w, r = W(m, 0, 512, 1 << 20), Rd(m, 0, 512, 1 << 20)
            w.wake = lambda w=w, r=r: (w, r)
            r.lock = threading.Lock()
            r.wake = w.send
            del w, r
        gc.collect()
        m.close()
    """,
}


@pytest.mark.parametrize("probe", sorted(_PROBES))
def test_c_probe_in_subprocess(probe: str) -> None:
    cursor_types("c")
    code = _PROBE_PRELUDE + textwrap.dedent(_PROBES[probe]) + "\nprint('probe ok')\n"
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", code], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "probe ok", (
        f"probe {probe} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    )


def test_python_uninitialised_cursor_raises_cleanly() -> None:
    w = RC.PyWriter.__new__(RC.PyWriter)
    with pytest.raises(AttributeError):
        w.send(b"x")
    r = RC.PyReader.__new__(RC.PyReader)
    with pytest.raises(AttributeError):
        r.recv()
