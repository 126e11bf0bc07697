"""Single-producer/single-consumer byte ring over a region of shared memory.

This module holds only the algorithm: it knows nothing about segments, semaphores or
processes.  ``ipckit.backends.common.ring.channel`` maps the memory through a provider
(``shm``, ``sysv+shm``), places two rings (one per direction) in one segment and plugs in the
wait strategy of ``ipckit.backends.common.ring.waiting``.  The region's layout, the record
format and the wake-up protocol are defined in ``ipckit.backends.common.ring.protocol``; the
per-message fast paths and the hot counters live in a cursor (``cursor.py``).

Each side keeps its own counter in a private variable and only *publishes* it to shared memory,
so a corrupted or hostile peer can never change what a side believes about itself; the peer's
counter is re-read and bounds-checked on every use.

Records (protocol.py):

* ``MSG``   first (often only) record of a message of ``total`` bytes.
* ``CONT``  next chunk of a message larger than the ring (streamed; the reader reassembles
  into a preallocated buffer of ``total`` bytes after checking ``total <= max_message_size``).
* ``PAD``   the rest of the data area is unused; continue at its start.
* ``ABORT`` the writer gave up on a streamed message (send timeout); drop the partial one.

Because the data area starts 32 bytes past a 64-byte boundary, every payload starts at an
address ``== 48 (mod 64)`` of a page-aligned mapping.  glibc's memcpy on this machine runs
~15x slower when ``(dst - src) % 4096`` is in ``[1, 31]``; measured (docs/shm.md) sources and
destinations are bytes objects (data at page offset 48) or malloc'd buffers -- bytearray,
numpy -- (page offset 16), giving distances 0 or 32, both on the fast path.  Streamed chunks
are multiples of 64 bytes so the relation holds for every chunk of a reassembled message.

Memory ordering: the writer copies the payload, then stores ``write_pos`` with one aligned
8-byte store; the reader loads ``write_pos`` and only then the payload.  That is correct on
x86-64 (TSO: stores become visible in program order, loads are not reordered with older
loads; glibc ends non-temporal memcpy loops with ``sfence``).  Weakly ordered CPUs would
need barriers that pure Python cannot issue, so :class:`Ring` refuses them
(:func:`ordering_supported`).  The sleeping flags use store-then-load (Dekker) which TSO does
*not* order; see protocol.py for how the waiting side bounds a lost wake-up.
"""

from __future__ import annotations

import mmap
import platform
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

from ipckit.backends.common.ring import cursor as _cursor
from ipckit.backends.common.ring import protocol as _p
from ipckit.errors import (
    BufferTooSmall,
    IncompatibleEndpoint,
    MessageTooLarge,
    ProtocolError,
    UnsupportedOperation,
)

__all__ = [
    "CONTROL_SIZE",
    "MAGIC",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "VERSION",
    "WRITER_CLOSED",
    "WRITE_POS",
    "Ring",
    "RingReader",
    "RingWriter",
    "initialize",
    "ordering_supported",
    "region_size",
    "round_capacity",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

# The layout and the record format (one definition: protocol.py).  The underscored aliases are
# this module's historical names, still used by tests that forge records and flags.
MAGIC: Final = _p.MAGIC
VERSION: Final = _p.VERSION
CONTROL_SIZE: Final = _p.CONTROL_SIZE  # data area offset inside the region
MIN_CAPACITY: Final = _p.MIN_CAPACITY
MAX_CAPACITY: Final = _p.MAX_CAPACITY
_ALIGN: Final = _p.ALIGN
_HDR: Final = struct.Struct("<IIQ")
_HDR_SIZE: Final = _p.HEADER_SIZE
assert _HDR.size == _HDR_SIZE
# A ring starts at 0; counters this high at attach are forged (2**62 bytes: ~5 years at 30 GB/s).
# The fast paths leave counters >= protocol.COUNTER_MAX (2**63) to the general path, so no sum
# can wrap 64 bits.
_COUNTER_LIMIT: Final = 1 << 62

_MSG: Final = _p.MSG
_CONT: Final = _p.CONT
_PAD: Final = _p.PAD
_ABORT: Final = _p.ABORT
_REF: Final = _p.REF
_REF_SIZE: Final = 16  # a REF record's payload (side.REF_PAYLOAD: slot offset, slot capacity)

_W_MAGIC: Final = _p.W_MAGIC
_W_VERSION: Final = _p.W_VERSION
_W_CAPACITY: Final = _p.W_CAPACITY
_W_MAXMSG: Final = _p.W_MAXMSG
_W_RSLEEP: Final = _p.W_RSLEEP
_W_RCLOSED: Final = _p.W_RCLOSED
_W_WSLEEP: Final = _p.W_WSLEEP
_W_WCLOSED: Final = _p.W_WCLOSED
_W_WPOS: Final = _p.W_WPOS
_W_RPOS: Final = _p.W_RPOS
_CONTROL_WORDS: Final = _p.CONTROL_WORDS
WRITE_POS: Final = _W_WPOS  # index of write_pos in :attr:`RingReader.counters`
WRITER_CLOSED: Final = _W_WCLOSED  # index of writer_closed in :attr:`RingReader.counters`

_publish_write_pos = _p.publish_write_pos
_publish_read_pos = _p.publish_read_pos
_record_size = _p.record_size

_X86: Final = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def ordering_supported(machine: str | None = None) -> bool:
    """True where plain stores are seen by other cores in program order (x86 TSO)."""
    return (machine if machine is not None else platform.machine()).lower() in _X86


def round_capacity(capacity: int) -> int:
    """Round a requested data capacity up to a multiple of 64 within the supported range."""
    if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY:
        raise ValueError(f"ring capacity must be in [{MIN_CAPACITY}, {MAX_CAPACITY}], got {capacity}")
    return (capacity + _ALIGN - 1) & ~(_ALIGN - 1)


def region_size(capacity: int) -> int:
    """Bytes of shared memory one ring of *capacity* (already rounded) occupies."""
    return CONTROL_SIZE + capacity


def _control(buf: memoryview, offset: int, size: int) -> memoryview:
    if offset < 0 or offset % _ALIGN or size < CONTROL_SIZE + MIN_CAPACITY or offset + size > len(buf):
        raise ValueError(f"bad ring region offset={offset} size={size} for a buffer of {len(buf)}")
    return buf[offset : offset + CONTROL_SIZE].cast("Q")


def _as_bytes_view(buf: object) -> memoryview:
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)  # type: ignore[arg-type]
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def initialize(buf: memoryview, offset: int, capacity: int, max_message_size: int) -> None:
    """Write an empty ring header into ``buf[offset:]``; the magic is stored last."""
    mv = _as_bytes_view(buf)
    capacity = round_capacity(capacity)
    ctl = _control(mv, offset, region_size(capacity))
    for i in range(_CONTROL_WORDS):
        ctl[i] = 0
    ctl[_W_VERSION] = VERSION
    ctl[_W_CAPACITY] = capacity
    ctl[_W_MAXMSG] = max_message_size
    ctl[_W_MAGIC] = MAGIC
    ctl.release()


