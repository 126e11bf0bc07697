"""Fuzzing of every decoder and every place that reads what a peer wrote (issue 14, reliability.md §3).

Each target feeds hostile input to the real code over real kernel objects and checks:

* **totality** -- only the ipckit errors named for that target escape, by exact type (never a
  ``struct.error``, ``IndexError``, ``UnicodeError`` or a bare ``OSError``/``ValueError``);
* **bounded time** -- the writer is gone (or the wait has a timeout) before anything is read, so
  a call that waits means the decoder waits for bytes that can never come: every such wait is
  bounded and a ``RecvTimeout`` where the input is complete fails the example;
* **bounded memory** -- ``tracemalloc`` peak while decoding stays within ``max_message_size`` plus
  a fixed slack, whatever length a forged header announces;
* **liveness after garbage** -- what the contract says must still work does: a valid message on
  the same channel when the garbage did not break it (the stream channels break for good on a
  protocol error, docs/contract.md §3 P3/§4, so there it is the sticky ``ChannelBroken``), a valid
  client on the same listener after a hostile one, a valid object after an undecodable message.

Already fuzzed elsewhere (not repeated here): the shared-memory ring reader over forged segments
(tests/ring/test_ring.py, tests/ring/test_ringcursor.py, C fast path included) and the queue kit's
fragment reassembler (tests/backends/test_queue_kit.py).

Hypothesis runs derandomized with no example database, so CI sees the same examples every run;
each target keeps its example count small to stay within the suite's time budget (the nightly
long runs are for atheris).  Resources that many examples share (a listener) are made once per
test around an inner ``@given`` function, which is also what proves the listener survives every
example.  pickle is not fuzzed: the contract (§5) never unpickles bytes from a peer that is not
proven to be the same user, so a hostile pickle is out of scope by design.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import ipckit
from ipckit.backends.common.stream import READ_BUFFER
from ipckit.backends.common.zmq import PROTOCOL as ZMQ_PROTOCOL
from ipckit.backends.pipe import PipeChannel, PipeOptions
from ipckit.backends.unix import UnixOptions, UnixStreamChannel
from ipckit.channel import Channel
from ipckit.errors import (
    ChannelBroken,
    ConfigurationError,
    DecodeError,
    EndOfChannel,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    MessageTooLarge,
    PeerDied,
    PeerRejected,
    ProtocolError,
    RecvTimeout,
)
from ipckit.framing import (
    FLAG_CHECKSUM,
    FLAG_GOODBYE,
    FLAG_HELLO,
    FLAG_REJECTED,
    FLAG_TRAILER,
    HEADER_SIZE,
    crc32,
    encode_header,
    encode_hello,
    hello_payload,
)
from ipckit.options import parse_options
from ipckit.registry import get_backend
from ipckit.testing.contract.helpers import ResultThread
from ipckit.url import Endpoint, parse_url

pytestmark = pytest.mark.timeout(120)


def fuzz(examples: int, *, slow_examples: bool = False) -> Any:
    """The settings of every target: deterministic (derandomized, no database), no deadline.

    *slow_examples*: the example builds kernel objects (sockets, listeners), which is slow next to
    hypothesis's expectations on a loaded 2-core CI machine: HealthCheck.too_slow is off for it.
    """
    checks = [HealthCheck.too_slow] if slow_examples else []
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[*checks, HealthCheck.data_too_large])


def _event(text: str) -> None:
    """hypothesis's event() (what --hypothesis-show-statistics counts), also from the helpers
    that a plain test shares, where there is no example to record it on."""
    if currently_in_test_context():
        event(text)


@contextlib.contextmanager
def peak_memory(limit: int, what: str) -> Iterator[None]:
    """Fail if the block allocates more than *limit* bytes at its peak (P9: bounded memory)."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"{what}: allocated {peak} bytes at the peak, over the bound of {limit}"


# ============================================================================ URL and options
#: Every scheme whose parse and option checks are fuzzed.
SCHEMES: Final = ["pipe", "fifo", "unix", "shm", "sysv+shm", "mq", "sysv+mq", "memory", "zmq+ipc", "zmq+tcp"]
#: Schemes whose address is a bare name (or an ipckit-made one); a name is [A-Za-z0-9._-] only.
NAMED: Final = ["shm", "sysv+shm", "mq", "sysv+mq", "zmq+ipc"]
#: Schemes whose address is a file-system path.
PATHS: Final = ["fifo", "unix"]

_url_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda s, a, q: f"{s}{a}{q}",
              st.sampled_from([*SCHEMES, "", "x", "SHM", "unix:", "shm:/", "9x"]).map(lambda s: s + "://"),
              st.text(max_size=40),
              st.one_of(st.just(""), st.text(max_size=30).map(lambda q: "?" + q))),
)


@fuzz(400)
@given(_url_text)
def test_parse_url_gives_an_endpoint_or_invalid_address(url: str) -> None:
    try:
        ep = parse_url(url)
    except InvalidAddress:
        _event("InvalidAddress")
        return
    _event("parsed")
    assert isinstance(ep, Endpoint) and isinstance(ep.address, str)
    assert "\x00" not in ep.address
    os.fsencode(ep.address)  # every address a backend gets has a file-system encoding


@pytest.mark.parametrize("value", [None, 3, b"pipe://", 1.5, ["pipe://"]])
def test_parse_url_of_a_non_string_is_invalid_address(value: Any) -> None:
    with pytest.raises(InvalidAddress):
        parse_url(value)


_option_value = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "0", "-1", "nan", "inf", "-inf", "1e999", "9" * 5000, "0o777", "1KiB", "64 MiB",
                     "none", "null", "true", "off", "stream", "seqpacket", "1,2,-3", "%00", "\x00"]),
)
_keyword_value = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=20),
    st.lists(st.integers(), max_size=3), st.just(object()),
)


