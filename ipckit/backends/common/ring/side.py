"""Large messages in slots of their own: copy-free receive at any ring capacity (issue 11, item 4).

A message of at least ``RingOptions.large_message`` bytes does not go through the ring.  The writer
copies it once into a *slot*, a page-aligned range of the channel's own shared-memory file beyond
the two rings, and sends a 64-byte ``REF`` record through the ring naming the slot.  The reader
maps the slot (once; mappings are cached) and hands the message out as a view of it: ``recv()`` of
a numpy array through pickle 5 and ``recv_view`` give arrays and views *into the slot*, with no
copy on the receiving side, whatever the ring's capacity.

Why slots live in the channel's own file (not in segments of their own): the file is already
created exclusively, mode 0600, owner-checked, and removed by the kit's crash-proof rules (its name
goes once both ends are attached, ``ipckit cleanup`` reclaims a crashed run's).  A slot has no name
of its own, so nothing new can be left behind: its pages are the file's, freed when the last
mapping of the file goes, also after ``kill -9`` of both ends.  tmpfs files are sparse, so each
direction gets a window of :data:`WINDOW` bytes of offsets and only written slots take memory.

Returning a slot: the reader hands out a view of a per-message exporter (a ctypes array over the
cached mapping).  When the last view of it dies -- ``recv_bytes`` copied it out, the next receive
released a ``recv_view``, the user dropped the numpy array -- its weak reference lands in a list,
and the reader's next call on the channel (a send or a receive) stores ``returned = 1`` in the
slot's header: the writer may fill the slot again.  A slot the user
keeps is never written while kept: the writer takes a new slot instead, up to :data:`POOL_SLOTS`.
With no slot free and a message of the pool still on its way (the reader is behind), the writer
waits for a slot to come back, as it waits for room in a full ring (the reader's return wakes it):
taking that message releases the view of the one before.  With every pooled slot holding a
message the reader took and still keeps, the message goes through the ring, so
memory stays bounded by the pool; a slot the user has kept across :data:`KEPT_TAKES` such sends is forgotten
(``dropped = 1``) to make room, and whichever side sees both flags last frees its pages
(``MADV_REMOVE``).  (Both flags are a store then a load of the other word, which x86 may
reorder; the rare loss leaves the pages allocated until the channel's file goes, never frees a slot
in use.)  Offsets are never reused, so a stale mapping never aliases a newer slot.

Slot layout (u64 words at the slot's start; the payload starts at byte :data:`HEAD`, page offset
48 like the ring's payloads, on glibc's fast memcpy path -- see buffer.py)::

    0 magic   1 capacity (bytes, including the head)   2 returned (reader)   3 dropped (writer)
    4 seen (reader: it took the message out of the ring)

``REF`` record payload (16 bytes): slot offset within the direction's window, slot capacity; the
record's ``total`` is the message length.  Everything read from the peer is bounds-checked: the
offset and capacity must be page multiples inside the window and the file, and the message must fit
the slot and the reader's ``max_message_size``.

When there is no room for a slot (the window is spent, /dev/shm is full, a mapping fails) the
message simply travels through the ring as before: slots are a speed-up, never a new failure.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from ipckit.errors import ProtocolError

__all__ = ["HEAD", "REF_PAYLOAD", "SLOT_MAGIC", "WINDOW", "SideReader", "SideWriter", "window_base"]

PAGE: Final = mmap.PAGESIZE
HEAD: Final = 48  # payload offset in a slot
SLOT_MAGIC: Final = 0x544F4C534B435049  # b"IPCKSLOT" little-endian
WINDOW: Final = 1 << 44  # offsets per direction (16 TiB of a sparse file; see the module docs)
_WINDOWS_START: Final = 1 << 30  # the first window starts 1 GiB into the file (past any ring pair)
REF_PAYLOAD: Final = struct.Struct("<QQ")
_W_MAGIC, _W_CAP, _W_RETURNED, _W_DROPPED, _W_SEEN = 0, 1, 2, 3, 4
_SLOT_GRAIN: Final = 64 * 1024  # slot capacities are multiples of this (reuse across similar sizes)
POOL_SLOTS: Final = 4  # slots a writer keeps mapped for reuse
READER_MAPPINGS: Final = 8  # slot mappings a reader keeps cached
KEPT_TAKES: Final = 8  # sends that find a full pool before a slot the user keeps is forgotten


def window_base(direction: int, ring_bytes: int) -> int:
    """File offset of the slot window of *direction* (0: written by end 0, 1: by end 1)."""
    start = max(_WINDOWS_START, (ring_bytes + _WINDOWS_START - 1) // _WINDOWS_START * _WINDOWS_START)
    return start + direction * WINDOW


def _slot_capacity(n: int) -> int:
    return (n + HEAD + _SLOT_GRAIN - 1) // _SLOT_GRAIN * _SLOT_GRAIN


def _free_pages(mm: mmap.mmap) -> None:
    """Give a slot's pages back to tmpfs (the file stays as long; the range reads as zeros)."""
    try:
        mm.madvise(mmap.MADV_REMOVE)
    except (OSError, ValueError, AttributeError):
        pass


