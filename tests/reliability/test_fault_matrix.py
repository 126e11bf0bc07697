"""The fault matrix's scenarios that the shipped contract does not prove yet, on every backend each
applies to (docs/reliability.md, "Fault matrix").

The contract's own rows are counted through tests/reliability/scenarios.py; the tests here carry
``@pytest.mark.fs`` and run once per backend class (its ``scheme`` names the backend in the
report).  Peers are real processes that say READY (``spawn_peer``); nothing sleeps to
synchronise.  What they prove:

* FS02/FS03 on the shm rings: a writer killed with a slot written but not committed (never
  delivered), or committed but with no wake-up for the sleeping reader (found all the same).
* FS05 a client process that connected (and maybe sent) is SIGKILLed before ``accept()``: the
  listener neither hangs nor breaks, the dead client's messages come out whole, then PeerDied,
  and the next client works.
* FS06 a creator killed at its ``after_create_before_init`` kill point: the name is free again
  (mq: once its grace for a creator still building has passed).
* FS07 the reader is SIGKILLed while a send waits for room in a full buffer: that send raises
  PeerDied within the bound, and so does every later one.
* FS08 the reader is SIGSTOPped with the buffers full: a send times out (SendTimeout within its
  deadline) and nothing is corrupted; after SIGCONT the stream goes on, whole and in order.
* FS09 a signal handler's exception in the blocking calls the contract does not interrupt yet
  (accept, connect waiting for its endpoint or cut anywhere in a connect to a live listener,
  ``ipckit.wait``): it comes out at once, the listener or channel works on, nothing leaks (the
  live-listener row is a known gap on every backend today, skipped with what it found).
* FS10 ``close()`` from another thread wakes a send blocked on a full buffer (P4), and the peer
  gets every whole message, then the end (EndOfChannel; PeerDied where the goodbye found no room).
* FS11 a listener process SIGKILLed (with a client's messages unread): the same name listens
  again, and the new session sees no message of the dead one.
* FS18 a client process is killed; a new client process connects to the same listener and works.

memory:// runs only the in-process rows: its ends never leave their process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

import ipckit
from ipckit.backends.common import faults
from ipckit.channel import Channel, Listener
from ipckit.cleanup import find_stale
from ipckit.cleanup import remove as remove_stale
from ipckit.errors import (
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    EndpointNotFound,
    IncompatibleEndpoint,
    PeerDied,
    RecvTimeout,
    SendTimeout,
)
from ipckit.options import Capabilities
from ipckit.testing import takes_timeout, wait_until_blocked, workers
from ipckit.testing.contract import ChildEnds
from ipckit.testing.contract.channel import ContractFixtures
from ipckit.testing.contract.helpers import ResultThread
from ipckit.testing.contract.interrupts import HandlerInterrupt, interrupted
from ipckit.testing.peers import kill_self, ready, set_pdeathsig, spawn_peer

pytestmark = pytest.mark.timeout(60)

#: Size of the messages that fill a buffer: small, so each goes in whole or not at all.
_FILL = 1000
#: Seconds within which a killed peer must show as PeerDied (P5: "about a second").
_DEATH_BOUND = 2.0


# --------------------------------------------------------------------------- peer functions
def _attach_and_hold(end: Channel | workers.Dial) -> None:
    """Take the end, say READY, and never read (until the test kills this process)."""
    ch = workers.attach(end)  # kept referenced: a dropped end is closed by the collector
    ready()
    while not ch.closed:
        signal.pause()


def _listen_then_die(url: str, options: dict[str, Any], with_client: bool) -> None:
    """Listen on *url* and say READY; with a client, accept it, send it three messages it never
    reads, wait until one of its messages is here (never read either); then die by SIGKILL."""
    lst = ipckit.listen(url, **options)
    ready()
    if with_client:
        ch = lst.accept(timeout=20.0)
        for i in range(3):
            ch.send_bytes(b"ghost for the client %d" % i, timeout=10.0)
        if not ch.poll(20.0):
            raise AssertionError("the client's messages never arrived")
    kill_self()


def _fill(ch: Channel, first: int = 0) -> list[int]:
    """Send small self-checking messages (numbers *first*, *first* + 1, ...) until the channel is
    full; return the numbers of those sent (the ones that timed out were not).

    Full means a send that waits 0.1 s for room times out too: with ``timeout=0`` alone, a
    transport that moves data on in the background (libzmq's I/O thread into the kernel's socket
    buffer) may just be between two moves.
    """
    sent: list[int] = []
    for seq in range(first, first + 200_000):
        try:
            ch.send_bytes(workers.make_payload(seq, _FILL), timeout=0)
        except SendTimeout:
            try:  # the same number again: the send that timed out delivered nothing
                ch.send_bytes(workers.make_payload(seq, _FILL), timeout=0.1)
            except SendTimeout:
                assert sent, "not even one message fitted into an idle channel"
                return sent
        sent.append(seq)
    raise AssertionError("a send to a peer that does not read never timed out")


# --------------------------------------------------------------------------- the backends
class _Base(ContractFixtures):
    """What every backend's matrix rows need: the contract's per-test machinery (the backend, its
    addresses, ends closed after the test) and the matrix's own knobs."""

    #: options that keep the buffers small, so the rows that fill them stay fast
    small_buffers: ClassVar[dict[str, Any]] = {}
    #: how peer processes start (zmq: spawn, libzmq is not fork-safe)
    method: ClassVar[str] = "fork"
    #: a listener takes one peer in its life (shm, sysv+shm, mq): later clients need a new listener
    single_peer_listener: ClassVar[bool] = False
    #: a send only queues the message (zmq, Z-3/Z-4): what is still queued when the sender is
    #: SIGKILLed, or closes (finite linger) while its reader does not read, may be lost -- the
    #: reader gets a prefix of the messages, then the end
    queued_may_be_lost: ClassVar[bool] = False
    #: why a handler's exception inside connect() is known to leave something behind here ("": it is not)
    connect_interrupt_gap: ClassVar[str] = ""

    def _next_pair(self, lst: Listener) -> tuple[Channel, Channel]:
        """``(client, server)`` of the next client of *lst*'s address: through *lst*, or -- when it
        takes a single peer -- through a new listener there once *lst* is closed."""
        if self.single_peer_listener:
            lst.close()
            lst = self.own(ipckit.listen(lst.url, **self.options))
        return self.connect_pair(lst)

    def _roundtrip(self, client: Channel, server: Channel, tag: bytes) -> None:
        client.send_bytes(b"to the server " + tag, timeout=5.0)
        assert server.recv_bytes(timeout=5.0) == b"to the server " + tag
        server.send_bytes(b"to the client " + tag, timeout=5.0)
        assert client.recv_bytes(timeout=5.0) == b"to the client " + tag



