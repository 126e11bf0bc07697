"""``ipckit.wait()``: wait on several channels and listeners at once, on every backend.

What "ready" means (as :func:`multiprocessing.connection.wait`): a channel is ready when
``recv`` would return or raise without blocking (a message, end of channel, a dead peer: exactly
``poll(0)``); a listener is ready when ``accept`` would return a channel at once.

How each object is waited for (:func:`_source`):

* **Read-ahead first.**  A kit may hold messages or bytes it already read from the kernel (a
  stream's read-ahead, zmq's inbox, a ring record under the reader): then the descriptor says
  nothing although a message waits.  So every round starts with ``poll(0)`` on each object, and
  the descriptors are only slept on when none is ready.
* **A descriptor** (``capabilities.selectable``: pipe, fifo, unix, mq, sysv+mq -- the last through
  its doorbell FIFO, armed for good by ``fileno()``): ``fileno()`` is slept on
  with :func:`select.poll`.  Readiness is then confirmed by the next round's ``poll(0)``.
* **A doorbell** (``_doorbell()``, a channel hook: shm://, sysv+shm://, memory://): a descriptor
  the sender rings only while this receiver has declared that it sleeps in a wait
  (:meth:`Doorbell.arm`), so a sender's fast path makes no extra system call.  The round arms
  every doorbell, checks ``poll(0)`` again (a message sent before the arm rang no bell), sleeps,
  then disarms.
* **zmq** (``zmq.FD`` of the channel's socket): edge-triggered, it only says "the socket's state
  changed"; the next round's ``poll(0)`` reads ``zmq.EVENTS`` (which also re-arms the edge), so
  a wake-up without a message just sleeps again.  The socket's FD does not see the monitor's
  disconnect events, so zmq waits are sliced (:data:`_SLICE`).  (zmq's ``fileno()`` raises
  UnsupportedOperation for that reason: this edge handling is ipckit.wait's own.)
* **Nothing to sleep on** (a listener without a descriptor): a bounded poll loop,
  ``poll(0)`` with a sleep that grows from 50 us to 10 ms between rounds (:data:`_BACKOFF`), so
  an idle wait costs ~100 wake-ups a second and a busy one answers within tens of microseconds.

Every sleep is bounded by :data:`_SLICE` (100 ms): an end can come without a ring (a peer killed
with SIGKILL rings no bell; ``poll(0)`` finds it by the backend's liveness check), and a
``close()`` from another thread does not wake a ``poll(2)`` on the closed descriptor.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterable
from typing import Any, Final, Protocol, runtime_checkable

from .channel import Channel, Listener
from .errors import ChannelClosed, ChannelTimeout, IPCError

__all__ = ["wait", "Doorbell", "ready_now", "wait_source"]

#: Longest sleep of one round when an object's readiness may change without its descriptor
#: firing (a killed peer, zmq's monitor); also what a doorbell round sleeps at most.
_SLICE: Final = 0.1
#: (first, factor, last) sleep of the poll loop for objects with nothing to sleep on.
_BACKOFF: Final = (50e-6, 2.0, 0.01)
#: First sleep of a round with an armed doorbell, doubled each round up to _SLICE: a ring lost in
#: the arm/publish race (ring/doorbell.py) costs a millisecond, not a whole slice.
_BELL_FIRST: Final = 0.001


@runtime_checkable
class Doorbell(Protocol):
    """A receiving end's wake-up descriptor (returned by a channel's ``_doorbell()`` hook)."""

    def fileno(self) -> int:
        """Readable once rung (stays readable until :meth:`disarm` drains it)."""

    def arm(self) -> None:
        """Declare that this end sleeps in a wait: from now on every send rings the bell."""

    def disarm(self) -> None:
        """The wait is over: senders stop ringing; pending rings are drained."""


class _Source:
    """How one object is waited for: a descriptor (or none), a doorbell to arm, and whether its
    readiness may change unseen by the descriptor (sliced sleeps)."""

    __slots__ = ("bell", "fd", "obj", "sliced")

    def __init__(self, obj: Any, fd: int | None, bell: Doorbell | None, sliced: bool) -> None:
        self.obj = obj
        self.fd = fd
        self.bell = bell
        self.sliced = sliced


def ready_now(obj: Channel | Listener) -> bool:
    """True when *obj* is ready without waiting (see the module docstring).

    A listener without a descriptor is probed with ``accept(timeout=0)``; a channel it accepts
    is kept on the listener and returned by its next ``accept`` (:meth:`Listener._stash`), so a
    probe never loses a connection.
    """
    if isinstance(obj, Listener):
        if obj.closed:
            raise ChannelClosed(f"wait on closed listener {obj.url}")
        if obj._accepted:
            return True
        try:
            fd = obj.fileno()
        except IPCError:
            fd = None
        if fd is not None:
            return bool(select.select([fd], [], [], 0)[0])
        try:
            ch = obj.accept(timeout=0)
        except ChannelTimeout:
            return False
        except ChannelClosed:
            raise
        except IPCError:
            return True  # accept answers at once (with this error, e.g. a one-peer listener's)
        obj._stash(ch)
        return True
    return bool(obj.poll(0))


def wait_source(obj: Channel | Listener) -> tuple[int | None, Doorbell | None, bool]:
    """``(descriptor, doorbell, sliced)`` of *obj*: what a wait sleeps on (None: poll it)."""
    s = _source(obj)
    return s.fd, s.bell, s.sliced


def _source(obj: Channel | Listener) -> _Source:
    try:
        return _find_source(obj)
    except (OSError, ValueError):
        if obj.closed:  # closed by another thread while its descriptor was being looked up
            raise ChannelClosed(f"wait on closed {obj.url}") from None
        raise


def _find_source(obj: Channel | Listener) -> _Source:
    if isinstance(obj, Listener):
        try:
            return _Source(obj, obj.fileno(), None, False)
        except IPCError:
            return _Source(obj, None, None, True)
    hook = getattr(obj, "_doorbell", None)
    bell = hook() if hook is not None else None
    if bell is not None:
        return _Source(obj, bell.fileno(), bell, True)
    if obj.capabilities.selectable:
        return _Source(obj, obj.fileno(), None, False)
    fd = _zmq_fd(obj)
    if fd is not None:
        return _Source(obj, fd, None, True)
    return _Source(obj, None, None, True)


def _zmq_fd(ch: Channel) -> int | None:
    """The edge-triggered ``zmq.FD`` of a zmq channel's data socket, or None.

    Read from the kit's link (``ch._link.sock``) without importing zmq: ipckit.wait must not load
    a backend, and only a zmq channel has such a link.
    """
    link = getattr(ch, "_link", None)
    sock = getattr(link, "sock", None)
    if sock is None:
        return None
    try:
        import zmq

        return int(sock.getsockopt(zmq.FD))
    except Exception:  # a closed socket or context: poll(0) reports the state
        return None


def wait(objects: Iterable[Channel | Listener], timeout: float | None = None) -> list[Channel | Listener]:
    """Wait until at least one of *objects* is ready; return the ready ones (in the given order).

    *objects*: channels (ready: ``recv`` would not block — a message, end of channel or a dead
    peer) and listeners (ready: ``accept`` would not block), of any backends, mixed.
    *timeout*: seconds; ``None`` waits for ever, ``0`` only looks.  Returns ``[]`` at the
    timeout, as :func:`multiprocessing.connection.wait` does.

    Raises:
        ChannelClosed: one of the objects is closed (here or by another thread while waiting).
    """
    objs = list(objects)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    sources: list[_Source] | None = None
    backoff = _BACKOFF[0]
    bell_nap = _BELL_FIRST
    while True:
        ready = [o for o in objs if ready_now(o)]
        if ready:
            return ready
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return []
        if sources is None:
            sources = [_source(o) for o in objs]
        polled = any(s.fd is None for s in sources)
        # Every sleep is bounded: a close() from another thread does not wake a poll(2) on the
        # closed descriptor, so the next round's poll(0) must come to raise ChannelClosed.
        nap = backoff if polled else _SLICE
        if left is not None:
            nap = left if nap is None else min(nap, left)
        if polled:
            backoff = min(backoff * _BACKOFF[1], _BACKOFF[2])
        bells = [s for s in sources if s.bell is not None]
        if bells:
            nap = bell_nap if nap is None else min(nap, bell_nap)
            bell_nap = min(bell_nap * 2, _SLICE)
        armed: list[Doorbell] = []
        try:
            for s in bells:
                assert s.bell is not None
                s.bell.arm()
                armed.append(s.bell)
            if armed:
                # A send between the round's poll(0) and the arm rang no bell: look again.
                ready = [s.obj for s in bells if ready_now(s.obj)]
                if ready:
                    return ready
            fds = [s.fd for s in sources if s.fd is not None]
            if fds:
                p = select.poll()
                for fd in fds:
                    p.register(fd, select.POLLIN)
                p.poll(None if nap is None else max(0, int(nap * 1000 + 0.999)))
            else:
                time.sleep(nap if nap is not None else _SLICE)
        finally:
            for bell in armed:
                bell.disarm()
