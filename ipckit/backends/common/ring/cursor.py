"""The ring's per-message fast paths: one whole-record send, one whole-record receive.

:class:`RingWriter` / :class:`RingReader` (``buffer.py``) keep the algorithm and every slow path;
their hot state (the private counters, the cached peer counter, the writer's room bound) lives in
a *cursor* so that one call can commit or consume a small message.  Two implementations share one
interface:

* ``ipckit.backends.common.ring._ringfast`` (C, built when a compiler is present at install time);
* :class:`PyWriter` / :class:`PyReader` below, the reference, used when the extension is missing
  or ``IPCKIT_PURE_PYTHON=1`` is set.

:data:`Writer` / :data:`Reader` are whichever is in use; :data:`IMPLEMENTATION` names it.

Interface (both implementations; ``offset`` is the ring region's start, as in ``buffer.py``)::

    Writer(buffer, offset, capacity, max_message_size)
        .send(data) -> bool     True: one MSG record committed.  False: nothing written (no room
                                without padding, larger than fast_max, budget spent, lock held by
                                another thread, detached) -- or committed but the reader closed.
    Reader(buffer, offset, capacity, max_message_size)
        .recv() -> bytes | None the next message if it is one whole MSG record, else None (nothing
                                consumed): empty, padding, streamed, corrupt, hold set, lock held.
    .send_held(data) / .recv_held()   the same, for a caller holding ``lock`` itself
    .own .peer .limit .fast_max .budget .hold .lock .wake .attached .detach()

``lock`` must be a ``threading.Lock`` (or None): the C cursor only *observes* it (``locked()``,
C code, under the GIL), the Python one takes it with ``acquire(False)``.  Counters at or above
2**63 make both fast paths decline, so no counter arithmetic wraps.

A cursor never raises for what it reads from the peer except ``ProtocolError`` for a corrupt read
counter met by ``send`` (as ``RingWriter._free``); the reader's general path (``peek``) reports
corrupt records.

Offsets, record format and the wake-up rule come from ``protocol.py``; the C extension carries its
own copy of the layout and reports it (``_ringfast.LAYOUT``): it is used only when that copy agrees.
"""

from __future__ import annotations

import _thread
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from ipckit.errors import ProtocolError

from . import protocol as _p

__all__ = ["IMPLEMENTATION", "PyReader", "PyWriter", "Reader", "Writer"]

_CONTROL_SIZE: Final = _p.CONTROL_SIZE
_COUNTER_MAX: Final = _p.COUNTER_MAX  # counters at or above are left to the general path (no wrap-around)
_ALIGN_MASK: Final = _p.ALIGN - 1
_RECORD_ROUND: Final = _p.HEADER_SIZE + _p.ALIGN - 1  # record size of n bytes: (n + this) & ~_ALIGN_MASK
_HEADER: Final = _p.HEADER_SIZE
_MIN_CAPACITY: Final = _p.MIN_CAPACITY
_MAX_CAPACITY: Final = _p.MAX_CAPACITY
_MSG: Final = _p.MSG
_W_RPOS: Final = _p.W_RPOS
_W_WPOS: Final = _p.W_WPOS
_W_RSLEEP: Final = _p.W_RSLEEP
_W_RCLOSED: Final = _p.W_RCLOSED
_W_WSLEEP: Final = _p.W_WSLEEP
_PACK_MAX: Final = 1024  # one struct call moves header and payload up to this size
_PACKERS: list[Callable[..., None] | None] = [None] * (_PACK_MAX + 1)
_UNPACKERS: list[Callable[..., tuple[int, int, int, bytes]] | None] = [None] * (_PACK_MAX + 1)


def _packer(n: int) -> Callable[..., None]:
    pack = _PACKERS[n] = struct.Struct(f"<IIQ{n}s").pack_into
    return pack


def _unpacker(n: int) -> Callable[..., tuple[int, int, int, bytes]]:
    unpack = _UNPACKERS[n] = struct.Struct(f"<IIQ{n}s").unpack_from
    return unpack


class _PyCursor:
    """State and checks common to the pure-Python cursors."""

    def __init__(self, buffer: Any, offset: int, capacity: int, max_message_size: int) -> None:
        mv = memoryview(buffer)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        if (
            mv.readonly
            or offset < 0
            or offset & _ALIGN_MASK
            or capacity < _MIN_CAPACITY
            or capacity & _ALIGN_MASK
            or capacity > _MAX_CAPACITY
            or len(mv) < offset + _CONTROL_SIZE + capacity
        ):
            mv.release()
            raise ValueError("bad ring region for this buffer")
        if max_message_size < 0:
            mv.release()
            raise ValueError("max_message_size must be >= 0")
        self._mv = mv
        self._ctl = mv[offset : offset + _CONTROL_SIZE].cast("Q")
        self._dq = mv[offset + _CONTROL_SIZE : offset + _CONTROL_SIZE + capacity].cast("Q")
        self._data = offset + _CONTROL_SIZE
        self.capacity = capacity
        self.max_message_size = max_message_size
        self.own = 0
        self.peer = 0
        self.limit = 0
        self.fast_max = max_message_size
        self.budget = 1 << 62
        self.hold = 0
        self._lock: Any = None
        self.wake: Callable[[], object] | None = None
        self.attached = True

    @property
    def lock(self) -> Any:
        """The channel's lock for this direction (fast calls run only while it is free), or None."""
        return self._lock

    @lock.setter
    def lock(self, lock: Any) -> None:
        if lock is not None and type(lock) is not _thread.LockType:
            raise TypeError(f"lock must be a threading.Lock or None, not {type(lock).__name__}")
        self._lock = lock

    def detach(self) -> None:
        if self.attached:
            self.attached = False
            self._dq.release()
            self._ctl.release()
            self._mv.release()