class _InProcessRows(_Base):
    """Rows within one process (every backend)."""

    # ------------------------------------------------------------------ FS10
    @pytest.mark.fs("FS10")
    @pytest.mark.parametrize("timeout", [10.0, None], ids=["deadline", "forever"])
    def test_fs10_close_from_another_thread_wakes_a_blocked_send(self, timeout: float | None) -> None:
        """A send waits for room (the peer does not read); close() from another thread ends it
        with ChannelClosed within 0.5 s (P4).  The peer gets every message sent before, whole and
        in order, then the end of the channel -- nothing of the cut send."""
        a, b = self.make_pair(**self.small_buffers)
        sent = _fill(a)
        blocked = ResultThread(lambda: a.send_bytes(workers.make_payload(10**6, _FILL), timeout=timeout),
                               name="ipckit-blocked-send")
        blocked.start()
        wait_until_blocked(blocked, ("_locked_send",))
        start = time.monotonic()
        a.close()
        with pytest.raises(ChannelClosed):
            blocked.outcome(10.0)
        assert blocked.finished_at - start <= 0.5, f"woke after {blocked.finished_at - start:.3f} s"
        # A stream's close() waits at most 0.1 s for room for its goodbye (a close must not hang
        # on a reader that never reads): where the reader is still idle then, the end without a
        # goodbye reads as PeerDied -- after every whole message, never a part of the cut one.
        got: list[int] = []
        with pytest.raises((EndOfChannel, PeerDied)):
            for _ in range(len(sent) + 1):
                got.append(workers.check_payload(b.recv_bytes(timeout=5.0)))
        if self.queued_may_be_lost:
            assert got == sent[: len(got)], "the reader's messages are not a prefix of those sent"
        else:
            assert got == sent, f"the reader got {len(got)} of the {len(sent)} messages sent before the close"


    @pytest.mark.fs("FS09")
    @pytest.mark.parametrize("timeout", [5.0, None], ids=["deadline", "forever"])
    def test_fs09_handler_exception_ends_ipckit_wait_at_once(self, timeout: float | None) -> None:
        """``ipckit.wait`` on an idle channel: a handler's exception comes out at once; the wait
        then sees the next message."""
        a, b = self.make_pair()
        rescue = threading.Timer(3.0, lambda: a.send_bytes(b"rescue", timeout=5.0))
        rescue.start()
        start = time.monotonic()
        try:
            exc = interrupted(lambda: ipckit.wait([b], timeout=timeout), 0.05, HandlerInterrupt)
        finally:
            rescue.cancel()
            rescue.join()
        elapsed = time.monotonic() - start
        assert isinstance(exc, HandlerInterrupt), f"wait(timeout={timeout}) did not raise the handler's exception"
        assert elapsed < 1.0, f"the handler's exception came out of wait after {elapsed:.2f} s"
        a.send_bytes(b"after", timeout=5.0)
        assert ipckit.wait([b], timeout=5.0) == [b]
        assert b.recv_bytes(timeout=5.0) == b"after"


