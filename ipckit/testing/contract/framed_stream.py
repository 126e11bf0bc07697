"""FramedStreamContract: a peer killed in the middle of writing a frame never yields a partial
message (required when the channel frames a byte stream across processes: ``capabilities``
not ``message_oriented`` and ``cross_process``).

Messages over a byte stream (pipes, FIFOs, stream sockets) are frames: a 20-byte header, then
the payload.  The peer here writes whole messages, then only the first bytes of one more frame
with a raw ``write``, and is SIGKILLed.  The receiver gets every whole message, then ``PeerDied``
(or, on a stream that cannot detect the peer, a timeout) — never the cut frame as a message, and
the error stays.

A send cut part-way through its frame (a timeout with the peer not reading, a signal handler's
exception) aborts the message instead (docs/contract.md, ``SendTimeout`` on a stream): the peer
gets every earlier message whole, never the cut one, then what is sent later; the sender's later
sends work, the first of them (or ``close()``) finishing the aborted frame first.  A frame large
enough for the kernel to split ends with a commit byte (1 delivers, 0 discards, anything else is a
``ProtocolError``); the reader skips discarded frames within the same deadline, and ``poll()``
does not report one as a message.

The peer writes the cut frame on the channel's write descriptor with ipckit's framing, so the
backend's channel must be an :class:`~ipckit.backends.common.stream.FdStreamChannel` (the stream
kit): that is what a framed-stream backend builds on.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from ...backends.common.stream import FdStreamChannel  # the kit, not a scheme
from ...channel import Channel
from ...errors import ChannelBroken, EndOfChannel, PeerDied, ProtocolError, RecvTimeout, SendTimeout
from ...framing import FLAG_CHECKSUM, FLAG_TRAILER, HEADER_SIZE, encode_header
from .. import workers
from ..peers import Peer, spawn_peer
from .cross_process import ChildEnds
from .helpers import KiB, MiB, ResultThread
from .interrupts import HandlerInterrupt, interrupted

__all__ = ["FramedStreamContract"]

#: Where the frame is cut: in the header (first byte, middle, last byte), right after it, in the payload.
_CUTS = {"header-first-byte": 1, "mid-header": 10, "header-less-one": HEADER_SIZE - 1, "header-only": HEADER_SIZE,
         "mid-payload": HEADER_SIZE + 500}


#: Where a signal handler's exception lands in a send to a stopped reader (seconds into the call):
#: before or in the first write, or in the wait for room after part of the frame left.
_INTERRUPT_DELAYS = [0.0005, 0.005, 0.05]


def _trailed_frame(seq: int, payload: bytes, commit: int, crc: int | None = None) -> bytes:
    """A frame with the commit trailer: header (``FLAG_TRAILER``, a CRC if *crc* is given), payload, *commit*."""
    flags = FLAG_TRAILER | (FLAG_CHECKSUM if crc is not None else 0)
    return encode_header(seq, len(payload), flags, crc or 0) + payload + bytes((commit,))


class FramedStreamContract(ChildEnds):
    """A writer SIGKILLed mid-frame: the whole messages before it arrive, the partial frame never does.
    A send cut mid-frame aborts its message; the stream stays usable for both ends."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def _expect_peer_gone(self, ch: Channel, timeout: float) -> None:
        """The next receive reports the dead writer, and so does every later one."""
        if not self.caps.detects_peer_close:
            # Nothing tells this stream that the writer died; the cut frame must still never come
            # out.  The wait is long enough for the peer to finish writing into our read-ahead.
            with pytest.raises(RecvTimeout):
                ch.recv_bytes(timeout=2.0)
            return
        with pytest.raises(PeerDied):
            ch.recv_bytes(timeout=timeout)
        with pytest.raises(PeerDied):  # and stays dead
            ch.recv_bytes(timeout=0)

    @pytest.mark.parametrize("cut", list(_CUTS.values()), ids=list(_CUTS))
    def test_writer_killed_mid_frame(self, cut: int) -> None:
        _, theirs, finish = self.child_end()
        before = [workers.make_payload(i, 100 * i) for i in range(3)]
        with spawn_peer(workers.partial_frame_then_kill, theirs, before, workers.make_payload(99, 4000), cut) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.wait_exit() == -9
            assert [workers.check_payload(ch.recv_bytes(timeout=5.0)) for _ in range(3)] == [0, 1, 2]
            self._expect_peer_gone(ch, 5.0)

    def test_writer_killed_mid_large_frame(self) -> None:
        """A frame larger than any read-ahead buffer, cut in its payload: PeerDied, not a short message."""
        _, theirs, finish = self.child_end()
        payload = workers.make_payload(7, 600_000)
        with spawn_peer(workers.partial_frame_then_kill, theirs, [], payload, HEADER_SIZE + 400_000) as peer:
            ch = finish()
            peer.wait_ready()
            self._expect_peer_gone(ch, 10.0)
            assert peer.wait_exit() == -9

    # ------------------------------------------------------------------ a send cut mid-frame
    def _stopped_reader(self) -> tuple[Channel, Peer, list[int]]:
        """A reader process (``workers.drain``) that got three messages and is then SIGSTOPped;
        this end, the peer, and the message numbers it received so far."""
        _, theirs, finish = self.child_end(max_message_size=16 * MiB)
        peer = spawn_peer(workers.drain, theirs)
        ch = finish()
        peer.wait_ready()
        before = [0, 1, 2]
        for i, size in zip(before, [100, 10 * KiB, 300 * KiB], strict=True):
            ch.send_bytes(workers.make_payload(i, size), timeout=10.0)
        peer.stop()
        return ch, peer, before

    def _reader_got(self, peer: Peer, expected: list[int]) -> None:
        """The reader received *expected* (whole: drain checks each), then the clean close."""
        seqs, error = peer.join(60.0)
        assert seqs == expected, f"the reader received messages {seqs}, expected {expected}"
        assert error == ("EndOfChannel" if self.caps.detects_peer_close else "RecvTimeout"), (
            f"the reader's stream ended with {error} after a clean close")

    def test_send_timeout_mid_frame_aborts_the_message(self) -> None:
        """A send that times out after part of its frame left: the message is not sent, the
        channel stays usable; the next send, while the reader is still stopped, cannot finish the
        aborted frame (SendTimeout, nothing of it sent); once the reader runs, sends work again."""
        ch, peer, expected = self._stopped_reader()
        with peer:
            with pytest.raises(SendTimeout):
                ch.send_bytes(workers.make_payload(90, 8 * MiB), timeout=0.3)
            with pytest.raises(SendTimeout, match="nothing of this message was sent"):
                ch.send_bytes(workers.make_payload(91, 100), timeout=0.2)
            peer.cont()
            for i, size in [(3, 100), (4, 600 * KiB), (5, 0), (6, 5 * KiB)]:
                ch.send_bytes(workers.make_payload(i, size), timeout=20.0)
                expected.append(i)
            ch.close()
            self._reader_got(peer, expected)

    @pytest.mark.parametrize("kind", [HandlerInterrupt, KeyboardInterrupt], ids=["exception", "keyboard-interrupt"])
    def test_send_interrupted_mid_frame_aborts_the_message(self, kind: type[BaseException]) -> None:
        """A signal handler's exception cuts a send to a stopped reader (before, in or after its
        first write): the message is not sent, the sender's next sends succeed, the reader gets
        every other message whole, never the cut one."""
        ch, peer, expected = self._stopped_reader()
        with peer:
            for k, delay in enumerate(_INTERRUPT_DELAYS):
                big = workers.make_payload(90 + k, 8 * MiB)

                def send_big(big: bytes = big) -> None:
                    ch.send_bytes(big, timeout=30.0)

                exc = interrupted(send_big, delay, kind)
                assert isinstance(exc, kind), "a send of 8 MiB to a stopped reader finished"
                peer.cont()
                ch.send_bytes(workers.make_payload(10 + k, 1000), timeout=20.0)
                expected.append(10 + k)
                peer.stop()
            peer.cont()
            ch.close()
            self._reader_got(peer, expected)

    def test_close_finishes_an_aborted_frame(self) -> None:
        """close() right after a cut send finishes the aborted frame, then says goodbye: the
        reader gets the earlier messages, then EndOfChannel (not PeerDied in mid-frame)."""
        ch, peer, expected = self._stopped_reader()
        with peer:
            with pytest.raises(SendTimeout):
                ch.send_bytes(workers.make_payload(90, 2 * MiB), timeout=0.3)
            peer.cont()
            ch.close()
            self._reader_got(peer, expected)

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_aborted_frame_travels_with_a_handed_end(self, method: str) -> None:
        """An end handed to a child while a cut send's aborted frame is unfinished: the child's
        first send finishes it (the parent's close, of an end it handed off, writes nothing)."""
        if not (self.caps.anonymous_pair and self.caps.inheritable):
            pytest.skip("the ends of this backend are not handed to children as pair ends")
        a, b = self.make_pair(max_message_size=16 * MiB)
        with pytest.raises(SendTimeout):
            a.send_bytes(workers.make_payload(90, 8 * MiB), timeout=0.3)
        with spawn_peer(workers.send_messages, a, ["after"], method=method) as peer:
            a.close()
            assert b.recv(timeout=30.0) == "after"
            with pytest.raises(EndOfChannel):
                b.recv(timeout=30.0)
            assert peer.join() == 1

    # ------------------------------------------------------------------ reading commit bytes
    def _write_raw(self, ch: Channel, data: bytes) -> None:
        """Write *data* on *ch*'s stream as if its send path had (the frames carry its sequence numbers)."""
        assert isinstance(ch, FdStreamChannel)
        fd = ch._wfd
        blocking = os.get_blocking(fd)
        os.set_blocking(fd, True)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.set_blocking(fd, blocking)

    def _next_seq(self, ch: Channel) -> int:
        """The sequence number of *ch*'s next frame, taken for a frame written raw."""
        assert isinstance(ch, FdStreamChannel)
        seq = ch._sseq
        ch._sseq = seq + 1
        return seq

    def test_reader_discards_aborted_frames(self) -> None:
        """Commit byte 0 discards the frame (its checksum unchecked), 1 delivers it; recv skips
        discarded frames within its deadline, and poll() does not report one as a message."""
        a, b = self.make_pair(max_message_size=1 * MiB)
        aborted = [_trailed_frame(self._next_seq(a), bytes(n), 0) for n in (5000, 0)]
        self._write_raw(a, b"".join(aborted))
        assert not b.poll(0.2), "poll() reported a message when only aborted frames were waiting"
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0.1)
        kept = workers.make_payload(1, 6000)
        seq = self._next_seq(a)
        self._write_raw(a, _trailed_frame(seq, b"x" * 6000, 0, crc=12345)  # a wrong CRC: never checked
                        + _trailed_frame(self._next_seq(a), kept, 1, crc=zlib.crc32(kept)))
        assert b.poll(5.0)
        assert b.recv_bytes(timeout=5.0) == kept
        large = workers.make_payload(2, 400 * KiB)  # over the read-ahead: received straight into its buffer
        frames = _trailed_frame(self._next_seq(a), large, 0) + _trailed_frame(self._next_seq(a), large, 1)
        writer = ResultThread(lambda: self._write_raw(a, frames), name="ipckit-raw-writer")  # more than a buffer holds
        writer.start()
        assert workers.check_payload(b.recv_bytes(timeout=10.0)) == 2
        writer.outcome(10.0)
        a.send_bytes(b"sent", timeout=5.0)
        into = bytearray(16)
        assert b.recv_bytes_into(into, timeout=5.0) == 4 and into[:4] == b"sent"
        a.close()
        with pytest.raises(EndOfChannel):
            b.recv_bytes(timeout=5.0)

    @pytest.mark.parametrize("size", [100, 400 * KiB], ids=["buffered", "large"])
    def test_reader_refuses_a_bad_commit_byte(self, size: int) -> None:
        """A commit byte other than 0 or 1 is a ProtocolError (the stream is corrupt); the
        receive side is broken from then on."""
        a, b = self.make_pair(max_message_size=1 * MiB)
        got: list[Any] = []
        frame = _trailed_frame(self._next_seq(a), bytes(size), 2)
        writer = ResultThread(lambda: self._write_raw(a, frame), name="ipckit-raw-writer")
        writer.start()
        with pytest.raises(ProtocolError):
            got.append(b.recv_bytes(timeout=10.0))
        writer.outcome(10.0)
        with pytest.raises(ChannelBroken):
            got.append(b.recv_bytes(timeout=0))
        assert not got
