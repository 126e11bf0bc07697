"""WaitContract: ``ipckit.wait()`` on every backend (docs/aio.md).

A channel is ready when ``recv`` would not block (a message, the peer's close, its death), a
listener when ``accept`` would not; ``wait`` returns the ready ones, ``[]`` at the timeout.  The
rows run in-process, with a waiter in another thread, and against a real peer process (fork and
spawn) where the backend crosses processes; no row sleeps to order events.
"""

from __future__ import annotations

import selectors
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import ipckit

from ...channel import Channel, Listener
from ...errors import ChannelClosed, EndOfChannel, PeerDied, UnsupportedOperation
from ...options import Capabilities
from ...waiting import wait
from .. import workers
from ..peers import spawn_peer
from .cross_process import ChildEnds
from .helpers import ResultThread, wait_until_blocked

__all__ = ["WaitContract"]


class WaitContract(ChildEnds):
    """``ipckit.wait()``: the ready channels and listeners, on every backend."""

    make_pair: Callable[..., tuple[Channel, Channel]]
    caps: Capabilities
    options: ClassVar[dict[str, Any]]
    fresh_url: Callable[[], str]
    own: Callable[[Any], Any]

    def test_wait_times_out_empty(self) -> None:
        _, b = self.make_pair()
        assert wait([b], timeout=0) == []
        start = time.monotonic()
        assert wait([b], timeout=0.05) == []
        assert time.monotonic() - start >= 0.045

    def test_wait_returns_the_ready_ones(self) -> None:
        pairs = [self.make_pair() for _ in range(2)]  # (mq:// queues count against RLIMIT_MSGQUEUE)
        pairs[1][0].send_bytes(b"one", timeout=5.0)
        ends = [b for _, b in pairs]
        assert wait(ends, timeout=5.0) == [ends[1]]
        assert ends[1].recv_bytes(timeout=0) == b"one"
        assert wait(ends, timeout=0) == []

    def test_wait_sees_read_ahead(self) -> None:
        """A second message the kit already holds (read ahead of the descriptor) is ready."""
        a, b = self.make_pair()
        for i in range(3):
            a.send(i, timeout=5.0)
        for i in range(3):
            assert wait([b], timeout=5.0) == [b]
            assert b.recv(timeout=0) == i
        assert wait([b], timeout=0) == []

    def test_waiter_in_another_thread_wakes_on_send(self) -> None:
        a, b = self.make_pair()
        for i in range(20):  # the doorbell is armed and disarmed each time
            waiter = ResultThread(lambda: wait([b], timeout=10.0), name="ipckit-wait")
            waiter.start()
            if i % 2:
                wait_until_blocked(waiter, names=("wait",))
            a.send_bytes(b"%d" % i, timeout=5.0)
            assert waiter.outcome(10.0) == [b]
            assert b.recv_bytes(timeout=0) == b"%d" % i

    def test_wait_sees_peer_close(self) -> None:
        a, b = self.make_pair()
        waiter = ResultThread(lambda: wait([b], timeout=10.0), name="ipckit-wait")
        waiter.start()
        wait_until_blocked(waiter, names=("wait",))
        a.close()
        assert waiter.outcome(10.0) == [b]
        with pytest.raises(EndOfChannel):
            b.recv(timeout=0)

    def test_wait_on_closed_channel_raises(self) -> None:
        _, b = self.make_pair()
        b.close()
        with pytest.raises(ChannelClosed):
            wait([b], timeout=0)

    def test_close_from_another_thread_ends_the_wait(self) -> None:
        _, b = self.make_pair()
        assert wait([b], timeout=0.01) == []  # the descriptor is looked up here, before the race
        waiter = ResultThread(lambda: wait([b], timeout=10.0), name="ipckit-wait")
        waiter.start()
        wait_until_blocked(waiter, names=("wait",))
        b.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome(10.0)

    def test_fast_path_unchanged_after_waits(self) -> None:
        """After waits armed and disarmed the doorbell, plain sends and receives still work and
        a later wait still wakes (the receiver's sleeping word is back to 0 between waits)."""
        a, b = self.make_pair()
        assert wait([b], timeout=0.01) == []
        for i in range(200):
            a.send(i, timeout=5.0)
            assert b.recv(timeout=5.0) == i
        a.send(-1, timeout=5.0)
        assert wait([b], timeout=5.0) == [b]
        assert b.recv(timeout=0) == -1

    def test_wait_on_listener(self) -> None:
        if not self.caps.named:
            pytest.skip("no listeners: the scheme is not named")
        lst: Listener = self.own(ipckit.listen(self.fresh_url(), **self.options))
        assert wait([lst], timeout=0) == []
        client: list[Channel] = []
        dialer = threading.Thread(target=lambda: client.append(ipckit.connect(lst.url, timeout=10.0, **self.options)),
                                  name="ipckit-dial")
        dialer.start()
        try:
            assert wait([lst], timeout=10.0) == [lst]
            server = self.own(lst.accept(timeout=5.0))
        finally:
            dialer.join(10.0)
        c = self.own(client[0])
        c.send(7, timeout=5.0)
        # A listener of one peer that has its peer is ready for good (accept raises at once).
        watched = [server, lst] if self.caps.multi_client else [server]
        assert wait(watched, timeout=5.0) == [server]
        assert server.recv(timeout=0) == 7

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_wait_on_a_peer_process(self, method: str) -> None:
        """A real peer (workers.echo) in another process rings us: each reply wakes the wait."""
        if not self.caps.cross_process:
            pytest.skip("the scheme's ends live in one process")
        if method == "fork" and not (self.caps.inheritable or self.caps.named):
            pytest.skip("no way to hand an end to a child")
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.echo, theirs, method=method) as peer:
            ch = finish()
            peer.wait_ready()
            assert wait([ch], timeout=0) == []
            for i in range(30):
                ch.send(i, timeout=10.0)
                assert wait([ch], timeout=10.0) == [ch]
                assert ch.recv(timeout=0) == i
            ch.close()
            peer.join()

    def test_fileno_works_with_selectors(self) -> None:
        """Where ``fileno()`` exists (every backend with a descriptor or a doorbell), a selector
        sees each message, the read-ahead and a clean close, and nothing once all is received."""
        a, b = self.make_pair()
        try:
            fd = b.fileno()
        except UnsupportedOperation as exc:
            if self.caps.selectable:
                raise
            pytest.skip(f"no descriptor and no doorbell: {exc}")
        assert isinstance(fd, int) and fd >= 0
        with selectors.DefaultSelector() as sel:
            sel.register(b, selectors.EVENT_READ)
            assert sel.select(0) == []
            a.send(1, timeout=5.0)
            a.send(2, timeout=5.0)
            assert len(sel.select(5.0)) == 1
            assert b.recv(timeout=0) == 1
            assert len(sel.select(5.0)) == 1
            assert b.recv(timeout=0) == 2
            assert sel.select(0) == []
            for i in range(50):
                a.send_bytes(b"%d" % i, timeout=5.0)
                assert len(sel.select(5.0)) == 1
                assert b.recv_bytes(timeout=0) == b"%d" % i
            assert sel.select(0) == []
            a.close()
            assert len(sel.select(5.0)) == 1
            sel.unregister(b)
        with pytest.raises(EndOfChannel):
            b.recv(timeout=0)

    def _selectable_peer(self) -> None:
        if not self.caps.selectable:
            pytest.skip("not capabilities.selectable: a selector is not promised to see a peer's death")
        if not (self.caps.cross_process and (self.caps.inheritable or self.caps.named)):
            pytest.skip("no peer process to kill")

    def test_fileno_readable_on_peer_death(self) -> None:
        """``capabilities.selectable``: a selector already sleeping on ``fileno()`` wakes when the
        peer is SIGKILLed (no message, no goodbye), and ``recv`` then raises PeerDied."""
        self._selectable_peer()
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()
            with selectors.DefaultSelector() as sel:
                sel.register(ch.fileno(), selectors.EVENT_READ)
                assert sel.select(0) == []
                waiter = ResultThread(lambda: sel.select(10.0), name="ipckit-select")
                waiter.start()
                wait_until_blocked(waiter, names=("select", "poll"))
                killed_at = time.monotonic()
                peer.kill()
                assert len(waiter.outcome(10.0)) == 1
                assert waiter.finished_at - killed_at < 3.0
            assert peer.wait_exit() == -9
            with pytest.raises(PeerDied):
                ch.recv(timeout=5.0)

    def test_fileno_after_peer_sent_and_died(self) -> None:
        """A peer that sent and was SIGKILLed: readable for each message, still readable once they
        are all received (the death waits), then PeerDied."""
        self._selectable_peer()
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.send_then_kill, theirs, [b"one", b"two"]) as peer:
            ch = finish()
            fd = ch.fileno()  # before the peer sends: its sends ring what a selector sees
            peer.wait_ready()
            assert peer.wait_exit() == -9
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                for expected in (b"one", b"two"):
                    assert len(sel.select(5.0)) == 1
                    assert ch.recv_bytes(timeout=0) == expected
                assert len(sel.select(5.0)) == 1
            with pytest.raises(PeerDied):
                ch.recv_bytes(timeout=0)
