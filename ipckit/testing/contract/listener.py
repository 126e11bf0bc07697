"""ListenerContract: named endpoints, listen / connect / accept (``capabilities.named``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import ipckit

from ...channel import Channel, Listener
from ...errors import (
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    MessageTooLarge,
)
from .helpers import ResultThread, blob, takes_timeout, wait_until_blocked

#: The two limits the hello tests give the ends, and a message between them.
_SMALL = 64 * 1024
_LARGE = 256 * 1024
_BETWEEN = 100 * 1024

__all__ = ["ListenerContract"]


class ListenerContract:
    """Named endpoints: listen / connect / accept (``capabilities.named``)."""

    scheme: ClassVar[str]
    own: Callable[[Any], Any]
    fresh_url: Callable[[], str]
    options: ClassVar[dict[str, Any]]
    connect_pair: Callable[..., tuple[Channel, Channel]]

    def test_listen_connect_roundtrip(self) -> None:
        client, server = self.connect_pair()
        client.send("hello", timeout=5.0)
        assert server.recv(timeout=5.0) == "hello"

    def test_connect_to_missing_endpoint(self) -> None:
        start = time.monotonic()
        with pytest.raises(EndpointNotFound):
            ipckit.connect(self.fresh_url(), timeout=0.2, **self.options)
        assert time.monotonic() - start < 0.2 + 1.0

    def test_listen_twice_is_refused(self) -> None:
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        with pytest.raises(EndpointExists):
            ipckit.listen(lst.url, **self.options)

    def test_accept_timeout(self) -> None:
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        with takes_timeout(0.05), pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.05)

    def test_close_removes_endpoint_and_name_is_reusable(self) -> None:
        url = self.fresh_url()
        lst = ipckit.listen(url, **self.options)
        lst.close()
        lst.close()
        assert lst.closed
        with pytest.raises(ChannelClosed):
            lst.accept(timeout=0)
        with pytest.raises(EndpointNotFound):
            ipckit.connect(url, timeout=0.1, **self.options)
        again = self.own(ipckit.listen(url, **self.options))
        assert again.url == lst.url

    def test_close_wakes_blocked_accept(self) -> None:
        lst = ipckit.listen(self.fresh_url(), **self.options)
        waiter = ResultThread(lambda: lst.accept(timeout=10.0), name="ipckit-blocked-accept")
        waiter.start()
        wait_until_blocked(waiter, ("_accept",))
        start = time.monotonic()
        lst.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()
        assert waiter.finished_at - start <= 0.5

    def test_second_accepting_thread_waits_within_its_deadline(self) -> None:
        """Accepts are serialised (not refused): a second thread waits for the first, bounded by
        its own deadline."""
        lst = ipckit.listen(self.fresh_url(), **self.options)
        waiter = ResultThread(lambda: lst.accept(timeout=10.0), name="ipckit-blocked-accept")
        waiter.start()
        wait_until_blocked(waiter, ("_accept",))
        with takes_timeout(0.1), pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.1)
        lst.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()

    def test_channels_outlive_listener(self) -> None:
        client, server = self.connect_pair()
        self._owned_listeners_close()
        server.send(1, timeout=5.0)
        assert client.recv(timeout=5.0) == 1

    # -- the hello (issue 10, A.3 and A.4) --------------------------------------------------
    def raw_client(self, url: str) -> Callable[[bytes], None] | None:
        """Override: connect to *url* below ipckit, write the given bytes, and leave (close).

        Returns a function doing that for one connection, or None if the scheme has no raw way
        in (the hello tests that need one are then skipped).
        """
        return None

    def _limited_pair(self, server_max: int, client_max: int) -> tuple[Channel, Channel]:
        lst = self.own(ipckit.listen(self.fresh_url(), **{**self.options, "max_message_size": server_max}))
        client = self.own(ipckit.connect(lst.url, timeout=10.0, **{**self.options, "max_message_size": client_max}))
        return client, self.own(lst.accept(timeout=10.0))

    def _assert_refused_then_usable(self, sender: Channel, receiver: Channel, peer_max: int) -> None:
        with pytest.raises(MessageTooLarge, match=f"peer's max_message_size={peer_max}"):
            sender.send_bytes(blob(_BETWEEN), timeout=5.0)
        with pytest.raises(MessageTooLarge):
            sender.send({"big": blob(_BETWEEN)}, timeout=5.0)
        small = blob(peer_max, seed=3)
        # Exactly the peer's limit still goes (sent while the peer reads: a transport may hold
        # less than a whole message unread, ``capabilities.buffered_bytes``).
        sending = ResultThread(lambda: sender.send_bytes(small, timeout=5.0), name="ipckit-send-limit")
        sending.start()
        assert receiver.recv_bytes(timeout=5.0) == small
        sending.outcome()
        receiver.send_bytes(b"still fine", timeout=5.0)
        assert sender.recv_bytes(timeout=5.0) == b"still fine"

    def test_server_refuses_a_message_above_the_clients_limit(self) -> None:
        """The ends exchange their limits: a send above the peer's ``max_message_size`` is a
        MessageTooLarge for the sender, nothing is sent, and the receiver is never broken."""
        client, server = self._limited_pair(_LARGE, _SMALL)
        assert server.max_message_size == _LARGE and client.max_message_size == _SMALL
        self._assert_refused_then_usable(server, client, _SMALL)

    def test_client_refuses_a_message_above_the_servers_limit(self) -> None:
        client, server = self._limited_pair(_SMALL, _LARGE)
        self._assert_refused_then_usable(client, server, _SMALL)

    def test_client_knows_the_servers_limit_before_accept(self) -> None:
        """A client may send before the server accepts; the server's limit holds from connect() on."""
        lst = self.own(ipckit.listen(self.fresh_url(), **{**self.options, "max_message_size": _SMALL}))
        client = self.own(ipckit.connect(lst.url, timeout=10.0, **{**self.options, "max_message_size": _LARGE}))
        with pytest.raises(MessageTooLarge, match=f"peer's max_message_size={_SMALL}"):
            client.send_bytes(blob(_BETWEEN), timeout=5.0)
        client.send_bytes(b"first", timeout=5.0)
        server = self.own(lst.accept(timeout=10.0))
        assert server.recv_bytes(timeout=5.0) == b"first"

    def test_messages_of_a_client_that_left_before_accept_are_delivered(self) -> None:
        """A client that connected, sent and closed before ``accept()``: the server still gets
        every message, then EndOfChannel."""
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        client = ipckit.connect(lst.url, timeout=10.0, **self.options)
        for i in range(3):
            client.send({"n": i}, timeout=5.0)
        client.close()
        server = self.own(lst.accept(timeout=10.0))
        assert [server.recv(timeout=5.0) for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
        with pytest.raises(EndOfChannel):
            server.recv(timeout=5.0)

    @pytest.mark.parametrize("garbage", [b"", b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)) * 4],
                             ids=["silent", "http", "binary"])
    def test_accept_drops_a_raw_client_that_never_says_hello(self, garbage: bytes) -> None:
        """A client below ipckit that writes garbage (or nothing) and leaves is dropped inside
        ``accept()``, which keeps waiting and returns the next real peer."""
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        raw = self.raw_client(lst.url)
        if raw is None:
            pytest.skip(f"{self.scheme} has no raw way in")
        raw(garbage)
        with pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.3)
        client = self.own(ipckit.connect(lst.url, timeout=10.0, **self.options))
        client.send("real", timeout=5.0)
        server = self.own(lst.accept(timeout=10.0))
        assert server.recv(timeout=5.0) == "real"

    def _owned_listeners_close(self) -> None:
        for obj in getattr(self, "_owned", []):
            if isinstance(obj, Listener):
                obj.close()