class _NamedRows(_Base):
    """Rows within one process on named endpoints (``capabilities.named``)."""

    # ------------------------------------------------------------------ FS09
    @pytest.mark.fs("FS09")
    @pytest.mark.parametrize("timeout", [10.0, None], ids=["deadline", "forever"])
    def test_fs09_handler_exception_ends_a_blocked_accept_at_once(self, timeout: float | None) -> None:
        """A signal handler's exception raised while accept() waits comes out at once; the
        listener then accepts the next client."""
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        # Should the exception be swallowed, closing the listener ends a wait for ever (and the test fails).
        rescue = threading.Timer(3.0, lst.close)
        rescue.start()
        start = time.monotonic()
        try:
            exc = interrupted(lambda: lst.accept(timeout=timeout), 0.05, HandlerInterrupt)
        finally:
            rescue.cancel()
            rescue.join()
        elapsed = time.monotonic() - start
        assert isinstance(exc, HandlerInterrupt), f"accept(timeout={timeout}) did not raise the handler's exception"
        assert elapsed < 1.0, f"the handler's exception came out of accept after {elapsed:.2f} s"
        self._roundtrip(*self.connect_pair(lst), b"after the interrupted accept")

    @pytest.mark.fs("FS09")
    def test_fs09_handler_exception_ends_a_connect_waiting_for_its_endpoint(self) -> None:
        """A connect waits (within its deadline) for an endpoint that does not exist yet; a
        handler's exception there comes out at once, leaves nothing behind, and a listener made
        afterwards at that address serves a new connect."""
        url = self.fresh_url()
        start = time.monotonic()
        try:
            exc = interrupted(lambda: ipckit.connect(url, timeout=10.0, **self.options), 0.02, HandlerInterrupt)
        except EndpointNotFound:
            pytest.skip(f"{self.scheme}: connect to an absent endpoint does not wait "
                        f"({time.monotonic() - start:.3f} s)")
        elapsed = time.monotonic() - start
        assert isinstance(exc, HandlerInterrupt), "connect to an absent endpoint returned a channel"
        assert elapsed < 1.0, f"the handler's exception came out of connect after {elapsed:.2f} s"
        lst = self.own(ipckit.listen(url, **self.options))
        self._roundtrip(*self.connect_pair(lst), b"after the interrupted connect")

    @pytest.mark.fs("FS09")
    def test_fs09_handler_exception_in_a_connect_to_a_live_listener(self) -> None:
        """A handler's exception lands at many points of a connect to a live listener (before,
        in or after its handshake): it comes out of connect, or connect returned first; either
        way the listener is intact.  What the cut connect left is a connection that reads
        EndOfChannel or PeerDied, or is dropped by accept(); the next client is served.  Nothing
        leaks (the leak guard checks descriptors; an unclosed channel is a ResourceWarning)."""
        if self.connect_interrupt_gap:
            pytest.skip(f"known gap ({self.scheme}): {self.connect_interrupt_gap}")
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        # Spread the interrupts over a whole connect on this backend (from the URL's parsing to
        # the return), timed once first.
        start = time.monotonic()
        client, server = self.connect_pair(lst)
        took = time.monotonic() - start
        client.close()
        server.close()
        if self.single_peer_listener:
            lst.close()
            lst = self.own(ipckit.listen(lst.url, **self.options))
        cut = 0
        for delay in [0.00005 + took * k / 12 for k in range(14)]:
            got: list[Channel] = []
            def connect(got: list[Channel] = got, url: str = lst.url) -> None:
                got.append(ipckit.connect(url, timeout=10.0, **self.options))

            exc = interrupted(connect, delay, HandlerInterrupt)
            if exc is None:
                got[0].close()  # a whole connection, closed at once: the server reads EndOfChannel
            else:
                cut += 1
                assert not got, "connect returned a channel and raised the handler's exception"
            # What the connect left: a whole (closed) connection, or whatever the cut one made,
            # which accept() drops or hands out as a dead channel -- and then goes on serving.
            try:
                left = self.own(lst.accept(timeout=10.0 if exc is None else 0.3))
            except ChannelTimeout:
                assert exc is not None, "accept() lost a connection that was made and closed"
            else:
                with pytest.raises((EndOfChannel, PeerDied)):
                    left.recv_bytes(timeout=5.0)
                left.close()
                if self.single_peer_listener:  # that was its one peer: the next needs a new listener
                    lst.close()
                    lst = self.own(ipckit.listen(lst.url, **self.options))
            client, server = self.connect_pair(lst)
            self._roundtrip(client, server, b"after the cut connect")
            client.close()  # one peer at a time on some backends (fifo): the next one may come
            server.close()
            if self.single_peer_listener:
                lst.close()
                lst = self.own(ipckit.listen(lst.url, **self.options))
        assert cut, "no connect was interrupted: the delays missed every connect"

