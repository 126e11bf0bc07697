"""``ipckit.aio``: the channels of every backend as asyncio channels (asyncio and uvloop).

>>> import asyncio, ipckit.aio
>>> async def main():
...     a, b = ipckit.aio.pair("shm://")
...     async with a, b:
...         await a.send({"hello": "world"})
...         return await b.recv()
>>> asyncio.run(main())
{'hello': 'world'}

Readiness comes from the descriptor :mod:`ipckit.waiting` finds for each channel (the channel's
own descriptor, a doorbell, zmq's FD) through ``loop.add_reader``: no thread per channel.  A
channel with nothing to sleep on (sysv+mq://) is polled with a growing back-off (50 us to 10 ms).

Cancellation (docs/aio.md):

* **recv** never loses or splits a message.  A message is only ever taken by a synchronous
  ``recv(timeout=0)``, and nothing is awaited between taking it and returning it, so a
  cancellation (delivered only at an ``await``) arrives either before anything was taken or never.
  A message that is partly there (larger than what the kernel holds, being streamed) is finished
  by a blocking receive in the loop's executor; if the caller is cancelled meanwhile, the result
  is kept and the next receive returns it first.
* **send** delivers all of a message or none of it.  It first tries ``send(timeout=0)``, which
  every backend keeps whole-or-nothing (a cut stream frame is aborted, a ring record given up
  whole).  A send that would block runs in the loop's executor; a cancelled caller does not
  stop it (it delivers the whole message or fails as a sync send would), and the next send on the
  channel waits for it, so messages keep their order.  Do not change a buffer passed to a
  cancelled ``send_bytes``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar

from . import api
from .channel import Channel, Listener
from .errors import ChannelTimeout, EndOfChannel, RecvTimeout, SendTimeout
from .waiting import _BACKOFF, _BELL_FIRST, _SLICE, Doorbell, ready_now, wait_source

__all__ = ["AsyncChannel", "AsyncListener", "pair", "listen", "connect", "wrap"]

_T = TypeVar("_T")
#: How long a poll-loop wait (no descriptor) only yields to the loop before it sleeps.
_YIELD_FOR: Final = 200e-6
#: A receive's synchronous tries that may find a message announced but not whole (being
#: streamed) before the rest is awaited in the executor.
_PARTIAL_TRIES: Final = 2


class _Readiness:
    """Awaits "something may have changed" for one channel or listener."""

    def __init__(self, obj: Channel | Listener) -> None:
        self._obj = obj
        self._fd, self._bell, self._sliced = wait_source(obj)
        self._backoff = _BACKOFF[0]
        self._bell_nap = _BELL_FIRST
        self._polling_since: float | None = None
        self._active: tuple[asyncio.AbstractEventLoop, int, Callable[[], None]] | None = None

    def reset(self) -> None:
        """Something arrived: the next poll-loop sleep starts short again."""
        self._backoff = _BACKOFF[0]
        self._polling_since = None

    async def wait(self, deadline: float | None) -> None:
        """Return once *obj* may be ready, or at *deadline* (the caller then looks again)."""
        left = None if deadline is None else deadline - time.monotonic()
        fd = self._fd
        if fd is None:
            # Nothing to sleep on (sysv+mq://): first yield to the loop for _YIELD_FOR seconds
            # (an answer often comes within tens of microseconds, and asyncio's timers cannot
            # sleep less than a millisecond), then sleep with a growing back-off.
            now = time.monotonic()
            if self._polling_since is None:
                self._polling_since = now
            if now - self._polling_since < _YIELD_FOR:
                await asyncio.sleep(0)
                return
            nap = self._backoff
            self._backoff = min(nap * _BACKOFF[1], _BACKOFF[2])
            await asyncio.sleep(nap if left is None else max(0.0, min(nap, left)))
            return
        self._backoff = _BACKOFF[0]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()

        def fire(rang: bool = True) -> None:
            if not fut.done():
                fut.set_result(rang)

        bell: Doorbell | None = self._bell
        loop.add_reader(fd, fire)
        self._active = (loop, fd, fire)
        timer = None
        try:
            if bell is not None:
                bell.arm()
                if ready_now(self._obj):  # sent before the arm: no bell rang for it
                    return
            # Always bounded: a close() elsewhere must be seen (its descriptor then wakes nobody).
            limit: float | None = _SLICE
            if bell is not None:
                # A ring lost in the arm/publish race (ring/doorbell.py) costs one short slice.
                limit = self._bell_nap
                self._bell_nap = min(self._bell_nap * 2, _SLICE)
            if left is not None:
                limit = left if limit is None else min(limit, left)
            if limit is not None:
                timer = loop.call_later(max(0.0, limit), fire, False)
            rang = await fut
            if rang:
                self._bell_nap = _BELL_FIRST  # the bell works: the next sleep starts short again
        finally:
            if timer is not None:
                timer.cancel()
            if self._active is not None:
                self._active = None
                loop.remove_reader(fd)
            if bell is not None:
                bell.disarm()  # also after a close: the last disarm releases the descriptor

    def release(self) -> None:
        """Before the channel closes: unregister its descriptor from the loop (a loop must never
        watch a closed descriptor) and wake the task sleeping on it, which then sees the close."""
        active, self._active = self._active, None
        if active is not None:
            loop, fd, fire = active
            loop.remove_reader(fd)
            fire()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class AsyncChannel:
    """An ipckit channel with awaitable calls; made by :func:`pair`, :func:`connect`,
    :meth:`AsyncListener.accept` or :func:`wrap`.

    Every call takes ``timeout`` (seconds, ``None``: no limit); a timeout raises what the sync
    call raises (RecvTimeout, SendTimeout), and so do the peer's end and death.  Several tasks may
    use one channel: receives are served one at a time, sends too.
    """

    def __init__(self, channel: Channel) -> None:
        self._ch = channel
        self._ready = _Readiness(channel)
        self._rlock = asyncio.Lock()
        self._wlock = asyncio.Lock()
        #: A blocking send still running in the executor (its caller may have been cancelled).
        self._sending: asyncio.Future[None] | None = None
        #: A blocking receive finishing a partly-arrived message; its result belongs to the next recv.
        self._receiving: asyncio.Future[Any] | None = None

    @property
    def channel(self) -> Channel:
        """The sync channel underneath (for ``url``, ``capabilities``, ...)."""
        return self._ch

    @property
    def url(self) -> str:
        return self._ch.url

    @property
    def closed(self) -> bool:
        return self._ch.closed

    def fileno(self) -> int:
        return self._ch.fileno()

    # ------------------------------------------------------------------ receiving
    async def recv(self, timeout: float | None = None) -> Any:
        """Receive and deserialize one message (raises as :meth:`Channel.recv`)."""
        return await self._take(self._ch.recv, timeout)

    async def recv_bytes(self, timeout: float | None = None) -> bytes:
        """Receive one message as bytes (raises as :meth:`Channel.recv_bytes`)."""
        data: bytes = await self._take(self._ch.recv_bytes, timeout)
        return data

    async def _take(self, call: Callable[..., _T], timeout: float | None) -> _T:
        deadline = _deadline(timeout)
        async with self._rlock:
            pending = self._receiving
            if pending is not None:
                if not (pending.done() and isinstance(pending.exception(), RecvTimeout)):
                    # A receive whose caller was cancelled left its message here: it is this one's.
                    return await self._finish(pending)  # type: ignore[no-any-return]
                self._receiving = None  # it only timed out (the cancelled caller's deadline)
            misses = 0
            while True:
                try:
                    result = call(timeout=0)  # no await from here to the return: nothing to cancel
                except RecvTimeout:
                    pass
                else:
                    self._ready.reset()
                    return result
                left = _left(deadline)
                if self._ch.poll(0):
                    # Announced but not whole (a message being streamed in): after a couple of
                    # tries, finish it with one blocking receive in the executor.
                    misses += 1
                    if misses >= _PARTIAL_TRIES:
                        fut = asyncio.get_running_loop().run_in_executor(
                            None, functools.partial(call, timeout=left))
                        self._receiving = fut
                        return await self._finish(fut)  # type: ignore[no-any-return]
                    await asyncio.sleep(0)
                    continue
                misses = 0
                if left == 0.0:
                    raise RecvTimeout(f"no message on {self._ch.url} before the timeout")
                await self._ready.wait(deadline)

    async def _finish(self, fut: asyncio.Future[Any]) -> Any:
        """Await the executor receive *fut*; a cancellation leaves its result for the next recv."""
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError:
            raise  # self._receiving still holds fut: the next receive returns its message
        except BaseException:
            self._drop_receiving(fut)  # its error was raised here, to its owner
            raise
        self._drop_receiving(fut)
        return result

    def _drop_receiving(self, fut: asyncio.Future[Any]) -> None:
        if self._receiving is fut:
            self._receiving = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.recv()
            except EndOfChannel:
                return

    async def poll(self, timeout: float | None = 0.0) -> bool:
        """True once a message (or the end) is waiting, waiting up to *timeout* seconds."""
        deadline = _deadline(timeout)
        while True:
            if self._receiving is not None or ready_now(self._ch):
                return True
            if _left(deadline) == 0.0:
                return False
            await self._ready.wait(deadline)

    # ------------------------------------------------------------------ sending
    async def send(self, obj: Any, timeout: float | None = None) -> None:
        """Serialize *obj* and deliver it as one message (raises as :meth:`Channel.send`)."""
        await self._put(self._ch.send, obj, timeout)

    async def send_bytes(self, data: Any, timeout: float | None = None) -> None:
        """Deliver the bytes of *data* as one message (raises as :meth:`Channel.send_bytes`)."""
        await self._put(self._ch.send_bytes, data, timeout)

    async def _put(self, call: Callable[..., None], item: Any, timeout: float | None) -> None:
        deadline = _deadline(timeout)
        async with self._wlock:
            earlier = self._sending
            if earlier is not None:
                # A cancelled caller's send is still running: ours goes after it (order kept).
                try:
                    await asyncio.shield(earlier)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    pass  # its caller was cancelled; its error is not ours (a dead peer shows again)
                if self._sending is earlier:
                    self._sending = None
            try:
                call(item, timeout=0)  # whole or nothing on every backend
                return
            except SendTimeout:
                if _left(deadline) == 0.0:
                    raise
            # It would block: wait for room in a thread of the executor, not on the loop.
            fut = asyncio.get_running_loop().run_in_executor(
                None, functools.partial(call, item, timeout=_left(deadline)))
            self._sending = fut
            await asyncio.shield(fut)
            if self._sending is fut:
                self._sending = None

    # ------------------------------------------------------------------ closing
    async def close(self) -> None:
        """Close the channel (a send still running for a cancelled caller is given up to 2 s)."""
        pending = self._sending
        if pending is not None and not pending.done():
            try:
                await asyncio.wait_for(asyncio.shield(pending), 2.0)
            except BaseException:
                pass
        self._ready.release()
        self._ch.close()

    async def __aenter__(self) -> AsyncChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncChannel {self._ch!r}>"


class AsyncListener:
    """A listener whose :meth:`accept` is awaitable (async iteration yields accepted channels)."""

    def __init__(self, listener: Listener) -> None:
        self._lst = listener
        self._ready = _Readiness(listener)

    @property
    def listener(self) -> Listener:
        return self._lst

    @property
    def url(self) -> str:
        return self._lst.url

    async def accept(self, timeout: float | None = None) -> AsyncChannel:
        """The next peer's channel (raises ChannelTimeout at the deadline, ChannelClosed once closed)."""
        deadline = _deadline(timeout)
        while True:
            try:
                return AsyncChannel(self._lst.accept(timeout=0))
            except ChannelTimeout:
                if _left(deadline) == 0.0:
                    raise
            await self._ready.wait(deadline)

    def __aiter__(self) -> AsyncListener:
        return self

    async def __anext__(self) -> AsyncChannel:
        return await self.accept()

    async def close(self) -> None:
        self._ready.release()
        self._lst.close()

    async def __aenter__(self) -> AsyncListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def wrap(obj: Channel) -> AsyncChannel:
    """Make a sync channel (e.g. an end handed over by a parent process) async."""
    return AsyncChannel(obj)


def pair(url: str = "pipe://", **options: Any) -> tuple[AsyncChannel, AsyncChannel]:
    """:func:`ipckit.pair`, made async (creating a pair never blocks)."""
    a, b = api.pair(url, **options)
    return AsyncChannel(a), AsyncChannel(b)


def listen(url: str, **options: Any) -> AsyncListener:
    """:func:`ipckit.listen`, made async (listening never blocks)."""
    return AsyncListener(api.listen(url, **options))


async def connect(url: str, *, timeout: float | None = api.DEFAULT_CONNECT_TIMEOUT, **options: Any) -> AsyncChannel:
    """:func:`ipckit.connect` in the loop's executor (a connect waits for the listener).

    Cancelled, the connect still finishes in its thread, and the channel it made is closed.
    """
    fut = asyncio.get_running_loop().run_in_executor(
        None, functools.partial(api.connect, url, timeout=timeout, **options))
    try:
        return AsyncChannel(await asyncio.shield(fut))
    except asyncio.CancelledError:
        fut.add_done_callback(_close_result)
        raise


def _close_result(fut: asyncio.Future[Channel]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
