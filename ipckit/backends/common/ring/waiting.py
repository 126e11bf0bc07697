"""Adaptive waiting for the shared-memory ring: spin, then yield, then block on a hint.

:meth:`WaitStrategy.wait` is the one wait of the ring kit: every receive (``recv``, ``recv_bytes``,
``recv_bytes_into``, ``recv_view``), ``poll``, a send that found the ring full, and a listener's
``accept`` wait through it, each with its own predicate.

Why three phases (measured on the 2-vCPU VM of docs/benchmarks.md; see docs/shm.md):

* A peer on **another core** answers in a few microseconds; blocking on a semaphore costs a
  cross-core wake-up of 50-300 us.  A short bounded spin on the ring counter catches the
  answer ~20x sooner.
* A peer on **the same core** cannot run while we spin, so spinning only burns our slice.
  ``os.sched_yield`` hands the CPU to it instead (a same-core switch is ~3-7 us).  Spinning is
  skipped when both processes are pinned to one CPU, and an adaptive budget shrinks it when
  spins keep missing (unpinned processes that happen to share a core).
* After that the waiter **blocks** on a wake-up hint (a counting semaphore).  Semaphores are
  hints only, never mutexes: the ring counters are the truth and the predicate is re-checked
  after every wake-up, so stale or lost posts cost latency, never correctness.

Lost wake-ups (the protocol is in protocol.py): the waiter stores its "sleeping" flag and then
re-reads the ring counter; the poster stores the counter and then reads the flag.  x86 may
reorder a store with a later load, so both can miss each other in a window of a few hundred
nanoseconds.  The first blocking slice is therefore short (``first_slice``, 1 ms) and grows to
``max_slice`` (100 ms); a lost wake-up costs at most one short slice.  The poster only issues the
syscall when the flag is set, so the fast path (peer spinning or yielding) makes no system call.

Every wait is bounded by an absolute ``time.monotonic()`` deadline and sliced so that a
``check`` callback (close flag, peer liveness) runs at least every ``max_slice`` seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Final, Protocol, TypeAlias

__all__ = ["Watch", "WaitStrategy", "Waker", "same_cpu"]

_monotonic = time.monotonic
_perf = time.perf_counter
_sched_yield = os.sched_yield

_REEVALUATE_EVERY: Final = 4096  # waits between affinity re-checks on the fast path
#: A ``sched_yield`` that returns later than this without the answer ran some other process, not
#: the peer (a same-core switch to the peer and back is ~3-7 us): on a busy machine a yield hands
#: the CPU to an unrelated CPU-bound process for its whole slice (milliseconds), so the waits
#: after it skip the yield phase and block on the kernel, which wakes us as soon as the peer posts.
_SLOW_YIELD: Final = 50e-6
_SKIP_YIELD_WAITS: Final = 256  # waits that block without yielding after a slow, fruitless yield

#: ``(words, index, value, stop)``: a wait's readiness as shared words (see :meth:`WaitStrategy.wait`).
Watch: TypeAlias = tuple[memoryview, int, int, int]


class Waker(Protocol):
    """A wake-up hint shared by the two processes (a counting semaphore)."""

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for a post; True if one was consumed."""

    def post(self) -> None:
        """Wake the waiter, if any (may be called when nobody waits)."""


def same_cpu(peer_pid: int | None = None) -> bool:
    """True when this process and the peer can only run on one and the same CPU."""
    try:
        if (os.cpu_count() or 1) == 1:
            return True
        mine = os.sched_getaffinity(0)
        if len(mine) != 1:
            return False
        if peer_pid is None:
            return False
        return os.sched_getaffinity(peer_pid) == mine
    except OSError:  # the peer is gone or not ours to inspect: assume separate CPUs
        return False


