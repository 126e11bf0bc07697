"""Frames for byte-stream transports (pipes, FIFOs, stream sockets).

Header (20 bytes, little endian)::

    magic 2s = b"\\xa9K" | version u8 | flags u8 | sequence u32 | length u64 | crc32 u32

``length`` is 64-bit so messages over 4 GiB frame correctly.  ``sequence`` counts frames per
direction from 0, which exposes interleaved writers and lost or replayed frames.  ``crc32`` covers
the payload when the ``CHECKSUM`` flag is set (the ``checksum=True`` option) and is 0 otherwise.
A ``GOODBYE`` frame (no payload) is written by ``close()``: end of stream after it is a clean close
(EndOfChannel), end of stream without it is a crash (PeerDied).  A ``REJECTED`` frame (sequence 0,
a short UTF-8 reason of at most :data:`REJECT_REASON_MAX` bytes) is what a server writes to a
client it refuses before closing the connection: the client's receive raises PeerRejected with
the reason instead of reporting a crash.
"""

from __future__ import annotations

import struct
import zlib

from .errors import MessageTooLarge, ProtocolError

__all__ = ["HEADER", "HEADER_SIZE", "MAGIC", "VERSION", "FLAG_CHECKSUM", "FLAG_GOODBYE", "FLAG_REJECTED",
           "FLAG_HELLO", "FLAG_TRAILER", "REJECT_REASON_MAX", "encode_header", "encode_rejection", "decode_header", "crc32"]

MAGIC = b"\xa9K"
VERSION = 1
FLAG_CHECKSUM = 0x01
FLAG_GOODBYE = 0x02
FLAG_REJECTED = 0x04
FLAG_HELLO = 0x08  # the first frame of a connection: magic, protocol version, the sender's limits (issue 10, A.3)
FLAG_TRAILER = 0x10  # the payload is followed by one commit byte: 1 delivers it, 0 discards it (a cut send)
_KNOWN_FLAGS = FLAG_CHECKSUM | FLAG_GOODBYE | FLAG_REJECTED | FLAG_HELLO | FLAG_TRAILER
REJECT_REASON_MAX = 512
HEADER = struct.Struct("<2sBBIQI")
HEADER_SIZE = HEADER.size
_SEQ_MASK = 0xFFFFFFFF

crc32 = zlib.crc32


def encode_header(seq: int, length: int, flags: int = 0, crc: int = 0) -> bytes:
    """Pack one frame header."""
    return HEADER.pack(MAGIC, VERSION, flags, seq & _SEQ_MASK, length, crc)


def encode_rejection(reason: str) -> bytes:
    """The whole REJECTED frame a server sends a refused client as its first and only frame."""
    payload = reason.encode("utf-8", "replace")[:REJECT_REASON_MAX]
    return encode_header(0, len(payload), FLAG_REJECTED) + payload


def decode_header(data: bytes | bytearray | memoryview, offset: int, expected_seq: int,
                  max_size: int) -> tuple[int, int, int]:
    """Validate and unpack the header at *offset*: returns ``(flags, length, crc)``.

    Raises:
        ProtocolError: wrong magic, version, unknown flags or an unexpected sequence number.
        MessageTooLarge: the declared length exceeds *max_size* (checked before anything is allocated).
    """
    magic, version, flags, seq, length, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r}: the peer is not speaking ipckit framing "
                            "(or two writers share the stream)")
    if version != VERSION:
        raise ProtocolError(f"unsupported frame version {version} (this ipckit speaks {VERSION}); "
                            "upgrade both ends to the same ipckit")
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown frame flags 0x{flags:02x}")
    if seq != expected_seq & _SEQ_MASK:
        raise ProtocolError(f"frame sequence {seq}, expected {expected_seq & _SEQ_MASK}: frames were lost, "
                            "replayed or interleaved by a second writer")
    if flags & FLAG_REJECTED:  # checked before max_size: a small client limit still hears the reason
        if length > REJECT_REASON_MAX or flags & FLAG_GOODBYE:
            raise ProtocolError(f"malformed rejection frame ({length} bytes)")
        return flags, length, crc
    if length > max_size:
        raise MessageTooLarge(f"peer announced a {length}-byte message, over max_message_size={max_size}; "
                              "the stream cannot be resynchronised and is now broken")
    if flags & FLAG_GOODBYE and length:
        raise ProtocolError("goodbye frame with a payload")
    return flags, length, crc
