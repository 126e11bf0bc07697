"""AioContract: the core of the contract in async form (``ipckit.aio``), on asyncio and uvloop.

Order and integrity, timeouts, the peer's close, a SIGKILLed peer (PeerDied after its committed
messages, also for a receive already waiting), messages of 8 MiB (unless the transport caps
messages below that), async iteration and context managers, listeners (where named), a peer
process, and the cancellation promise (docs/aio.md): a cancelled receive
never loses or splits a message, a cancelled send delivers all of its message or none of it.
The cancellation row cancels sends and receives at random points thousands of times over a
sequence-numbered, self-checking stream and checks it end to end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

import pytest

import ipckit
import ipckit.aio

from ...channel import Channel
from ...errors import EndOfChannel, PeerDied, RecvTimeout
from ...options import Capabilities
from .. import workers
from ..peers import spawn_peer
from .cross_process import ChildEnds
from .helpers import MiB, blob

__all__ = ["AioContract", "run_on"]

_T = TypeVar("_T")
#: Sends (and as many receives) the cancellation row cancels at random points, per loop.
CANCEL_ROUNDS = 2000


def run_on(loop_kind: str, main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run *main()* on a fresh asyncio or uvloop loop (skip if uvloop is not installed)."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(main())  # type: ignore[no-any-return]
    return asyncio.run(main())


#: Every row runs on both loops.
on_both_loops = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])


class AioContract(ChildEnds):
    """``ipckit.aio`` keeps the channel contract, with cancellation safety, on asyncio and uvloop."""

    make_pair: Callable[..., tuple[Channel, Channel]]
    caps: Capabilities
    options: ClassVar[dict[str, Any]]
    fresh_url: Callable[[], str]
    own: Callable[[Any], Any]

    def _async_pair(self) -> tuple[ipckit.aio.AsyncChannel, ipckit.aio.AsyncChannel]:
        a, b = self.make_pair()
        return ipckit.aio.wrap(a), ipckit.aio.wrap(b)

    @on_both_loops
    def test_aio_order_and_integrity(self, loop_kind: str) -> None:
        async def main() -> None:
            a, b = self._async_pair()
            sizes = [0, 1, 100, 4000, 70_000, 300_000]

            async def produce() -> None:
                for i, n in enumerate(sizes * 5):
                    await a.send_bytes(workers.make_payload(i, n), timeout=30.0)
                await a.send({"done": True}, timeout=30.0)

            async def consume() -> None:
                for i in range(len(sizes) * 5):
                    assert workers.check_payload(await b.recv_bytes(timeout=30.0)) == i
                assert await b.recv(timeout=30.0) == {"done": True}

            await asyncio.gather(produce(), consume())

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_recv_timeout_consumes_nothing(self, loop_kind: str) -> None:
        async def main() -> None:
            a, b = self._async_pair()
            with pytest.raises(RecvTimeout):
                await b.recv(timeout=0.05)
            with pytest.raises(RecvTimeout):
                await b.recv(timeout=0)
            await a.send("after", timeout=5.0)
            assert await b.recv(timeout=5.0) == "after"

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_waits_without_blocking_the_loop(self, loop_kind: str) -> None:
        """A receive that waits leaves the loop free: another task runs meanwhile."""
        async def main() -> None:
            a, b = self._async_pair()
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            recv = asyncio.create_task(b.recv(timeout=10.0))
            while ticks < 20:
                await asyncio.sleep(0.001)
            assert not recv.done()
            await a.send(42, timeout=5.0)
            assert await recv == 42
            t.cancel()

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_iteration_and_context_managers(self, loop_kind: str) -> None:
        async def main() -> list[Any]:
            a, b = self._async_pair()
            async with a:
                for i in range(5):
                    await a.send(i, timeout=5.0)
            async with b:
                return [m async for m in b]

        assert run_on(loop_kind, main) == [0, 1, 2, 3, 4]

    @on_both_loops
    def test_aio_peer_close_is_end_of_channel(self, loop_kind: str) -> None:
        async def main() -> None:
            a, b = self._async_pair()
            waiting = asyncio.create_task(b.recv(timeout=10.0))
            await asyncio.sleep(0)
            await a.close()
            with pytest.raises(EndOfChannel):
                await waiting
            await b.close()

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_close_wakes_a_waiting_recv(self, loop_kind: str) -> None:
        async def main() -> None:
            _, b = self._async_pair()
            waiting = asyncio.create_task(b.recv(timeout=10.0))
            await asyncio.sleep(0.01)
            await b.close()
            with pytest.raises(ipckit.ChannelClosed):
                await asyncio.wait_for(waiting, 5.0)

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_listener(self, loop_kind: str) -> None:
        if not self.caps.named:
            pytest.skip("no listeners: the scheme is not named")

        async def main() -> None:
            async with ipckit.aio.listen(self.fresh_url(), **self.options) as lst:
                dial = asyncio.create_task(ipckit.aio.connect(lst.url, timeout=10.0, **self.options))
                server = await lst.accept(timeout=10.0)
                client = await dial
                async with client, server:
                    await client.send("hi", timeout=5.0)
                    assert await server.recv(timeout=5.0) == "hi"
                    await server.send("back", timeout=5.0)
                    assert await client.recv(timeout=5.0) == "back"

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_with_a_peer_process(self, loop_kind: str) -> None:
        if not self.caps.cross_process:
            pytest.skip("the scheme's ends live in one process")
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.echo, theirs, method="spawn") as peer:
            ch = finish()
            peer.wait_ready()

            async def main() -> None:
                ach = ipckit.aio.wrap(ch)
                for i in range(50):
                    await ach.send(i, timeout=10.0)
                    assert await ach.recv(timeout=10.0) == i
                await ach.close()

            run_on(loop_kind, main)
            peer.join()

    @on_both_loops
    def test_aio_peer_killed_is_peer_died(self, loop_kind: str) -> None:
        """A peer SIGKILLed after sending: its messages arrive, then PeerDied (docs/contract.md P5),
        and it stays dead.  Where PeerDeathContract applies (``inheritable`` and
        ``detects_peer_close``): elsewhere a send may only mean "queued" (zmq, docs Z-3)."""
        if not (self.caps.inheritable and self.caps.detects_peer_close):
            pytest.skip("PeerDeathContract does not apply: ends are not inheritable or the peer's end is not detected")
        _, theirs, finish = self.child_end()
        messages = [workers.make_payload(i, 1000 * i) for i in range(3)]
        with spawn_peer(workers.send_then_kill, theirs, messages) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.wait_exit() == -9

            async def main() -> None:
                ach = ipckit.aio.wrap(ch)
                for i in range(len(messages)):
                    assert workers.check_payload(await ach.recv_bytes(timeout=10.0)) == i
                with pytest.raises(PeerDied):
                    await ach.recv_bytes(timeout=10.0)
                with pytest.raises(PeerDied):
                    await ach.recv_bytes(timeout=0)
                await ach.close()

            run_on(loop_kind, main)

    @on_both_loops
    def test_aio_waiting_recv_sees_peer_death(self, loop_kind: str) -> None:
        """A receive already awaiting when the peer is SIGKILLed ends in PeerDied, well before
        its own timeout (the loop is woken through the backend's descriptor or doorbell)."""
        if not (self.caps.cross_process and self.caps.detects_peer_close):
            pytest.skip("the scheme has no peer process or does not detect the peer's end")
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()

            async def main() -> float:
                ach = ipckit.aio.wrap(ch)
                task = asyncio.ensure_future(ach.recv_bytes(timeout=30.0))
                for _ in range(20):  # let the receive find nothing and go to sleep on the loop
                    await asyncio.sleep(0.005)
                assert not task.done()
                loop = asyncio.get_running_loop()
                killed_at = loop.time()
                peer.kill()
                with pytest.raises(PeerDied):
                    await asyncio.wait_for(task, 20.0)
                took = loop.time() - killed_at
                await ach.close()
                return took

            took = run_on(loop_kind, main)
            peer.wait_exit()
            assert took < 3.0, f"PeerDied came {took:.1f} s after the kill (the sync contract allows 2 s)"

    @on_both_loops
    def test_aio_large_message(self, loop_kind: str) -> None:
        """An 8 MiB message awaited on both sides at once arrives whole (fragmented or streamed
        by the backend while the loop keeps running)."""
        limit = self.caps.max_message_size
        if limit is not None and limit < 8 * MiB:
            pytest.skip(f"the transport caps messages at {limit} bytes")
        data = blob(8 * MiB)

        async def main() -> None:
            a, b = self._async_pair()
            _, got = await asyncio.wait_for(
                asyncio.gather(a.send_bytes(data, timeout=30.0), b.recv_bytes(timeout=30.0)), 60.0)
            assert got == data
            await a.close()
            await b.close()

        run_on(loop_kind, main)

    @on_both_loops
    def test_aio_cancellation_never_loses_or_splits(self, loop_kind: str) -> None:
        """Sends and receives cancelled at random points, CANCEL_ROUNDS times each: every message
        the receiver gets is whole and in order; every send that returned is received; a
        cancelled send was received whole or not at all; a cancelled receive lost nothing."""
        rng = random.Random(15)
        sizes = [0, 8, 64, 1000, 9000] + ([70_000] if self.caps.max_message_size is None else [])

        async def main() -> None:
            a, b = self._async_pair()
            completed: set[int] = set()
            got: list[int] = []

            async def cancel_at_random(coro: Awaitable[_T]) -> tuple[bool, _T | None]:
                task = asyncio.ensure_future(coro)
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
                if rng.random() < 0.5:
                    task.cancel()
                try:
                    return True, await task
                except asyncio.CancelledError:
                    return False, None

            async def produce() -> None:
                for i in range(CANCEL_ROUNDS):
                    ok, _ = await cancel_at_random(a.send_bytes(workers.make_payload(i, rng.choice(sizes)),
                                                                timeout=30.0))
                    if ok:
                        completed.add(i)
                await a.close()

            async def consume() -> None:
                while True:
                    try:
                        ok, data = await cancel_at_random(b.recv_bytes(timeout=30.0))
                    except EndOfChannel:
                        return
                    if ok:
                        assert data is not None
                        got.append(workers.check_payload(data))  # whole: the payload checks itself

            await asyncio.wait_for(asyncio.gather(produce(), consume()), 120.0)
            await b.close()
            assert got == sorted(set(got)), "out of order or duplicated"
            missing = completed - set(got)
            assert not missing, f"{len(missing)} sends that returned were never received: {sorted(missing)[:10]}"

        run_on(loop_kind, main)