@fuzz(300)
@given(st.sampled_from(SCHEMES), st.data())
def test_option_parsing_gives_options_or_configuration_error(scheme: str, data: st.DataObject) -> None:
    """URL option strings and keyword values of any type: parsed, or ConfigurationError (its
    exact type: a bad option is never an UnknownScheme or InvalidAddress), or TypeError (P8
    allows it for an argument of the wrong type; parse_options turns even those into
    ConfigurationError)."""
    cls = get_backend(scheme).options_class
    names = [f for f in cls.__dataclass_fields__ if not f.startswith("_")] + ["bogus", ""]
    query = data.draw(st.dictionaries(st.sampled_from(names), _option_value, max_size=3), "query")
    kwargs = data.draw(st.dictionaries(st.sampled_from(names), _keyword_value, max_size=2), "kwargs")
    try:
        parse_options(cls, query, kwargs)
    except ConfigurationError as exc:
        assert type(exc) is ConfigurationError, repr(exc)
        _event("ConfigurationError")
        return
    _event("parsed")


def _hostile_name() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["../x", "a/../../b", "..", "x/y", "%2e%2e%2fx", "a%00b", "%00", "x\x00", "\ud800",
                         "a\udfffb", "A" * 300, "n" * 5000, "a%2Fb", "é", "\u202e", "\U0001f600", "a b", "a\tb"]),
        st.builds(lambda a, bad, b: a + bad + b, st.text(max_size=6),
                  st.sampled_from(["/", "\\", "\x00", "%00", "..", "?", "#", " ", "\n", "\ud800", "é", "\u0301", "*"]),
                  st.text(max_size=6)),
    )


def _must_refuse(scheme: str, name: str) -> bool:
    """True for names the scheme must refuse with InvalidAddress (NUL, lone surrogates, and for
    named schemes anything outside [A-Za-z0-9._-] or a path of its own)."""
    unquoted = parse_url_or_none(f"{scheme}://{name}")
    if unquoted is None:
        return True
    address = unquoted.address
    if scheme in NAMED:
        if address.startswith("/"):
            return False  # an absolute path (zmq+ipc takes one): checked by the path rules
        return not address or not all(c.isascii() and (c.isalnum() or c in "._-") for c in address) or \
            len(address) > 200
    return len(os.fsencode(address)) > 4096


def parse_url_or_none(url: str) -> Endpoint | None:
    try:
        return parse_url(url)
    except InvalidAddress:
        return None


@fuzz(150, slow_examples=True)
@given(st.sampled_from(NAMED + PATHS), _hostile_name(), st.sampled_from(["connect", "listen"]))
def test_hostile_names_are_refused_by_connect_and_listen(scheme: str, name: str, op: str) -> None:
    """Names with ``..``, ``/``, NUL (also ``%00``), lone surrogates, unicode or over the length
    limit: connect() and listen() raise InvalidAddress (and create nothing); a name the scheme
    does accept raises only ipckit errors (connect with timeout=0 finds nothing)."""
    url = f"{scheme}://{name}"
    refuse = _must_refuse(scheme, name)
    try:
        if op == "connect":
            made: Any = ipckit.connect(url, timeout=0)
        else:
            if not refuse and scheme in PATHS and not parse_url(url).address.startswith("/"):
                return  # a relative path would be made in the test's working directory
            made = ipckit.listen(url)
    except InvalidAddress:
        _event(f"{op}: InvalidAddress")
        return
    except IPCError as exc:
        assert not refuse, f"{op}({url!r}) raised {exc!r}, not InvalidAddress"
        _event(f"{op}: {type(exc).__name__}")
        return
    made.close()
    assert not refuse, f"{op}({url!r}) accepted a hostile name"
    _event(f"{op}: accepted")


# ============================================================================ deserializers
_nasty_payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([
        b"[" * 100_000, b"{\"a\":" * 50_000, b"\x91" * 100_000,  # nesting far past the recursion limit
        b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",  # msgpack array/map claiming 2**32 - 1 elements
        b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",  # bin32/str32 claiming 4 GiB
        b"\x81\x01\x02", b"\x81\xc0\x01",  # maps with non-string keys (strict_map_key)
        b"\xc7\xff\x05" + b"x" * 255, b"\xd6\xff\x00\x00\x00\x00",  # ext types, a timestamp
        b"\xa3\xff\xfe\xfd", b"\"\\ud800\"", b"NaN", b"Infinity", b"-Infinity", b"1e999", b"\xef\xbb\xbf{}",
        b"9" * 5000, b"\xff\xfe{\x00}\x00", b"",
    ]),
)

#: What each serializer's receive must give for an arbitrary byte message.
_VALID: Final[dict[str, Any]] = {"msgpack": {"ok": [1, "two", b"3"]}, "json": {"ok": [1, "two", None]}, "raw": b"ok"}


def _check_carried(obj: Any, serializer: str) -> None:
    """A decoded object holds only what the serializer carries (docs/contract.md §5): never a
    msgpack ExtType or a non-finite JSON number."""
    leaves: tuple[type, ...] = (str, int, bool, type(None)) + ((bytes, msgpack.Timestamp) if serializer == "msgpack"
                                                               else ())
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, bytes) if serializer == "msgpack" else str), f"a {type(k).__name__} key"
            _check_carried(v, serializer)
    elif isinstance(obj, list):
        for v in obj:
            _check_carried(v, serializer)
    elif isinstance(obj, float):
        assert serializer == "msgpack" or math.isfinite(obj), f"JSON gave {obj}"
    else:
        assert isinstance(obj, leaves), f"{serializer} gave a {type(obj).__name__}: {obj!r}"


@pytest.mark.parametrize("serializer", ["msgpack", "json", "raw"])
def test_undecodable_messages_are_decode_error_and_the_channel_stays_usable(serializer: str) -> None:
    a, b = ipckit.pair("pipe://", serializer=serializer, max_message_size=256 * 1024)

    @fuzz(150)
    @given(_nasty_payloads)
    def run(payload: bytes) -> None:
        a.send_bytes(payload, timeout=5.0)
        with peak_memory(8 * 1024 * 1024, f"decoding a {len(payload)}-byte message with {serializer}"):
            try:
                obj = b.recv(timeout=5.0)
            except DecodeError:
                _event("DecodeError")
            else:
                _event(f"decoded: {type(obj).__name__}")
                if serializer == "raw":
                    assert obj == payload
                else:
                    _check_carried(obj, serializer)
        a.send(_VALID[serializer], timeout=5.0)  # the next valid object still arrives
        assert b.recv(timeout=5.0) == _VALID[serializer]

    try:
        run()
    finally:
        a.close()
        b.close()


