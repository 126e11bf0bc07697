"""CrossProcessContract: an end works in a child process, under fork and spawn (``capabilities.inheritable``).

:class:`ChildEnds` is the helper the mixins that need a peer process share: it hands an end
(or, for named-only backends, an address to dial) to a child.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import ipckit

from ...channel import Channel, Listener
from ...errors import EndOfChannel
from ...options import Capabilities
from .. import workers
from ..peers import spawn_peer
from .helpers import ResultThread, send_each

__all__ = ["ChildEnds", "CrossProcessContract"]


class ChildEnds:
    """Gives a child process an end: the mixins that run a real peer process build on this.

    Not a contract itself (the meta-test does not count it); :class:`ChannelContract` supplies
    the attributes declared here.
    """

    make_pair: Callable[..., tuple[Channel, Channel]]
    own: Callable[[Any], Any]
    caps: Capabilities
    options: ClassVar[dict[str, Any]]
    fresh_url: Callable[[], str]

    def child_end(self, **options: Any) -> tuple[Channel | Listener, Channel | workers.Dial, Callable[[], Channel]]:
        """``(mine, theirs, finish)``: *theirs* goes to the child; call *finish()* after starting it.

        For a pair of inheritable ends, *finish* closes this process's copy of the child's end and
        returns *mine*; otherwise the child dials a fresh listener's URL and *finish* accepts it.
        """
        if self.caps.anonymous_pair and self.caps.inheritable:
            mine, theirs = self.make_pair(**options)

            def finish() -> Channel:
                theirs.close()  # the child has its own copy now
                return mine

            return mine, theirs, finish
        if not self.caps.named:
            pytest.fail(f"{self.caps} reach another process neither by inheritance nor by name: "
                        "a contract that needs a peer process cannot run")
        opts = {**self.options, **options}
        lst = self.own(ipckit.listen(self.fresh_url(), **opts))
        dial = workers.Dial(lst.url, opts)

        def accept() -> Channel:
            ch: Channel = self.own(lst.accept(timeout=20.0))
            return ch

        return lst, dial, accept


class CrossProcessContract(ChildEnds):
    """An end works in a child process, under *fork* and *spawn* (``capabilities.inheritable``)."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_echo_in_child(self, method: str) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.echo, theirs, method=method) as peer:
            ch = finish()
            peer.wait_ready()
            n = 2000 if method == "fork" else 500
            sizes = [0, 1, 100, 4095, 4096, 70_000] + [i % 1500 for i in range(n - 6)]
            sender = ResultThread(lambda: send_each(ch, (workers.make_payload(i, s) for i, s in enumerate(sizes))))
            sender.start()
            for i in range(n):
                assert workers.check_payload(ch.recv_bytes(timeout=20.0)) == i
            sender.outcome()
            ch.close()
            assert peer.join() == n

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_child_closes_with_three_in_flight(self, method: str) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.send_messages, theirs, [1, "two", {"three": 3}], method=method) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.join() == 3
            assert [ch.recv(timeout=10.0) for _ in range(3)] == [1, "two", {"three": 3}]
            with pytest.raises(EndOfChannel):
                ch.recv(timeout=10.0)

    def test_child_receives(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 50, method="fork") as peer:
            ch = finish()
            peer.wait_ready()
            for i in range(50):
                ch.send({"i": i}, timeout=10.0)
            assert peer.join() == [{"i": i} for i in range(50)]

    def test_plain_pickle_is_refused_with_advice(self) -> None:
        a, _b = self.make_pair()
        import pickle

        with pytest.raises(TypeError):
            pickle.dumps(a)