class _Slot:
    __slots__ = ("cap", "kept", "mm", "offset", "words")

    def __init__(self, offset: int, cap: int, mm: mmap.mmap) -> None:
        self.kept = 0  # sends that found the message taken out of the ring but its view still alive
        self.offset = offset
        self.cap = cap
        self.mm = mm
        self.words = memoryview(mm)[:HEAD].cast("Q")

    def forget(self) -> None:
        """The writer lets go of this slot: free it now if the reader is done, else mark it dropped."""
        words = self.words
        words[_W_DROPPED] = 1
        if words[_W_RETURNED]:
            _free_pages(self.mm)
        words.release()
        try:
            self.mm.close()
        except BufferError:
            pass


class SideWriter:
    """The writing end's slots for one direction.  Not thread-safe (used under the send lock).

    *next_word*: a u64 in the segment's header that holds the next unused offset of the window,
    shared so that an end handed to another process never reuses an offset the reader may hold.
    """

    def __init__(self, fd: int, base: int, next_word: memoryview, next_index: int) -> None:
        self._fd = fd
        self._base = base
        self._next = next_word
        self._next_index = next_index
        self._pool: list[_Slot] = []
        #: Set by :meth:`take` when it found the pool full of messages still on their way to the
        #: reader: the caller may wait for one to come back (:meth:`any_returned`).
        self.behind = False

    def _new_slot(self, need: int) -> _Slot | None:
        cap = _slot_capacity(need)
        offset = int(self._next[self._next_index])
        if offset % PAGE or offset + cap > WINDOW:
            return None  # the window is spent (or the word was scribbled on): the ring carries it
        self._next[self._next_index] = offset + cap  # first: never handed out twice, even if we fail below
        try:
            # Reserve the pages now: a full /dev/shm is a fallback to the ring, never SIGBUS later.
            os.posix_fallocate(self._fd, self._base + offset, cap)
            mm = mmap.mmap(self._fd, cap, mmap.MAP_SHARED | mmap.MAP_POPULATE, offset=self._base + offset)
        except (OSError, ValueError, OverflowError):
            return None
        slot = _Slot(offset, cap, mm)
        w = slot.words
        w[_W_MAGIC] = SLOT_MAGIC
        w[_W_CAP] = cap
        w[_W_DROPPED] = 0
        w[_W_RETURNED] = 1
        return slot

    def take(self, n: int) -> _Slot | None:
        """A slot of at least *n* payload bytes that the reader does not hold, or None (use the ring)."""
        pool = self._pool
        self.behind = False
        best: _Slot | None = None
        # The smallest that fits, and of those the one the reader returned last (newest first):
        # its pages are the likeliest to be in the cache still, so a stream of frames keeps
        # reusing one or two slots instead of cycling through the whole pool.
        for slot in reversed(pool):
            if slot.words[_W_RETURNED] and slot.cap >= n + HEAD and (best is None or slot.cap < best.cap):
                best = slot
        if best is not None:
            pool.remove(best)
            pool.append(best)  # most recently used last
            return best
        victim: _Slot | None = None
        if len(pool) >= POOL_SLOTS:
            # Forget a free slot (too small for this message; the smallest first), else one the user
            # has kept across KEPT_TAKES sends.  Otherwise the reader is behind or still busy with
            # the messages: None, and the ring carries this one, its fullness holding us back.
            free = [s for s in pool if s.words[_W_RETURNED]]
            if free:
                victim = min(free, key=lambda s: s.cap)
            elif self.in_flight():
                # A message is still on its way: the reader has not caught up, and taking it will
                # return the slot of the message before (a recv_view is released by the next
                # receive).  Wait for that rather than copy this message through the ring: a
                # frame stream then never leaves the slots (the fallback cost recv_view ~25 %).
                self.behind = True
                return None
            else:
                for s in pool:  # every slot holds a message the reader took and still keeps
                    s.kept += 1
                    if victim is None and s.kept >= KEPT_TAKES:
                        victim = s
                if victim is None:
                    return None
        new = self._new_slot(n)
        if new is None:
            return None
        if victim is not None:
            pool.remove(victim)
            victim.forget()
        pool.append(new)
        return new

    def in_flight(self) -> bool:
        """A pooled slot holds a message the reader has not yet taken out of the ring."""
        return any(not s.words[_W_SEEN] and not s.words[_W_RETURNED] for s in self._pool)

    def any_returned(self) -> bool:
        """The wait's predicate after :meth:`take` found the reader behind: a pooled slot came
        back, or none is on its way any more (every one is kept by the reader: the ring then)."""
        return any(s.words[_W_RETURNED] for s in self._pool) or not self.in_flight()

    @staticmethod
    def fill(slot: _Slot, parts: list[memoryview]) -> int:
        """Copy *parts* into *slot*; the slot is the reader's from now on (returned = 0)."""
        slot.words[_W_RETURNED] = 0
        slot.words[_W_SEEN] = 0
        slot.kept = 0
        mv = memoryview(slot.mm)
        try:
            pos = HEAD
            for p in parts:
                n = p.nbytes
                mv[pos : pos + n] = p
                pos += n
        finally:
            mv.release()
        return pos - HEAD

    @staticmethod
    def unfill(slot: _Slot) -> None:
        """The ``REF`` record naming *slot* was never committed: the slot is free again."""
        slot.words[_W_RETURNED] = 1

    @staticmethod
    def ref(slot: _Slot) -> bytes:
        return REF_PAYLOAD.pack(slot.offset, slot.cap)

    def close(self) -> None:
        """This end is closed for good in its own process: forget every slot."""
        pool, self._pool = self._pool, []
        for slot in pool:
            slot.forget()
        try:
            self._next.release()
        except BufferError:
            pass

    def detach(self) -> None:
        """Drop the mappings without touching the slots (another process owns this end now)."""
        pool, self._pool = self._pool, []
        for slot in pool:
            slot.words.release()
            try:
                slot.mm.close()
            except BufferError:
                pass
        try:
            self._next.release()
        except BufferError:
            pass


