"""PeerCloseContract: a clean close of the peer is told apart (``capabilities.detects_peer_close``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ...channel import Channel
from ...errors import ChannelBroken, EndOfChannel
from .helpers import ResultThread, wait_until_blocked

__all__ = ["PeerCloseContract"]


class PeerCloseContract:
    """A clean close of the peer is told apart (``capabilities.detects_peer_close``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

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
        a, b = self.make_pair()
        b.close()
        with pytest.raises((EndOfChannel, ChannelBroken)):
            for _ in range(100):  # a stream may accept a few bytes before noticing
                a.send_bytes(b"x" * 1000, timeout=1.0)