# ============================================================================ the stream frame decoder
#: max_message_size of the fuzzed stream channels: forged lengths around it and above the
#: 256 KiB read-ahead buffer (so the large-message path, which allocates the announced size, runs).
LIMIT: Final = 512 * 1024
#: tracemalloc bound for one decode: the largest allowed message (a forged header may make the
#: decoder allocate that much) plus slack for the bookkeeping.
MEMORY_BOUND: Final = LIMIT + 128 * 1024

#: What a receive on a hostile stream may raise, as exact types, and what every later receive
#: then raises (the stream is not resynchronised after corruption: P3 and §4).
_TERMINAL: Final[dict[type[IPCError], type[IPCError]]] = {
    ProtocolError: ChannelBroken,
    MessageTooLarge: ChannelBroken,
    EndOfChannel: EndOfChannel,
    PeerDied: PeerDied,
    PeerRejected: PeerRejected,
}


def _frame(seq: int, payload: bytes, flags: int = 0, *, length: int | None = None, crc_ok: bool = True,
           commit: int = 1) -> bytes:
    crc = crc32(payload) if flags & FLAG_CHECKSUM else 0
    if not crc_ok:
        crc ^= 0x5A5A
    head = encode_header(seq, len(payload) if length is None else length, flags, crc)
    return head + payload + (bytes([commit]) if flags & FLAG_TRAILER else b"")


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[bytes] | None, bool]:
    """A stream of frames, well-formed or not: ``(stream, expected, goodbye)``, *expected* the
    messages a correct decoder delivers when the stream is well-formed (None when a frame was
    forged), *goodbye* whether it ends with a clean close."""
    out = bytearray()
    expected: list[bytes] | None = []
    seq = 0
    goodbye = False
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["data", "sum", "trailer", "goodbye", "forged", "forged"]))
        payload = draw(st.binary(max_size=200))
        if kind == "goodbye":
            out += _frame(seq, b"", FLAG_GOODBYE)
            goodbye = True
            break
        if kind == "forged":
            flags = draw(st.one_of(st.sampled_from([0, 0, FLAG_CHECKSUM, FLAG_TRAILER, FLAG_HELLO, FLAG_REJECTED,
                                                    FLAG_GOODBYE, FLAG_HELLO | FLAG_TRAILER, 0x20, 0x80]),
                                   st.integers(0, 255)))
            length = draw(st.one_of(st.none(), st.integers(0, 400), st.sampled_from(
                [LIMIT, LIMIT + 1, READ_BUFFER - HEADER_SIZE, READ_BUFFER, 2**32, 2**63, 2**64 - 1])))
            fseq = draw(st.one_of(st.just(seq), st.integers(0, 2**32 - 1)))
            if flags & FLAG_HELLO and draw(st.booleans()):
                payload = hello_payload(draw(st.integers(0, 2**64 - 1)))
            if length is not None and READ_BUFFER - HEADER_SIZE <= length <= LIMIT:
                _event("forged: a length for the large-message path")
            out += _frame(fseq, payload, flags, length=length, crc_ok=draw(st.booleans()),
                          commit=draw(st.integers(0, 255)))
            expected = None
            seq += 1
            continue
        if kind == "trailer":
            commit = draw(st.sampled_from([0, 1]))
            flags = FLAG_TRAILER | (FLAG_CHECKSUM if draw(st.booleans()) else 0)
            out += _frame(seq, payload, flags, commit=commit)
            if commit and expected is not None:
                expected.append(payload)
        else:
            out += _frame(seq, payload, FLAG_CHECKSUM if kind == "sum" else 0)
            if expected is not None:
                expected.append(payload)
        seq += 1
    stream = bytes(out)
    mutate = draw(st.sampled_from(["none", "none", "flip", "cut", "garbage"]))
    if mutate == "flip" and stream:
        buf = bytearray(stream)
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(1, 255)),
                                      min_size=1, max_size=4)):
            buf[pos] ^= val
        stream, expected = bytes(buf), None
    elif mutate == "cut" and stream:
        stream, expected = stream[: draw(st.integers(0, len(stream) - 1))], None
    elif mutate == "garbage":
        stream, expected = stream + draw(st.binary(min_size=1, max_size=100)), None
    return stream, expected, goodbye


_byte_streams = st.one_of(
    _streams(),
    st.binary(max_size=600).map(lambda s: (s, None, False)),
    st.binary(max_size=300).map(lambda s: (encode_header(0, len(s)) + s, [s], False)),
)


def _cuts(stream: bytes, data: st.DataObject) -> list[bytes]:
    """*stream* split at arbitrary points (each piece is written, then read, on its own)."""
    points = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), "cuts")))
    pieces = [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)], strict=True)]
    return [p for p in pieces if p]


def _drain(ch: Channel, what: str) -> tuple[list[bytes], IPCError]:
    """Receive until an error: the messages, and the (terminal) error.  The writer is gone, so
    every receive ends at once; one that waits out its timeout is a hang."""
    got: list[bytes] = []
    while True:
        try:
            got.append(ch.recv_bytes(timeout=5.0))
        except RecvTimeout:
            pytest.fail(f"{what}: recv waited for bytes after the writer was gone (a hang)")
        except IPCError as exc:
            return got, exc
        assert len(got) < 10_000


def check_decoded(ch: Channel, stream: bytes, expected: list[bytes] | None, goodbye: bool, what: str) -> None:
    """Drain *ch* (the raw writer is gone) and check what came out of *stream*."""
    with peak_memory(MEMORY_BOUND, what):
        got, err = _drain(ch, what)
    assert type(err) in _TERMINAL, f"{what}: {type(err).__name__} escaped: {err}"
    _event(f"ends with {type(err).__name__}")
    for msg in got:  # every message delivered is bytes the writer sent, whole
        assert len(msg) <= LIMIT and msg in stream, f"{what}: a {len(msg)}-byte message not in the stream"
    if expected is not None:
        assert got == expected, f"{what}: a well-formed stream gave {len(got)} messages, not {len(expected)}"
        assert type(err) is (EndOfChannel if goodbye else PeerDied), f"{what}: ended with {err!r}"
    later = _TERMINAL[type(err)]
    for _ in range(2):  # the end is sticky: the stream never resynchronises on garbage
        with pytest.raises(later):
            ch.recv_bytes(timeout=0)
    assert ch.poll(0) is True  # poll reports it too (recv would raise at once)