class _CrossProcessRows(ChildEnds, _Base):
    """Rows with a peer process (every backend whose ends reach another process)."""

    def _peer_end(self, **options: Any) -> tuple[Channel | workers.Dial, Callable[[], Channel]]:
        _, theirs, finish = self.child_end(**options)
        return theirs, finish

    # ------------------------------------------------------------------ FS08
    @pytest.mark.fs("FS08")
    def test_fs08_stopped_reader_with_full_buffers(self) -> None:
        """The reader is SIGSTOPped and the buffers fill: a send times out within its deadline
        (SendTimeout), nothing is sent of it; after SIGCONT the stream resumes and the reader gets
        every message whose send returned, whole and in order, then EndOfChannel."""
        theirs, finish = self._peer_end(**self.small_buffers)
        with spawn_peer(workers.drain, theirs, method=self.method) as peer:
            ch = finish()
            peer.wait_ready()
            peer.stop()
            try:
                sent = _fill(ch)
                with takes_timeout(0.2), pytest.raises(SendTimeout):
                    ch.send_bytes(workers.make_payload(10**6, _FILL), timeout=0.2)
            finally:
                peer.cont()
            for seq in range(sent[-1] + 10, sent[-1] + 15):  # the timed-out ones are never delivered
                ch.send_bytes(workers.make_payload(seq, _FILL), timeout=10.0)
                sent.append(seq)
            ch.close()
            seqs, error = peer.join(30.0)
        if self.queued_may_be_lost:  # close() lingers (2 s) for a reader that may still be draining the backlog
            assert seqs == sent[: len(seqs)], "the reader's messages are not a prefix of those sent"
            assert error in ("EndOfChannel", "PeerDied")
        else:
            assert seqs == sent, f"the reader got {len(seqs)} messages, {len(sent)} sends returned"
            assert error == "EndOfChannel"

    # ------------------------------------------------------------------ FS07
    @pytest.mark.fs("FS07")
    def test_fs07_reader_killed_while_a_send_waits_for_room(self) -> None:
        """The reader never reads and the buffers are full; it is SIGKILLed while a send waits
        for room: that send raises PeerDied within the bound, and so does every later send."""
        theirs, finish = self._peer_end(**self.small_buffers)
        with spawn_peer(_attach_and_hold, theirs, method=self.method) as peer:
            ch = finish()
            peer.wait_ready()
            _fill(ch)
            blocked = ResultThread(lambda: ch.send_bytes(workers.make_payload(10**6, _FILL), timeout=20.0),
                                   name="ipckit-blocked-send")
            blocked.start()
            wait_until_blocked(blocked, ("_locked_send",))
            killed_at = time.monotonic()
            peer.kill()
            with pytest.raises(PeerDied):
                blocked.outcome(20.0)
            assert blocked.finished_at - killed_at < _DEATH_BOUND, (
                f"PeerDied after {blocked.finished_at - killed_at:.2f} s")
            assert peer.wait_exit() == -signal.SIGKILL
            for _ in range(3):
                with pytest.raises(PeerDied):
                    ch.send_bytes(b"x", timeout=2.0)



