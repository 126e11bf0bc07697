"""``memory://`` — the in-process reference backend (threads only).

Features:
    Passes the whole channel contract without any OS object, so the core (deadlines, close
    semantics, serializers, thread safety) is tested on its own.  Bounded in bytes: a sender
    blocks while ``capacity`` bytes are queued.  Messages are copied on send, so the sender may
    reuse its buffer.

URL format:
    ``memory://name`` for ``listen``/``connect`` within one process; ``pair()`` needs no name.

Options:
    ``capacity`` — bytes that may wait in each direction (default 64 MiB, at least one message
    always fits).  Common options: ``serializer``, ``max_message_size``, ``default_timeout``.

Platform notes:
    Any platform.  Channels cannot leave the process (not inheritable).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, final

from ..backend import Backend
from ..channel import Channel, Listener
from ..deadline import Deadline, remaining
from ..errors import (
    ChannelClosed,
    ChannelTimeout,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    InvalidAddress,
    RecvTimeout,
    SendTimeout,
)
from ..options import Capabilities, Options, option
from ..serializers import Buffer
from ..url import Endpoint
from .common.paths import NAME_RE, check_mode

__all__ = ["MemoryBackend", "MemoryChannel", "MemoryOptions"]

_counter = itertools.count()
_listeners: dict[str, _MemoryListener] = {}
_listeners_lock = threading.Lock()


@dataclass
class MemoryOptions(Options):
    capacity: int = option(64 * 1024 * 1024, minimum=1)


class _Direction:
    """One direction: a byte-bounded deque guarded by the pair's condition."""

    __slots__ = ("armed", "bell", "items", "nbytes", "reader_closed", "sticky", "writer_closed")

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.nbytes = 0
        self.writer_closed = False
        self.reader_closed = False
        # The reader's doorbell (an eventfd, made by its first ipckit.wait), rung by the writer
        # only while ``armed``: the reader sleeps in ipckit.wait / ipckit.aio (_MemoryBell).
        self.bell = -1
        self.armed = False
        self.sticky = False  # fileno() gave the bell to a selector: armed for good, level kept

    def settle(self) -> None:
        """Reader, under the lock, sticky: the eventfd readable exactly while something waits."""
        try:
            os.eventfd_read(self.bell)
        except BlockingIOError:
            pass
        if self.items or self.writer_closed:
            os.eventfd_write(self.bell, 1)

    def ring(self) -> None:
        """Writer, under the lock: wake a reader sleeping in ipckit.wait (nothing when none does)."""
        if self.armed:
            os.eventfd_write(self.bell, 1)


class _MemoryBell:
    """The doorbell of one end's inbound direction (ipckit.waiting.Doorbell)."""

    def __init__(self, lock: Any, inbound: _Direction) -> None:
        self._lock = lock
        self._in = inbound

    def fileno(self) -> int:
        with self._lock:
            if self._in.bell < 0:
                self._in.bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return self._in.bell

    def arm(self) -> None:
        self.fileno()
        with self._lock:
            self._in.armed = True

    def stick(self) -> int:
        fd = self.fileno()
        with self._lock:
            self._in.armed = self._in.sticky = True
            self._in.settle()
        return fd

    def disarm(self) -> None:
        with self._lock:
            if self._in.sticky:
                return
            self._in.armed = False
            if self._in.bell >= 0:
                try:
                    os.eventfd_read(self._in.bell)
                except BlockingIOError:
                    pass


_CAPS = Capabilities(
    duplex=True,
    message_oriented=True,
    selectable=False,
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=False,
    cross_process=False,
    multi_client=True,
    proves_same_user=True,
)