def _feed(ch: Channel, write: Callable[[bytes], None], pieces: list[bytes]) -> None:
    """Write the pieces one by one, letting the channel read each (poll pulls what is there into
    its read-ahead buffer), so the decoder meets every split point."""
    for piece in pieces:
        write(piece)
        assert ch.poll(0) in (True, False)


def _pipe_channel() -> tuple[PipeChannel, int, int]:
    """A pipe:// end over two real pipes: (channel, raw writer of its input, reader of its output)."""
    opts = parse_options(PipeOptions, {}, {"max_message_size": LIMIT})
    r_in, w_in = os.pipe2(os.O_CLOEXEC)
    r_out, w_out = os.pipe2(os.O_CLOEXEC)
    ch = PipeChannel("pipe://", opts, rfd=r_in, wfd=w_out, peer_trusted=True)
    ch._learn_peer_limit(LIMIT)
    return ch, w_in, r_out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@fuzz(200)
@given(_byte_streams, st.data())
def test_pipe_frame_decoder_on_hostile_streams(case: tuple[bytes, list[bytes] | None, bool],
                                               data: st.DataObject) -> None:
    stream, expected, goodbye = case
    ch, w_in, r_out = _pipe_channel()
    try:
        _feed(ch, lambda piece: _write_all(w_in, piece), _cuts(stream, data))
        os.close(w_in)
        w_in = -1
        check_decoded(ch, stream, expected, goodbye, f"pipe:// on {stream[:40]!r}... ({len(stream)} bytes)")
    finally:
        ch.close()
        if w_in >= 0:
            os.close(w_in)
        os.close(r_out)


@fuzz(150, slow_examples=True)
@given(_byte_streams, st.data())
def test_unix_frame_decoder_on_hostile_streams(case: tuple[bytes, list[bytes] | None, bool],
                                               data: st.DataObject) -> None:
    """The same over a stream socket (recv_into and its end-of-stream rules, not read(2))."""
    stream, expected, goodbye = case
    opts = parse_options(UnixOptions, {}, {"max_message_size": LIMIT})
    mine, raw = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = UnixStreamChannel("unix://", opts, mine, peer_trusted=True)
    ch._learn_peer_limit(LIMIT)
    try:
        _feed(ch, raw.sendall, _cuts(stream, data))
        raw.shutdown(socket.SHUT_WR)
        check_decoded(ch, stream, expected, goodbye, f"unix:// on {stream[:40]!r}... ({len(stream)} bytes)")
    finally:
        ch.close()
        raw.close()


def test_a_valid_message_passes_on_a_new_pipe_pair_after_garbage() -> None:
    """The broken stream is that channel's alone: a pair made next, in the same process, works."""
    ch, w_in, r_out = _pipe_channel()
    try:
        _write_all(w_in, b"\xa9K\x01\x00garbage after a plausible magic")
        with pytest.raises(ProtocolError):
            ch.recv_bytes(timeout=5.0)
    finally:
        ch.close()
        os.close(w_in)
        os.close(r_out)
    a, b = ipckit.pair("pipe://")
    with a, b:
        a.send_bytes(b"still fine", timeout=5.0)
        assert b.recv_bytes(timeout=5.0) == b"still fine"


# ============================================================================ listener handshakes
#: Bound on how long an accept() may overrun its timeout here (the contract's P4 slack on a
#: loaded CI machine; the listeners poll in slices of at most 20 ms).
OVERRUN: Final = 0.5
#: accept() timeout after a hostile client: the hostile bytes are all there before it starts, so
#: the listener handles them at once, and a longer wait only costs CI time.
ACCEPT_WAIT: Final = 0.05


def _handshake_bytes() -> st.SearchStrategy[bytes]:
    """What a hostile client writes first: garbage, a valid hello followed by a hostile stream,
    a mutated or truncated hello, frames that are not a hello, an authentication look-alike."""
    hello = encode_hello(LIMIT)

    def flip(data: bytes, changes: list[tuple[int, int]]) -> bytes:
        buf = bytearray(data)
        for pos, val in changes:
            buf[pos % len(buf)] ^= val
        return bytes(buf)

    return st.one_of(
        st.binary(max_size=200),
        _streams().map(lambda case: hello + case[0]),
        st.lists(st.tuples(st.integers(0, 255), st.integers(1, 255)), min_size=1, max_size=3).map(
            lambda ch: flip(hello, ch)),
        st.integers(0, len(hello) - 1).map(lambda n: hello[:n]),
        st.builds(lambda n, seq, max_size: encode_header(seq, n, FLAG_HELLO) + hello_payload(max_size)[:n],
                  st.integers(0, 200), st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**64 - 1)),
        st.builds(lambda proto: encode_header(0, 16, FLAG_HELLO) + b"IKhl" + proto.to_bytes(2, "little")
                  + bytes(2) + LIMIT.to_bytes(8, "little"), st.integers(0, 65535)),
        st.sampled_from([encode_header(0, 0, FLAG_GOODBYE), encode_header(0, 5) + b"hello",
                         encode_header(0, 12, FLAG_REJECTED) + b"go away, me!", b"IKA1" + bytes(64),
                         b"IKA1" + os.urandom(32) + bytes(32) + b"\x01", b"\x00" * 4096]),
    )


def _after_hello(data: bytes) -> bytes | None:
    """The stream after a leading valid hello frame (what the accepted channel decodes), or None."""
    hello = encode_hello(LIMIT)
    return data[len(hello):] if data.startswith(hello) else None


def _check_accept_after(lst: ipckit.Listener, data: bytes, left: bool, what: str,
                        allowed: tuple[type[IPCError], ...]) -> None:
    """accept() after the hostile client: a channel (only for a client whose hello was valid; its
    stream is then decoded as the stream tests do), or one of *allowed*, within its timeout."""
    start = time.monotonic()
    try:
        ch = lst.accept(timeout=ACCEPT_WAIT)
    except allowed as exc:
        _event(f"accept: {type(exc).__name__}")
        assert type(exc) in allowed, f"{what}: accept raised {exc!r}"
    else:
        _event("accept: a channel")
        with ch:
            rest = _after_hello(data)
            assert rest is not None or not data.startswith(encode_hello(LIMIT)[:HEADER_SIZE]) or True
            if left:
                check_decoded(ch, data if rest is None else rest, None, False, what)
    elapsed = time.monotonic() - start
    assert elapsed < ACCEPT_WAIT + OVERRUN, f"{what}: accept(timeout={ACCEPT_WAIT}) took {elapsed:.3f} s"


