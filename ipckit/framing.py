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

A ``HELLO`` frame opens each direction of a connection made by ``connect()``/``accept()``: the
client sends one at connect (after the ``authkey`` handshake, if any), the server one at accept.
Its payload (:func:`encode_hello`, at most :data:`HELLO_MAX` bytes) is::

    magic 4s = b"IKhl" | protocol u16 | reserved u16 | max_message_size u64   (16 bytes; later
                                                                              versions may append)

The hello is outside the sequence: it carries sequence 0 and the first message after it is frame
0 too, so a stream without one (``pipe://`` pairs, whose ends share one options set) numbers its
frames the same way.  It is only valid as the first frame a receiver sees.  A server reads the
client's hello inside ``accept()`` (a client that sends none is dropped there); a client reads the
server's on its receive path (its first ``recv``/``poll``), having usually learnt the server's
limit at connect already from what the listener published (:func:`decode_hello` reads both).

A ``TRAILER`` frame ends with one commit byte after its ``length`` payload bytes: 1 delivers the
message, 0 discards it (a send cut part-way wrote the rest of the frame as zeros), anything else
is a ProtocolError.  Senders use it for frames a write may split (over ``PIPE_BUF`` bytes with the
header); smaller frames leave whole or not at all and carry none.  A discarded frame still counts
in the sequence; its CRC is not checked.  Goodbye, rejection and hello frames never carry one.
"""

from __future__ import annotations

import errno
import struct
import zlib

from .errors import IncompatibleEndpoint, MessageTooLarge, ProtocolError

__all__ = ["HEADER", "HEADER_SIZE", "MAGIC", "VERSION", "FLAG_CHECKSUM", "FLAG_GOODBYE", "FLAG_REJECTED",
           "FLAG_HELLO", "FLAG_TRAILER", "REJECT_REASON_MAX", "HELLO_MAX", "PROTOCOL", "encode_header",
           "encode_rejection", "decode_header", "crc32", "encode_hello", "hello_payload", "decode_hello"]

MAGIC = b"\xa9K"
VERSION = 1
FLAG_CHECKSUM = 0x01
FLAG_GOODBYE = 0x02
FLAG_REJECTED = 0x04
FLAG_HELLO = 0x08  # the first frame of a connection: magic, protocol version, the sender's limits (issue 10, A.3)
FLAG_TRAILER = 0x10  # the payload is followed by one commit byte: 1 delivers it, 0 discards it (a cut send)
_KNOWN_FLAGS = FLAG_CHECKSUM | FLAG_GOODBYE | FLAG_REJECTED | FLAG_HELLO | FLAG_TRAILER
REJECT_REASON_MAX = 512
#: The hello's payload: magic, protocol version, reserved, the sender's max_message_size.
_HELLO = struct.Struct("<4sHHQ")
_HELLO_MAGIC = b"IKhl"
#: The version of the connection protocol a hello announces (frames, hello, goodbye, rejection).
PROTOCOL = 1
#: Largest hello payload a receiver reads (room for fields later versions append).
HELLO_MAX = 128
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
    if flags & FLAG_TRAILER and flags & (FLAG_GOODBYE | FLAG_REJECTED | FLAG_HELLO):
        raise ProtocolError(f"frame flags 0x{flags:02x}: a goodbye, rejection or hello frame has no commit byte")
    if seq != expected_seq & _SEQ_MASK:
        raise ProtocolError(f"frame sequence {seq}, expected {expected_seq & _SEQ_MASK}: frames were lost, "
                            "replayed or interleaved by a second writer")
    if flags & FLAG_REJECTED:  # checked before max_size: a small client limit still hears the reason
        if length > REJECT_REASON_MAX or flags & FLAG_GOODBYE:
            raise ProtocolError(f"malformed rejection frame ({length} bytes)")
        return flags, length, crc
    if flags & FLAG_HELLO:  # bounded by its own limit: a tiny max_message_size still reads a hello
        if length > HELLO_MAX or flags & (FLAG_GOODBYE | FLAG_REJECTED):
            raise ProtocolError(f"malformed hello frame ({length} bytes)")
        return flags, length, crc
    if length > max_size:
        raise MessageTooLarge(f"peer announced a {length}-byte message, over max_message_size={max_size}; "
                              "the stream cannot be resynchronised and is now broken")
    if flags & FLAG_GOODBYE and length:
        raise ProtocolError("goodbye frame with a payload")
    return flags, length, crc


def hello_payload(max_message_size: int) -> bytes:
    """The hello payload announcing *max_message_size* (also what a listener publishes)."""
    return _HELLO.pack(_HELLO_MAGIC, PROTOCOL, 0, max_message_size)


def encode_hello(max_message_size: int) -> bytes:
    """The whole HELLO frame (sequence 0: the hello is outside the sequence)."""
    payload = hello_payload(max_message_size)
    return encode_header(0, len(payload), FLAG_HELLO) + payload


def decode_hello(payload: bytes | bytearray | memoryview, who: str) -> int:
    """The peer's ``max_message_size`` from a hello payload sent by *who* ("the client", ...).

    Raises:
        ProtocolError: not an ipckit hello (short, or a wrong magic).
        IncompatibleEndpoint: a hello of another protocol version.
    """
    if len(payload) < _HELLO.size or len(payload) > HELLO_MAX:
        raise ProtocolError(f"{who} sent a malformed hello ({len(payload)} bytes): it is not an ipckit peer")
    magic, protocol, _reserved, max_message_size = _HELLO.unpack_from(payload, 0)
    if magic != _HELLO_MAGIC:
        raise ProtocolError(f"{who} sent a hello with magic {bytes(magic)!r}: it is not an ipckit peer")
    if protocol != PROTOCOL:
        raise IncompatibleEndpoint(errno.EPROTO, f"{who} speaks ipckit protocol {protocol}, this end speaks "
                                   f"{PROTOCOL}: use the same ipckit version on both ends")
    if max_message_size < 1:
        raise ProtocolError(f"{who} announced max_message_size={max_message_size} in its hello")
    return int(max_message_size)
