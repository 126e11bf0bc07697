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
    EndpointExists,
    EndpointNotFound,
)
from .helpers import ResultThread, timing_bounds, wait_until_blocked

__all__ = ["ListenerContract"]


class ListenerContract:
    """Named endpoints: listen / connect / accept (``capabilities.named``)."""

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
        start = time.monotonic()
        with pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.05)
        low, high = timing_bounds(0.05)
        assert low <= time.monotonic() - start <= high

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
        start = time.monotonic()
        with pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.1)
        low, high = timing_bounds(0.1)
        assert low <= time.monotonic() - start <= high
        lst.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()

    def test_channels_outlive_listener(self) -> None:
        client, server = self.connect_pair()
        self._owned_listeners_close()
        server.send(1, timeout=5.0)
        assert client.recv(timeout=5.0) == 1

    def _owned_listeners_close(self) -> None:
        for obj in getattr(self, "_owned", []):
            if isinstance(obj, Listener):
                obj.close()
