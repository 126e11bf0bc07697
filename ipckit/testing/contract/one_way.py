"""OneWayContract: what a one-way channel (a sending end, one or more receiving ends) must do.

The form of the contract for channels that carry messages one way only, such as the ZeroMQ
pub/sub fan-out (``ipckit.publish`` / ``ipckit.subscribe``).  It is not a mixin of
:class:`ChannelContract` (whose tests send both ways); a test class names how its ends are
opened, and the contract checks, in one process and with a real peer process (fork and spawn):

* whole messages in order, byte for byte (``b""`` included), objects through the serializer,
  8 MiB messages, ``MessageTooLarge`` refused before anything is sent;
* a receiver gets everything sent after its open returned (no slow joiner), and loses nothing
  while it is at most :attr:`~OneWayContract.lossless_burst` messages behind;
* timeouts within the bounds of :func:`~ipckit.testing.timing_bounds`, ``poll``;
* the wrong direction raises ``UnsupportedOperation``: ``send`` on a receiving end, ``recv`` and
  ``poll`` on the sending end;
* the sender's close is ``EndOfChannel`` after its messages, every time; calls on a closed end
  raise ``ChannelClosed``; ``close()`` from another thread wakes a blocked ``recv``;
* a SIGKILLed sender is ``PeerDied`` after what arrived, within :attr:`peer_death_bound`; a
  SIGKILLed receiver never stalls the sender beyond that bound.

A test module::

    class TestFanout(OneWayContract):
        sender_factory = "ipckit:publish"        # "module:function" (spawned children import it)
        receiver_factory = "ipckit:subscribe"    # called as f(url, timeout=..., **options)

        def fresh_url(self) -> str: ...          # an address the sender binds
"""

from __future__ import annotations

import importlib
import multiprocessing
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from ...channel import Channel
from ...errors import ChannelClosed, EndOfChannel, MessageTooLarge, PeerDied, RecvTimeout, UnsupportedOperation
from .. import workers
from ..peers import kill_self, ready, spawn_peer
from .helpers import MiB, ResultThread, blob, takes_timeout, wait_until_blocked

__all__ = ["OneWayContract"]

_METHODS = ["fork", "spawn"]


def _resolve(spec: str) -> Callable[..., Channel]:
    module, _, name = spec.partition(":")
    fn: Callable[..., Channel] = getattr(importlib.import_module(module), name)
    return fn


# -- peers (module level: spawned children import them by name) --------------------------------
def _sender_child(spec: str, url: str, options: dict[str, Any], count: int, go: Any, then: str) -> int:
    """Bind a sender at *url*, READY, wait for the test's go, send *count* payloads, then close
    (``then="close"``) or wait for a second go and SIGKILL itself (``then="kill"``)."""
    sender = _resolve(spec)(url, **options)
    ready()
    if not go.poll(30.0):
        raise AssertionError("the test never said go")
    go.recv()
    for i in range(count):
        sender.send_bytes(workers.make_payload(i, (i * 997) % 5000), timeout=20.0)
    if then == "kill":
        go.poll(30.0)
        kill_self()
    sender.close()
    return count


def _receiver_child(spec: str, url: str, options: dict[str, Any], count: int) -> int:
    """Open a receiver, READY, receive *count* payloads in order, then the sender's close."""
    receiver = _resolve(spec)(url, timeout=20.0, **options)
    ready()
    for i in range(count):
        got = workers.check_payload(receiver.recv_bytes(timeout=30.0))
        if got != i:
            raise AssertionError(f"message {got} where {i} was due")
    try:
        receiver.recv_bytes(timeout=30.0)
    except EndOfChannel:
        pass
    else:
        raise AssertionError("a message after the last one")
    receiver.close()
    return count


def _idle_receiver_child(spec: str, url: str, options: dict[str, Any]) -> None:
    """Open a receiver, READY, and never read (the test kills it)."""
    receiver = _resolve(spec)(url, timeout=20.0, **options)
    ready()
    time.sleep(60)  # the test SIGKILLs this process; the sleep is only its idle life
    receiver.close()


