"""``signal_storm``: deliver a signal to this process many times a second (EINTR everywhere)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["signal_storm", "Storm"]


class Storm:
    """Counts the signals a :func:`signal_storm` delivered."""

    def __init__(self) -> None:
        self.count = 0

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1  # a handler that returns: the interrupted system call sees EINTR


@contextmanager
def signal_storm(hz: float = 200.0) -> Iterator[Storm]:
    """SIGALRM at *hz* per second (``setitimer(ITIMER_REAL)``) while the block runs.

    Blocking calls made in the main thread inside the block are interrupted over and over; a
    correct call retries against its original deadline.  pytest-timeout must use the ``thread``
    method (it would otherwise fight over SIGALRM).

    Raises:
        RuntimeError: not called from the main thread (signals are delivered there).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal_storm() must run in the main thread")
    storm = Storm()
    previous = signal.signal(signal.SIGALRM, storm._handler)
    interval = 1.0 / hz
    try:
        signal.setitimer(signal.ITIMER_REAL, interval, interval)
        yield storm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0, 0.0)
        signal.signal(signal.SIGALRM, previous)
