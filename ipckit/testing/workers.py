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
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import ipckit

from ..channel import Channel
from ..errors import EndOfChannel
from ..framing import FLAG_CHECKSUM, encode_header
from .peers import kill_self, ready, set_pdeathsig

__all__ = ["Dial", "attach", "make_payload", "check_payload", "echo", "send_messages", "recv_messages",
           "send_then_kill", "recv_then_kill", "partial_frame_then_kill", "forge_header_then_wait", "frame_bytes",
           "drain", "write_frames", "send_then_exit", "fork_helper_then_send"]


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


def send_then_exit(end: Channel | Dial, messages: list[bytes], how: str) -> None:
    """Send *messages* (``send_bytes``), then end the way *how* says: ``"close"`` the channel and
    return, ``"return"`` without closing it (the process's exit is left to close it), or ``"kill"``
    this process (SIGKILL: nothing is closed).

    For a plain ``multiprocessing.Process`` of any start method (no :func:`ready`: a forkserver
    child is not :func:`~ipckit.testing.peers.spawn_peer`'s): the exit code tells how it went --
    0 after a return, -9 after the kill, 1 if anything raised.
    """
    set_pdeathsig()  # under forkserver the parent is the fork server, which the test stops
    ch = attach(end)
    for m in messages:
        ch.send_bytes(m, timeout=30.0)
    if how == "close":
        ch.close()
    elif how == "kill":
        kill_self()
    elif how != "return":
        raise ValueError(f"how must be 'close', 'return' or 'kill', not {how!r}")


def fork_helper_then_send(end: Channel | Dial, messages: list[bytes]) -> str:
    """Fork a helper with a bare ``os.fork()`` that tries to send on the end it inherited, then send
    *messages* and close the end while the helper still lives; return the name of what the
    helper's send raised (``"sent"`` if it went through).

    The helper was not handed the end (it is no multiprocessing child of ours), so its copy must be
    unusable and must not keep the channel open: the peer gets EndOfChannel from this process's
    close, not PeerDied when the helper exits.
    """
    ch = attach(end)
    verdict_r, verdict_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12: fork() with threads
        pid = os.fork()
    if pid == 0:  # the helper: never returns into the peer function
        try:
            os.close(verdict_r)
            os.close(hold_w)
            set_pdeathsig()
            try:
                ch.send_bytes(b"from the helper", timeout=1.0)
                verdict = "sent"
            except BaseException as exc:
                verdict = type(exc).__name__
            os.write(verdict_w, verdict.encode())
            os.close(verdict_w)
            os.read(hold_r, 1)  # alive, holding whatever it inherited, until released
        finally:
            os._exit(0)
    os.close(verdict_w)
    os.close(hold_r)
    try:
        verdict = os.read(verdict_r, 100).decode() or "the helper exited without a verdict"
        ready()
        for m in messages:
            ch.send_bytes(m, timeout=30.0)
        ch.close()
    finally:
        os.close(verdict_r)
        os.close(hold_w)  # lets the helper go
        os.waitpid(pid, 0)
    return verdict
