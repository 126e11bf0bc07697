"""The ring's shared words and its wake-up protocol: the one Python definition.

``buffer.py`` (the algorithm and the slow paths) and ``cursor.py`` (the pure-Python fast paths)
take every offset, size and record kind from here and publish through the functions below.  The
C fast path (``_ringfast.c``) cannot import Python constants, so it keeps one table of its own and
reports it as ``_ringfast.LAYOUT``; ``cursor.py`` uses the extension only when that table equals
:data:`LAYOUT`, and ``tests/ring/test_layout.py`` fails, naming each difference, when they part.

Layout of one ring region (``offset`` a multiple of 64; all words native u64)::

    +0    flags line    magic, version, capacity, max_message_size   (written once)
                        reader_sleeping, reader_closed, writer_sleeping, writer_closed
    +64   writer line   write_pos                                    (written by the writer)
    +128  reader line   read_pos                                     (written by the reader)
    +224  data area     ``capacity`` bytes (a multiple of 64)

Each counter has a cache line to itself; the flags, read on every commit/publish but written only
when a side goes to sleep or closes, share the read-mostly first line, so a streaming writer and
reader do not bounce a line between cores per message just to look at a flag.

``write_pos`` and ``read_pos`` are monotonically increasing byte counters (the data position is
``counter % capacity``).  Records start at 64-byte boundaries of the data area and never wrap: a
16-byte header ``(kind: u32, chunk: u32, total: u64)`` then ``chunk`` payload bytes, padded to 64.
Kind 0 is invalid, so zeroed memory is never a message.

Wake-up protocol (semaphores are hints; the counters are the truth):

* **Waiter** (:meth:`~ipckit.backends.common.ring.waiting.WaitStrategy.wait`, phase 3): set its
  own sleeping flag, re-check the counter, block on its semaphore for one slice, clear the flag.
* **Poster** (:func:`publish_write_pos`, :func:`publish_read_pos`; the same in ``_ringfast.c``):
  store its counter -- the publication, after the record or the consumption it covers -- then load
  the peer's sleeping flag once and post the peer's semaphore only if it is set, so a busy stream
  makes no system call.
* **Closing** (:func:`close_writer`, :func:`close_reader`): set the side's closed flag and wake a
  sleeping peer.  A closing reader also raises ``reader_sleeping``, so the writer's one post-commit
  flag load notices the close too (the commit then went to a ring nobody reads).

Both halves are a store followed by a load of another word, which x86 (TSO) may reorder, and
Python cannot issue the fence between them: a wake-up can be lost in a window of a few hundred
nanoseconds.  The waiter bounds the loss with a short first slice (``WaitStrategy.first_slice``)
instead of paying a fence on every publication.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Final

__all__ = [
    "ABORT",
    "ALIGN",
    "CONT",
    "CONTROL_SIZE",
    "CONTROL_WORDS",
    "COUNTER_MAX",
    "HEADER_SIZE",
    "LAYOUT",
    "MAGIC",
    "MAX_CAPACITY",
    "MIN_CAPACITY",
    "MSG",
    "PAD",
    "REF",
    "VERSION",
    "W_CAPACITY",
    "W_MAGIC",
    "W_MAXMSG",
    "W_RCLOSED",
    "W_RPOS",
    "W_RSLEEP",
    "W_VERSION",
    "W_WCLOSED",
    "W_WPOS",
    "W_WSLEEP",
    "close_reader",
    "close_writer",
    "layout_differences",
    "publish_read_pos",
    "publish_write_pos",
    "record_size",
]

MAGIC: Final = 0x31474E524B435049  # b"IPCKRNG1" little-endian
VERSION: Final = 2
CONTROL_SIZE: Final = 224  # the data area's offset in a region: 32 bytes into a cache line (see buffer.py)
ALIGN: Final = 64  # records (and counters) move in multiples of this
HEADER_SIZE: Final = 16  # (kind: u32, chunk: u32, total: u64)
MIN_CAPACITY: Final = 256
MAX_CAPACITY: Final = 1 << 31  # chunk lengths are u32
# The fast paths decline counters at or above this, so no counter + record size wraps 64 bits.
COUNTER_MAX: Final = 1 << 63

# Record kinds.
MSG: Final = 1  # first (often only) record of a message of ``total`` bytes
CONT: Final = 2  # next chunk of a message larger than the ring
PAD: Final = 3  # the rest of the data area is unused; continue at its start
ABORT: Final = 4  # the writer gave up on a streamed message; drop the partial one
# A message of ``total`` bytes in a slot outside the ring (side.py); the record's 16-byte payload
# names the slot.  Not in LAYOUT: the C fast path never writes one and declines any kind but MSG.
REF: Final = 5

# u64 word indices in the control area (viewed with memoryview.cast("Q")).
W_MAGIC: Final = 0
W_VERSION: Final = 1
W_CAPACITY: Final = 2
W_MAXMSG: Final = 3
W_RSLEEP: Final = 4
W_RCLOSED: Final = 5
W_WSLEEP: Final = 6
W_WCLOSED: Final = 7
W_WPOS: Final = 8
W_RPOS: Final = 16
CONTROL_WORDS: Final = CONTROL_SIZE // 8

#: Everything the C fast path must agree on, by name (``_ringfast.LAYOUT`` has the same keys).
LAYOUT: Final = MappingProxyType(
    {
        "MAGIC": MAGIC,
        "VERSION": VERSION,
        "CONTROL_SIZE": CONTROL_SIZE,
        "ALIGN": ALIGN,
        "HEADER_SIZE": HEADER_SIZE,
        "MIN_CAPACITY": MIN_CAPACITY,
        "MAX_CAPACITY": MAX_CAPACITY,
        "COUNTER_MAX": COUNTER_MAX,
        "MSG": MSG,
        "CONT": CONT,
        "PAD": PAD,
        "ABORT": ABORT,
        "W_MAGIC": W_MAGIC,
        "W_VERSION": W_VERSION,
        "W_CAPACITY": W_CAPACITY,
        "W_MAXMSG": W_MAXMSG,
        "W_RSLEEP": W_RSLEEP,
        "W_RCLOSED": W_RCLOSED,
        "W_WSLEEP": W_WSLEEP,
        "W_WCLOSED": W_WCLOSED,
        "W_WPOS": W_WPOS,
        "W_RPOS": W_RPOS,
    }
)


def layout_differences(other: object) -> list[str]:
    """What another definition of the layout (``_ringfast.LAYOUT``) gets wrong, one line per name;
    empty when it agrees with :data:`LAYOUT` exactly."""
    try:
        theirs = dict(other)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return [f"not a mapping of names to values: {other!r}"]
    out = []
    for name in sorted(LAYOUT.keys() | theirs.keys(), key=str):
        if name not in theirs:
            out.append(f"{name}: missing (protocol.py has {LAYOUT[name]})")
        elif name not in LAYOUT:
            out.append(f"{name}: {theirs[name]!r}, unknown to protocol.py")
        elif theirs[name] != LAYOUT[name] or type(theirs[name]) is not int:
            out.append(f"{name}: {theirs[name]!r}, protocol.py has {LAYOUT[name]}")
    return out


def record_size(chunk: int) -> int:
    """Bytes a record carrying *chunk* payload bytes occupies (header included, padded to 64)."""
    return (chunk + HEADER_SIZE + ALIGN - 1) & ~(ALIGN - 1)


# -- the poster's half of the wake-up protocol ------------------------------------------------------
# (``ctl`` is the region's control area as u64 words; ``wake`` posts the peer's semaphore, or None.)


def publish_write_pos(ctl: memoryview, wp: int, wake: Callable[[], object] | None) -> bool:
    """Writer: publish *wp* (everything it covers is in place), then wake a sleeping reader.

    Returns False when the reader has closed -- the records went to a ring nobody reads -- and
    True otherwise.  An exception of *wake* propagates, after the publication.
    """
    ctl[W_WPOS] = wp  # the publication store: the records before it are visible first (TSO)
    if ctl[W_RSLEEP]:  # one flag load per commit; a closed reader raised it too
        if ctl[W_RCLOSED]:
            return False
        if wake is not None:
            wake()
    return True


def publish_read_pos(ctl: memoryview, rp: int, wake: Callable[[], object] | None) -> None:
    """Reader: publish *rp* (the space before it is free again), then wake a sleeping writer."""
    ctl[W_RPOS] = rp
    if ctl[W_WSLEEP] and wake is not None:
        wake()


def close_writer(ctl: memoryview, wake: Callable[[], object] | None) -> None:
    """Writer: mark the side closed (the reader sees EOF once drained) and wake a sleeping reader."""
    ctl[W_WCLOSED] = 1  # after the last commit: a reader that sees the flag drains what is left
    if ctl[W_RSLEEP] and wake is not None:
        wake()


def close_reader(ctl: memoryview, wake: Callable[[], object] | None) -> None:
    """Reader: mark the side closed (the writer's sends fail) and wake a sleeping writer."""
    ctl[W_RCLOSED] = 1
    ctl[W_RSLEEP] = 1  # routes the writer's one post-commit flag load to "closed"
    if ctl[W_WSLEEP] and wake is not None:
        wake()