class SideReader:
    """The reading end's view of the peer's slots for one direction."""

    def __init__(self, fd: int, base: int, max_message_size: int,
                 notify: Callable[[], object] | None = None) -> None:
        self._fd = fd
        self._base = base
        self._maxmsg = max_message_size
        self._notify = notify  # wakes a writer waiting for a slot (RingReader.nudge)
        self._maps: OrderedDict[int, mmap.mmap] = OrderedDict()
        #: The weak references of messages whose last view died, appended by the weakref machinery
        #: itself (``list.append`` is the callback: C, so no signal handler's exception can cut it or
        #: be lost in it).  :meth:`drain` returns their slots; the channel calls it on its calls.
        self.dead: list[weakref.ref[Any]] = []
        # Messages handed out: id(weak ref) -> (weak ref, the slot's words, its mapping, the pid).
        self._out: dict[int, tuple[weakref.ref[Any], memoryview, mmap.mmap, int]] = {}

    def drain(self) -> None:
        """Return the slots of the messages whose last view died to the writer.

        Each is popped before its flag is stored: a cut in between (a signal handler's exception)
        keeps that one slot from the writer, which then takes another -- never a slot returned
        twice (the second store could free a slot refilled meanwhile).
        """
        dead = self.dead
        out = self._out
        pid = os.getpid()
        returned = False
        while dead:
            entry = out.pop(id(dead.pop()), None)
            if entry is None:
                continue
            words, mm = entry[1], entry[2]
            try:
                if entry[3] == pid:  # (a forked child dropping its copy: the parent may still use it)
                    words[_W_RETURNED] = 1
                    returned = True
                    if words[_W_DROPPED]:
                        _free_pages(mm)
            finally:
                words.release()
        if returned and self._notify is not None:
            self._notify()

    def _mapping(self, offset: int, cap: int) -> mmap.mmap:
        mm = self._maps.get(offset)
        if mm is not None and len(mm) == cap:
            self._maps.move_to_end(offset)
            return mm
        end = self._base + offset + cap
        try:
            if os.fstat(self._fd).st_size < end:
                raise ProtocolError(f"a large-message slot at {offset} ({cap} bytes) lies beyond the segment")
            mm = mmap.mmap(self._fd, cap, mmap.MAP_SHARED | mmap.MAP_POPULATE, offset=self._base + offset)
        except OSError as exc:
            raise ProtocolError(f"cannot map the large-message slot at {offset} ({cap} bytes): {exc}") from exc
        self._maps[offset] = mm
        while len(self._maps) > READER_MAPPINGS:
            _close_mapping(self._maps.popitem(last=False)[1])
        return mm

    def open(self, record_payload: memoryview, total: int) -> memoryview:
        """The message a ``REF`` record names, as a view that returns its slot when it dies.

        Raises:
            ProtocolError: the record names anything but a slot of this direction that holds it.
        """
        if self.dead:
            self.drain()
        offset, cap = REF_PAYLOAD.unpack_from(record_payload, 0)
        if (offset % PAGE or cap % PAGE or cap < HEAD + total or offset + cap > WINDOW
                or total > self._maxmsg or total == 0):
            raise ProtocolError(f"bad large-message record (slot {offset}, {cap} bytes, message {total})")
        mm = self._mapping(offset, cap)
        words = memoryview(mm)[:HEAD].cast("Q")  # the message's own (a cached mapping may be evicted)
        if words[_W_MAGIC] != SLOT_MAGIC or words[_W_CAP] != cap:
            words.release()
            raise ProtocolError(f"the large-message slot at {offset} has a bad header")
        words[_W_SEEN] = 1
        # One ctypes array type per slot capacity (ctypes caches every array type it makes, so a
        # type per message length would grow without bound); the message is a slice of it.
        exporter = _array_type(cap - HEAD).from_buffer(mm, HEAD)
        ref = weakref.ref(exporter, self.dead.append)
        self._out[id(ref)] = (ref, words, mm, os.getpid())
        return memoryview(exporter).cast("B")[:total]

    def close(self) -> None:
        """This end stops reading: return what can be returned; a message the user still holds
        keeps its mapping (and the descriptor ``mmap`` holds) only until its last view dies."""
        self.drain()
        for entry in self._out.values():
            entry[1].release()
        self._out.clear()
        maps, self._maps = self._maps, OrderedDict()
        for mm in maps.values():
            _close_mapping(mm)


def _array_type(n: int) -> Any:
    return ctypes.c_char * n


def _close_mapping(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # a message still exported from it: the GC unmaps it after the last view
