"""Every wait of a ring channel goes through its one WaitStrategy: each receive (recv, recv_bytes,
recv_bytes_into, recv_view), poll and a listener's accept, on both ring schemes.

``WaitStrategy.wait`` is wrapped to record its calls; the wait itself runs unchanged.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ipckit
from ipckit.backends.common.ring import waiting
from ipckit.backends.common.ring.channel import RingChannel
from ipckit.backends.common.ring.waiting import WaitStrategy
from ipckit.channel import Channel
from ipckit.errors import ChannelClosed, ChannelTimeout, EndOfChannel, IPCError, PeerDied, RecvTimeout
from ipckit.testing import workers
from ipckit.testing.contract.helpers import ResultThread, takes_timeout, wait_until_blocked
from ipckit.testing.peers import spawn_peer

pytest.importorskip("posix_ipc")

pytestmark = pytest.mark.timeout(60)

SCHEMES = ("shm", "sysv+shm")
CAPACITY = 64 * 1024
BIG = 3 * CAPACITY + 100  # streamed through the ring in chunks

RECEIVES: dict[str, Callable[[Channel, float | None], Any]] = {
    "recv": lambda ch, t: ch.recv(timeout=t),
    "recv_bytes": lambda ch, t: ch.recv_bytes(timeout=t),
    "recv_bytes_into": lambda ch, t: ch.recv_bytes_into(bytearray(BIG), timeout=t),
    "recv_view": lambda ch, t: bytes(ch.recv_view(timeout=t)),
}


class Waits:
    """The WaitStrategy.wait calls of one test: (strategy, deadline, watch) each."""

    def __init__(self) -> None:
        self.calls: list[tuple[WaitStrategy, float | None, Any]] = []

    def by(self, strategy: WaitStrategy) -> list[tuple[WaitStrategy, float | None, Any]]:
        return [c for c in self.calls if c[0] is strategy]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Waits:
    log = Waits()
    original = WaitStrategy.wait

    def wait(self: WaitStrategy, ready: Callable[[], bool], deadline: float | None, *args: Any) -> bool:
        log.calls.append((self, deadline, args[3] if len(args) > 3 else None))
        return original(self, ready, deadline, *args)

    monkeypatch.setattr(WaitStrategy, "wait", wait)
    return log


@pytest.fixture(params=SCHEMES)
def ends(request: pytest.FixtureRequest) -> Iterator[tuple[RingChannel, RingChannel]]:
    a, b = ipckit.pair(f"{request.param}://", capacity=CAPACITY)
    assert isinstance(a, RingChannel) and isinstance(b, RingChannel)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("op", list(RECEIVES))
def test_receive_times_out_through_the_wait_strategy(ends: tuple[RingChannel, RingChannel], waits: Waits,
                                                    op: str) -> None:
    _, b = ends
    start = time.monotonic()
    with takes_timeout(0.05), pytest.raises(RecvTimeout):  # one deadline, whichever steps the wait took
        RECEIVES[op](b, 0.05)
    mine = waits.by(b._wait)
    assert mine and mine == waits.calls, "the receive waited outside its channel's WaitStrategy"
    deadline = mine[0][1]
    assert deadline is not None and start + 0.04 <= deadline <= start + 0.1
    assert all(watch is not None for _, _, watch in mine)  # the spin reads the ring's counter


@pytest.mark.parametrize("op", list(RECEIVES))
def test_receive_with_zero_timeout_never_spins(ends: tuple[RingChannel, RingChannel], waits: Waits,
                                               monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    """The deadline is honoured before any spin or yield (recv_bytes used to spin and yield
    ~250 us on its own first, whatever the timeout)."""
    _, b = ends
    yields: list[int] = []
    monkeypatch.setattr(waiting, "_sched_yield", lambda: yields.append(1))
    ws = b._wait
    ws._same_cpu = False
    before = (ws._budget, ws.spin_hits, ws.yield_hits, ws.blocks)
    with pytest.raises(RecvTimeout):
        RECEIVES[op](b, 0)
    assert (ws._budget, ws.spin_hits, ws.yield_hits, ws.blocks) == before
    assert yields == [] and waits.by(ws) == waits.calls != []


@pytest.mark.parametrize("size", [4, BIG], ids=["one-record", "streamed"])
@pytest.mark.parametrize("op", list(RECEIVES))
def test_receive_wakes_for_a_message_sent_while_it_waits(ends: tuple[RingChannel, RingChannel], waits: Waits,
                                                         op: str, size: int) -> None:
    a, b = ends
    waiter = ResultThread(lambda: RECEIVES[op](b, 10.0), name="ipckit-waiting-recv")
    waiter.start()
    wait_until_blocked(waiter, ("wait",))
    payload = os.urandom(size)
    send = a.send if op == "recv" else a.send_bytes
    sender = ResultThread(lambda: send(payload, timeout=10.0), name="ipckit-sender")
    sender.start()
    got = waiter.outcome(10.0)
    sender.outcome(10.0)
    if op == "recv_bytes_into":
        assert got == size
    else:
        assert got == payload and type(got) is bytes
    assert waits.by(b._wait)


class FailingWaker:
    """A wake-up hint whose wait fails as a broken semaphore would."""

    def wait(self, timeout: float) -> bool:
        raise OSError(errno.EIO, "injected semaphore failure")

    def post(self) -> None:
        pass


@pytest.mark.parametrize("op", [*RECEIVES, "poll"])
def test_an_os_error_of_the_wait_is_reported_as_an_ipckit_error(ends: tuple[RingChannel, RingChannel],
                                                               monkeypatch: pytest.MonkeyPatch, op: str) -> None:
    """Every path reports what its wait raises the same way: an ipckit error, the OSError its cause."""
    _, b = ends
    monkeypatch.setattr(b, "_own_waker", FailingWaker())
    b._wait.spin_enabled = False
    b._wait.yield_time = 0.0
    with pytest.raises(IPCError) as info:
        b.poll(5.0) if op == "poll" else RECEIVES[op](b, 5.0)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EIO


def test_message_already_there_does_not_wait(ends: tuple[RingChannel, RingChannel], waits: Waits) -> None:
    a, b = ends
    for op in RECEIVES:
        a.send_bytes(b"x") if op != "recv" else a.send("x")
        assert b.poll(0) is True
        RECEIVES[op](b, 0)
    assert waits.calls == []


def test_end_of_channel_after_a_wait(ends: tuple[RingChannel, RingChannel], waits: Waits) -> None:
    a, b = ends
    waiter = ResultThread(lambda: b.recv_bytes(timeout=10.0), name="ipckit-waiting-recv")
    waiter.start()
    wait_until_blocked(waiter, ("wait",))
    a.close()
    with pytest.raises(EndOfChannel):
        waiter.outcome(10.0)
    assert waits.by(b._wait)
    assert b.poll(0) is True  # recv would raise at once


def test_poll_waits_through_the_wait_strategy(ends: tuple[RingChannel, RingChannel], waits: Waits) -> None:
    a, b = ends
    assert b.poll(0.05) is False
    assert waits.by(b._wait) and waits.by(b._wait) == waits.calls
    waiter = ResultThread(lambda: b.poll(10.0), name="ipckit-waiting-poll")
    waiter.start()
    wait_until_blocked(waiter, ("wait",))
    a.send_bytes(b"now")
    assert waiter.outcome(10.0) is True
    assert b.recv_bytes(timeout=0) == b"now"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_poll_sees_peer_death_while_waiting(scheme: str) -> None:
    """A poll blocked without a deadline returns once the peer dies (recv would raise PeerDied);
    it used to wait for a message that could never come."""
    a, b = ipckit.pair(f"{scheme}://")
    with a, spawn_peer(workers.recv_messages, b, 1) as peer:
        b.close()  # the child holds that end now
        peer.wait_ready()
        waiter = ResultThread(lambda: a.poll(None), name="ipckit-blocked-poll")
        waiter.start()
        wait_until_blocked(waiter, ("wait",))
        killed_at = time.monotonic()
        peer.kill()
        assert waiter.outcome(10.0) is True
        assert waiter.finished_at - killed_at < 2.0
        peer.wait_exit()
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=0)


@pytest.fixture(params=SCHEMES)
def listener(request: pytest.FixtureRequest) -> Iterator[ipckit.Listener]:
    lst = ipckit.listen(f"{request.param}://ikt-{os.getpid()}-{secrets.token_hex(6)}")
    try:
        yield lst
    finally:
        lst.close()


def test_accept_times_out_through_the_wait_strategy(listener: ipckit.Listener, waits: Waits) -> None:
    start = time.monotonic()
    with takes_timeout(0.05), pytest.raises(ChannelTimeout):
        listener.accept(timeout=0.05)
    mine = waits.by(listener._wait)  # type: ignore[attr-defined]
    assert mine and mine == waits.calls
    assert mine[0][1] is not None and start + 0.04 <= mine[0][1] <= start + 0.1


def test_accept_waits_for_a_peer_through_the_wait_strategy(listener: ipckit.Listener, waits: Waits) -> None:
    acceptor = ResultThread(lambda: listener.accept(timeout=10.0), name="ipckit-accept")
    acceptor.start()
    wait_until_blocked(acceptor, ("wait",))
    with ipckit.connect(listener.url, timeout=10.0) as client, acceptor.outcome(10.0) as server:
        client.send_bytes(b"hello")
        assert server.recv_bytes(timeout=10.0) == b"hello"
    assert waits.by(listener._wait)  # type: ignore[attr-defined]


def test_close_wakes_an_accept_waiting_through_the_wait_strategy(listener: ipckit.Listener) -> None:
    acceptor = ResultThread(lambda: listener.accept(timeout=30.0), name="ipckit-accept")
    acceptor.start()
    wait_until_blocked(acceptor, ("wait",))
    closed_at = time.monotonic()
    threading.Thread(target=listener.close).start()
    with pytest.raises(ChannelClosed):
        acceptor.outcome(10.0)
    assert acceptor.finished_at - closed_at < 2.0