def _round_trip(url: str, lst: ipckit.Listener, **options: Any) -> None:
    """A valid client on the same listener still connects and talks both ways.  It connects from
    a thread: with an authkey, connect() waits for the server's challenge, which accept() sends."""
    client = ResultThread(lambda: ipckit.connect(url, timeout=5.0, **options), name="ipckit-fuzz-client")
    client.start()
    try:
        for _ in range(2):
            try:
                srv = lst.accept(timeout=5.0)
                break
            except PeerRejected:
                # With an authkey, the hostile client that left during its authentication is
                # reported by the accept() that finds it gone (documented; the listener goes on).
                assert options.get("authkey"), "PeerRejected without an authkey"
        else:
            pytest.fail("accept() raised PeerRejected twice for one hostile client")
    finally:
        cl = client.outcome(10.0)
    with cl, srv:
        cl.send_bytes(b"ping", timeout=5.0)
        assert srv.recv_bytes(timeout=5.0) == b"ping"
        srv.send_bytes(b"pong", timeout=5.0)
        assert cl.recv_bytes(timeout=5.0) == b"pong"


@pytest.mark.parametrize("authkey", [None, "sesame"], ids=["plain", "authkey"])
def test_unix_listener_survives_hostile_clients(tmp: str, authkey: str | None) -> None:
    """Raw clients write hostile first bytes and leave (or stay silent afterwards): accept()
    drops them (ChannelTimeout at its timeout; PeerRejected for a failed authentication), or
    returns a channel whose stream is then decoded safely; a valid client is served after each."""
    url = f"unix://{tmp}/l.sock"
    keys: dict[str, Any] = {} if authkey is None else {"authkey": authkey}
    allowed: tuple[type[IPCError], ...] = (ipckit.ChannelTimeout,) if authkey is None else (
        ipckit.ChannelTimeout, PeerRejected)
    with ipckit.listen(url, max_message_size=LIMIT, handshake_timeout=0.3, **keys) as lst:

        @fuzz(60 if authkey else 100, slow_examples=True)
        @given(_handshake_bytes(), st.booleans())
        def run(data: bytes, leave: bool) -> None:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                raw.connect(f"{tmp}/l.sock")
                raw.sendall(data)
                if leave:
                    raw.shutdown(socket.SHUT_WR)
                _check_accept_after(lst, data, leave and authkey is None, f"unix:// client sent {data[:40]!r}",
                                    allowed)
            finally:
                raw.close()
            _round_trip(url, lst, **keys)

        run()