class OneWayContract:
    """The one-way form of the contract (see the module docstring)."""

    #: ``"module:function"`` that binds a sending end: ``f(url, **options)``
    sender_factory: ClassVar[str]
    #: ``"module:function"`` that opens a receiving end: ``f(url, timeout=..., **options)``
    receiver_factory: ClassVar[str]
    #: options for every sending / receiving end the contract opens
    sender_options: ClassVar[dict[str, Any]] = {}
    receiver_options: ClassVar[dict[str, Any]] = {}
    #: messages a receiver may fall behind by without losing any
    lossless_burst: ClassVar[int] = 100
    #: seconds within which a dead peer must show (PeerDied, or the sender going on)
    peer_death_bound: ClassVar[float] = 5.0

    def fresh_url(self) -> str:
        """An address a sender can bind (override)."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _one_way_ends(self) -> Any:
        self._opened: list[Channel] = []
        yield
        for end in reversed(self._opened):
            end.close()

    def open_sender(self, **options: Any) -> Channel:
        end = _resolve(self.sender_factory)(self.fresh_url(), **{**self.sender_options, **options})
        self._opened.append(end)
        return end

    def open_receiver(self, url: str, **options: Any) -> Channel:
        end = _resolve(self.receiver_factory)(url, timeout=10.0, **{**self.receiver_options, **options})
        self._opened.append(end)
        return end

    def open_one_way(self, **options: Any) -> tuple[Channel, Channel]:
        sender = self.open_sender(**options)
        return sender, self.open_receiver(sender.url, **options)

    # -- in one process --------------------------------------------------------------------------
    def test_messages_arrive_whole_and_in_order(self) -> None:
        tx, rx = self.open_one_way()
        sizes = [0, 1, 7, 100, 4095, 4096, 65535, 65536, 65537, 300_000] + [i % 50 for i in range(60)]
        assert len(sizes) <= self.lossless_burst
        messages = [blob(n, i) for i, n in enumerate(sizes)]
        for m in messages:
            tx.send_bytes(m, timeout=5.0)
        for m in messages:
            assert rx.recv_bytes(timeout=5.0) == m

    def test_objects_go_through_the_serializer(self) -> None:
        tx, rx = self.open_one_way()
        objects = [{"n": 1, "s": "x"}, [1, 2, 3], "text", 2**40, None]
        for obj in objects:
            tx.send(obj, timeout=5.0)
        assert [rx.recv(timeout=5.0) for _ in objects] == objects

    def test_large_message(self) -> None:
        tx, rx = self.open_one_way(max_message_size=16 * MiB)
        data = blob(8 * MiB, 3)
        tx.send_bytes(data, timeout=20.0)
        got = rx.recv_bytes(timeout=20.0)
        assert len(got) == len(data) and got == data

    def test_too_large_is_refused_and_the_channel_stays_usable(self) -> None:
        tx, rx = self.open_one_way(max_message_size=1000)
        with pytest.raises(MessageTooLarge):
            tx.send_bytes(b"x" * 1001, timeout=5.0)
        tx.send_bytes(b"ok", timeout=5.0)
        assert rx.recv_bytes(timeout=5.0) == b"ok"

    def test_receiver_gets_what_was_sent_right_after_it_opened(self) -> None:
        tx = self.open_sender()
        for i in range(3):
            rx = self.open_receiver(tx.url)
            tx.send_bytes(b"first %d" % i, timeout=5.0)  # at once: no slow joiner
            assert rx.recv_bytes(timeout=5.0) == b"first %d" % i

    def test_recv_timeout_within_bounds(self) -> None:
        _, rx = self.open_one_way()
        with takes_timeout(0.3), pytest.raises(RecvTimeout):
            rx.recv_bytes(timeout=0.3)
        with pytest.raises(RecvTimeout):
            rx.recv_bytes(timeout=0)

    def test_poll(self) -> None:
        tx, rx = self.open_one_way()
        assert rx.poll(0) is False
        assert rx.poll(0.05) is False
        tx.send_bytes(b"m", timeout=5.0)
        assert rx.poll(5.0) is True
        assert rx.recv_bytes(timeout=0) == b"m"

    def test_the_wrong_direction_is_unsupported(self) -> None:
        tx, rx = self.open_one_way()
        with pytest.raises(UnsupportedOperation):
            rx.send_bytes(b"x", timeout=1.0)
        with pytest.raises(UnsupportedOperation):
            rx.send({"x": 1}, timeout=1.0)
        with pytest.raises(UnsupportedOperation):
            tx.recv_bytes(timeout=0)
        with pytest.raises(UnsupportedOperation):
            tx.poll(0)
        tx.send_bytes(b"still fine", timeout=5.0)
        assert rx.recv_bytes(timeout=5.0) == b"still fine"

    def test_sender_close_is_end_of_channel_after_its_messages(self) -> None:
        tx, rx = self.open_one_way()
        for i in range(3):
            tx.send_bytes(b"%d" % i, timeout=5.0)
        tx.close()
        assert [rx.recv_bytes(timeout=5.0) for _ in range(3)] == [b"0", b"1", b"2"]
        for _ in range(2):
            with pytest.raises(EndOfChannel):
                rx.recv_bytes(timeout=5.0)
        assert rx.poll(0) is True

    def test_closed_ends_raise_channel_closed(self) -> None:
        tx, rx = self.open_one_way()
        rx.close()
        rx.close()
        with pytest.raises(ChannelClosed):
            rx.recv_bytes(timeout=0)
        tx.send_bytes(b"nobody listens", timeout=5.0)  # a receiver leaving never breaks the sender
        tx.close()
        tx.close()
        with pytest.raises(ChannelClosed):
            tx.send_bytes(b"x", timeout=0)

    def test_close_wakes_a_blocked_recv(self) -> None:
        _, rx = self.open_one_way()
        waiter = ResultThread(lambda: rx.recv_bytes(timeout=10.0), name="ipckit-one-way-recv")
        waiter.start()
        wait_until_blocked(waiter)
        closed_at = time.monotonic()
        rx.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome(5.0)
        assert waiter.finished_at - closed_at < 1.0

    # -- with a peer process ---------------------------------------------------------------------
    def _go_pipe(self, method: str) -> tuple[Any, Any]:
        return multiprocessing.get_context(method).Pipe(duplex=False)  # (reader, writer)

    @pytest.mark.parametrize("method", _METHODS)
    def test_child_sender_then_close(self, method: str) -> None:
        url = self.fresh_url()
        go_r, go_w = self._go_pipe(method)
        count = min(60, self.lossless_burst)
        with spawn_peer(_sender_child, self.sender_factory, url, self.sender_options, count, go_r, "close",
                        method=method) as peer:
            go_r.close()
            peer.wait_ready()
            rx = self.open_receiver(url)
            go_w.send("go")
            for i in range(count):
                assert workers.check_payload(rx.recv_bytes(timeout=20.0)) == i
            with pytest.raises(EndOfChannel):
                rx.recv_bytes(timeout=20.0)
            assert peer.join() == count
        go_w.close()

    @pytest.mark.parametrize("method", _METHODS)
    def test_child_receiver(self, method: str) -> None:
        tx = self.open_sender()
        count = min(60, self.lossless_burst)
        with spawn_peer(_receiver_child, self.receiver_factory, tx.url, self.receiver_options, count,
                        method=method) as peer:
            peer.wait_ready()  # its open returned: everything sent from now on is its
            for i in range(count):
                tx.send_bytes(workers.make_payload(i, (i * 997) % 5000), timeout=20.0)
            tx.close()
            assert peer.join() == count

    @pytest.mark.parametrize("method", _METHODS)
    def test_killed_sender_is_peer_died(self, method: str) -> None:
        url = self.fresh_url()
        go_r, go_w = self._go_pipe(method)
        with spawn_peer(_sender_child, self.sender_factory, url, self.sender_options, 3, go_r, "kill",
                        method=method) as peer:
            go_r.close()
            peer.wait_ready()
            rx = self.open_receiver(url)
            go_w.send("go")
            for i in range(3):
                assert workers.check_payload(rx.recv_bytes(timeout=20.0)) == i
            go_w.send("die")
            killed_at = time.monotonic()
            assert peer.wait_exit() == -9
            with pytest.raises(PeerDied):
                rx.recv_bytes(timeout=self.peer_death_bound + 5.0)
            assert time.monotonic() - killed_at < self.peer_death_bound
            with pytest.raises(PeerDied):  # and stays dead
                rx.recv_bytes(timeout=0)
        go_w.close()
        # The dead sender's address is free again: a new sender binds it (and reclaims what the
        # killed one left, e.g. a socket file), and closing that one leaves nothing.
        _resolve(self.sender_factory)(url, **self.sender_options).close()

    @pytest.mark.parametrize("method", _METHODS)
    def test_killed_receiver_does_not_stall_the_sender(self, method: str) -> None:
        tx = self.open_sender()
        with spawn_peer(_idle_receiver_child, self.receiver_factory, tx.url, self.receiver_options,
                        method=method) as peer:
            peer.wait_ready()
            peer.kill()
            peer.wait_exit()
            start = time.monotonic()
            for i in range(3 * self.lossless_burst):
                tx.send_bytes(b"%d" % i, timeout=self.peer_death_bound)
            assert time.monotonic() - start < self.peer_death_bound
            rx = self.open_receiver(tx.url)  # and the sender still serves a new receiver
            tx.send_bytes(b"after", timeout=5.0)
            assert rx.recv_bytes(timeout=5.0) == b"after"