@final
class MemoryChannel(Channel):
    """One end of an in-process channel."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __init__(self, url: str, options: MemoryOptions, cond: threading.Condition, out: _Direction,
                 inbound: _Direction) -> None:
        super().__init__(url, options, peer_trusted=True)
        self._cond = cond
        # Entered as ``with self._lock`` (the condition's own lock, whose __enter__ is C): a
        # Condition's __enter__ is a Python method, and an exception a signal handler raises as
        # it returns would leave the lock taken with nobody to release it.
        self._lock: Any = cond._lock  # type: ignore[attr-defined]
        self._out = out
        self._in = inbound
        self._capacity = max(options.capacity, 1)
        self._bell = _MemoryBell(self._lock, inbound)

    def _fileno(self) -> int:
        """The doorbell's eventfd, armed for good: selectors and ``loop.add_reader`` see every
        message and the peer's close (each send then writes it, each receive settles it)."""
        return self._bell.stick()

    def _doorbell(self) -> _MemoryBell:
        """For ipckit.wait / ipckit.aio: an eventfd rung only while this end sleeps there."""
        if self._closed:
            raise self._closed_error("wait")
        return self._bell

    def _wait(self, deadline: Deadline) -> bool:
        left = remaining(deadline)
        if left == 0.0:
            return False
        self._cond.wait(left)
        if self._closed:
            raise ChannelClosed(f"channel {self._url} was closed while waiting")
        return True

    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        data = bytes(view)
        n = len(data)
        with self._lock:
            out = self._out
            while True:
                if out.reader_closed:
                    raise EndOfChannel(f"the peer closed {self._url}")
                # One message always fits an empty queue, so a big message cannot wait forever.
                if out.nbytes == 0 or out.nbytes + n <= self._capacity:
                    break
                if not self._wait(deadline):
                    raise SendTimeout(f"send timed out on {self._url}: {out.nbytes} bytes are waiting unread")
            out.items.append(data)
            out.nbytes += n
            self._cond.notify_all()
            out.ring()

    def _recv_message(self, deadline: Deadline) -> Buffer:
        with self._lock:
            inbound = self._in
            while not inbound.items:
                if inbound.writer_closed:
                    raise EndOfChannel(f"the peer closed {self._url} and every message was received")
                if not self._wait(deadline):
                    raise RecvTimeout(f"no message on {self._url} before the timeout")
            data = inbound.items.popleft()
            inbound.nbytes -= len(data)
            self._cond.notify_all()
            if inbound.sticky:
                inbound.settle()
            return data

    def _poll(self, deadline: Deadline) -> bool:
        with self._lock:
            while not (self._in.items or self._in.writer_closed):
                if not self._wait(deadline):
                    return False
            return True

    def _wakeup(self) -> None:
        with self._lock:
            self._cond.notify_all()
            self._in.ring()  # a wait() in another thread sees the close

    def _close(self) -> None:
        with self._lock:
            self._out.writer_closed = True
            self._out.ring()  # the peer's wait() sees the end
            self._in.reader_closed = True
            self._in.items.clear()
            self._in.nbytes = 0
            self._cond.notify_all()
            self._in.armed = False
            fd, self._in.bell = self._in.bell, -1
            if fd >= 0:
                os.close(fd)


def _make_pair(url: str, options: MemoryOptions,
               peer_options: MemoryOptions | None = None) -> tuple[MemoryChannel, MemoryChannel]:
    """Two joined ends; the second has *peer_options* (a connecting client's) when given.

    Each end learns the other's ``max_message_size`` at once (the hello of the other backends,
    issue 10, A.3), so a send above the receiver's limit is refused by the sender.
    """
    cond = threading.Condition(threading.Lock())
    ab, ba = _Direction(), _Direction()
    a = MemoryChannel(url, options, cond, ab, ba)
    b = MemoryChannel(url, peer_options or options, cond, ba, ab)
    a._learn_peer_limit(b.max_message_size)
    b._learn_peer_limit(a.max_message_size)
    return a, b


@final
class _MemoryListener(Listener):
    def __init__(self, url: str, name: str, options: MemoryOptions) -> None:
        super().__init__(url, options)
        self._opts = options  # (typed: the base keeps them as Options)
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._lock: Any = self._cond._lock  # type: ignore[attr-defined]  # (see MemoryChannel)
        self._backlog: deque[MemoryChannel] = deque()

    def _offer(self, options: MemoryOptions) -> MemoryChannel:
        a, b = _make_pair(self._url, self._opts, options)  # the accepted end has the listener's options
        with self._lock:
            if self._closed:
                a.close()
                b.close()
                raise EndpointNotFound(2, f"nothing listens at {self._url}")
            self._backlog.append(a)
            self._cond.notify_all()
        return b

    def _accept(self, deadline: Deadline) -> Channel:
        with self._lock:
            while not self._backlog:
                if self._closed:  # checked under the condition: close()'s notify is never missed
                    raise ChannelClosed(f"listener {self._url} was closed")
                left = remaining(deadline)
                if left == 0.0:
                    raise ChannelTimeout(f"no peer connected to {self._url} before the timeout")
                self._cond.wait(left)
            return self._backlog.popleft()

    def _wakeup(self) -> None:
        with self._lock:
            self._cond.notify_all()

    def _close(self) -> None:
        with _listeners_lock:
            if _listeners.get(self._name) is self:
                del _listeners[self._name]
        with self._lock:
            pending = list(self._backlog)
            self._backlog.clear()
            self._cond.notify_all()
        for ch in pending:
            ch.close()


def _name(endpoint: Endpoint) -> str:
    name = endpoint.address.strip("/")
    if not NAME_RE.match(name):
        raise InvalidAddress(f"memory:// names use letters, digits, '.', '_' and '-' (1-200 chars), got {name!r}")
    return name


@final
class MemoryBackend(Backend):
    scheme: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = MemoryOptions

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        name = endpoint.address.strip("/") or f"ipckit-pair-{next(_counter)}"
        return _make_pair(f"memory://{name}", options)

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        name = _name(endpoint)
        url = f"memory://{name}"
        with _listeners_lock:
            if name in _listeners:
                raise EndpointExists(17, f"{url} is already listening in this process")
            lst = _MemoryListener(url, name, options)
            _listeners[name] = lst
        return lst

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        name = _name(endpoint)
        with _listeners_lock:
            lst = _listeners.get(name)
        if lst is None:
            raise EndpointNotFound(2, f"nothing listens at memory://{name} in this process")
        # As every backend's opener (S5 in docs/design.md): an endpoint listening with a wider mode
        # than this end's is refused, so both ends agree on the trust rule (the reference backend
        # behaves as the ones with OS objects do, though nobody else can reach it).
        check_mode(f"memory://{name}", lst._options.mode, options.mode)
        return lst._offer(options)
