"""Pub/sub fan-out (``ipckit.publish`` / ``ipckit.subscribe``) over zmq+ipc:// and zmq+tcp://.

The one-way form of the contract for both transports and both policies, cross-process under
fork and spawn; then rows Z-1 (drop accounting: ``sent == delivered + dropped`` exactly, from
both ends) and Z-11 (slow joiner), the block policy, four subscriber processes, and SIGKILLed
publishers and subscribers.  Real pyzmq, real processes, peers that say READY.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import ipckit
from ipckit.backends.common.zmq_pubsub import FanoutStats
from ipckit.errors import (
    ConfigurationError,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    InvalidAddress,
    PeerDied,
    RecvTimeout,
    SecurityWarning,
    SendTimeout,
    UnsafeSerializer,
    UnsupportedOperation,
)
from ipckit.testing import OneWayContract, kill_self, ready, spawn_peer

pytest.importorskip("zmq")

pytestmark = pytest.mark.timeout(60)

_DIR = f"/tmp/ipckit-pubsub-test-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def _endpoint_dir() -> Any:
    """The directory of this module's ipc endpoints: made first, and empty at the end."""
    os.makedirs(_DIR, mode=0o700, exist_ok=True)
    yield
    leftovers = os.listdir(_DIR)
    os.rmdir(_DIR) if not leftovers else None
    assert not leftovers, f"left behind: {leftovers}"


def _ipc_url() -> str:
    return f"zmq+ipc://{_DIR}/{secrets.token_hex(4)}.ipc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the contract
class _Fanout(OneWayContract):
    sender_factory = "ipckit:publish"
    receiver_factory = "ipckit:subscribe"
    # a killed publisher: the ipc/tcp connection closes at once; heartbeats bound the rest
    receiver_options: ClassVar[dict[str, Any]] = {"heartbeat": 0.2, "heartbeat_timeout": 1.0}
    sender_options: ClassVar[dict[str, Any]] = {"heartbeat": 0.2, "heartbeat_timeout": 1.0}
    peer_death_bound = 3.0


class TestFanoutIpc(_Fanout):
    def fresh_url(self) -> str:
        return _ipc_url()


class TestFanoutTcp(_Fanout):
    def fresh_url(self) -> str:
        return f"zmq+tcp://127.0.0.1:{_free_port()}"


class TestFanoutIpcBlock(_Fanout):
    """policy=block: lossless while the receiver keeps within its window, and a killed receiver
    leaves the set (the sender's probes) instead of blocking it."""

    sender_options: ClassVar[dict[str, Any]] = {**_Fanout.sender_options, "policy": "block"}
    receiver_options: ClassVar[dict[str, Any]] = {**_Fanout.receiver_options, "window": 100}
    lossless_burst = 100

    def fresh_url(self) -> str:
        return _ipc_url()


# --------------------------------------------------------------------------- peers
def _slow_subscriber(url: str, window: int, go: Any) -> tuple[int, int, int, int]:
    """Join, READY, take nothing until the publisher is done (go), then read everything."""
    sub = ipckit.subscribe(url, timeout=10.0, window=window)
    ready()
    go.poll(30.0)
    delivered = 0
    try:
        while True:
            sub.recv_bytes(timeout=20.0)
            delivered += 1
    except EndOfChannel:
        pass
    st = sub.stats()
    sub.close()
    assert st.delivered == delivered
    return st.sent, st.delivered, st.dropped, st.pending


def _counting_subscriber(url: str, count: int, options: dict[str, Any]) -> list[int]:
    """Join, READY, receive *count* messages, return their first bytes' numbers, then EndOfChannel."""
    sub = ipckit.subscribe(url, timeout=10.0, **options)
    ready()
    got = [int(sub.recv_bytes(timeout=20.0)) for _ in range(count)]
    try:
        sub.recv_bytes(timeout=20.0)
    except EndOfChannel:
        pass
    st = sub.stats()
    sub.close()
    assert (st.sent, st.delivered, st.dropped) == (count, count, 0), st
    return got