class _NamedCrossProcessRows(_Base):
    """Rows with peer processes on named endpoints."""

    # ------------------------------------------------------------------ FS05
    @pytest.mark.fs("FS05")
    @pytest.mark.parametrize("count", [0, 2])
    def test_fs05_client_killed_before_accept(self, count: int) -> None:
        """A client process connects, sends *count* messages and is SIGKILLed before the server
        accepts: accept() neither hangs nor breaks.  The dead client is accepted with its messages,
        then PeerDied (or dropped, had it sent nothing), and the next client is served."""
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        messages = [workers.make_payload(i, 500 * i) for i in range(count)]
        with spawn_peer(workers.send_then_kill, workers.Dial(lst.url, dict(self.options)), messages,
                        method=self.method) as peer:
            peer.wait_ready()
            assert peer.wait_exit() == -signal.SIGKILL
        try:
            dead: Channel | None = self.own(lst.accept(timeout=2.0))
        except ChannelTimeout:
            dead = None
            assert not count, f"accept() dropped a dead client that had sent {count} messages"
        if dead is not None:
            got: list[int] = []
            with pytest.raises(PeerDied):
                for _ in range(count + 1):
                    got.append(workers.check_payload(dead.recv_bytes(timeout=5.0)))
            if self.queued_may_be_lost:
                assert got == list(range(len(got))), f"the dead client's messages came as {got}"
            else:
                assert got == list(range(count)), f"the dead client's messages came as {got}"
            dead.close()
        self._roundtrip(*self._next_pair(lst), b"after a dead client")

    # ------------------------------------------------------------------ FS18
    @pytest.mark.fs("FS18")
    def test_fs18_a_new_client_process_after_one_was_killed(self) -> None:
        """Client processes take turns on one address: each of the first two is SIGKILLed
        mid-session (PeerDied on the server's end); the next one connects and works, and the last
        closes cleanly.  The listener is the same one, or (single-peer listeners) a new one there."""
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        for turn in range(3):
            if turn and self.single_peer_listener:
                lst.close()
                lst = self.own(ipckit.listen(lst.url, **self.options))
            with spawn_peer(workers.echo, workers.Dial(lst.url, dict(self.options)), method=self.method) as peer:
                ch = self.own(lst.accept(timeout=20.0))
                peer.wait_ready()
                m = workers.make_payload(turn, 3000)
                ch.send_bytes(m, timeout=5.0)
                assert ch.recv_bytes(timeout=10.0) == m
                if turn < 2:
                    killed_at = time.monotonic()
                    peer.kill()
                    with pytest.raises(PeerDied):
                        ch.recv_bytes(timeout=10.0)
                    assert time.monotonic() - killed_at < _DEATH_BOUND
                    assert peer.wait_exit() == -signal.SIGKILL
                    ch.close()
                else:
                    ch.close()
                    assert peer.join() == 1

    # ------------------------------------------------------------------ FS11
    @pytest.mark.fs("FS11")
    @pytest.mark.parametrize("with_client", [False, True], ids=["idle", "with-a-client"])
    def test_fs11_listener_restarted_under_the_same_name_after_a_crash(self, with_client: bool) -> None:
        """A listener process is SIGKILLed (with a client: messages unread both ways); listen()
        on the same address then succeeds (what the dead one left is reclaimed), and the new
        session starts empty both ways: no ghost of the dead one."""
        url = self.fresh_url()
        with spawn_peer(_listen_then_die, url, dict(self.options), with_client, method=self.method) as peer:
            peer.wait_ready()
            if with_client:
                old = ipckit.connect(url, timeout=10.0, **self.options)
                for i in range(3):
                    old.send_bytes(b"ghost for the server %d" % i, timeout=5.0)
            assert peer.wait_exit() == -signal.SIGKILL
        if with_client:
            old.close()  # its peer is dead; the close just lets go
        client, server = self.connect_pair(self.own(ipckit.listen(url, **self.options)))
        with pytest.raises(RecvTimeout):
            server.recv_bytes(timeout=0.3)
        with pytest.raises(RecvTimeout):
            client.recv_bytes(timeout=0.3)
        self._roundtrip(client, server, b"in the new session")


