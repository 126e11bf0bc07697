"""Unit tests of the shared-memory ring (ipckit.backends.common.ring.buffer) and its wait strategy.

The ring is tested on its own: over an anonymous mmap in one process, across a real fork
over posix_ipc shared memory, and with Hypothesis over arbitrary segment images (target R of
reliability.md: only ProtocolError/IncompatibleEndpoint escape, nothing uncommitted is read).

Every ring test runs once per cursor implementation (``cursor.py``: the C extension and the
pure-Python reference; the ``cursor_impl`` fixture swaps ``RingWriter/RingReader._cursor_type``);
the cross-process test also pairs a writer of one implementation with a reader of the other.
The cursors themselves are tested directly in test_ringcursor.py.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipckit.backends.common.ring import buffer as R
from ipckit.backends.common.ring import cursor as RC
from ipckit.backends.common.ring.waiting import WaitStrategy, same_cpu
from ipckit.errors import (
    BufferTooSmall,
    IncompatibleEndpoint,
    MessageTooLarge,
    ProtocolError,
    UnsupportedOperation,
)

pytestmark = pytest.mark.timeout(30)

MAXMSG = 1 << 20

IMPLS = ("c", "python")


def cursor_types(impl: str) -> tuple[type, type]:
    """(writer, reader) cursor classes of one implementation; skips "c" if the extension is not built."""
    if impl == "python":
        return RC.PyWriter, RC.PyReader
    fast = pytest.importorskip("ipckit.backends.common.ring._ringfast", reason="C cursor extension not built")
    return fast.Writer, fast.Reader


def use_cursors(writer_impl: str, reader_impl: str) -> None:
    """Make RingWriter / RingReader of this process build cursors of the given implementations."""
    R.RingWriter._cursor_type = cursor_types(writer_impl)[0]
    R.RingReader._cursor_type = cursor_types(reader_impl)[1]


def cursor_free(fn: Callable[..., None]) -> Callable[..., None]:
    """Mark a test that never builds a ring: it runs once, not once per cursor implementation."""
    fn.cursor_free = True  # type: ignore[attr-defined]
    return fn


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cursor_impl" in metafunc.fixturenames and not getattr(metafunc.function, "cursor_free", False):
        metafunc.parametrize("cursor_impl", IMPLS, indirect=True)


@pytest.fixture(autouse=True)
def cursor_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The cursor implementation this test runs with (None: a ring-free test, or one choosing its own)."""
    impl: str | None = getattr(request, "param", None)
    # Restored after the test, whatever it switches them to (use_cursors).
    monkeypatch.setattr(R.RingWriter, "_cursor_type", R.RingWriter._cursor_type)
    monkeypatch.setattr(R.RingReader, "_cursor_type", R.RingReader._cursor_type)
    if impl is not None:
        use_cursors(impl, impl)
    return impl


def make(cap: int = 4096, maxmsg: int = MAXMSG) -> tuple[mmap.mmap, R.RingWriter, R.RingReader]:
    m = mmap.mmap(-1, R.region_size(cap) + 64)
    R.initialize(memoryview(m), 64, cap, maxmsg)
    return m, R.RingWriter(m, 64, len(m) - 64, maxmsg), R.RingReader(m, 64, len(m) - 64, maxmsg)


@pytest.fixture
def ring() -> Iterator[tuple[R.RingWriter, R.RingReader]]:
    m, w, r = make()
    yield w, r
    w.close()
    r.close()
    m.close()


def drain(r: R.RingReader) -> list[bytes]:
    """Everything readable now: the cursor's fast path first, the general path (peek) when it declines."""
    out = []
    while True:
        x = r.try_read_bytes()
        if x is None:
            x = r.try_read()
            if x is None:
                return out
        out.append(x)


def send(w: R.RingWriter, r: R.RingReader, data: bytes, sink: list[bytes]) -> None:
    """Write one message (the cursor's fast path first), draining the reader whenever the writer needs space."""
    done = w.try_send(data) or w.try_write(data)
    while not done:
        sink.extend(drain(r))
        done = w.pump()


def test_rings_use_the_selected_cursor(ring: tuple[R.RingWriter, R.RingReader], cursor_impl: str) -> None:
    w, r = ring
    wtype, rtype = cursor_types(cursor_impl)
    assert type(w.cursor) is wtype
    assert type(r.cursor) is rtype