def _idle_subscriber(url: str, options: dict[str, Any]) -> None:
    sub = ipckit.subscribe(url, timeout=10.0, **options)
    ready()
    time.sleep(60)  # killed by the test
    sub.close()


def _publisher_then_kill(url: str, count: int, go: Any) -> None:
    pub = ipckit.publish(url, heartbeat=0.2, heartbeat_timeout=1.0)
    ready()
    go.poll(30.0)
    go.recv()
    for i in range(count):
        pub.send_bytes(b"%d" % i, timeout=10.0)
    go.poll(30.0)
    kill_self()


# --------------------------------------------------------------------------- Z-1: drop accounting
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_z1_drop_new_accounting_is_exact_for_a_slow_subscriber(transport: str) -> None:
    """A subscriber that takes nothing while 5,000 are published, window 16: it gets its window,
    the rest is dropped, and both ends count it exactly (sent == delivered + dropped)."""
    import multiprocessing

    url = _ipc_url() if transport == "ipc" else "zmq+tcp://127.0.0.1:0"
    go_r, go_w = multiprocessing.get_context("fork").Pipe(duplex=False)
    with ipckit.publish(url) as pub, spawn_peer(_slow_subscriber, pub.url, 16, go_r) as peer:
        peer.wait_ready()
        fast = ipckit.subscribe(pub.url, timeout=5.0, window=10_000)  # one that keeps up, in this process
        total = 5000
        for i in range(total):
            pub.send_bytes(b"%d" % i, timeout=5.0)
        assert [int(fast.recv_bytes(timeout=5.0)) for _ in range(total)] == list(range(total))
        views = {s.sent: s for s in pub.subscribers()}
        slow_view = min(views.values(), key=lambda s: s.sent)
        assert slow_view.sent == 16 and slow_view.dropped == total - 16  # the publisher's own count
        pub.close()
        go_w.send("go")
        sent, delivered, dropped, pending = peer.join()
        assert (sent, delivered, dropped, pending) == (total, 16, total - 16, 0)
        assert sent == delivered + dropped
        with pytest.raises(EndOfChannel):
            fast.recv_bytes(timeout=5.0)
        assert fast.stats() == FanoutStats(total, total, 0, 0)
        fast.close()
    go_w.close()


def test_z1_counters_hold_at_every_moment_and_trailing_drops_are_ticked() -> None:
    """sent == delivered + dropped + pending after each receive; drops after the last delivered
    message are counted by the next tick, before any close."""
    with ipckit.publish(_ipc_url(), heartbeat=0.1) as pub:
        sub = ipckit.subscribe(pub.url, window=4)
        for i in range(20):
            pub.send_bytes(b"%d" % i, timeout=5.0)
        for _ in range(4):
            sub.recv_bytes(timeout=5.0)
            st = sub.stats()
            assert st.sent == st.delivered + st.dropped + st.pending
        with pytest.raises(RecvTimeout):
            sub.recv_bytes(timeout=0.5)  # the publisher's tick arrived meanwhile (heartbeat 0.1 s)
        st = sub.stats()
        assert (st.sent, st.delivered, st.dropped, st.pending) == (20, 4, 16, 0)
        sub.close()


def test_a_subscriber_with_a_smaller_limit_counts_the_message_as_dropped() -> None:
    with ipckit.publish(_ipc_url()) as pub:
        small = ipckit.subscribe(pub.url, max_message_size=100)
        big = ipckit.subscribe(pub.url)
        pub.send_bytes(b"x" * 1000, timeout=5.0)
        pub.send_bytes(b"y", timeout=5.0)
        assert small.recv_bytes(timeout=5.0) == b"y" and small.dropped == 1
        assert big.recv_bytes(timeout=5.0) == b"x" * 1000
        small.close()
        big.close()


