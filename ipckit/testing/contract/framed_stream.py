"""FramedStreamContract: a peer killed in the middle of writing a frame never yields a partial
message (required when the channel frames a byte stream across processes: ``capabilities``
not ``message_oriented`` and ``cross_process``).

Messages over a byte stream (pipes, FIFOs, stream sockets) are frames: a 20-byte header, then
the payload.  The peer here writes whole messages, then only the first bytes of one more frame
with a raw ``write``, and is SIGKILLed.  The receiver gets every whole message, then ``PeerDied``
(or, on a stream that cannot detect the peer, a timeout) — never the cut frame as a message, and
the error stays.

The peer writes the cut frame on the channel's write descriptor with ipckit's framing, so the
backend's channel must be an :class:`~ipckit.backends.common.stream.FdStreamChannel` (the stream
kit): that is what a framed-stream backend builds on.
"""

from __future__ import annotations

import pytest

from ...channel import Channel
from ...errors import PeerDied, RecvTimeout
from ...framing import HEADER_SIZE
from .. import workers
from ..peers import spawn_peer
from .cross_process import ChildEnds

__all__ = ["FramedStreamContract"]

#: Where the frame is cut: in the header (first byte, middle, last byte), right after it, in the payload.
_CUTS = {"header-first-byte": 1, "mid-header": 10, "header-less-one": HEADER_SIZE - 1, "header-only": HEADER_SIZE,
         "mid-payload": HEADER_SIZE + 500}


class FramedStreamContract(ChildEnds):
    """A writer SIGKILLed mid-frame: the whole messages before it arrive, the partial frame never does."""

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