class _CursorField:
    """An int attribute of RingWriter/RingReader kept in its cursor (the one copy of the hot state)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, ring: Ring, owner: object = None) -> int:
        return int(getattr(ring._c, self._name))

    def __set__(self, ring: Ring, value: int) -> None:
        setattr(ring._c, self._name, value)


class Ring:
    """Common part of both ends: validated view of one ring region.

    Args:
        buf: the whole shared mapping (anything exporting a writable byte buffer).
        offset: start of this ring's region (multiple of 64).
        size: bytes available for the region; must match the header's capacity.
        max_message_size: this side's limit; a message header above it is a ProtocolError.

    Raises:
        IncompatibleEndpoint: magic, version or capacity do not match (foreign or old segment).
        UnsupportedOperation: the CPU is not x86 (see the module docstring).
    """

    __slots__ = ("_c", "_cap", "_ctl", "_data", "_detached", "_dq", "_maxmsg", "_mv", "_wake")
    _cursor_type: type[Any]

    def __init__(self, buf: object, offset: int, size: int, max_message_size: int) -> None:
        if not ordering_supported():
            raise UnsupportedOperation(
                f"the shm ring relies on x86 total store order; {platform.machine()} is not supported"
            )
        mv = _as_bytes_view(buf)
        if mv.readonly:
            raise ValueError("the ring needs a writable buffer")
        ctl = _control(mv, offset, size)
        magic, version, cap = ctl[_W_MAGIC], ctl[_W_VERSION], ctl[_W_CAPACITY]
        if magic != MAGIC or version != VERSION:
            ctl.release()
            raise IncompatibleEndpoint(f"not an ipckit ring (magic {magic:#x}, version {version})")
        if cap < MIN_CAPACITY or cap > MAX_CAPACITY or cap % _ALIGN or CONTROL_SIZE + cap > size:
            ctl.release()
            raise IncompatibleEndpoint(f"ring capacity {cap} does not fit a region of {size} bytes")
        self._mv = mv
        self._ctl = ctl
        self._cap: int = cap
        self._data: int = offset + CONTROL_SIZE
        # Record headers as two u64 words (``kind | chunk << 32``, ``total``) through a word view of
        # the data area (8-aligned: the area starts 32 bytes into a 64-byte line).
        self._dq = mv[self._data : self._data + cap].cast("Q")
        self._maxmsg = max_message_size
        self._detached = False
        # The per-message fast path and the hot counters (cursor.py: C or pure Python).
        # (A fresh view of its own: both rings may share *mv*, and each releases its export alone.)
        try:
            self._c = self._cursor_type(buf if isinstance(buf, mmap.mmap) else mv[:], offset, cap, max_message_size)
        except BaseException:
            self._dq.release()
            ctl.release()
            raise
        self._wake: Callable[[], None] | None = None

    @property
    def wake_peer(self) -> Callable[[], None] | None:
        """Called (without arguments) when the peer may be asleep and needs a wake-up hint."""
        return self._wake

    @wake_peer.setter
    def wake_peer(self, fn: Callable[[], None] | None) -> None:
        self._wake = fn
        self._c.wake = fn

    @property
    def cursor(self) -> Any:
        """The fast-path cursor (``cursor.py``); a channel sets its ``lock`` and ``budget``."""
        return self._c

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def max_message_size(self) -> int:
        return self._maxmsg

    def _positions(self) -> tuple[int, int]:
        """Read both counters from shared memory and bounds-check their relation."""
        ctl = self._ctl
        wp, rp = ctl[_W_WPOS], ctl[_W_RPOS]
        if rp > wp or wp - rp > self._cap or wp % _ALIGN or rp % _ALIGN or wp >= _COUNTER_LIMIT:
            raise ProtocolError(f"corrupt ring counters (write {wp}, read {rp}, capacity {self._cap})")
        return wp, rp

    def detach(self) -> None:
        """Drop this ring's views of the shared buffer (so the mapping can be closed); idempotent."""
        if not self._detached:
            self._detached = True
            self._c.detach()
            self._dq.release()
            self._ctl.release()
            self._mv.release()


