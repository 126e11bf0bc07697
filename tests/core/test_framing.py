"""Unit tests of the stream frame header codec (ipckit.framing)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipckit
from ipckit.errors import MessageTooLarge, PeerRejected, ProtocolError
from ipckit.framing import (
    FLAG_CHECKSUM,
    FLAG_GOODBYE,
    FLAG_REJECTED,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    REJECT_REASON_MAX,
    VERSION,
    decode_header,
    encode_header,
    encode_rejection,
)

BIG = 1 << 62


@pytest.mark.parametrize("length", [0, 1, 4095, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1,
                                    2 * 1024**3 + 1, 2**40])
def test_lengths_up_to_2_40_roundtrip(length: int) -> None:
    # Row A-8 of docs/design.md: 64-bit lengths; no payload is ever allocated here.
    header = encode_header(5, length)
    assert len(header) == HEADER_SIZE == 20
    assert decode_header(header, 0, 5, BIG) == (0, length, 0)


@given(seq=st.integers(0, 2**32 - 1), length=st.integers(0, 2**40), crc=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None, database=None)
def test_roundtrip_property(seq: int, length: int, crc: int) -> None:
    header = encode_header(seq, length, FLAG_CHECKSUM, crc)
    assert decode_header(b"pad" + header, 3, seq, BIG) == (FLAG_CHECKSUM, length, crc)


def test_sequence_wraps_at_32_bits() -> None:
    header = encode_header(2**32 + 7, 3)
    assert decode_header(header, 0, 2**32 + 7, BIG) == (0, 3, 0)
    assert decode_header(header, 0, 7, BIG) == (0, 3, 0)


def test_wrong_sequence_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="sequence"):
        decode_header(encode_header(1, 10), 0, 2, BIG)


def test_bad_magic_version_flags() -> None:
    with pytest.raises(ProtocolError, match="magic"):
        decode_header(HEADER.pack(b"XX", VERSION, 0, 0, 0, 0), 0, 0, BIG)
    with pytest.raises(ProtocolError, match="version"):
        decode_header(HEADER.pack(MAGIC, VERSION + 1, 0, 0, 0, 0), 0, 0, BIG)
    with pytest.raises(ProtocolError, match="flags"):
        decode_header(HEADER.pack(MAGIC, VERSION, 0x80, 0, 0, 0), 0, 0, BIG)
    with pytest.raises(ProtocolError, match="goodbye"):
        decode_header(encode_header(0, 5, FLAG_GOODBYE), 0, 0, BIG)


def test_length_over_limit_is_message_too_large() -> None:
    decode_header(encode_header(0, 1000), 0, 0, 1000)
    with pytest.raises(MessageTooLarge):
        decode_header(encode_header(0, 1001), 0, 0, 1000)
    with pytest.raises(MessageTooLarge):
        decode_header(encode_header(0, 2**40), 0, 0, 64 * 1024 * 1024)


def test_goodbye_frame() -> None:
    assert decode_header(encode_header(9, 0, FLAG_GOODBYE), 0, 9, BIG) == (FLAG_GOODBYE, 0, 0)


@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
@settings(max_examples=300, deadline=None, database=None)
def test_garbage_never_escapes_as_other_errors(data: bytes) -> None:
    try:
        decode_header(data, 0, 0, 1 << 20)
    except (ProtocolError, MessageTooLarge):
        pass


def test_rejection_frame() -> None:
    frame = encode_rejection("uid 7 is not allowed")
    flags, n, _ = decode_header(frame, 0, 0, 1)  # a tiny max_message_size still hears the reason
    assert flags == FLAG_REJECTED and frame[HEADER_SIZE:] == b"uid 7 is not allowed" and n == 20
    long = encode_rejection("x" * 10_000)
    assert len(long) == HEADER_SIZE + REJECT_REASON_MAX
    with pytest.raises(ProtocolError, match="rejection"):
        decode_header(encode_header(0, REJECT_REASON_MAX + 1, FLAG_REJECTED), 0, 0, BIG)
    with pytest.raises(ProtocolError, match="rejection"):
        decode_header(encode_header(0, 0, FLAG_REJECTED | FLAG_GOODBYE), 0, 0, BIG)


def test_rejection_frame_on_a_stream_is_peer_rejected_on_recv_and_send() -> None:
    """What a refused client sees, on the stream machinery every framed backend shares."""
    a, b = ipckit.pair("pipe://")
    try:
        os.write(b._wfd, encode_rejection("not you"))
        with pytest.raises(PeerRejected, match="not you"):
            a.recv_bytes(timeout=5)
        with pytest.raises(PeerRejected, match="not you"):  # sticky
            a.recv_bytes(timeout=5)
    finally:
        a.close()
        b.close()