# --------------------------------------------------------------------------- block policy
def test_block_waits_for_the_slowest_then_times_out_sending_nothing() -> None:
    with ipckit.publish(_ipc_url(), policy="block") as pub:
        sub = ipckit.subscribe(pub.url, window=8)
        for i in range(8):
            pub.send_bytes(b"%d" % i, timeout=5.0)
        start = time.monotonic()
        with pytest.raises(SendTimeout):
            pub.send_bytes(b"late", timeout=0.3)
        assert 0.28 <= time.monotonic() - start <= 0.6
        assert pub.published == 8  # the timed-out message has no number: it went to nobody
        got = [sub.recv_bytes(timeout=5.0) for _ in range(8)]
        assert got == [b"%d" % i for i in range(8)]
        pub.send_bytes(b"8", timeout=5.0)  # credit came back with the receives
        assert sub.recv_bytes(timeout=5.0) == b"8"
        assert (sub.sent, sub.delivered, sub.dropped) == (9, 9, 0)
        sub.close()


def test_block_is_lossless_for_a_subscriber_slower_than_the_publisher() -> None:
    with ipckit.publish(_ipc_url(), policy="block") as pub:
        sub = ipckit.subscribe(pub.url, window=4)
        total = 2000
        from ipckit.testing.contract.helpers import ResultThread

        reader = ResultThread(lambda: [int(sub.recv_bytes(timeout=10.0)) for _ in range(total)])
        reader.start()
        for i in range(total):
            pub.send_bytes(b"%d" % i, timeout=10.0)
        assert reader.outcome(20.0) == list(range(total))
        assert (sub.sent, sub.delivered, sub.dropped) == (total, total, 0)
        sub.close()


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_block_a_killed_subscriber_leaves_the_set_and_the_publisher_goes_on(transport: str) -> None:
    url = _ipc_url() if transport == "ipc" else "zmq+tcp://127.0.0.1:0"
    with (ipckit.publish(url, policy="block", heartbeat=0.2, heartbeat_timeout=1.0) as pub,
          spawn_peer(_idle_subscriber, pub.url, {"window": 4}) as peer):
        peer.wait_ready()
        for i in range(4):
            pub.send_bytes(b"%d" % i, timeout=5.0)
        with pytest.raises(SendTimeout):  # alive and not reading: block holds
            pub.send_bytes(b"held", timeout=0.2)
        peer.kill()
        killed_at = time.monotonic()
        peer.wait_exit()
        pub.send_bytes(b"after", timeout=3.0)  # within the heartbeat bound, not forever
        assert time.monotonic() - killed_at < 2.0
        assert pub.subscribers() == [] and len(pub.departed()) == 1


# --------------------------------------------------------------------------- Z-11 and four subscribers
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_z11_four_subscriber_processes_get_everything_after_their_subscribe(transport: str) -> None:
    url = _ipc_url() if transport == "ipc" else "zmq+tcp://127.0.0.1:0"
    total = 3000
    with ipckit.publish(url, policy="block") as pub:
        peers = [spawn_peer(_counting_subscriber, pub.url, total, {"window": 64},
                            method="spawn" if i % 2 else "fork") for i in range(4)]
        try:
            for p in peers:
                p.wait_ready()  # subscribe() returned in each: from now on nothing is missed
            for i in range(total):  # the first message goes at once: no sleep for a slow joiner
                pub.send_bytes(b"%d" % i, timeout=10.0)
            assert len(pub.subscribers()) == 4
            pub.close()
            for p in peers:
                assert p.join() == list(range(total))
        finally:
            for p in peers:
                p.close()


def test_z11_a_late_subscriber_starts_at_the_next_number() -> None:
    with ipckit.publish(_ipc_url()) as pub:
        for i in range(5):
            pub.send_bytes(b"early %d" % i, timeout=5.0)
        sub = ipckit.subscribe(pub.url)
        pub.send_bytes(b"first", timeout=5.0)
        assert sub.recv_bytes(timeout=5.0) == b"first"
        assert (sub.sent, sub.dropped) == (1, 0)  # the five before it joined are not its
        sub.close()


