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

    def test_peer_died_stays_for_every_send(self) -> None:
        """After the first PeerDied from a send, every later send raises PeerDied too (none is
        accepted into a channel nobody reads), and so does a receive (docs/contract.md P5)."""
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_then_kill, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()
            ch.send_bytes(b"one", timeout=5.0)
            assert peer.wait_exit() == -9
            with pytest.raises(PeerDied):
                for _ in range(1000):  # a buffered transport may accept some bytes first
                    ch.send_bytes(b"x" * 100, timeout=2.0)
            for i in range(300):  # more than a ring's sends between two checks of the reader
                with pytest.raises(PeerDied):
                    if i % 3 == 0:
                        ch.send({"n": i}, timeout=2.0)
                    else:
                        ch.send_bytes(b"y" * i, timeout=2.0)
            with pytest.raises(PeerDied):
                ch.recv_bytes(timeout=0)

    def test_send_after_a_receive_saw_the_peer_die(self) -> None:
        """A receive that raised PeerDied (everything the peer sent received) makes the next send
        raise it at once: the end knows its peer is dead, whichever call found out."""
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.send_then_kill, theirs, [b"last"]) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.wait_exit() == -9
            assert ch.recv_bytes(timeout=10.0) == b"last"
            with pytest.raises(PeerDied):
                ch.recv_bytes(timeout=10.0)
            for _ in range(300):
                with pytest.raises(PeerDied):
                    ch.send_bytes(b"z", timeout=2.0)