# --------------------------------------------------------------------------- one class per backend
class _Everything(_InProcessRows, _NamedRows, _CrossProcessRows, _NamedCrossProcessRows):
    """Every row: a named backend whose ends reach other processes."""


class TestMemory(_InProcessRows, _NamedRows):
    """Threads of one process only: no peer process to stop or kill."""

    scheme = "memory"
    connect_interrupt_gap = ("a cut connect() sometimes leaves its made channel unreturned and unclosed "
                             "(a ResourceWarning)")
    # connect() to an absent memory:// name fails at once (nothing to wait for)
    test_fs09_handler_exception_ends_a_connect_waiting_for_its_endpoint = None  # type: ignore[assignment]


class TestPipe(_InProcessRows, _CrossProcessRows):
    """Anonymous only: no listener, no name to restart."""

    scheme = "pipe"


class TestFifo(_Everything):
    scheme = "fifo"
    connect_interrupt_gap = ("a cut connect() can leave its s2c descriptor open, and the next client's session "
                             "then fails with ProtocolError (frame sequence 1, expected 0)")

    def fresh_url(self) -> str:
        return f"fifo://{os.path.join(self.tmpdir, secrets.token_hex(4))}"


class TestUnix(_Everything):
    scheme = "unix"
    connect_interrupt_gap = ("a cut connect() sometimes leaves its made channel (socket and eventfd) unreturned "
                             "and unclosed (a ResourceWarning; the leak guard sees the eventfd)")

    def fresh_url(self) -> str:
        return f"unix://{os.path.join(self.tmpdir, secrets.token_hex(4) + '.sock')}"


class TestUnixSeqpacket(TestUnix):
    options: ClassVar[dict[str, Any]] = {"type": "seqpacket"}

    @property
    def caps(self) -> Capabilities:
        from ipckit.backends.unix import UnixSeqpacketChannel

        return UnixSeqpacketChannel.capabilities


class TestShm(_Everything):
    scheme = "shm"
    connect_interrupt_gap = ("a cut connect() sometimes leaves its half-made channel unclosed (closed by the "
                             "garbage collector, with a ResourceWarning)")
    single_peer_listener = True
    small_buffers: ClassVar[dict[str, Any]] = {"capacity": 64 * 1024}


class TestSysvShm(_Everything):
    scheme = "sysv+shm"
    connect_interrupt_gap = ("a cut connect() sometimes leaves its made channel unreturned and unclosed (a "
                             "ResourceWarning; the server holds a live session until the collector runs)")
    single_peer_listener = True
    small_buffers: ClassVar[dict[str, Any]] = {"capacity": 64 * 1024}


class TestMq(_Everything):
    scheme = "mq"
    connect_interrupt_gap = ("a cut connect() can leave the queue descriptors it opened (in _Endpoint) open")
    single_peer_listener = True


class TestSysvMq(_Everything):
    scheme = "sysv+mq"
    connect_interrupt_gap = ("a cut connect() sometimes leaves its made channel unreturned and unclosed "
                             "(a ResourceWarning)")


def _zmq_missing() -> bool:
    try:
        import zmq  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(_zmq_missing(), reason="pyzmq is not installed")
class TestZmqIpc(_Everything):
    scheme = "zmq+ipc"
    method = "spawn"  # libzmq is not fork-safe
    connect_interrupt_gap = ("a cut connect() can leave its probe socket (zmq+ipc: probe_live; zmq+tcp: "
                             "socket.create_connection, which closes only on OSError) or a zmq socket unclosed")
    queued_may_be_lost = True
    small_buffers: ClassVar[dict[str, Any]] = {"buffer_bytes": 64 * 1024}
    # connect() to an absent zmq endpoint fails at once (EndpointNotFound)
    test_fs09_handler_exception_ends_a_connect_waiting_for_its_endpoint = None  # type: ignore[assignment]

    def fresh_url(self) -> str:
        return f"zmq+ipc://{os.path.join(self.tmpdir, secrets.token_hex(4) + '.ipc')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(_zmq_missing(), reason="pyzmq is not installed")