# --------------------------------------------------------------------------- peer death
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_sigkilled_publisher_is_peer_died_after_what_arrived(transport: str) -> None:
    import multiprocessing

    url = _ipc_url() if transport == "ipc" else f"zmq+tcp://127.0.0.1:{_free_port()}"
    go_r, go_w = multiprocessing.get_context("fork").Pipe(duplex=False)
    with spawn_peer(_publisher_then_kill, url, 50, go_r) as peer:
        peer.wait_ready()
        subs = [ipckit.subscribe(url, timeout=5.0, heartbeat=0.2, heartbeat_timeout=1.0) for _ in range(2)]
        go_w.send("go")
        for sub in subs:
            assert [sub.recv_bytes(timeout=5.0) for _ in range(50)] == [b"%d" % i for i in range(50)]
        go_w.send("die")
        assert peer.wait_exit() == -9
        killed_at = time.monotonic()
        for sub in subs:
            with pytest.raises(PeerDied):
                sub.recv_bytes(timeout=5.0)
            with pytest.raises(PeerDied):
                sub.recv_bytes(timeout=0)
            assert (sub.sent, sub.delivered, sub.dropped) == (50, 50, 0)
            sub.close()
        assert time.monotonic() - killed_at < 1.5
    go_w.close()
    if transport == "ipc":  # a new publisher reclaims the dead one's endpoint
        path = url[len("zmq+ipc://"):]
        assert os.path.exists(path)
        ipckit.publish(url).close()
        assert not os.path.exists(path) and not os.path.exists(path + ".lock")


