"""Peer functions the contract runs in other processes (module level, so *spawn* can import them).

Each takes a channel end (handed over by ``multiprocessing``) or a :class:`Dial` (the peer connects
itself), calls :func:`~ipckit.testing.peers.ready` once it is attached, and closes what it opened.
``*_then_kill`` functions end with SIGKILL at a chosen point, so nothing is closed cleanly.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import ipckit

from ..channel import Channel
from ..errors import EndOfChannel
from ..framing import FLAG_CHECKSUM, encode_header
from .peers import kill_self, ready

__all__ = ["Dial", "attach", "make_payload", "check_payload", "echo", "send_messages", "recv_messages",
           "send_then_kill", "recv_then_kill", "partial_frame_then_kill", "forge_header_then_wait", "frame_bytes",
           "drain", "write_frames"]


@dataclass(frozen=True)
class Dial:
    """Tells a peer to connect to *url* itself (named backends) instead of receiving an end."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)


def attach(end: Channel | Dial) -> Channel:
    """The channel a peer uses: the inherited end, or a new connection."""
    if isinstance(end, Dial):
        return ipckit.connect(end.url, timeout=10.0, **end.options)
    return end


_CHECK = struct.Struct("<QI")


def make_payload(seq: int, size: int) -> bytes:
    """A self-checking message: ``seq``, a crc32 of the body, and a body of *size* bytes derived from *seq*."""
    body = random.Random(seq).randbytes(size)
    return _CHECK.pack(seq, zlib.crc32(body)) + body


def check_payload(data: bytes) -> int:
    """Verify a :func:`make_payload` message and return its sequence number (AssertionError if corrupt)."""
    seq, crc = _CHECK.unpack_from(data, 0)
    body = memoryview(data)[_CHECK.size:]
    assert zlib.crc32(body) == crc, f"message {seq} is corrupt"
    return int(seq)


def echo(end: Channel | Dial) -> int:
    """Send back every message received, until the other side closes; return how many."""
    ch = attach(end)
    count = 0
    try:
        ready()
        while True:
            try:
                data = ch.recv_bytes(timeout=30.0)
            except EndOfChannel:
                break
            ch.send_bytes(data, timeout=30.0)
            count += 1
    finally:
        ch.close()
    return count


def send_messages(end: Channel | Dial, messages: list[Any], close: bool = True) -> int:
    """Send *messages* (objects, with ``send``), then close (or just return when *close* is false)."""
    ch = attach(end)
    ready()
    for m in messages:
        ch.send(m, timeout=30.0)
    if close:
        ch.close()
    return len(messages)


def recv_messages(end: Channel | Dial, count: int) -> list[Any]:
    """Receive *count* messages and return them."""
    ch = attach(end)
    try:
        ready()
        return [ch.recv(timeout=30.0) for _ in range(count)]
    finally:
        ch.close()


def send_then_kill(end: Channel | Dial, messages: list[bytes]) -> None:
    """Send *messages* (raw bytes), each fully, then SIGKILL this process."""
    ch = attach(end)
    ready()
    for m in messages:
        ch.send_bytes(m, timeout=30.0)
    kill_self()


def recv_then_kill(end: Channel | Dial, count: int) -> None:
    """Receive *count* messages, then SIGKILL this process (a reader that dies)."""
    ch = attach(end)
    ready()
    for _ in range(count):
        ch.recv_bytes(timeout=30.0)
    kill_self()


def frame_bytes(seq: int, payload: bytes, checksum: bool = False) -> bytes:
    """One whole ipckit stream frame (header + payload) as the framing layer writes it."""
    if checksum:
        return encode_header(seq, len(payload), FLAG_CHECKSUM, zlib.crc32(payload)) + payload
    return encode_header(seq, len(payload)) + payload


def write_frames(fd: int, data: bytes) -> None:
    """Write *data* to *fd* completely, with raw ``os.write`` (blocking until it all left)."""
    os.set_blocking(fd, True)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def partial_frame_then_kill(end: Channel | Dial, before: list[bytes], payload: bytes, cut: int) -> None:
    """Send *before* normally, write the first *cut* bytes of the next frame raw, then SIGKILL.

    Only for channels over an ipckit byte stream (they expose ``_wfd`` and ``_sseq``); *cut* below
    the 20-byte header stops inside the header, above it inside the payload.
    """
    ch = attach(end)
    if not (hasattr(ch, "_wfd") and hasattr(ch, "_sseq")):
        raise TypeError(f"{type(ch).__name__} is not a channel over the ipckit stream kit (no _wfd/_sseq): "
                        "the cut frame cannot be written")
    ready()
    for m in before:
        ch.send_bytes(m, timeout=30.0)
    frame = frame_bytes(ch._sseq, payload, getattr(ch, "_checksum", False))
    assert 0 < cut < len(frame), f"cut {cut} must fall inside the {len(frame)}-byte frame"
    write_frames(ch._wfd, frame[:cut])
    kill_self()


def forge_header_then_wait(end: Channel, length: int) -> None:
    """Write a valid-looking header that announces *length* bytes, then wait to be killed."""
    write_frames(end._wfd, encode_header(end._sseq, length))  # type: ignore[attr-defined]
    ready()
    signal.pause()



def drain(end: Channel | Dial) -> tuple[list[int], str]:
    """Receive self-checking payloads until an error; return their sequence numbers and the error's type name.

    A corrupt or partial message fails the peer (AssertionError), so the test sees it.
    """
    from ..errors import IPCError

    ch = attach(end)
    seqs: list[int] = []
    ready()
    try:
        while True:
            seqs.append(check_payload(ch.recv_bytes(timeout=30.0)))
    except IPCError as exc:
        return seqs, type(exc).__name__
    finally:
        ch.close()