class RingWriter(Ring):
    """The producing end.  Not thread-safe; one writer per ring."""

    __slots__ = ("_abort_pending", "_fast_top", "_min_chunk", "_pending")
    _cursor_type = _cursor.Writer

    def __init__(self, buf: object, offset: int, size: int, max_message_size: int) -> None:
        super().__init__(buf, offset, size, max_message_size)
        try:
            self._c.own, self._c.peer = self._positions()
        except BaseException:
            self.detach()
            raise
        # [parts, part index, offset in part, bytes left, head, total, kind, header total]: *head*
        # is the write position of the message's first record, stored before that record is
        # written -- the reader may have seen part of the message exactly when the write counter is
        # past it.  *kind* / *header total*: MSG and the length, or REF and the slot's message length.
        self._pending: list[object] | None = None
        # The fast path's own ceiling (messages from this size on take the channel's slot path).
        self._fast_top = max_message_size
        self._abort_pending = False
        # Streamed chunks smaller than this are not worth a record unless at the ring's end.
        self._min_chunk = max(_ALIGN, (self._cap // 4) & ~(_ALIGN - 1))

    # The hot state lives in the cursor: this writer's counter (_wp), the reader's as last seen
    # (_rp), the bound below which a whole record fits without re-reading it (_limit, always <=
    # the true bound: recomputed on demand) and the fast path's size limit (_fast_max, -1 while
    # a message is pending).
    _wp = _CursorField("own")
    _rp = _CursorField("peer")
    _limit = _CursorField("limit")
    _fast_max = _CursorField("fast_max")

    # -- queries -------------------------------------------------------------------------
    def _free(self) -> int:
        """Free bytes, refreshing the reader's counter (untrusted: bounds-checked)."""
        rp = self._ctl[_W_RPOS]
        wp = self._wp
        if rp > wp or wp - rp > self._cap or rp % _ALIGN or rp < self._rp:
            raise ProtocolError(f"corrupt read counter {rp} (write {wp}, capacity {self._cap})")
        self._rp = rp
        return self._cap - (wp - rp)

    def space_available(self) -> int:
        """Free bytes in the ring right now (records need 64-byte multiples)."""
        return self._free()

    def fits_whole(self, total: int) -> bool:
        """True when a message of *total* bytes travels as one record (zero-copy on receive)."""
        return _record_size(total) <= self._cap

    def can_progress(self) -> bool:
        """Cheap predicate for the wait strategy: could the next write step succeed now?"""
        need = self._need()
        return need <= self._free() or self.peer_closed()

    def _need(self) -> int:
        """Free bytes the next write step waits for."""
        pending = self._pending
        pos = self._wp % self._cap
        tail = self._cap - pos
        if self._abort_pending:
            return _ALIGN
        if pending is None:
            return _ALIGN
        left: int = pending[3]  # type: ignore[assignment]
        rec = _record_size(left)
        if pending[4] is None and rec <= self._cap:
            return min(rec, tail)  # padding the tail is progress too
        return min(tail, rec, self._min_chunk + _ALIGN)

    def peer_closed(self) -> bool:
        return self._ctl[_W_RCLOSED] != 0

    @property
    def busy(self) -> bool:
        """True while a streamed message is half written (call :meth:`pump` or :meth:`abort`)."""
        return self._pending is not None or self._abort_pending

    # -- writing -------------------------------------------------------------------------
    def _commit(self, wp: int) -> None:
        self._c.own = wp  # (the cursor's slot itself: _wp's descriptor would be one more call)
        _publish_write_pos(self._ctl, wp, self._wake)  # a closed reader: the callers check peer_closed()

    def try_write(self, data: Buffer) -> bool:
        """Fast path of :meth:`write` for one 1-D byte-format buffer (bytes, bytearray,
        ``memoryview.cast("B")``): True when committed, else the message is pending."""
        n = len(data)
        rec = (n + _HDR_SIZE + _ALIGN - 1) & ~(_ALIGN - 1)
        cap = self._cap
        wp = self._wp
        pos = wp % cap
        if (
            rec > cap - pos
            or (rec > cap - (wp - self._rp) and rec > self._free())
            or self._pending is not None
            or self._abort_pending
            or n > self._fast_top
        ):
            return self._write_slow([data], n)
        base = self._data + pos
        self._mv[base + _HDR_SIZE : base + _HDR_SIZE + n] = data
        i = pos >> 3
        dq = self._dq
        dq[i] = _MSG | (n << 32)
        dq[i + 1] = n
        try:
            self._commit(wp + rec)
        except BaseException:
            self.recover()
            raise
        return True

    def try_send(self, data: Buffer) -> bool:
        """:meth:`try_write` for a channel's hot path (the cursor's ``send``), for one byte buffer.

        True: committed.  False: not sent -- no room without padding, a message pending, larger
        than max_message_size, or the reader closed (then the message may have gone into the
        ring nobody reads) -- and nothing is pending: the caller takes its general path, which
        reports why.
        """
        return bool(self._c.send(data))

    def _room_for(self, end: int) -> bool:
        """Refresh :attr:`_limit` from the reader's counter; True if a record ending at *end* fits
        contiguously (without padding) and within the free space."""
        self._free()
        wp = self._wp
        cap = self._cap
        self._limit = limit = min(wp - wp % cap + cap, self._rp + cap)
        return end <= limit

    def write(self, parts: Sequence[Buffer], total: int) -> bool:
        """Start writing one message made of *parts* (byte buffers summing to *total*).

        Returns True when the whole message is committed.  Otherwise the message is pending:
        call :meth:`pump` (after waiting for :meth:`can_progress`) until it returns True, or
        :meth:`abort` to give up.  A pending message that fits the ring is not yet visible to
        the reader; a streamed one is reassembled by the reader only once complete.

        Raises:
            MessageTooLarge: *total* exceeds max_message_size (nothing written).
        """
        return self._write_slow(parts, total)

    def _write_slow(self, parts: Sequence[Buffer], total: int) -> bool:
        if self._pending is not None:  # a caller gave up without abort() or recover()
            self.abort()
        if total > self._maxmsg:
            raise MessageTooLarge(f"message of {total} bytes exceeds max_message_size {self._maxmsg}")
        if total > 0xFFFFFFFFFFFFFFFF:
            raise MessageTooLarge("message length does not fit 64 bits")
        views = [_as_bytes_view(p) for p in parts]
        if sum(len(v) for v in views) != total:
            raise ValueError("parts do not add up to total")
        try:
            self._pending = [views, 0, 0, total, None, total, _MSG, total]
            return self.pump()
        except BaseException:
            self.recover()
            raise

    def _copy_from_pending(self, dst: int, n: int) -> None:
        pending = self._pending
        assert pending is not None
        views: list[memoryview] = pending[0]  # type: ignore[assignment]
        idx: int = pending[1]  # type: ignore[assignment]
        off: int = pending[2]  # type: ignore[assignment]
        mv = self._mv
        while n:
            v = views[idx]
            take = min(n, len(v) - off)
            mv[dst : dst + take] = v[off : off + take]
            dst += take
            n -= take
            off += take
            if off == len(v):
                idx += 1
                off = 0
        # Skip empty parts so the cursor always points at a byte (or the end).
        while idx < len(views) and off == len(views[idx]):
            idx += 1
            off = 0
        pending[1] = idx
        pending[2] = off

    def _pad(self, pos: int) -> None:
        _HDR.pack_into(self._mv, self._data + pos, _PAD, 0, 0)
        self._commit(self._wp + (self._cap - pos))

    def pump(self) -> bool:
        """Make as much progress on the pending message as space allows; True when done.

        An exception that escapes part-way (a signal handler's) gives the message up (:meth:`recover`).
        """
        try:
            done = self._pump()
        except BaseException:
            self.recover()
            raise
        self._fast_max = -1 if self._pending is not None or self._abort_pending else self._fast_top
        return done

    def _pump(self) -> bool:
        cap = self._cap
        if self._abort_pending:
            if self._free() < _ALIGN:
                return False
            _HDR.pack_into(self._mv, self._data + self._wp % cap, _ABORT, 0, 0)
            self._commit(self._wp + _ALIGN)
            self._abort_pending = False
        pending = self._pending
        if pending is None:
            return True
        total: int = pending[5]  # type: ignore[assignment]
        free = self._free()
        if pending[4] is None:
            rec = _record_size(total)
            if rec <= cap:
                # Whole-record path: wait until it fits contiguously, padding at the ring's end.
                pos = self._wp % cap
                tail = cap - pos
                if rec > tail:
                    if free < tail:
                        return False
                    self._pad(pos)
                    free -= tail
                if rec > free:
                    return False
                pending[4] = self._wp
                base = self._data + self._wp % cap
                _HDR.pack_into(self._mv, base, pending[6], total, pending[7])
                self._copy_from_pending(base + _HDR_SIZE, total)
                self._pending = None
                self._commit(self._wp + rec)
                return True
        # Streaming path: chunks of multiples of 64 bytes (except the last) into free space.
        while True:
            left: int = pending[3]  # type: ignore[assignment]
            pos = self._wp % cap
            tail = cap - pos
            room = min(free, tail)
            last = _record_size(left)
            if room < last and room < self._min_chunk + _ALIGN and room < tail:
                return False  # wait for more space rather than writing tiny chunks
            if room < 2 * _ALIGN and room < last:
                if room == tail and free >= tail:
                    self._pad(pos)  # a 48-byte chunk at the end is not worth a record
                    free -= tail
                    continue
                return False
            chunk = left if last <= room else room - _ALIGN
            base = self._data + pos
            if pending[4] is None:
                pending[4] = self._wp
                _HDR.pack_into(self._mv, base, _MSG, chunk, total)
            else:
                _HDR.pack_into(self._mv, base, _CONT, chunk, total)
            self._copy_from_pending(base + _HDR_SIZE, chunk)
            pending[3] = left - chunk
            rec = _record_size(chunk)
            self._commit(self._wp + rec)
            free -= rec
            if chunk == left:
                self._pending = None
                return True

    def limit_to(self, max_message_size: int) -> None:
        """Write no message above *max_message_size* from now on (the reader's limit, learned once
        it attached): :meth:`write` refuses it and the fast path declines it."""
        self._maxmsg = min(self._maxmsg, max_message_size)
        self._fast_top = min(self._fast_top, self._maxmsg)
        if self._fast_max >= 0:
            self._fast_max = self._fast_top

    def fast_ceiling(self, size: int) -> None:
        """Let the fast path (and :meth:`try_write`) take only messages below *size* bytes."""
        self._fast_top = min(self._maxmsg, max(0, size - 1))
        if self._fast_max >= 0:
            self._fast_max = self._fast_top

    def write_ref(self, payload: bytes, total: int) -> bool:
        """Start writing a ``REF`` record (a message of *total* bytes in a slot, side.py) carrying
        *payload*; True when committed, else pending as :meth:`write`."""
        if self._pending is not None:
            self.abort()
        if total > self._maxmsg:
            raise MessageTooLarge(f"message of {total} bytes exceeds max_message_size {self._maxmsg}")
        try:
            self._pending = [[memoryview(payload)], 0, 0, len(payload), None, len(payload), _REF, total]
            return self.pump()
        except BaseException:
            self.recover()
            raise

    def committed_last(self, kind: int, payload: bytes) -> bool:
        """True when the last record committed is of *kind* and starts with *payload* (after an
        exception, whether a ``REF`` record went out)."""
        wp = self._wp
        if wp < _ALIGN:
            return False
        base = self._data + (wp - _ALIGN) % self._cap
        k, chunk, _total = _HDR.unpack_from(self._mv, base)
        n = len(payload)
        return bool(k == kind and chunk == n and self._mv[base + _HDR_SIZE : base + _HDR_SIZE + n] == payload)

    def forget_pending(self) -> None:
        """Drop the pending message without writing anything (in a forked child that adopted this
        end: the message is the parent thread's, which finishes or aborts it there)."""
        self._pending = None
        self._fast_max = -1 if self._abort_pending else self._fast_top

    def abort(self) -> bool:
        """Give up on the pending message.  Returns True if the reader will never see any of it.

        A streamed message already partly committed is cancelled with an ABORT record (written
        now, or before the next message if the ring is full); the reader drops the partial one.
        """
        if self._drop_pending():
            self.pump()
        self._fast_max = -1 if self._abort_pending else self._fast_top
        return True

    def _drop_pending(self) -> bool:
        """Forget the pending message; an ABORT record is due when the reader may have seen part
        of it (the write counter went past its head).  True when an ABORT is due."""
        pending = self._pending
        self._pending = None
        if pending is not None and pending[4] is not None and self._wp > pending[4]:  # type: ignore[operator]
            self._abort_pending = True
        return self._abort_pending

    def recover(self) -> None:
        """After an exception escaped a write part-way (a signal handler's, ``KeyboardInterrupt``):
        make the state whole again, whatever step it cut.

        The pending message is given up as :meth:`abort` does, except that the ABORT record is left
        to the next write (nothing here waits or can fail on the ring).  The write counter is
        published again: a commit cut between its private and its shared store covers a complete
        record (records are written before they are committed), which the reader may now take.
        A record cut before its commit is beyond the counter and is simply overwritten.  So the
        reader sees the messages before, a stray ABORT at most (which it skips), and the next
        message; never part of one as a whole.
        """
        if self._detached:
            return
        self._drop_pending()
        self._fast_max = -1 if self._abort_pending else self._fast_top
        _publish_write_pos(self._ctl, self._wp, self._wake)

    def close(self) -> None:
        """Mark the writing side closed (the reader sees EOF once drained) and drop views."""
        if not self._detached:
            _p.close_writer(self._ctl, self._wake)
        self.detach()

    def set_sleeping(self, flag: bool) -> None:
        """Tell the reader this writer is (or no longer is) blocked waiting for space."""
        self._ctl[_W_WSLEEP] = 1 if flag else 0

    @property
    def control(self) -> memoryview:
        """The ring's control words (protocol.py); the channel reads the reader's sleeping word
        there for the doorbell (doorbell.py): 0, 1 in the kit's wait, 2 in ipckit.wait."""
        return self._ctl


class RingReader(Ring):
    """The consuming end.  Not thread-safe; one reader per ring.

    Exception safety (a signal handler's exception, ``KeyboardInterrupt``, can come out of any
    step): every step changes at most one slot that says where the reader is, after the work it
    stands for -- a message handed out (``_cur_``, with ``_cur_end`` set first), a streamed
    message begun with its first chunk (``_asm_``, with its buffer, total and progress set
    first), one more chunk taken (``_asm_at``: bytes reassembled and the ring position after the
    chunk, one tuple) -- so a cut
    step is redone or finished by the next call (:meth:`peek` reconciles the counter with
    ``_asm_at`` and hands out a message whose last chunk came in), and the shared read counter
    is published again by :meth:`recover`.  A message is never handed out twice once
    :meth:`release` consumed it, nor a part of one as a whole.
    """

    __slots__ = ("_asm_", "_asm_at", "_asm_total", "_asm_view", "_cur_", "_cur_end", "_cur_side", "_into", "counters",
                 "rest", "side")
    _cursor_type = _cursor.Reader
    #: The ring's control words (u64); ``counters[WRITE_POS] != read_pos`` means data waits.  For
    #: spin loops only: read, never write.  (An attribute, not a property: a wait reads it first.)
    counters: memoryview

    def __init__(self, buf: object, offset: int, size: int, max_message_size: int) -> None:
        super().__init__(buf, offset, size, max_message_size)
        try:
            self._c.peer, self._c.own = self._positions()
        except BaseException:
            self.detach()
            raise
        self.counters = self._ctl
        #: The sleeping word's value while this reader is not in a wait: 0, or 2 (doorbell.BELL)
        #: once ``fileno()`` handed the doorbell to a selector, which must see every commit.
        self.rest = 0
        self._cur_: memoryview | None = None
        self._cur_end = 0
        self._asm_: bytearray | None = None
        self._asm_view: memoryview | None = None
        self._asm_total = 0
        self._asm_at = (0, 0)  # (bytes reassembled, ring position after the last chunk taken)
        self._into: memoryview | None = None
        #: Opens the slot a ``REF`` record names (side.SideReader.open); None: such a record is corrupt.
        self.side: Callable[[memoryview, int], memoryview] | None = None
        self._cur_side = False  # the message handed out lives in a slot (side.py), not in the ring

    # The hot state lives in the cursor: this reader's counter (_rp), the writer's as last seen
    # (_wp), and whether a message is held or reassembled, which stops the cursor's fast path
    # (hold: raised before either is set, lowered after both are cleared -- a stale raised flag
    # only sends the next message through peek(), which lowers it again).
    _rp = _CursorField("own")
    _wp = _CursorField("peer")

    @property
    def _cur(self) -> memoryview | None:
        """The message handed out by peek(), until release()."""
        return self._cur_

    @property
    def _asm(self) -> bytearray | None:
        """The reassembly buffer of a streamed message (empty: reassembling into the caller's)."""
        return self._asm_

    # -- queries -------------------------------------------------------------------------
    def has_data(self) -> bool:
        """Cheap predicate: committed bytes are waiting (a message, a chunk or padding)."""
        return self._cur_ is not None or self._ctl[_W_WPOS] != self._rp

    def writer_closed(self) -> bool:
        return self._ctl[_W_WCLOSED] != 0

    def nudge(self) -> None:
        """Wake the writer if it sleeps (it waits for something besides ring space: a slot)."""
        if not self._detached and self._ctl[_W_WSLEEP] and self._wake is not None:
            self._wake()

    def ready_now(self) -> bool | None:
        """poll()'s fast answer from the shared words: True when a whole message waits (one
        record: a message that fits, or a slot's), False when nothing at all is committed and the
        writer is open, None for anything else (held or reassembled messages, padding, streamed
        or corrupt records, the end), which :meth:`peek` decides."""
        if self._cur_ is not None or self._asm_ is not None:
            return None
        ctl = self._ctl
        rp = self._c.own
        wp = ctl[_W_WPOS]
        if wp == rp:
            return None if ctl[_W_WCLOSED] else False
        if wp < rp or wp - rp > self._cap:
            return None
        i = (rp % self._cap) >> 3
        dq = self._dq
        w0 = dq[i]
        kind = w0 & 0xFFFFFFFF
        if kind == _MSG:
            return True if (w0 >> 32) == dq[i + 1] else None
        return True if kind == _REF else None

    def at_eof(self) -> bool:
        """True when the writer closed and everything it committed has been consumed."""
        # Flag first, counter second: the writer stores them in the opposite order (TSO).
        return self._ctl[_W_WCLOSED] != 0 and self.peek() is None

    def set_sleeping(self, flag: bool) -> None:
        """Tell the writer this reader is (or no longer is) blocked waiting for data."""
        self._ctl[_W_RSLEEP] = 1 if flag else self.rest

    def set_flag(self, value: int) -> None:
        """Store the sleeping word as *value* (doorbell.py: 2 arms the doorbell, 0 disarms)."""
        if not self._detached:
            self._ctl[_W_RSLEEP] = value

    # -- reading -------------------------------------------------------------------------
    def _publish(self, rp: int) -> None:
        self._c.own = rp  # (the cursor's slot itself: _rp's descriptor would be one more call)
        _publish_read_pos(self._ctl, rp, self._wake)

    def _load_wp(self, rp: int) -> int:
        wp = self._ctl[_W_WPOS]
        if wp < rp or wp - rp > self._cap or wp % _ALIGN or wp < self._wp:
            raise ProtocolError(f"corrupt write counter {wp} (read {rp}, capacity {self._cap})")
        self._wp = wp
        return wp

    def peek(self, into: memoryview | None = None) -> memoryview | None:
        """Return the next complete message without consuming it, or None if none is ready.

        The view points into shared memory (zero-copy) when the message fits the ring, else
        into a reassembly buffer -- *into* if given and large enough, so streamed messages
        land directly in a user buffer.  It stays valid until :meth:`release` (or the next
        ``try_read*``); after that it is released and using it raises ``ValueError``.

        Raises:
            ProtocolError: anything read from shared memory is out of bounds or inconsistent.
        """
        try:
            cur = self._cur_
            if cur is not None:
                if self._asm_ is not None or self._rp < self._cur_end:
                    return cur
                self.release()  # finishes a release() cut after it consumed the message
            cap = self._cap
            mv = self._mv
            while True:
                rp = self._rp
                if self._asm_ is not None:
                    got, end = self._asm_at
                    if end > rp:  # a step cut between taking its chunk and publishing the counter
                        self._publish(end)
                        rp = end
                    if got == self._asm_total:  # complete (handed out now, or its step was cut)
                        view = self._asm_view
                        assert view is not None
                        self._cur_end = rp
                        self._cur_ = view  # _asm_ stays set until release(): this view is the message
                        return view
                avail = self._wp - rp
                if avail <= 0:
                    avail = self._load_wp(rp) - rp
                    if avail == 0:
                        if self._asm_ is not None and not self._asm_:
                            self._own_asm()
                        return None
                pos = rp % cap
                base = self._data + pos
                kind, chunk, total = _HDR.unpack_from(mv, base)
                rec = (chunk + _HDR_SIZE + _ALIGN - 1) & ~(_ALIGN - 1)
                if kind == _MSG:
                    if rec > avail or rec > cap - pos or chunk > total or self._asm_ is not None:
                        raise ProtocolError(
                            f"bad message record (chunk {chunk}, total {total}, {avail} committed)"
                        )
                    if total > self._maxmsg:
                        raise ProtocolError(
                            f"peer announced {total} bytes, above max_message_size {self._maxmsg}"
                        )
                    if chunk == total:
                        view = mv[base + _HDR_SIZE : base + _HDR_SIZE + chunk]
                        self._cur_end = rp + rec
                        self._c.hold = True
                        self._cur_ = view
                        return view
                    into_ = into if into is not None and len(into) >= total else None
                    if into_ is None:
                        try:
                            asm = bytearray(total)
                        except MemoryError as exc:  # a bounded but still too large total
                            raise ProtocolError(f"cannot allocate {total} bytes for a message") from exc
                        asm_view = memoryview(asm)
                    else:
                        asm = bytearray()  # marker: reassembling into the caller's buffer
                        asm_view = into_[:total]
                    self._asm_view = asm_view  # (read only while _asm_ is set, which comes last)
                    self._asm_total = total
                    got = 0
                elif kind == _CONT:
                    asm = None
                    got = self._asm_at[0]
                    if (
                        self._asm_ is None
                        or total != self._asm_total
                        or chunk == 0
                        or chunk > total - got
                        or rec > avail
                        or rec > cap - pos
                    ):
                        raise ProtocolError(f"bad continuation record (chunk {chunk}, total {total})")
                elif kind == _REF:
                    # A message in a slot of its own (side.py): handed out as a view of the slot; the
                    # record is consumed by release(), as a message in the ring is.
                    side = self.side
                    if rec > avail or rec > cap - pos or chunk != _REF_SIZE or self._asm_ is not None or side is None:
                        raise ProtocolError(f"bad large-message record (chunk {chunk}, total {total})")
                    if total > self._maxmsg:
                        raise ProtocolError(f"peer announced {total} bytes, above max_message_size {self._maxmsg}")
                    view = side(mv[base + _HDR_SIZE : base + _HDR_SIZE + chunk], total)
                    self._cur_end = rp + rec
                    self._cur_side = True
                    self._c.hold = True
                    self._cur_ = view
                    return view
                elif kind == _PAD:
                    tail = cap - pos
                    if tail > avail:
                        raise ProtocolError("padding record beyond the committed data")
                    self._publish(rp + tail)
                    continue
                elif kind == _ABORT:
                    # The writer gave up on a streamed message; outside one (its send was cut after its
                    # last record, or before anything of the next), there is nothing to drop.
                    if self._asm_ is not None:
                        self._drop_asm()
                    self._publish(rp + _ALIGN)
                    continue
                else:
                    raise ProtocolError(f"unknown record kind {kind}")
                # A chunk of a streamed message: copy it out (again, if a cut step left it), record it
                # with the step's one store (for the first chunk: the message begun, _asm_, last), and
                # free its space at once.
                dst = self._asm_view
                assert dst is not None
                dst[got : got + chunk] = mv[base + _HDR_SIZE : base + _HDR_SIZE + chunk]
                self._asm_at = (got + chunk, rp + rec)
                if asm is not None:
                    self._c.hold = True
                    self._asm_ = asm
                self._publish(rp + rec)
        except BaseException:
            self.recover()
            raise

    def try_read_bytes(self) -> bytes | None:
        """Fast path (the cursor's ``recv``): the next message as ``bytes`` if it is one whole
        record, else None.

        None also when nothing is committed, or the next record is anything else (padding, a
        streamed message, corruption): :meth:`peek` handles those and raises ProtocolError where
        due.  Nothing is consumed when None is returned.
        """
        data: bytes | None = self._c.recv()
        return data

    @property
    def read_pos(self) -> int:
        return self._rp

    def _own_asm(self) -> None:
        """Move a half-reassembled message out of the caller's buffer before returning to it,
        so a timed-out (or interrupted) ``recv_bytes_into`` never has its buffer written to later."""
        old = self._asm_view
        assert old is not None
        got = self._asm_at[0]
        asm = bytearray(self._asm_total)
        view = memoryview(asm)
        view[:got] = old[:got]
        if self._cur_ is old:
            self._cur_ = view
        self._asm_view = view
        self._asm_ = asm
        try:
            old.release()
        except BufferError:  # still exported by a caller's frame (an interrupted recv_bytes_into)
            pass

    def _drop_asm(self) -> None:
        view = self._asm_view
        self._asm_ = None
        self._asm_view = None
        if self._cur_ is None:
            self._c.hold = False
        if view is not None:
            view.release()

    @property
    def held_end(self) -> int:
        """The read position just past the message :meth:`peek` handed out (while one is held)."""
        return self._cur_end

    @property
    def holds_slot(self) -> bool:
        """The message :meth:`peek` handed out lives in a slot (side.py): its view outlives
        :meth:`release` (``release(keep=True)``) and returns the slot when it dies."""
        return self._cur_side

    def release(self, keep: bool = False) -> None:
        """Consume the message returned by :meth:`peek` (invalidating its view, unless *keep*:
        only for a message in a slot, whose view the caller keeps)."""
        cur = self._cur_
        if cur is not None:
            try:
                if self._cur_end > self._rp:  # a message in the ring itself: its space is free now
                    self._publish(self._cur_end)
                # Consumed (the counter is past it): a cut from here on is finished by peek().
                self._asm_ = None  # a reassembled message: its buffer was the message
                self._asm_view = None
                self._cur_ = None
                self._cur_side = False
                self._c.hold = False
            except BaseException:
                self.recover()
                raise
            if keep:
                return
            try:
                cur.release()
            except BufferError:  # the caller exported it (e.g. numpy); it stays readable
                pass

    def recover(self) -> None:
        """After an exception escaped a read part-way: publish the read counter again (a step cut
        between its private and its shared store would leave the writer short of space), and
        move a message being reassembled into the caller's buffer into one of its own (the
        caller may reuse its buffer before the next call resumes the message)."""
        if self._detached:
            return
        rp = self._rp
        if self._asm_ is not None:
            end = self._asm_at[1]
            if end > rp:
                rp = end
            if not self._asm_ and self._asm_total:
                self._own_asm()
        self._publish(rp)

    def try_read(self) -> bytes | None:
        """Return the next message as bytes (one copy) or None if none is complete yet."""
        view = self.peek()
        if view is None:
            return None
        data = bytes(view)
        self.release()
        return data

    def try_read_into(self, buf: memoryview) -> int | None:
        """Copy the next message into *buf* and return its length, or None if none is ready.

        Raises:
            BufferTooSmall: *buf* is smaller than the message, which is consumed and attached.
        """
        view = self.peek(buf)
        if view is None:
            return None
        n = len(view)
        try:
            if n > len(buf):
                raise BufferTooSmall(f"message of {n} bytes does not fit a buffer of {len(buf)}", bytes(view))
            if view.obj is not buf.obj or n == 0:
                buf[:n] = view
        finally:
            self.release()
        return n

    def close(self) -> None:
        """Mark the reading side closed (the writer's sends fail) and drop every view."""
        self._cur_ = None
        self._drop_asm()
        if not self._detached:
            _p.close_reader(self._ctl, self._wake)
        self.detach()