def test_fifo_listener_survives_hostile_writers(tmp: str) -> None:
    """A raw writer opens the endpoint's c2s FIFO, writes hostile first bytes and leaves: accept()
    drops it (ChannelTimeout at its timeout) or returns the channel of a valid hello, whose stream
    is decoded safely; a valid client is served after each."""
    url = f"fifo://{tmp}/ep"
    with ipckit.listen(url, max_message_size=LIMIT, handshake_timeout=0.3) as lst:

        @fuzz(100, slow_examples=True)
        @given(_handshake_bytes())
        def run(data: bytes) -> None:
            # The listener opens c2s for reading again in its next accept() (the previous read end
            # went to the previous channel): until then a writer's open fails with ENXIO, as a
            # client's does (it retries).  One accept with a zero timeout opens it.
            with pytest.raises(ipckit.ChannelTimeout):
                lst.accept(timeout=0)
            fd = os.open(f"{tmp}/ep/c2s", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            _check_accept_after(lst, data, True, f"fifo:// writer sent {data[:40]!r}", (ipckit.ChannelTimeout,))
            _round_trip(url, lst)

        run()


# ============================================================================ the zmq envelope
#: linger of the zmq ends here: the end closed second waits up to its linger for its goodbye to
#: reach a peer that is already gone (2 s by default, for each example).
ZMQ_LINGER: Final = 0.05


def _zmq_listener_path(tmp: str) -> str:
    return f"{tmp}/z.ipc"


@contextlib.contextmanager
def raw_zmq() -> Iterator[zmq.Context[Any]]:
    """A context for the raw sockets of a test (every socket made in it closed with linger 0)."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def _rendezvous_reply(dealer: zmq.Socket[Any], what: str) -> dict[str, Any]:
    assert dealer.poll(5000, zmq.POLLIN), f"{what}: the listener did not answer a valid hello (is its thread alive?)"
    frames = dealer.recv_multipart()
    assert len(frames) == 2 and frames[0] == ZMQ_PROTOCOL, f"{what}: a malformed answer {frames!r}"
    answer = json.loads(frames[1])
    assert isinstance(answer, dict)
    return answer


def _valid_hello(max_size: int = LIMIT) -> list[bytes]:
    return [ZMQ_PROTOCOL, json.dumps({"max": max_size, "ack": False, "pid": os.getpid()}).encode()]


def _answered(frames: list[bytes]) -> bool:
    """Whether the listener answers *frames* (what a DEALER sent): a hello it understands.  Only
    to count the answers; every other message must be dropped without one."""
    if len(frames) != 2 or frames[0] != ZMQ_PROTOCOL:
        return False
    try:
        hello = json.loads(frames[1])
    except (ValueError, RecursionError):
        return False
    return isinstance(hello, dict) and isinstance(hello.get("max"), int) and hello["max"] >= 0


_json_hellos = st.one_of(
    st.dictionaries(st.sampled_from(["max", "ack", "pid", "x"]),
                    st.one_of(st.integers(-2, 2**70), st.booleans(), st.none(), st.floats(), st.text(max_size=5),
                              st.lists(st.integers(), max_size=2)), max_size=4).map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"[]", b"null", b"1", b"\"max\"", b"{", b"{\"max\": 1e999}", b"\xff\xfe", b"{\"max\": NaN}",
                     # hellos the listener understands: answered (an error for the ack mismatch)
                     b"{\"max\": 0}", b"{\"max\": 1180591620717411303424}", b"{\"max\": true}",
                     b"{\"max\": 5, \"ack\": true}", b"{\"max\": 5, \"ack\": \"no\"}"]),
    st.binary(max_size=60),
)
_rendezvous_garbage = st.lists(
    st.one_of(
        st.lists(st.binary(max_size=40), min_size=1, max_size=4),
        st.tuples(st.sampled_from([ZMQ_PROTOCOL, ZMQ_PROTOCOL[:-1], b"IPCKIT-ZMQ/2", b""]), _json_hellos).map(list),
        st.tuples(st.just(ZMQ_PROTOCOL), _json_hellos, st.binary(max_size=10)).map(list),
        st.sampled_from([b"{\"max\": 0}", b"{\"max\": true}", b"{\"max\": 5, \"ack\": true}",
                         b"{\"max\": 1180591620717411303424, \"pid\": -1}"]).map(lambda h: [ZMQ_PROTOCOL, h]),
    ),
    min_size=1, max_size=4,
)


def test_zmq_listener_survives_hostile_hellos(tmp: str) -> None:
    """A raw DEALER sends arbitrary multipart messages to a zmq+ipc:// listener's rendezvous, then
    a valid hello on the same connection: it is answered (so the garbage before it was handled and
    the listener's thread lives), every garbage message is answered only if it is a hello the
    listener understands, and a real client then connects and talks both ways."""
    url = f"zmq+ipc://{_zmq_listener_path(tmp)}"
    with ipckit.listen(url, max_message_size=LIMIT, linger=ZMQ_LINGER) as lst, raw_zmq() as ctx:

        @fuzz(60, slow_examples=True)
        @given(_rendezvous_garbage)
        def run(garbage: list[list[bytes]]) -> None:
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            try:
                dealer.connect("ipc://" + _zmq_listener_path(tmp))
                for frames in garbage:
                    dealer.send_multipart(frames)
                dealer.send_multipart(_valid_hello())
                answers = [_rendezvous_reply(dealer, "rendezvous")
                           for _ in range(sum(map(_answered, garbage)) + 1)]
                assert "endpoint" in answers[-1], answers[-1]
                assert not dealer.poll(0, zmq.POLLIN), "the listener answered a message it should have dropped"
                _event(f"answers: {len(answers)}")
            finally:
                dealer.close(linger=0)
            prepared = sum("endpoint" in a for a in answers)
            for _ in range(prepared):  # the channels prepared for the raw hellos: nobody connects to them
                lst.accept(timeout=5.0).close()
            with pytest.raises(ipckit.ChannelTimeout):
                lst.accept(timeout=0)
            _round_trip(url, lst, linger=ZMQ_LINGER)

        run()


def test_zmq_listener_survives_a_deeply_nested_hello(tmp: str) -> None:
    url = f"zmq+ipc://{_zmq_listener_path(tmp)}"
    died: list[BaseException | None] = []
    previous = threading.excepthook
    # The thread's exception is caught here, so the test fails on the assertion below (the
    # expected failure) rather than on pytest's unhandled-thread-exception warning.
    threading.excepthook = lambda args: died.append(args.exc_value)
    try:
        with ipckit.listen(url, max_message_size=LIMIT, linger=ZMQ_LINGER) as lst, raw_zmq() as ctx:
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect("ipc://" + _zmq_listener_path(tmp))
            dealer.send_multipart([ZMQ_PROTOCOL, b"[" * 3000])
            dealer.send_multipart(_valid_hello())
            answered = bool(dealer.poll(3000, zmq.POLLIN))
            dealer.close(linger=0)
            assert answered and not died, f"the listener's thread died on a nested hello: {died!r}"
            lst.accept(timeout=5.0).close()
    finally:
        threading.excepthook = previous


#: An outcome of _expected_envelope: a malformed message (its receive raises ProtocolError).
_BAD: Final = None


def _expected_envelope(messages: list[list[bytes]]) -> list[tuple[bytes | None, bool]]:
    """What a zmq channel (ack=False) must make of *messages* from its peer, per the kit's wire
    format: for each message that is no control frame, ``(payload or _BAD, goodbye_seen)``:
    the payload delivered, or _BAD for a malformed message, and whether a goodbye came before."""
    out: list[tuple[bytes | None, bool]] = []
    rx_seq = 0
    bye = False
    for frames in messages:
        head = frames[0]
        kind = head[:1]
        if kind == b"D":
            out.append((head[1:], bye))
        elif kind == b"L":
            out.append((b"".join(frames[1:]), bye))
        elif kind in (b"d", b"l") and len(head) >= 9:
            seq = int.from_bytes(head[1:9], "little")
            if seq != rx_seq + 1:
                out.append((_BAD, bye))
                continue
            rx_seq = seq
            out.append((head[9:] if kind == b"d" else b"".join(frames[1:]), bye))
        elif kind in (b"A", b"G") and len(head) >= 9:
            bye = bye or kind == b"G"
        else:  # empty, unknown kind, or a short header
            out.append((_BAD, bye))
    return out


_seq_bytes = st.one_of(st.integers(0, 4), st.integers(0, 2**64 - 1)).map(lambda n: n.to_bytes(8, "little"))
_envelopes = st.lists(
    st.one_of(
        st.binary(max_size=20).map(lambda p: [b"D" + p]),  # well-formed ones, so garbage is not every message
        st.lists(st.binary(max_size=20), max_size=3).map(lambda parts: [b"L", *parts]),
        st.lists(st.binary(max_size=30), min_size=1, max_size=3),
        st.builds(lambda k, p: [k + p], st.sampled_from([b"D", b"L", b"d", b"l", b"A", b"G", b"X", b""]),
                  st.binary(max_size=20)),
        st.builds(lambda k, seq, p, more: [k + seq + p, *more], st.sampled_from([b"d", b"l", b"A", b"G"]),
                  _seq_bytes, st.binary(max_size=10), st.lists(st.binary(max_size=10), max_size=2)),
        st.builds(lambda parts: [b"L", *parts], st.lists(st.binary(max_size=20), max_size=3)),
    ),
    max_size=6,
)


def _check_envelope(ch: Channel, expected: list[tuple[bytes | None, bool]]) -> None:
    """Receive what *expected* says, strictly until the first malformed message or goodbye.

    After a ProtocolError the channel counts as disconnected, and after a goodbye as closed by
    the peer: it still delivers what its socket holds, but a message still in flight in libzmq
    when a receive looks may not be waited for (the receive raises PeerDied / EndOfChannel
    instead), so from there on what arrives is a prefix of the rest, then that sticky error.
    """
    strict = True
    early = False
    for payload, bye in expected:
        strict = strict and payload is not _BAD and not bye
        try:
            got = ch.recv_bytes(timeout=5.0)
        except ProtocolError:
            assert payload is _BAD, f"ProtocolError where {payload!r} was due"
            _event("ProtocolError")
            continue
        except (ChannelBroken, EndOfChannel) as exc:
            assert not strict, f"{exc!r} where {payload!r} was due"
            _event(f"ended early: {type(exc).__name__}")
            assert type(exc) in ((EndOfChannel,) if bye else (PeerDied,)), repr(exc)
            early = True
            break
        assert got == payload, f"received {got!r} where {payload!r} was due"
    broke = any(p is _BAD for p, _ in expected)
    ended: tuple[type[IPCError], ...] = (
        (EndOfChannel,) if expected[-1][1] else (PeerDied,) if broke else (RecvTimeout,))
    if early:
        # Ended before the rest arrived: a goodbye still in flight may or may not be seen yet.
        ended = (EndOfChannel, PeerDied)
    _event(f"then {ended[0].__name__}")
    for _ in range(2):
        with pytest.raises(ended):
            ch.recv_bytes(timeout=0)


def test_zmq_channel_on_hostile_envelopes(tmp: str) -> None:
    """A raw PAIR, connected where the listener told a raw DEALER to (as a client would), sends
    arbitrary multipart messages to the accepted channel, then a valid message: the channel
    delivers exactly what the wire format says, and a valid message still passes; a malformed
    message is ProtocolError and the channel then reports itself broken (ChannelBroken) on every
    receive, or EndOfChannel after a goodbye came first."""
    url = f"zmq+ipc://{_zmq_listener_path(tmp)}"
    final = [b"Dthe valid message after"]
    with ipckit.listen(url, max_message_size=LIMIT, linger=ZMQ_LINGER) as lst, raw_zmq() as ctx:

        @fuzz(60, slow_examples=True)
        @given(_envelopes)
        def run(messages: list[list[bytes]]) -> None:
            dealer = ctx.socket(zmq.DEALER)
            pair = ctx.socket(zmq.PAIR)
            dealer.linger = pair.linger = 0
            try:
                dealer.connect("ipc://" + _zmq_listener_path(tmp))
                dealer.send_multipart(_valid_hello())
                answer = _rendezvous_reply(dealer, "rendezvous")
                pair.connect("ipc://" + answer["endpoint"])
                with lst.accept(timeout=5.0) as ch:
                    for frames in [*messages, final]:
                        pair.send_multipart(frames)
                    _check_envelope(ch, _expected_envelope([*messages, final]))
            finally:
                pair.close(linger=0)
                dealer.close(linger=0)

        run()


# ============================================================================ rendezvous records
#: The SysV schemes publish a listener in a one-line record file (``tag key=value ... end``,
#: ipckit/backends/common/sysv.py RecordFormat) that connect() reads: a same-user peer (or a
#: crash) may leave anything in it.
RECORD_SCHEMES: Final = ["sysv+shm", "sysv+mq"]
#: What connect() may raise on a forged record, by exact type: the record is not an endpoint of
#: ours (IncompatibleEndpoint, also a stale or half-made one), names nothing (EndpointNotFound),
#: or names objects that are not ours to open (PermissionDenied); or nobody answers in time.
#: InvalidAddress too: sysv+mq takes its record's ``next`` field as a file name unchecked, so an
#: overlong one is the open's ENAMETOOLONG (an ipckit error, if not the most telling one).
_RECORD_ERRORS: Final = (IncompatibleEndpoint, ipckit.EndpointNotFound, ipckit.PermissionDenied,
                         ipckit.ChannelTimeout, InvalidAddress)
#: connect() timeout on a forged record (a half-made one is waited for until the deadline).
RECORD_WAIT: Final = 0.05


#: Values a forged field gets (never a number near a real SysV id or key: those could name
#: another process's objects).
HOSTILE_VALUES: Final = ["", "zz", "-1", "0", "x" * 300, "9" * 5000, "18446744073709551616", "0x10", "1e9",
                         "\u0663", "=", "nan", "deadbeef" * 8, str(2**63), str(-(2**63) - 1)]


def _one_field(original: str, index: int, value: str) -> str:
    """The real record with the value of its *index*-th field replaced (the others still pass)."""
    words = original.split()
    fields = [w for w in words[1:] if w != "end"]
    fields[index] = f"{fields[index].partition('=')[0]}={value}"
    return " ".join([words[0], *fields, "end"]) + "\n"


def _forged_record(original: str) -> st.SearchStrategy[str]:
    """Mutations of a real record: fields dropped, duplicated or given hostile values."""
    words = original.split()
    tag, fields = words[0], [w for w in words[1:] if w != "end"]
    hostile = st.sampled_from(HOSTILE_VALUES)

    @st.composite
    def build(draw: st.DrawFn) -> str:
        out = [draw(st.sampled_from([tag, tag, tag + "x", "ipckit-sysv-shm/2", "", "\ufffd"]))]
        for f in fields:
            key = f.partition("=")[0]
            action = draw(st.sampled_from(["keep", "keep", "drop", "hostile", "twice", "bare"]))
            if action == "keep":
                out.append(f)
            elif action == "hostile":
                out.append(f"{key}={draw(hostile)}")
            elif action == "twice":
                out += [f, f"{key}={draw(hostile)}"]
            elif action == "bare":
                out.append(key)
        if draw(st.booleans()):
            out.append("end")
        text = " ".join(out)
        if draw(st.booleans()):
            text += draw(st.text(max_size=20))
        return text + "\n"

    return st.one_of(build(), st.builds(lambda i, v: _one_field(original, i, v), st.integers(0, len(fields) - 1),
                                        hostile),
                     st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


def _write_record(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _write_all(fd, text.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def _connect_forged(url: str, what: str) -> bool:
    """connect() through a forged record: True if it attached anyway (a field it does not need
    was forged), then closed at once; else one of the record errors, within the timeout."""
    start = time.monotonic()
    attached = False
    try:
        ipckit.connect(url, timeout=RECORD_WAIT).close()
        attached = True
    except _RECORD_ERRORS as exc:
        assert type(exc) in _RECORD_ERRORS, f"{what}: {exc!r}"
        _event(f"connect: {type(exc).__name__}")
    else:
        _event("connect: attached")
    elapsed = time.monotonic() - start
    assert elapsed < RECORD_WAIT + OVERRUN, f"{what}: connect(timeout={RECORD_WAIT}) took {elapsed:.3f} s"
    return attached


@pytest.mark.parametrize("scheme", RECORD_SCHEMES)
def test_forged_records_of_a_live_listener(tmp: str, scheme: str) -> None:
    """The record of a live listener overwritten with a forgery: connect() raises only the record
    errors, within its timeout; with the real record put back, a client is served."""
    url = f"{scheme}://{tmp}/ep"
    path = f"{tmp}/ep"

    @fuzz(50, slow_examples=True)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        with ipckit.listen(url, max_message_size=64 * 1024) as lst:
            with open(path, encoding="ascii") as f:
                original = f.read()
            forged = data.draw(_forged_record(original), "record")
            _write_record(path, forged)
            attached = _connect_forged(url, f"{scheme} record {forged[:60]!r}")
            _write_record(path, original)  # (before an accept, which publishes the next record)
            if attached:
                # That client connected and closed: accept() still hands it over (P12), ended.
                with lst.accept(timeout=5.0) as gone, pytest.raises(EndOfChannel):
                    gone.recv_bytes(timeout=5.0)
            _round_trip(url, lst)

    run()


@pytest.mark.parametrize("scheme", RECORD_SCHEMES)
def test_each_record_field_forged_alone(tmp: str, scheme: str) -> None:
    """Every field of a live listener's record, given each hostile value with the others intact
    (the examples most likely to reach deep into connect(), tried exhaustively): only the
    record errors, in time; the restored record then serves a client."""
    url = f"{scheme}://{tmp}/ep"
    path = f"{tmp}/ep"
    with ipckit.listen(url, max_message_size=64 * 1024) as lst:
        with open(path, encoding="ascii") as f:
            original = f.read()
        n = len([w for w in original.split()[1:] if w != "end"])
        for index in range(n):
            for value in HOSTILE_VALUES:
                with open(path, encoding="ascii") as f:
                    current = f.read()  # (an accept below publishes the listener's next record)
                forged = _one_field(current, index, value)
                _write_record(path, forged)
                attached = _connect_forged(url, f"{scheme} record {forged[:80]!r}")
                _write_record(path, current)
                if attached:
                    with lst.accept(timeout=5.0) as gone, pytest.raises(EndOfChannel):
                        gone.recv_bytes(timeout=5.0)
        _round_trip(url, lst)


@pytest.mark.parametrize("scheme", RECORD_SCHEMES)
def test_forged_records_without_a_listener(tmp: str, scheme: str) -> None:
    """A forged record with nobody behind it (a crashed listener's, or planted by the same user):
    connect() raises only the record errors in time, and listen() on the name either reclaims it
    (then serves a client) or raises an ipckit error naming the problem."""
    url = f"{scheme}://{tmp}/ep"
    path = f"{tmp}/ep"
    with ipckit.listen(url) as lst:  # a real record to mutate (its objects are gone after close)
        with open(path, encoding="ascii") as f:
            original = f.read()
        _round_trip(url, lst)

    @fuzz(50, slow_examples=True)
    @given(_forged_record(original))
    def run(forged: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        try:
            _write_record(path, forged)
            _connect_forged(url, f"{scheme} record {forged[:60]!r}")
            try:
                lst = ipckit.listen(url)
            except (ipckit.EndpointExists, IncompatibleEndpoint, ipckit.PermissionDenied, InvalidAddress) as exc:
                # (InvalidAddress: the reclaim of a sysv+mq record opens what its unchecked
                # ``next`` field names; an overlong one is ENAMETOOLONG.)
                _event(f"listen: {type(exc).__name__}")
                return
            _event("listen: reclaimed")
            with lst:
                _round_trip(url, lst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    run()


#: A POSIX shm:// endpoint is its segment in /dev/shm: connect() reads the header a creator
#: wrote (magic, version, layout) before it maps anything.  The ring inside is fuzzed by
#: tests/ring; this is the opener's look at a forged segment.
SHM_FILE_PREFIX: Final = "/dev/shm/ipckit."


def test_forged_shm_segments(tmp: str) -> None:
    """A same-user file at a shm:// endpoint's segment name, holding a mutated real header (or
    garbage) of any size: connect() raises IncompatibleEndpoint (or the other record errors)
    within its timeout, and listen() on the name reclaims it (nobody holds it) and serves, or
    refuses a file that is no ipckit segment (EndpointExists / IncompatibleEndpoint)."""
    name = f"fuzz-{os.getpid()}-{os.path.basename(tmp)}"
    url = f"shm://{name}"
    path = SHM_FILE_PREFIX + name
    with ipckit.listen(url, capacity=64 * 1024, max_message_size=16 * 1024) as lst:
        with open(path, "rb") as f:
            header = f.read(4096)
        _round_trip(url, lst)

    @fuzz(60, slow_examples=True)
    @given(st.one_of(
        st.lists(st.tuples(st.integers(0, 511), st.integers(1, 255)), min_size=1, max_size=4).map(
            lambda flips: bytes(b ^ dict(flips).get(i, 0) for i, b in enumerate(header))),
        st.just(header),
        st.binary(max_size=512),
    ), st.sampled_from([0, 100, 4096, 64 * 1024, 1 << 20]))
    def run(image: bytes, size: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, max(size, len(image)))
            os.pwrite(fd, image, 0)
        finally:
            os.close(fd)
        try:
            _connect_forged(url, f"shm segment of {size} bytes, header {image[:24]!r}")
            try:
                lst = ipckit.listen(url, capacity=64 * 1024, max_message_size=16 * 1024)
            except (ipckit.EndpointExists, IncompatibleEndpoint) as exc:
                # Not an ipckit segment (no magic of ours): a foreign object is never taken over.
                _event(f"listen: {type(exc).__name__}")
                return
            _event("listen: reclaimed")
            with lst:
                _round_trip(url, lst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    run()