class TestZmqTcp(TestZmqIpc):
    scheme = "zmq+tcp"

    def fresh_url(self) -> str:
        return f"zmq+tcp://127.0.0.1:{_free_port()}"


# --------------------------------------------------------------------------- FS06: kill points
def _listen_at_kill_point(url: str, point: str) -> int:
    """Fork a child that arms *point* and listens on *url* (so it dies there); its wait status."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with the runner's threads: the child uses none
        pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        try:
            set_pdeathsig()
            faults.arm(point)
            ipckit.listen(url).close()
        finally:
            os._exit(3)  # not killed at the point: the test sees exit status 3
    return os.waitpid(pid, 0)[1]


@pytest.mark.fs("FS06")
@pytest.mark.parametrize("scheme", ["shm", "sysv+shm", "mq"])
def test_fs06_creator_killed_before_init_leaves_the_name_free(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The creator dies (SIGKILL at ``<scheme>.after_create_before_init``) with the endpoint half
    made: a connect finds no endpoint (or an incompatible one) at once, never a hang; a new
    listen() on the name works; what the dead creator left is reclaimed."""
    url = f"{scheme}://ikt-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        _creator_killed_before_init(scheme, url, monkeypatch)
    finally:  # what a failed reclaim left (the leak guard would report it as this test's leak)
        for obj in find_stale(prefix=f"ipckit.{url.partition('://')[2]}"):
            remove_stale(obj)


def _creator_killed_before_init(scheme: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if scheme == "mq":  # a lock-less anchor without its companion is "being built" for a grace (1 s),
        from ipckit.backends import mq as mq_mod  # then stale: listen() refuses it until then

        monkeypatch.setattr(mq_mod, "_BUILD_GRACE", 0.0)
    status = _listen_at_kill_point(url, f"{scheme}.after_create_before_init")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"wait status {status}"
    start = time.monotonic()
    with pytest.raises((EndpointNotFound, IncompatibleEndpoint)):
        ipckit.connect(url, timeout=0.2)
    assert time.monotonic() - start < 1.0
    with ipckit.listen(url) as lst:
        client = ipckit.connect(url, timeout=5.0)
        with client, lst.accept(timeout=5.0) as server:
            client.send_bytes(b"restarted", timeout=5.0)
            assert server.recv_bytes(timeout=5.0) == b"restarted"
    if scheme == "shm":  # its half-made segment waits out a grace (a slow creator is not a dead one)
        from ipckit.backends import shm as shm_mod

        monkeypatch.setattr(shm_mod, "_TMP_GRACE", 0.0)
        assert shm_mod.cleanup_stale(), "the dead creator's half-made segment was not reclaimed"


# --------------------------------------------------------------------------- FS02/FS03 on the rings
# The shared-memory rings have no frame on a wire to cut: a writer dies between writing a slot and
# committing it (FS02's analogue, S-2), or between committing it and waking the sleeping reader
# (FS03, S-3).  Kill points are never put on the send path, so the peer drives its ring directly.
_RINGS = ["shm", "sysv+shm"]


def _wait_until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("the condition was not reached")
        time.sleep(0.0005)


def _commit_unposted_then_die(ch: Any, payload: bytes) -> None:
    """Once the reader sleeps on its semaphore, commit *payload* without waking it; then die."""
    from ipckit.backends.common.ring import buffer as ring

    ready()
    w = ch._w
    _wait_until(lambda: w._ctl[ring._W_RSLEEP] != 0)
    w.wake_peer = None  # killed "after commit, before post"
    assert w.try_write(memoryview(payload))
    kill_self()


def _write_uncommitted_then_die(ch: Any, whole: bytes, torn: bytes) -> None:
    """Send *whole*; write the next slot's header and payload (*torn*) but never commit it; die."""
    from ipckit.backends.common.ring import buffer as ring

    ch.send_bytes(whole, timeout=10.0)
    w = ch._w
    base = w._data + w._wp % w._cap
    ring._HDR.pack_into(w._mv, base, ring._MSG, len(torn), len(torn))
    w._mv[base + ring._HDR_SIZE: base + ring._HDR_SIZE + len(torn)] = torn
    ready()
    kill_self()


@pytest.mark.fs("FS03")
@pytest.mark.parametrize("scheme", _RINGS)
def test_fs03_writer_killed_after_commit_before_the_wake_up(scheme: str) -> None:
    """The committed message is found although no wake-up came (the reader re-checks within its
    wait slice), then the dead writer is PeerDied."""
    a, b = ipckit.pair(scheme, capacity=64 * 1024, spin=False)
    with a, spawn_peer(_commit_unposted_then_die, b, b"committed, never posted") as peer:
        b.close()
        peer.wait_ready()
        start = time.monotonic()
        assert a.recv_bytes(timeout=10.0) == b"committed, never posted"
        assert time.monotonic() - start < 1.5
        assert peer.wait_exit() == -signal.SIGKILL
        start = time.monotonic()
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=10.0)
        assert time.monotonic() - start < 1.5