# --------------------------------------------------------------------------- bad input
def test_bad_requests_get_the_contracts_errors(tmp_path: Any) -> None:
    with pytest.raises(UnsupportedOperation):
        ipckit.publish("unix:///tmp/x.sock")
    with pytest.raises(ConfigurationError):
        ipckit.publish(_ipc_url(), policy="drop-old")
    with pytest.raises(ConfigurationError):
        ipckit.publish(_ipc_url(), ack=True)
    with pytest.raises(ConfigurationError):
        ipckit.subscribe(_ipc_url(), window=0)
    with pytest.raises(ConfigurationError):
        ipckit.publish(_ipc_url(), bogus=1)
    with pytest.raises(InvalidAddress):
        ipckit.publish("zmq+ipc:///" + "a" * 120)
    with pytest.raises(InvalidAddress):
        ipckit.publish("zmq+tcp://nohostport")
    with pytest.raises(InvalidAddress):
        ipckit.subscribe("zmq+tcp://127.0.0.1:0")
    with pytest.raises(EndpointNotFound):
        ipckit.subscribe(_ipc_url(), timeout=0.2)
    with pytest.raises(EndpointNotFound):
        ipckit.subscribe(f"zmq+tcp://127.0.0.1:{_free_port()}", timeout=0.2)
    with pytest.raises(ConfigurationError):  # the scheme's rule: no plaintext bind beyond loopback
        ipckit.publish("zmq+tcp://0.0.0.0:0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SecurityWarning):
            ipckit.publish("zmq+tcp://0.0.0.0:0", insecure=True)
    with pytest.raises(UnsafeSerializer):  # tcp proves no user: pickle needs CURVE or trust=
        ipckit.publish("zmq+tcp://127.0.0.1:0", serializer="pickle")
    with ipckit.publish("zmq+tcp://127.0.0.1:0") as pub:
        assert pub.serializer.name == "msgpack"
        with pytest.raises(UnsafeSerializer):
            ipckit.subscribe(pub.url, serializer="pickle")
    url = _ipc_url()
    with ipckit.publish(url), pytest.raises(EndpointExists):  # never steals a live endpoint
        ipckit.publish(url)
    assert os.listdir(_DIR) == []


@pytest.mark.security("S11", "S12", subject="zmq+tcp")
def test_curve_over_tcp() -> None:
    from ipckit.backends.common.zmq_security import generate_keypair

    server, client, stranger = generate_keypair(), generate_keypair(), generate_keypair()
    with ipckit.publish("zmq+tcp://127.0.0.1:0", curve=server, allow=[client.public]) as pub:
        sub = ipckit.subscribe(pub.url, curve=client, server_key=server.public, serializer="pickle")
        assert sub.serializer.name == "pickle"  # CURVE authenticated the peer
        pub.send_bytes(b"secret", timeout=5.0)
        assert sub.recv_bytes(timeout=5.0) == b"secret"
        sub.close()
        start = time.monotonic()
        with pytest.raises((EndpointNotFound, ipckit.PeerRejected)):
            ipckit.subscribe(pub.url, timeout=1.0, curve=stranger, server_key=server.public)
        assert time.monotonic() - start < 1.5


def test_close_wakes_a_send_blocked_in_block_mode_and_wait_for_subscribers() -> None:
    from ipckit.errors import ChannelClosed
    from ipckit.testing.contract.helpers import ResultThread

    pub = ipckit.publish(_ipc_url(), policy="block")
    assert pub.wait_for_subscribers(1, timeout=0.1) is False
    sub = ipckit.subscribe(pub.url, window=1)
    assert pub.wait_for_subscribers(1, timeout=5.0) is True
    pub.send_bytes(b"fills the window", timeout=5.0)
    sender = ResultThread(lambda: pub.send_bytes(b"waits", timeout=10.0), name="ipckit-blocked-publish")
    sender.start()
    deadline = time.monotonic() + 5.0
    while "_send_frames" not in repr([f.f_code.co_name for f in _frames_of(sender)]):
        assert time.monotonic() < deadline, "the send never blocked"
        time.sleep(0.001)
    closed_at = time.monotonic()
    pub.close()
    with pytest.raises(ChannelClosed):
        sender.outcome(5.0)
    assert sender.finished_at - closed_at < 1.0
    assert sub.recv_bytes(timeout=5.0) == b"fills the window"
    with pytest.raises(EndOfChannel):
        sub.recv_bytes(timeout=5.0)
    sub.close()


def _frames_of(thread: Any) -> list[Any]:
    import sys

    frame = sys._current_frames().get(thread.ident or -1)
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


@pytest.mark.security("S15", subject="zmq+ipc")
def test_ticks_to_a_subscriber_that_never_reads_are_bounded() -> None:
    """A live subscriber that never reads keeps what is sent to it queued: the publisher's ticks
    (one per heartbeat) slow down once 64 are unread, and an idle publisher sends none at all."""
    with ipckit.publish(_ipc_url(), heartbeat=0.005) as pub:
        sub = ipckit.subscribe(pub.url, window=1)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # ~200 heartbeats with a new number each
            pub.send_bytes(b"x", timeout=1.0)
            time.sleep(0.002)
        with pub._zlock:
            (state,) = pub._subs.values()
            assert 0 < state.unread <= 66, state
        sub.recv_bytes(timeout=5.0)  # credit: the counters start again
        with pytest.raises(RecvTimeout):
            sub.recv_bytes(timeout=0.1)
        st = sub.stats()
        assert st.sent == pub.published and st.sent == st.delivered + st.dropped
        sub.close()


def test_the_fanout_benchmark_cell_runs_and_checks_its_counts() -> None:
    from ipckit.bench.fanout import run_cell

    row = run_cell("drop-new", "ipc", 2, 64, 0.05, window=8)
    assert row["published"] > 0 and len(row["delivered"]) == 2
    assert all(d + x == row["published"] for d, x in zip(row["delivered"], row["dropped"], strict=True))


def _use_inherited(pub: Any, sub: Any) -> str:
    calls: list[Callable[[], object]] = [lambda: pub.send_bytes(b"from the child", timeout=1.0),
                                         lambda: sub.recv_bytes(timeout=0)]
    for call in calls:
        try:
            call()
        except UnsupportedOperation:
            continue
        return "an inherited end worked"
    pub.close()  # does nothing to the parent's ends
    sub.close()
    return "refused"


@pytest.mark.security("S19", subject="zmq+ipc")
def test_a_forked_child_cannot_use_or_end_the_parents_ends() -> None:
    from ipckit.testing.peers import run_forked

    with ipckit.publish(_ipc_url()) as pub:
        sub = ipckit.subscribe(pub.url)
        assert run_forked(_use_inherited, pub, sub, what="child with inherited pub/sub ends") == "refused"
        pub.send_bytes(b"parent", timeout=5.0)
        assert sub.recv_bytes(timeout=5.0) == b"parent"  # nothing of the child's reached it
        assert (sub.sent, sub.delivered, sub.dropped) == (1, 1, 0)
        sub.close()