def test_fast_paths_round_trip_and_fall_back(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert w.try_send(b"one")
    assert w.try_send(bytearray(b"two"))
    assert w.try_send(memoryview(b"three"))
    assert not w.try_send(memoryview(b"abcdef")[::2])  # not contiguous: the general path's business
    assert not w.try_send(b"x" * 5000)  # larger than the ring: streamed by the general path
    assert r.try_read_bytes() == b"one"
    assert r.try_read() == b"two"
    assert r.try_read_bytes() == b"three"
    assert r.try_read_bytes() is None
    big = os.urandom(5000)
    assert not w.write([big], len(big))  # streamed: the cursor never returns part of it
    assert r.try_read_bytes() is None
    got: list[bytes] = []
    while not w.pump():
        got.extend(drain(r))
    got.extend(drain(r))
    assert got == [big]


def test_peek_holds_the_fast_path(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert w.try_send(b"first")
    assert w.try_send(b"second")
    view = r.peek()
    assert view is not None and bytes(view) == b"first"
    assert r.try_read_bytes() is None  # a message is held: the cursor must not skip past it
    r.release()
    assert r.try_read_bytes() == b"second"


def test_pending_message_blocks_fast_sends(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    big = os.urandom(10_000)
    assert not w.write([big], len(big))
    assert not w.try_send(b"later")  # must not overtake the pending message
    got: list[bytes] = []
    while not w.pump():
        got.extend(drain(r))
    assert w.try_send(b"later")
    got.extend(drain(r))
    assert got == [big, b"later"]


def test_fast_send_wakes_sleeping_reader_and_sees_close(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    posts: list[str] = []
    w.wake_peer = lambda: posts.append("w")
    r.wake_peer = lambda: posts.append("r")
    assert w.try_send(b"a")
    assert posts == []
    r.set_sleeping(True)
    assert w.try_send(b"b")
    assert posts == ["w"]
    r.set_sleeping(False)
    w.set_sleeping(True)
    assert r.try_read_bytes() == b"a"
    assert posts == ["w", "r"]
    w.set_sleeping(False)
    assert r.try_read_bytes() == b"b"
    r.close()
    wp = w._wp
    assert not w.try_send(b"into the void")  # committed, but the reader is gone: the caller reports it
    assert w._wp > wp and w.peer_closed()
    assert posts == ["w", "r"]


def test_detached_cursors_decline(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert w.try_send(b"x")
    w.detach()
    r.detach()
    assert not w.cursor.attached and not r.cursor.attached
    assert not w.try_send(b"y")
    assert r.try_read_bytes() is None


@pytest.mark.parametrize(
    "size", [0, 1, 15, 16, 47, 48, 49, 63, 64, 65, 1000, 4015, 4016, 4017, 4080, 4096, 10_000, 100_000]
)
def test_round_trip_sizes(ring: tuple[R.RingWriter, R.RingReader], size: int) -> None:
    w, r = ring
    got: list[bytes] = []
    msgs = [os.urandom(size) for _ in range(5)]
    for msg in msgs:
        send(w, r, msg, got)
    got.extend(drain(r))
    assert got == msgs


def test_random_sequence_wraps_many_times() -> None:
    m, w, r = make(4096)
    rnd = random.Random(7)
    sent, got = [], []
    for _ in range(3000):
        n = rnd.choice([0, 1, 47, 48, 100, 1000, 4000, 4079, 4080, 9000, 70_000])
        msg = rnd.randbytes(n)
        sent.append(msg)
        send(w, r, msg, got)
        if rnd.random() < 0.5:
            got.extend(drain(r))
    got.extend(drain(r))
    assert got == sent
    assert R.RingReader(m, 64, len(m) - 64, MAXMSG).has_data() is False


def test_parts_are_concatenated(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    parts = [b"ab", bytearray(b""), memoryview(b"cde"), memoryview(bytes(range(256))).cast("B")]
    assert w.write(parts, 5 + 256)
    assert r.try_read() == b"abcde" + bytes(range(256))
    with pytest.raises(ValueError):
        w.write([b"abc"], 4)


def test_message_larger_than_ring_streams_into_user_buffer(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    msg = os.urandom(50_000)
    buf = bytearray(60_000)
    view = memoryview(buf)
    done = w.write([msg], len(msg))
    n = None
    while not done or n is None:
        if n is None:
            n = r.try_read_into(view)
        if not done:
            done = w.pump()
    if n is None:
        n = r.try_read_into(view)
    assert n == len(msg)
    assert buf[:n] == msg


def test_timed_out_stream_does_not_write_user_buffer_later(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    msg = os.urandom(20_000)
    assert not w.write([msg], len(msg))
    user = bytearray(30_000)
    assert r.try_read_into(memoryview(user)) is None  # half streamed: a "timeout" now
    snapshot = bytes(user)
    while not w.pump():
        assert r.try_read() is None
    assert r.try_read() == msg
    assert bytes(user) == snapshot


def test_read_into_buffer_too_small_consumes_message(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert w.try_write(b"x" * 100)
    assert w.try_write(b"next")
    with pytest.raises(BufferTooSmall) as info:
        r.try_read_into(memoryview(bytearray(10)))
    assert info.value.message == b"x" * 100
    buf = bytearray(10)
    assert r.try_read_into(memoryview(buf)) == 4
    assert buf[:4] == b"next"


def test_peek_is_zero_copy_and_invalidated_by_release(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert w.try_write(b"hello")
    view = r.peek()
    assert view is not None and bytes(view) == b"hello"
    assert r.peek() is view  # same message until released
    r.release()
    with pytest.raises(ValueError):
        bytes(view)
    assert r.peek() is None


def test_payload_alignment_avoids_memcpy_slow_path() -> None:
    m, w, r = make()  # region at offset 64 of a page-aligned mapping
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    for n in (1, 5, 100, 3000, 700):
        assert w.try_write(b"z" * n)
        view = r.peek()
        assert view is not None
        holder = (ctypes.c_char * n).from_buffer(view)
        assert (ctypes.addressof(holder) - base) % 64 == 48
        del holder
        r.release()


def test_message_too_large_writes_nothing() -> None:
    _m, w, r = make(4096, maxmsg=1000)
    with pytest.raises(MessageTooLarge):
        w.try_write(b"x" * 1001)
    with pytest.raises(MessageTooLarge):
        w.write([b"x" * 600, b"y" * 401], 1001)
    assert not r.has_data()
    assert w.try_write(b"x" * 1000)
    assert r.try_read() == b"x" * 1000


def test_abort_drops_partial_stream(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    big = os.urandom(30_000)
    assert not w.write([big], len(big))
    assert r.try_read() is None  # consumes the first chunk into reassembly
    assert w.abort()
    assert not w.busy
    assert w.try_write(b"after")
    assert drain(r) == [b"after"]


def test_abort_outside_a_stream_is_skipped(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    """An ABORT with no streamed message in progress (the writer's send was cut after the
    message's last record, or before any of it left) drops nothing: the next message is read."""
    w, r = ring
    assert w.try_write(b"one")
    assert r.try_read() == b"one"
    R._HDR.pack_into(r._mv, r._data + r.read_pos % r.capacity, R._ABORT, 0, 0)
    w._commit(w._wp + 64)  # the writer's ABORT record, committed as _pump does
    assert w.try_write(b"two")
    assert drain(r) == [b"two"]


def test_abort_deferred_when_ring_full(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    big = os.urandom(30_000)
    assert not w.write([big], len(big))  # fills the ring; reader has not read anything
    w.abort()
    assert w.busy  # ABORT record waits for space
    assert not w.try_write(b"after")  # queued behind the abort
    got: list[bytes] = []
    while w.busy:
        got.extend(drain(r))
        w.pump()
    got.extend(drain(r))
    assert got == [b"after"]


def test_eof_after_drain(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert w.try_write(b"last")
    assert not r.writer_closed()
    w.close()
    assert not r.at_eof()
    assert r.try_read() == b"last"
    assert r.at_eof()


def test_reader_close_is_seen_by_writer(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    r.close()
    assert w.peer_closed()
    assert w.can_progress()


def test_attach_validation() -> None:
    m = mmap.mmap(-1, R.region_size(4096))
    with pytest.raises(IncompatibleEndpoint):
        R.RingReader(m, 0, len(m), MAXMSG)  # zeroed: no magic
    R.initialize(memoryview(m), 0, 4096, MAXMSG)
    with pytest.raises(IncompatibleEndpoint):
        R.RingReader(m, 0, len(m) - 64, MAXMSG)  # capacity larger than the region
    with pytest.raises(ValueError):
        R.RingReader(m, 32, len(m) - 32, MAXMSG)  # misaligned region
    with pytest.raises(ValueError):
        R.round_capacity(10)


def test_refuses_weakly_ordered_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert R.ordering_supported("x86_64")
    assert not R.ordering_supported("aarch64")
    monkeypatch.setattr(R.platform, "machine", lambda: "aarch64")
    m = mmap.mmap(-1, R.region_size(4096))
    R.initialize(memoryview(m), 0, 4096, MAXMSG)
    with pytest.raises(UnsupportedOperation):
        R.RingReader(m, 0, len(m), MAXMSG)


CTL = 64  # region offset used by make()


def _put(m: mmap.mmap, word: int, value: int) -> None:
    m[CTL + 8 * word : CTL + 8 * word + 8] = value.to_bytes(8, "little")


@pytest.mark.parametrize(
    ("word", "value"),
    [(8, 64 * 1000), (8, 63), (8, 2**64 - 64), (16, 128), (16, 2**64 - 64)],
)
def test_corrupt_counters_raise_protocol_error(word: int, value: int) -> None:
    m, w, r = make()
    assert w.try_write(b"abc")
    _put(m, word, value)
    with pytest.raises(ProtocolError):
        r2 = R.RingReader(m, CTL, len(m) - CTL, MAXMSG)
        r2.try_read()
        r.try_read()
    if word == 16:  # the writer trusts only its own counter, re-checks the reader's
        with pytest.raises(ProtocolError):
            w.space_available()


@pytest.mark.parametrize(
    "header",
    [
        (0, 3, 3),  # kind 0
        (9, 3, 3),  # unknown kind
        (1, 5000, 5000),  # chunk beyond the ring
        (1, 60, 60),  # chunk beyond the committed record
        (1, 3, 2),  # chunk > total
        (1, 3, 2**63),  # total above max_message_size
        (2, 3, 3),  # continuation outside a stream
    ],
)
def test_corrupt_records_raise_protocol_error(header: tuple[int, int, int]) -> None:
    m, w, r = make()
    assert w.try_write(b"abc")
    R._HDR.pack_into(m, CTL + R.CONTROL_SIZE, *header)
    with pytest.raises(ProtocolError):
        r.try_read()


# -- Hypothesis: target R ------------------------------------------------------------------

FCAP = 512
FREGION = R.region_size(FCAP)
FMAX = 4096


def _run_reader(image: bytes) -> tuple[list[bytes], str | None]:
    """Read everything a reader makes of *image*; only ipckit errors are allowed out."""
    m = bytearray(image)
    out: list[bytes] = []
    try:
        rd = R.RingReader(m, 0, FREGION, FMAX)
        for _ in range(64):  # each read consumes >= 64 bytes of at most FCAP committed
            mode = len(out) % 3
            if mode == 1:
                into = bytearray(FMAX)
                n = rd.try_read_into(memoryview(into))
                msg = None if n is None else bytes(into[:n])
            elif mode == 2:  # the cursor's fast path; it declines (None) whatever peek must judge
                msg = rd.try_read_bytes()
                if msg is None:
                    msg = rd.try_read()
            else:
                msg = rd.try_read()
            if msg is None:
                break
            out.append(msg)
        else:
            raise AssertionError("reader did not stop")
    except (ProtocolError, IncompatibleEndpoint) as exc:
        return out, type(exc).__name__
    except BufferTooSmall:
        raise AssertionError("buffer of max_message_size was too small") from None
    return out, None


def _flip_uncommitted(image: bytes) -> bytes | None:
    """The image with every data byte outside [read_pos, write_pos) inverted (None if invalid)."""
    words = [int.from_bytes(image[8 * i : 8 * i + 8], "little") for i in (8, 16)]
    wp, rp = words
    if rp > wp or wp - rp > FCAP:
        return None
    out = bytearray(image)
    committed = {(rp + k) % FCAP for k in range(wp - rp)}
    for k in range(FCAP):
        if k not in committed:
            out[R.CONTROL_SIZE + k] ^= 0xFF
    return bytes(out)


def _check_image(image: bytes) -> None:
    result = _run_reader(image)
    flipped = _flip_uncommitted(image)
    if flipped is not None:
        # A reader that never touches uncommitted bytes cannot tell the two images apart.
        assert _run_reader(flipped) == result


def _valid_header(wp: int, rp: int) -> bytes:
    m = bytearray(FREGION)
    R.initialize(memoryview(m), 0, FCAP, FMAX)
    m[64:72] = wp.to_bytes(8, "little")
    m[128:136] = rp.to_bytes(8, "little")
    return bytes(m[: R.CONTROL_SIZE])


# Examples per cursor implementation (each test runs once per implementation).
FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(st.binary(min_size=FREGION, max_size=FREGION), st.booleans())
def test_fuzz_arbitrary_image(image: bytes, keep_header: bool) -> None:
    if keep_header:  # most random headers fail at the magic; also fuzz past it
        image = _valid_header(0, 0)[:64] + image[64:]
    _check_image(image)


@FUZZ
@given(
    st.integers(0, 2**40).map(lambda x: x * 64),
    st.integers(0, FCAP // 64 + 1),
    st.binary(min_size=FCAP, max_size=FCAP),
)
def test_fuzz_valid_counters_arbitrary_records(rp: int, used: int, data: bytes) -> None:
    _check_image(_valid_header(rp + used * 64, rp) + data)


_record = st.tuples(
    st.sampled_from([0, 1, 1, 1, 1, 2, 2, 3, 4, 5]),
    st.one_of(st.integers(0, 120), st.integers(0, 700)),
    st.one_of(st.integers(0, 8), st.just(0), st.integers(0, 2**64 - 1)),
    st.booleans(),
)


def _records_image(records: list[tuple[int, int, int, bool]], fill: bytes) -> bytes:
    data = bytearray(fill)
    pos = 0
    for kind, chunk, delta, exact in records:
        if pos + 16 > FCAP:
            break
        total = chunk + delta if exact else delta
        R._HDR.pack_into(data, pos, kind, chunk, total % 2**64)
        pos += (chunk + 16 + 63) & ~63 if kind != 3 else FCAP - pos
    return bytes(data)


@FUZZ
@given(
    st.integers(0, 2**30).map(lambda x: x * 64),
    st.integers(0, FCAP // 64),
    st.lists(_record, max_size=8),
    st.binary(min_size=FCAP, max_size=FCAP),
)
def test_fuzz_structured_records(
    rp: int, used: int, records: list[tuple[int, int, int, bool]], fill: bytes
) -> None:
    data = _records_image(records, fill)
    start = rp % FCAP
    data = data[FCAP - start :] + data[: FCAP - start]  # records begin at read_pos
    _check_image(_valid_header(rp + used * 64, rp) + data)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 1500), min_size=1, max_size=6),
    st.integers(0, 40),
    st.lists(st.tuples(st.integers(0, FREGION - 1), st.integers(0, 255)), max_size=6),
)
def test_fuzz_mutated_real_ring(sizes: list[int], skip: int, mutations: list[tuple[int, int]]) -> None:
    m = bytearray(FREGION)
    R.initialize(memoryview(m), 0, FCAP, FMAX)
    w = R.RingWriter(m, 0, FREGION, FMAX)
    r = R.RingReader(m, 0, FREGION, FMAX)
    for k in range(skip):  # move the counters around the ring first (PAD records at its end)
        msg = b"s" * 30
        assert w.try_send(msg) or w.try_write(msg)
        got = r.try_read_bytes() if k % 2 else None
        assert (got if got is not None else r.try_read()) == msg
    for i, n in enumerate(sizes):
        msg = bytes([n % 251]) * n
        if i % 2 and w.try_send(msg):  # the cursor's fast path for every other message
            continue
        if not w.write([msg], n):
            break  # ring full / stream started: leave it half written
    r.detach()
    w.detach()
    image = bytes(m)
    base = _run_reader(image)
    assert base[1] is None
    assert all(msg == bytes([len(msg) % 251]) * len(msg) for msg in base[0])
    for off, val in mutations:
        m[off] = val
    _check_image(bytes(m))


# -- wait strategy -------------------------------------------------------------------------


class EventWaker:
    def __init__(self) -> None:
        self.sem = threading.Semaphore(0)
        self.posts = 0

    def wait(self, timeout: float) -> bool:
        return self.sem.acquire(timeout=timeout)

    def post(self) -> None:
        self.posts += 1
        self.sem.release()


@cursor_free
def test_wait_times_out_on_deadline_and_checks() -> None:
    ws = WaitStrategy()
    checks = []
    t0 = time.monotonic()
    ok = ws.wait(lambda: False, t0 + 0.15, EventWaker(), lambda f: None, lambda: checks.append(1))
    elapsed = time.monotonic() - t0
    assert ok is False
    assert 0.15 <= elapsed < 0.3
    assert len(checks) >= 2  # sliced: the callback ran more than once


@cursor_free
def test_wait_zero_timeout_never_blocks() -> None:
    ws = WaitStrategy()
    t0 = time.monotonic()
    assert ws.wait(lambda: False, t0, EventWaker(), lambda f: None) is False
    assert time.monotonic() - t0 < 0.01


@cursor_free
def test_wait_check_exception_propagates() -> None:
    class Closed(Exception):
        pass

    def check() -> None:
        raise Closed

    with pytest.raises(Closed):
        WaitStrategy(spin=False).wait(lambda: False, None, EventWaker(), lambda f: None, check)


@pytest.mark.parametrize("fast", [True, False], ids=["cursor", "try_write"])
def test_blocked_waiter_woken_by_post_only_when_sleeping(fast: bool) -> None:
    _m, w, r = make()
    write = w.try_send if fast else w.try_write
    waker = EventWaker()
    w.wake_peer = waker.post
    ws = WaitStrategy(spin=False, yield_time=0.0)
    result: list[bool] = []
    sleeping = threading.Event()

    def set_sleeping(flag: bool) -> None:
        r.set_sleeping(flag)
        if flag:
            sleeping.set()

    t = threading.Thread(
        target=lambda: result.append(ws.wait(r.has_data, time.monotonic() + 10, waker, set_sleeping))
    )
    t.start()
    assert sleeping.wait(5)
    assert write(b"wake")
    t.join(5)
    assert result == [True]
    assert waker.posts >= 1
    assert ws.blocks == 1 and ws.spin_hits == 0
    posts = waker.posts
    assert write(b"no sleeper")  # reader not sleeping: no syscall-side post
    assert waker.posts == posts
    assert drain(r) == [b"wake", b"no sleeper"]


class Words:
    """Stands in for a ring's control words in a wait's *watch*: word 0 (the counter) reads 0 for
    its first *moves_after* reads, then 1; word 1 (the stop flag) reads 0 for *stops_after* reads."""

    def __init__(self, moves_after: float = float("inf"), stops_after: float = float("inf")) -> None:
        self.moves_after, self.stops_after = moves_after, stops_after
        self.reads = [0, 0]

    def __getitem__(self, i: int) -> int:
        self.reads[i] += 1
        return int(self.reads[i] > (self.moves_after, self.stops_after)[i])


def never_called() -> bool:
    raise AssertionError("with a watch, only the blocking phase calls the predicate")


def spinning(**kw: object) -> WaitStrategy:
    ws = WaitStrategy(spin=True, spin_time=5.0, **kw)  # type: ignore[arg-type]
    ws._same_cpu = False  # spin even where this test runs pinned to one CPU
    return ws


@cursor_free
def test_wait_watch_ready_at_once() -> None:
    ws = spinning()
    for words in (Words(moves_after=0), Words(stops_after=0)):
        assert ws.wait(never_called, time.monotonic() + 5, EventWaker(), lambda f: None, None,
                       (words, 0, 0, 1)) is True  # type: ignore[arg-type]
    assert (ws.spin_hits, ws.yield_hits, ws.blocks) == (0, 0, 0)


@cursor_free
@pytest.mark.parametrize("stop", [False, True], ids=["counter-moves", "peer-closes"])
def test_wait_watch_spins_on_the_words(stop: bool) -> None:
    """The spin reads the shared words itself (no predicate call per round) and ends when the
    counter moves or the stop flag (the writer closed) is raised."""
    ws = spinning()
    words = Words(stops_after=1000) if stop else Words(moves_after=1000)
    assert ws.wait(never_called, None, EventWaker(), lambda f: None, None, (words, 0, 0, 1)) is True  # type: ignore[arg-type]
    assert (ws.spin_hits, ws.yield_hits, ws.blocks) == (1, 0, 0)
    assert words.reads[0] >= 1000 if not stop else words.reads[1] > 1000


@cursor_free
def test_wait_watch_yields_on_the_words_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    from ipckit.backends.common.ring import waiting

    # A yield that comes back at once, as on an idle machine: beside a CPU hog a real yield can
    # take milliseconds, which (rightly) makes the wait block instead (the slow-yield test below).
    monkeypatch.setattr(waiting, "_sched_yield", lambda: None)
    ws = WaitStrategy(spin=False, yield_time=5.0)
    words = Words(moves_after=3)
    assert ws.wait(never_called, None, EventWaker(), lambda f: None, None, (words, 0, 0, 1)) is True  # type: ignore[arg-type]
    assert (ws.spin_hits, ws.yield_hits, ws.blocks) == (0, 1, 0)


@cursor_free
def test_wait_watch_blocks_on_the_predicate() -> None:
    """Asleep, the waiter re-checks the real predicate (the protocol's re-check after the flag)."""
    ws = WaitStrategy(spin=False, yield_time=0.0)
    waker = EventWaker()
    flags: list[bool] = []
    checks = [False]

    def ready() -> bool:
        return checks[0]

    def set_sleeping(flag: bool) -> None:
        flags.append(flag)
        if flag:
            checks[0] = True  # the peer commits just as we raise the flag

    assert ws.wait(ready, time.monotonic() + 5, waker, set_sleeping, None, (Words(), 0, 0, 1)) is True  # type: ignore[arg-type]
    assert flags == [True, False] and ws.blocks == 1 and waker.posts == 0


@cursor_free
def test_wait_watch_honours_an_expired_deadline() -> None:
    ws = spinning()
    words = Words()
    assert ws.wait(never_called, time.monotonic(), EventWaker(), lambda f: None, None, (words, 0, 0, 1)) is False  # type: ignore[arg-type]
    assert words.reads == [1, 1]  # one look, no spin
    assert (ws.spin_hits, ws.yield_hits, ws.blocks) == (0, 0, 0) and ws._budget == 5.0


@cursor_free
def test_same_cpu_detection() -> None:
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mine)})
        assert same_cpu(os.getpid())
        assert WaitStrategy(peer_pid=os.getpid())._same_cpu
    finally:
        os.sched_setaffinity(0, mine)
    assert same_cpu(None) is ((os.cpu_count() or 1) == 1)
    assert same_cpu(2**22 + 12345) is False  # no such process


# -- cross-process over real POSIX shared memory ----------------------------------------------

posix_ipc = pytest.importorskip("posix_ipc")


class PosixWaker:
    def __init__(self, sem: object) -> None:
        self.sem = sem

    def wait(self, timeout: float) -> bool:
        try:
            self.sem.acquire(timeout)  # type: ignore[attr-defined]
            return True
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return False

    def post(self) -> None:
        self.sem.release()  # type: ignore[attr-defined]


def _child_producer(name: str, cap: int, seed: int, count: int, spin: bool, impl: str) -> int:
    use_cursors(impl, impl)  # explicit, not inherited: the child's writer runs this implementation
    shm = posix_ipc.SharedMemory("/" + name)
    mm = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    data_sem = PosixWaker(posix_ipc.Semaphore("/" + name + "-d"))
    space_sem = PosixWaker(posix_ipc.Semaphore("/" + name + "-s"))
    w = R.RingWriter(mm, 0, len(mm), MAXMSG)
    if type(w.cursor) is not cursor_types(impl)[0]:
        return 4
    w.wake_peer = data_sem.post
    ws = WaitStrategy(spin=spin)
    rnd = random.Random(seed)
    for _ in range(count):
        msg = rnd.randbytes(rnd.choice([0, 10, 64, 500, 3000, cap * 3]))
        done = w.try_send(msg) or w.try_write(msg)
        while not done:
            if not ws.wait(w.can_progress, time.monotonic() + 10, space_sem, w.set_sleeping):
                return 3
            done = w.pump()
    w.close()
    mm.close()
    return 0


@cursor_free
@pytest.mark.parametrize(
    ("writer_impl", "reader_impl"),
    [("c", "c"), ("python", "python"), ("c", "python"), ("python", "c")],
    ids=["c-c", "py-py", "c-writer-py-reader", "py-writer-c-reader"],
)
@pytest.mark.parametrize("spin", [True, False])
def test_cross_process_producer_consumer(spin: bool, writer_impl: str, reader_impl: str) -> None:
    use_cursors(writer_impl, reader_impl)  # skips if the C extension is missing; the child sets its own
    name = "ipckit-t-" + secrets.token_hex(8)
    cap, count, seed = 4096, 400, 11
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=R.region_size(cap))
    sems = [posix_ipc.Semaphore("/" + name + sfx, posix_ipc.O_CREX, mode=0o600) for sfx in ("-d", "-s")]
    mm = mmap.mmap(shm.fd, shm.size)
    shm.close_fd()
    pid = -1
    try:
        R.initialize(memoryview(mm), 0, cap, MAXMSG)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                code = _child_producer(name, cap, seed, count, spin, writer_impl)
            finally:
                os._exit(code)
        r = R.RingReader(mm, 0, len(mm), MAXMSG)
        assert type(r.cursor) is cursor_types(reader_impl)[1]
        r.wake_peer = PosixWaker(sems[1]).post
        ws = WaitStrategy(spin=spin, peer_pid=pid)
        waker = PosixWaker(sems[0])
        expect = random.Random(seed)
        received = 0
        deadline = time.monotonic() + 20
        while True:
            msg = r.try_read_bytes() if received % 2 else None
            if msg is None:
                msg = r.try_read()
            if msg is None:
                if r.at_eof():
                    break
                assert ws.wait(lambda: r.has_data() or r.writer_closed(), deadline, waker, r.set_sleeping)
                continue
            assert msg == expect.randbytes(expect.choice([0, 10, 64, 500, 3000, cap * 3]))
            received += 1
        assert received == count
        _, status = os.waitpid(pid, 0)
        pid = -1
        assert os.waitstatus_to_exitcode(status) == 0
        r.close()
    finally:
        if pid > 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        mm.close()
        shm.unlink()
        for s in sems:
            s.unlink()
            s.close()
    assert not [f for f in os.listdir("/dev/shm") if name in f]


@cursor_free
def test_a_slow_fruitless_yield_makes_the_next_waits_block_without_yielding(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy machine a yield hands the CPU to an unrelated process for its whole slice: a
    yield that returns late without the answer stops the yielding, and the following waits block
    on the kernel at once (issue 11: 4 ms round trips beside one CPU hog per core)."""
    from ipckit.backends.common.ring import waiting

    yields: list[float] = []

    def busy_machine_yield() -> None:
        yields.append(time.perf_counter())
        time.sleep(0.002)  # what the scheduler does with a yield beside a CPU hog: runs the hog

    monkeypatch.setattr(waiting, "_sched_yield", busy_machine_yield)
    ws = WaitStrategy(spin=False, yield_time=0.5)
    waker = EventWaker()
    assert ws.wait(lambda: False, time.monotonic() + 0.05, waker, lambda f: None) is False
    assert len(yields) == 1 and ws.slow_yields == 1 and ws.blocks == 1
    for _ in range(3):
        waker.post()  # the peer's answer arrives while we sleep
        posted = [True]

        def ready(posted: list[bool] = posted) -> bool:
            done = not posted[0]
            posted[0] = False
            return done

        assert ws.wait(ready, time.monotonic() + 5, waker, lambda f: None) is True
    assert len(yields) == 1  # no yield at all: straight to the kernel
    assert ws.blocks == 4



# -- poll()'s fast answer (RingReader.ready_now) -------------------------------------------------
def test_ready_now_answers_only_what_it_can_read_off_the_words(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    assert r.ready_now() is False  # nothing committed, writer open
    assert w.try_write(b"abc")
    assert r.ready_now() is True  # one whole record
    view = r.peek()
    assert view is not None and r.ready_now() is None  # held: peek decides
    r.release()
    assert r.ready_now() is False
    # A streamed message (larger than the ring): its first record is not the whole message.
    big = bytes(range(256)) * 32  # 8 KiB through a 4 KiB ring
    assert not w.write([big], len(big))
    assert r.ready_now() is None
    got = bytearray()
    while True:
        v = r.peek()
        if v is not None:
            got += v
            r.release()
            break
        w.pump()
    assert bytes(got) == big
    # A slot's record is a whole message too.
    assert w.write_ref(b"\0" * 16, 1 << 20)
    assert r.ready_now() is True
    r._c.own = r._c.own + 64  # (skip it: this ring has no slots to open)
    r._publish(r._c.own)
    w.close()
    assert r.ready_now() is None  # the end: peek decides (EndOfChannel)


def test_ready_now_is_none_for_padding_and_abort(ring: tuple[R.RingWriter, R.RingReader]) -> None:
    w, r = ring
    half = b"x" * 3000  # a 3072-byte record: the second one does not fit the ring's tail
    assert w.try_write(half) and r.try_read() == half
    assert w.write([half], len(half))  # padding at the end, then the record at the start
    assert r.ready_now() is None  # the padding record leads: peek decides
    assert r.try_read() == half
    # A streamed message given up part-way: its first chunk, then an ABORT record.
    big = b"y" * 10000
    assert not w.write([big], len(big))
    assert w.abort()
    assert r.ready_now() is None
    assert r.try_read() is None  # the reader took the first chunk, the ring is free again
    assert w.pump()  # the ABORT record the full ring kept back
    assert r.ready_now() is None  # the ABORT record (or the message being reassembled)
    assert r.try_read() is None  # the partial message is dropped, nothing else waits
    assert r.ready_now() is False