@pytest.mark.fs("FS02")
@pytest.mark.parametrize("scheme", _RINGS)
def test_fs02_ring_writer_killed_before_committing_a_slot(scheme: str) -> None:
    """The message before arrives; the written but uncommitted one never does: PeerDied."""
    a, b = ipckit.pair(scheme, capacity=64 * 1024)
    with a, spawn_peer(_write_uncommitted_then_die, b, b"whole", b"torn" * 100) as peer:
        b.close()
        peer.wait_ready()
        assert peer.wait_exit() == -signal.SIGKILL
        assert a.recv_bytes(timeout=10.0) == b"whole"
        start = time.monotonic()
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=10.0)
        assert time.monotonic() - start < 1.5
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=0)


# --------------------------------------------------------------------------- the contract's names
_COLLECT = r"""
import json, sys
import pytest

class Collect:
    def pytest_collection_modifyitems(self, items):
        from reliability_report import FS_PATTERNS, _scenarios_of, subject_of
        rows = []
        for item in items:
            fn = getattr(item, "function", None)
            rows.append({"nodeid": item.nodeid, "name": getattr(item, "originalname", item.name),
                         "module": getattr(fn, "__module__", ""), "subject": subject_of(item),
                         "fs": _scenarios_of(item)})
        with open(sys.argv[1], "w") as f:
            json.dump({"patterns": FS_PATTERNS, "rows": rows}, f)

sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:randomly", "tests/backends"], plugins=[Collect()]))
"""


def test_contract_names_match_exactly_contract_rows_of_backends(tmp: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every name scenarios.py registers matches at least one contract test that a backend class
    runs (so a renamed contract test cannot drop out of the matrix unnoticed), and every test it
    matches in tests/backends is a contract row (or a backend's override of one) with a backend
    to count it for -- never a backend file's own test.  Prints the mapping with the counts."""
    from reliability.scenarios import CONTRACT_TESTS, describe

    out = os.path.join(tmp, "collected.json")
    env = {k: v for k, v in os.environ.items() if k != "IPCKIT_RELIABILITY_REPORT"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _COLLECT, out], cwd=root, env=env, capture_output=True,
                          text=True, timeout=50)
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        data = json.loads(Path(out).read_text())
    finally:
        if os.path.exists(out):
            os.unlink(out)
    for fs, names in CONTRACT_TESTS.items():
        assert set(names) <= set(data["patterns"].get(fs, [])), f"{fs}: not registered in the collecting run"
    rows = data["rows"]
    contract_names = {r["name"] for r in rows if r["module"].startswith("ipckit.testing.contract.")}
    counted: dict[tuple[str, str], int] = {}
    for fs, names in CONTRACT_TESTS.items():
        for name in names:
            hits = [r for r in rows if r["name"] == name and fs in r["fs"]]
            assert any(r["module"].startswith("ipckit.testing.contract.") and r["subject"] != "-" for r in hits), (
                f"{fs}: {name} matches no contract test that a backend class runs")
            for r in hits:
                assert r["subject"] != "-", f"{fs}: {name} also matches {r['nodeid']}, which has no backend"
                assert r["name"] in contract_names, f"{fs}: {name} also matches {r['nodeid']}, not a contract row"
                counted[(fs, r["subject"])] = counted.get((fs, r["subject"]), 0) + 1
    with capsys.disabled():
        print()
        print(describe())
        for fs in sorted({fs for fs, _ in counted}):
            per = ", ".join(f"{s} {n}" for (f, s), n in sorted(counted.items()) if f == fs)
            print(f"{fs} contract cases collected from tests/backends: {per}")