class PyWriter(_PyCursor):
    def send(self, data: Any) -> bool:
        lock = self._lock
        if lock is not None:
            held: list[bool] = []
            try:
                # Stored from C: an interrupt as acquire() returns never leaves the lock taken
                # (the C cursor takes it in C, with no such window).
                held.extend(map(lock.acquire, (False,)))
                return held[0] and self.send_held(data)
            finally:
                if held and held[0]:
                    lock.release()
        return self.send_held(data)

    def send_held(self, data: Any) -> bool:
        if not self.attached or self.budget <= 0:
            return False
        if type(data) is not bytes:
            try:
                view = memoryview(data)
            except (TypeError, ValueError, BufferError):  # not a buffer, released, closed
                return False
            if not view.c_contiguous:
                return False
            data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        n = len(data)
        if n > self.fast_max:
            return False
        cap = self.capacity
        wp = self.own
        if n > cap or wp >= _COUNTER_MAX or wp & _ALIGN_MASK:
            return False
        size = (n + _RECORD_ROUND) & ~_ALIGN_MASK
        pos = wp % cap
        end = wp + size
        if end > self.limit:
            rp = self._ctl[_W_RPOS]  # untrusted
            if rp > wp or wp - rp > cap or rp & _ALIGN_MASK or rp < self.peer:
                raise ProtocolError(f"corrupt read counter {rp} (write {wp}, capacity {cap})")
            self.peer = rp
            self.limit = min(wp - wp % cap + cap, rp + cap)
            if end > self.limit:
                return False
        if size > cap - pos:  # records never wrap
            return False
        if n <= _PACK_MAX and type(data) is bytes:
            pack = _PACKERS[n] or _packer(n)
            pack(self._mv, self._data + pos, _MSG, n, n, data)  # chunk n, total n, payload
        else:
            base = self._data + pos + _HEADER
            self._mv[base : base + n] = data
            i = pos >> 3
            self._dq[i] = _MSG | (n << 32)
            self._dq[i + 1] = n
        self.own = end
        self.budget -= 1
        # The publication store, after header and payload, right after the private one: no call
        # between them, where a signal handler's exception could leave the record committed here
        # but not published (as in C).  The rest is protocol.publish_write_pos's wake-up rule;
        # False: the reader has closed.
        ctl = self._ctl
        ctl[_W_WPOS] = end
        if ctl[_W_RSLEEP]:
            if ctl[_W_RCLOSED]:
                return False
            wake = self.wake
            if wake is not None:
                wake()
        return True


class PyReader(_PyCursor):
    def __init__(self, buffer: Any, offset: int, capacity: int, max_message_size: int) -> None:
        super().__init__(buffer, offset, capacity, max_message_size)
        self._src: Any = buffer if not isinstance(buffer, memoryview) else self._mv

    def detach(self) -> None:
        self._src = None
        super().detach()

    def recv(self) -> bytes | None:
        lock = self._lock
        if lock is not None:
            held: list[bool] = []
            try:
                held.extend(map(lock.acquire, (False,)))  # (see PyWriter.send)
                return self.recv_held() if held[0] else None
            finally:
                if held and held[0]:
                    lock.release()
        return self.recv_held()

    def recv_held(self) -> bytes | None:
        if not self.attached or self.hold:
            return None
        rp = self.own
        wp = self.peer
        cap = self.capacity
        if rp & _ALIGN_MASK:
            return None
        if wp <= rp:
            wp = self._ctl[_W_WPOS]  # untrusted
            if wp == rp or wp < rp or wp - rp > cap or wp & _ALIGN_MASK:
                return None
            self.peer = wp
        pos = rp % cap
        w0 = self._dq[pos >> 3]
        n = self._dq[(pos >> 3) + 1]
        if w0 != _MSG | (n << 32) or n > self.max_message_size or n > cap:  # chunk == total
            return None
        size = (n + _RECORD_ROUND) & ~_ALIGN_MASK
        if size > wp - rp or size > cap - pos:
            return None
        start = self._data + pos
        if n <= _PACK_MAX:
            unpack = _UNPACKERS[n] or _unpacker(n)
            kind, chunk, total, data = unpack(self._src, start)
            if kind != _MSG or chunk != n or total != n:  # changed under us: the general path decides
                return None
        else:
            data = self._mv[start + _HEADER : start + _HEADER + n].tobytes()
        self.own = rp = rp + size
        # Published right after the private store, with no call between them (see PyWriter.send_held);
        # then protocol.publish_read_pos's wake-up rule.
        ctl = self._ctl
        ctl[_W_RPOS] = rp
        if ctl[_W_WSLEEP]:
            wake = self.wake
            if wake is not None:
                wake()
        return data


def _load() -> tuple[type[Any], type[Any], str]:
    if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
        return PyWriter, PyReader, "python"
    try:
        from . import _ringfast
    except ImportError:
        return PyWriter, PyReader, "python"
    # A build from other sources (a stale in-place build) would read and write the wrong words:
    # never use it.  tests/ring/test_layout.py names the differences.
    if _p.layout_differences(getattr(_ringfast, "LAYOUT", None)):
        return PyWriter, PyReader, "python"
    return _ringfast.Writer, _ringfast.Reader, "c"


Writer, Reader, IMPLEMENTATION = _load()
