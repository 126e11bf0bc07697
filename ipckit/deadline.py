"""Timeouts as absolute monotonic deadlines.

A public call turns its ``timeout`` into a deadline once; every retry, EINTR and wait slice after
that works against the same deadline, so signals never extend a call (P4 in docs/contract.md).
"""

from __future__ import annotations

import select
import time

from .errors import ConfigurationError

__all__ = ["Deadline", "MAX_WAIT", "deadline_from", "remaining", "poll_ms", "poll_fd", "Backoff"]

#: An absolute ``time.monotonic()`` value, or ``None`` for "wait forever".
Deadline = float | None

#: The longest wait one call to the kernel can express: ``poll(2)`` takes an int of milliseconds
#: (about 24.8 days; ``threading`` locks and ``semtimedop`` allow more).  Any timeout is valid, but
#: one at least this long is no deadline at all: :func:`deadline_from` makes it None, so no wait
#: ever passes the kernel (or a lock's ``acquire``) a number it cannot take, and none has to
#: split a long wait into slices.
MAX_WAIT = (2**31 - 1) / 1000.0
_MAX_POLL_MS = 2**31 - 1

_monotonic = time.monotonic


def deadline_from(timeout: float | None) -> Deadline:
    """Turn a ``timeout`` (None = forever, 0 = poll, >0 seconds) into an absolute deadline.

    Every non-negative number is valid, ``inf`` and ``2**63`` included; from :data:`MAX_WAIT` on
    it means "no deadline" (None), like ``None``.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        # Bool, non-numbers, NaN and negatives are caller errors, reported as ipckit's ValueError.
        raise ConfigurationError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    if timeout >= MAX_WAIT:
        return None
    return _monotonic() + timeout


def remaining(deadline: Deadline) -> float | None:
    """Seconds left until *deadline* (never negative), or ``None`` if it never expires."""
    if deadline is None:
        return None
    left = deadline - _monotonic()
    return left if left > 0.0 else 0.0


def poll_ms(deadline: Deadline, cap: float | None = None) -> int | None:
    """Milliseconds for ``select.poll.poll`` until *deadline*, optionally capped at *cap* seconds."""
    left = remaining(deadline)
    if cap is not None and (left is None or left > cap):
        left = cap
    if left is None:
        return None
    # Round up so a wait never returns just before the deadline and spins once more; a deadline
    # not made by deadline_from may lie beyond what poll(2) takes.
    ms = left * 1000.0 + 0.999
    return int(ms) if ms < _MAX_POLL_MS else _MAX_POLL_MS


def poll_fd(poller: select.poll, deadline: Deadline, cap: float | None = None) -> list[tuple[int, int]]:
    """Wait on *poller* until an event or *deadline*.

    Python retries ``poll`` on EINTR with the timeout recomputed (PEP 475), so signals do not
    extend the wait.
    """
    return poller.poll(poll_ms(deadline, cap))


class Backoff:
    """Bounded exponential back-off for polling loops that have no kernel object to block on."""

    __slots__ = ("_delay", "_max")

    def __init__(self, first: float = 0.0005, maximum: float = 0.02) -> None:
        self._delay = first
        self._max = maximum

    def sleep(self, deadline: Deadline) -> bool:
        """Sleep the next step, never past *deadline*. Returns False if the deadline has passed."""
        left = remaining(deadline)
        if left is not None and left <= 0.0:
            return False
        step = self._delay if left is None else min(self._delay, left)
        time.sleep(step)
        self._delay = min(self._delay * 2, self._max)
        return True
