"""LargeMessageContract: messages of several MiB (unless the transport caps messages below 8 MiB)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ...channel import Channel
from ..signals import signal_storm
from .helpers import MiB, ResultThread, blob, send_each

__all__ = ["LargeMessageContract"]


class LargeMessageContract:
    """Messages of several MiB (backends without a small transport limit)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    @pytest.mark.parametrize("size", [1 * MiB + 7, 8 * MiB])
    def test_large_roundtrip(self, size: int) -> None:
        a, b = self.make_pair()
        data = blob(size)
        sender = ResultThread(lambda: a.send_bytes(data, timeout=20.0))
        sender.start()
        assert b.recv_bytes(timeout=20.0) == data
        sender.outcome()

    def test_large_recv_into_and_view(self) -> None:
        a, b = self.make_pair()
        data = blob(3 * MiB)
        sender = ResultThread(lambda: send_each(a, [data] * 2))
        sender.start()
        buf = bytearray(4 * MiB)
        assert b.recv_bytes_into(buf, timeout=20.0) == len(data)
        assert buf[: len(data)] == data
        assert b.recv_view(timeout=20.0) == data
        sender.outcome()

    def test_large_under_signal_storm(self) -> None:
        a, b = self.make_pair()
        data = blob(8 * MiB)
        sender = ResultThread(lambda: a.send_bytes(data, timeout=20.0))
        with signal_storm(hz=200):
            sender.start()
            got = b.recv_bytes(timeout=20.0)
        assert got == data
        sender.outcome()
