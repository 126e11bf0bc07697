"""PeerDeathContract: a SIGKILLed peer surfaces as PeerDied after its fully sent messages
(``capabilities.inheritable`` and ``detects_peer_close``)."""

from __future__ import annotations

import time

import pytest

from ...errors import PeerDied
from .. import workers
from ..peers import spawn_peer
from .cross_process import ChildEnds
from .helpers import ResultThread, wait_until_blocked

__all__ = ["PeerDeathContract"]


class PeerDeathContract(ChildEnds):
    """A SIGKILLed peer surfaces as PeerDied after its fully sent messages (docs/contract.md P5)."""

    @pytest.mark.parametrize("count", [0, 3])
    def test_sender_killed_after_sending(self, count: int) -> None:
        _, theirs, finish = self.child_end()
        messages = [workers.make_payload(i, 1000 * i) for i in range(count)]
        with spawn_peer(workers.send_then_kill, theirs, messages) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.wait_exit() == -9
            for i in range(count):
                assert workers.check_payload(ch.recv_bytes(timeout=10.0)) == i
            start = time.monotonic()
            with pytest.raises(PeerDied):
                ch.recv_bytes(timeout=10.0)
            assert time.monotonic() - start < 2.0
            with pytest.raises(PeerDied):  # and stays dead
                ch.recv_bytes(timeout=0)

    def test_blocked_recv_sees_peer_death(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()
            waiter = ResultThread(lambda: ch.recv(timeout=10.0), name="ipckit-blocked-recv")
            waiter.start()
            wait_until_blocked(waiter)
            killed_at = time.monotonic()
            peer.kill()
            with pytest.raises(PeerDied):
                waiter.outcome(10.0)
            assert waiter.finished_at - killed_at < 2.0
            peer.wait_exit()

    def test_send_to_killed_reader(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_then_kill, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()
            ch.send_bytes(b"one", timeout=5.0)
            assert peer.wait_exit() == -9
            start = time.monotonic()
            with pytest.raises(PeerDied):
                for _ in range(1000):  # a buffered transport may accept some bytes first
                    ch.send_bytes(b"x" * 4096, timeout=2.0)
            assert time.monotonic() - start < 3.0
