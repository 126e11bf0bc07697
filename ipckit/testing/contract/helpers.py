"""What the contract's mixins share: units, timing bounds, a result-keeping thread, payloads."""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ...channel import Channel

__all__ = ["KiB", "MiB", "timing_bounds", "takes_timeout", "wait_until_blocked", "ResultThread", "send_each", "blob"]

KiB = 1024
MiB = 1024 * KiB

#: Extra seconds of slack on the upper timing bound (busy CI machines): ``IPCKIT_TIMING_SLACK``.
_SLACK = float(os.environ.get("IPCKIT_TIMING_SLACK", "0") or 0)


def timing_bounds(timeout: float) -> tuple[float, float]:
    """Acceptable elapsed seconds for a call with *timeout*.

    P4 in docs/design.md: ``[t - 20 ms, t + max(100 ms, 10 %)]``.
    """
    return max(0.0, timeout - 0.02), timeout + max(0.1, 0.1 * timeout) + _SLACK


@contextmanager
def takes_timeout(timeout: float) -> Iterator[None]:
    """The block (one call given *timeout*, which runs out) takes as long as :func:`timing_bounds`
    allows.

    Python's cyclic garbage collector is off inside the block: a full collection walks the whole
    heap, and a long test session's heap is large (3 M container objects take about 250 ms to
    collect on the CI machine).  A full-suite run on a fresh clone once saw a unix:// receive
    under the signal storm return after 0.755 s for a 0.5 s timeout; the storm's 200 handler
    calls a second allocate, and one of them can start that collection inside the call.  That
    pause is not ipckit's deadline logic, which is what these bounds check.  (Reference counting
    still frees objects meanwhile; the collection runs after the block.)
    """
    low, high = timing_bounds(timeout)
    enabled = gc.isenabled()
    gc.disable()
    start = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        if enabled:
            gc.enable()
    assert low <= elapsed <= high, f"timeout={timeout}: returned after {elapsed:.3f} s, not in [{low:.3f}, {high:.3f}]"


def wait_until_blocked(thread: threading.Thread, names: tuple[str, ...] = ("_locked_recv", "_await_data", "accept"),
                       timeout: float = 5.0) -> None:
    """Wait until *thread* is inside one of the functions *names* (a blocking call), without sleeping blind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name in names:
                return
            frame = frame.f_back
        if not thread.is_alive():
            raise AssertionError(f"{thread.name} ended before blocking")
        time.sleep(0.001)
    raise AssertionError(f"{thread.name} did not reach {names} within {timeout} s")


class ResultThread(threading.Thread):
    """A thread that keeps its target's result or exception for the test to check."""

    def __init__(self, target: Callable[[], Any], name: str = "ipckit-contract") -> None:
        super().__init__(target=self._run, name=name, daemon=True)
        self._fn = target
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def outcome(self, timeout: float = 10.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still blocked after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def send_each(ch: Channel, messages: Iterable[bytes], timeout: float = 20.0) -> None:
    """Send each of *messages* with ``send_bytes`` (a generator is consumed lazily)."""
    for m in messages:
        ch.send_bytes(m, timeout=timeout)


def blob(n: int, seed: int = 0) -> bytes:
    """*n* reproducible pseudo-random bytes (the same *n* and *seed* give the same bytes)."""
    return random.Random(seed * 7919 + n).randbytes(n)
