"""DuplexContract: both ends send and receive (required when ``capabilities.duplex``)."""

from __future__ import annotations

from collections.abc import Callable

from ...channel import Channel
from .. import workers
from .helpers import KiB, ResultThread, blob, send_each

__all__ = ["DuplexContract"]


class DuplexContract:
    """Both ends send and receive (``capabilities.duplex``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def test_both_directions(self) -> None:
        a, b = self.make_pair()
        a.send("to b", timeout=5.0)
        b.send("to a", timeout=5.0)
        assert b.recv(timeout=5.0) == "to b"
        assert a.recv(timeout=5.0) == "to a"

    def test_ping_pong(self) -> None:
        a, b = self.make_pair()
        for i in range(500):
            a.send_bytes(i.to_bytes(4, "little"), timeout=5.0)
            assert b.recv_bytes(timeout=5.0) == i.to_bytes(4, "little")
            b.send_bytes(b"ack", timeout=5.0)
            assert a.recv_bytes(timeout=5.0) == b"ack"

    def test_send_while_another_thread_receives(self) -> None:
        a, b = self.make_pair()
        n = 2000
        echo = ResultThread(lambda: send_each(b, (b.recv_bytes(timeout=10.0) for _ in range(n))))
        echo.start()
        receiver = ResultThread(lambda: [a.recv_bytes(timeout=10.0) for _ in range(n)])
        receiver.start()
        for i in range(n):
            a.send_bytes(workers.make_payload(i, i % 100), timeout=10.0)
        assert [workers.check_payload(m) for m in receiver.outcome(20.0)] == list(range(n))
        echo.outcome()

    def test_both_sides_send_large_at_once(self) -> None:
        # Both directions full at the same time must not deadlock the framing layer.
        a, b = self.make_pair()
        data = blob(512 * KiB)
        ta = ResultThread(lambda: send_each(a, [data] * 4))
        tb = ResultThread(lambda: send_each(b, [data] * 4))
        ta.start()
        tb.start()
        for _ in range(4):
            assert a.recv_bytes(timeout=10.0) == data
            assert b.recv_bytes(timeout=10.0) == data
        ta.outcome()
        tb.outcome()