class WaitStrategy:
    """Spin/yield/block waiter for one direction of a channel.

    Args:
        spin: ``False`` never spins (yield and block only); ``True``/``None`` spins adaptively
            unless both processes are pinned to the same CPU.
        spin_time: maximal spin budget in seconds.
        yield_time: how long to keep calling ``sched_yield`` before blocking.
        first_slice / max_slice: bounds of one blocking wait (see the module docstring).
        peer_pid: the peer's pid if known, to detect "both on one CPU".
    """

    __slots__ = (
        "_budget",
        "_countdown",
        "_hot",
        "_same_cpu",
        "_skip_yield",
        "blocks",
        "first_slice",
        "max_slice",
        "peer_pid",
        "slow_yields",
        "spin_enabled",
        "spin_hits",
        "spin_time",
        "stream_yield_time",
        "yield_hits",
        "yield_time",
    )

    def __init__(
        self,
        *,
        spin: bool | None = None,
        spin_time: float = 50e-6,
        yield_time: float = 200e-6,
        first_slice: float = 1e-3,
        max_slice: float = 0.1,
        peer_pid: int | None = None,
        stream_yield_time: float = 2e-3,
    ) -> None:
        self.spin_enabled = spin is not False
        self.spin_time = spin_time
        self.yield_time = yield_time
        self.stream_yield_time = stream_yield_time
        self._hot = False
        self.first_slice = first_slice
        self.max_slice = max_slice
        self.peer_pid = peer_pid
        self._budget = spin_time
        self._same_cpu = same_cpu(peer_pid)
        self._countdown = _REEVALUATE_EVERY
        # Counters for the benchmark harness and docs; cheap integer bumps.
        self.spin_hits = 0
        self.yield_hits = 0
        self.blocks = 0
        self.slow_yields = 0
        self._skip_yield = 0

    def set_peer(self, pid: int | None) -> None:
        self.peer_pid = pid
        self._same_cpu = same_cpu(pid)

    @property
    def spins(self) -> bool:
        """True when a wait would start with a spin (enabled, budget left, not sharing one CPU)."""
        return self.spin_enabled and not self._same_cpu and self._budget > 0.0

    def wait(
        self,
        ready: Callable[[], bool],
        deadline: float | None,
        waker: Waker,
        set_sleeping: Callable[[bool], None],
        check: Callable[[], None] | None = None,
        watch: Watch | None = None,
    ) -> bool:
        """Wait until ``ready()`` is true or *deadline* (monotonic seconds) passes.

        Returns ``ready()``'s final verdict: False means the deadline passed.  ``check`` is
        called before each blocking slice and may raise (closed channel, dead peer).

        *watch* ``(words, index, value, stop)`` says that ``ready()`` is exactly "``words[index]
        != value`` or ``words[stop] != 0``" (a ring counter moved on, or the peer closed): the spin
        and yield phases then read the shared words themselves, one memoryview load per round
        instead of a call, which is what makes a spin catch a message within ~100 ns.
        """
        if watch is not None:
            words, index, value, stop = watch
            if words[index] != value or words[stop]:
                return True
        elif ready():
            return True
        if deadline is not None and deadline <= _monotonic():
            return False
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = _REEVALUATE_EVERY
            self._same_cpu = same_cpu(self.peer_pid)

        # Phase 1: spin on the predicate (skipped on a shared CPU or when disabled).
        budget = self._budget
        if self.spin_enabled and not self._same_cpu and budget > 0.0:
            if watch is not None:
                hit = True
                if words[index] == value:  # (no clock read when the answer is already there)
                    end = _perf() + budget
                    n = 0
                    while words[index] == value:
                        n += 1
                        if not n & 15 and (words[stop] or _perf() >= end):
                            hit = words[stop] != 0
                            break
            else:
                end = _perf() + budget
                hit = False
                while not hit:
                    for _ in range(8):
                        if ready():
                            hit = True
                            break
                    else:
                        if _perf() >= end:
                            break
            if hit:
                self.spin_hits += 1
                # Success: grow the budget back towards its maximum.
                budget *= 2.0
                self._budget = budget if budget < self.spin_time else self.spin_time
                self._hot = True
                return True
            # Missed: halve the budget; below 1 us stop spinning until the next re-probe.
            budget *= 0.5
            self._budget = budget if budget >= 1e-6 else 0.0
        elif self.spin_enabled and budget <= 0.0 and self._countdown % 256 == 0:
            self._budget = self.spin_time / 8  # re-probe now and then

        # Phase 2: yield the CPU to the peer (wins when both share a core).  If the last wait ended
        # without sleeping, the peer is busy (a stream: it is copying, not idle), so yield for
        # longer rather than fall asleep and make the peer pay a cross-core wake-up -- which
        # cascades: the peer's next wait then misses its window too.  After a wait that had to
        # sleep, the short window keeps an idle channel from burning CPU.
        # A yield that ran someone else for long (a busy machine) stops the yielding for a while.
        if self._skip_yield > 0:
            self._skip_yield -= 1
        else:
            now = _perf()
            end = now + (self.stream_yield_time if self._hot else self.yield_time)
            if deadline is not None:
                end = min(end, now + (deadline - _monotonic()))
            while True:
                _sched_yield()
                if (words[index] != value or words[stop] != 0) if watch is not None else ready():
                    self.yield_hits += 1
                    self._hot = True
                    return True
                then, now = now, _perf()
                if now - then > _SLOW_YIELD:
                    self.slow_yields += 1
                    self._skip_yield = _SKIP_YIELD_WAITS
                    break
                if now >= end:
                    break

        # Phase 3: block on the wake-up hint in bounded slices -- the waiter's half of the wake-up
        # protocol (protocol.py): raise the flag, re-check, sleep, lower the flag.
        self._same_cpu = same_cpu(self.peer_pid)
        self.blocks += 1
        slice_ = self.first_slice
        while True:
            if check is not None:
                check()
            set_sleeping(True)
            try:
                if ready():
                    self._hot = False
                    return True
                if deadline is None:
                    timeout = slice_
                else:
                    timeout = min(slice_, deadline - _monotonic())
                    if timeout <= 0.0:
                        return ready()
                waker.wait(timeout)
            finally:
                set_sleeping(False)
            if ready():
                self._hot = False
                return True
            slice_ = min(slice_ * 4.0, self.max_slice)
