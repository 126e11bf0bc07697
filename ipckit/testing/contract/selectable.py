"""SelectableContract: ``fileno()`` works with selectors and asyncio (``capabilities.selectable``)."""

from __future__ import annotations

import selectors
from collections.abc import Callable
from typing import Any

import pytest

from ...channel import Channel
from ...errors import EndOfChannel

__all__ = ["SelectableContract"]


class SelectableContract:
    """``fileno()`` works with selectors and asyncio (``capabilities.selectable``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def test_selector_readiness(self) -> None:
        a, b = self.make_pair()
        fd = b.fileno()
        assert isinstance(fd, int) and fd >= 0
        with selectors.DefaultSelector() as sel:
            sel.register(b, selectors.EVENT_READ)
            assert sel.select(0) == []
            a.send(1, timeout=5.0)
            a.send(2, timeout=5.0)
            assert len(sel.select(5.0)) == 1
            assert b.recv(timeout=0) == 1
            # The second message may sit in a read-ahead buffer; the descriptor must still say so.
            assert len(sel.select(1.0)) == 1
            assert b.recv(timeout=0) == 2
            assert sel.select(0) == []
            sel.unregister(b)

    def test_selector_sees_peer_close(self) -> None:
        a, b = self.make_pair()
        with selectors.DefaultSelector() as sel:
            sel.register(b.fileno(), selectors.EVENT_READ)
            a.close()
            assert len(sel.select(5.0)) == 1
            with pytest.raises(EndOfChannel):
                b.recv(timeout=0)

    def test_asyncio_reader(self) -> None:
        import asyncio

        a, b = self.make_pair()

        async def main() -> list[Any]:
            loop = asyncio.get_running_loop()
            got: list[Any] = []
            done = asyncio.Event()

            def on_readable() -> None:
                while b.poll(0):
                    got.append(b.recv(timeout=0))
                if len(got) == 3:
                    done.set()

            loop.add_reader(b.fileno(), on_readable)
            try:
                for i in range(3):
                    a.send(i, timeout=5.0)
                await asyncio.wait_for(done.wait(), 5.0)
            finally:
                loop.remove_reader(b.fileno())
            return got

        assert asyncio.run(main()) == [0, 1, 2]
