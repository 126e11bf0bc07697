"""PeerCloseContract: a clean close of the peer is told apart (``capabilities.detects_peer_close``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from ...channel import Channel
from ...errors import EndOfChannel
from ...options import Capabilities
from .helpers import KiB, ResultThread, blob, wait_until_blocked

__all__ = ["PeerCloseContract"]


class PeerCloseContract:
    """A clean close of the peer is told apart (``capabilities.detects_peer_close``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    if TYPE_CHECKING:
        @property
        def caps(self) -> Capabilities: ...  # ChannelContract's

    def test_peer_close_delivers_in_flight_then_end(self) -> None:
        a, b = self.make_pair()
        for i in range(3):
            a.send(i, timeout=5.0)
        a.close()
        assert [b.recv(timeout=5.0) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(EndOfChannel):
            b.recv(timeout=5.0)
        with pytest.raises(EndOfChannel):  # and stays at the end
            b.recv(timeout=0)
        assert b.poll(0) is True  # recv would not block: it raises at once

    def test_iteration_ends_at_end_of_channel(self) -> None:
        a, b = self.make_pair()
        for i in range(5):
            a.send(i, timeout=5.0)
        a.close()
        assert list(b) == [0, 1, 2, 3, 4]

    def test_peer_close_wakes_blocked_recv(self) -> None:
        a, b = self.make_pair()
        waiter = ResultThread(lambda: b.recv(timeout=10.0), name="ipckit-blocked-recv")
        waiter.start()
        wait_until_blocked(waiter)
        a.close()
        with pytest.raises(EndOfChannel):
            waiter.outcome()

    def test_send_after_peer_closed(self) -> None:
        """A send to a peer that closed cleanly raises EndOfChannel (never PeerDied), and keeps doing so."""
        a, b = self.make_pair()
        b.close()
        with pytest.raises(EndOfChannel):
            a.send_bytes(b"x" * 1000, timeout=1.0)
        with pytest.raises(EndOfChannel):
            a.send_bytes(b"x", timeout=1.0)
        with pytest.raises(EndOfChannel):
            a.recv_bytes(timeout=1.0)

    @pytest.mark.parametrize("unread", [0, 2])
    def test_send_to_closed_peer_keeps_its_messages_for_recv(self, unread: int) -> None:
        """The peer sent messages (and left *unread* of ours unread), then closed: the send raises
        EndOfChannel, and every message it sent is still received, then EndOfChannel.  On a stream
        the goodbye comes after those messages (some already in the read-ahead buffer, some still
        in the kernel); telling a close from a crash must not consume them."""
        a, b = self.make_pair()
        for i in range(unread):
            a.send_bytes(b"never read %d" % i, timeout=5.0)
        # Everything is sent before the first read: within what the transport holds unread.
        room = self.caps.buffered_bytes
        sizes = (0, 10, 5000, 100 * KiB, 3)
        if room is not None:
            sizes = (0, 10, min(5000, room // 4), min(100 * KiB, room // 2), 3)
        messages = [blob(n, n) for n in sizes]
        for m in messages[:3]:
            b.send_bytes(m, timeout=5.0)
        assert a.recv_bytes(timeout=5.0) == messages[0]  # a stream may read the next ones ahead
        for m in messages[3:]:
            b.send_bytes(m, timeout=5.0)
        b.close()
        with pytest.raises(EndOfChannel):
            a.send_bytes(b"to a peer that closed", timeout=5.0)
        assert [a.recv_bytes(timeout=5.0) for _ in messages[1:]] == messages[1:]
        with pytest.raises(EndOfChannel):
            a.recv_bytes(timeout=5.0)
        with pytest.raises(EndOfChannel):
            a.send_bytes(b"again", timeout=5.0)

    def test_recv_after_peer_closed_with_ours_unread(self) -> None:
        """The peer closed with messages of ours unread: recv (no send first) still gets every
        message it sent, then EndOfChannel (a socket reports the reset before the queued data)."""
        a, b = self.make_pair()
        a.send_bytes(b"never read", timeout=5.0)
        for i in range(3):
            b.send_bytes(b"%d" % i, timeout=5.0)
        b.close()
        assert [a.recv_bytes(timeout=5.0) for _ in range(3)] == [b"0", b"1", b"2"]
        with pytest.raises(EndOfChannel):
            a.recv_bytes(timeout=5.0)
