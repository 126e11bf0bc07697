"""pytest-benchmark: the shm ring's per-message cost in one process, C cursors against the
pure-Python reference (docs/shm.md, "The per-message fast path").

One round is ``send_bytes`` of 64 B on one end of a ``shm://`` pair and ``recv_bytes`` on the other,
in the same thread: the channel API's own cost, without waiting or a second CPU.

Run:  pytest tests/benchmarks/test_ring_calls.py --benchmark-only
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ipckit
from ipckit.backends.common.ring import buffer as ring
from ipckit.backends.common.ring import cursor as ringcursor

try:
    from ipckit.backends.common.ring import _ringfast
except ImportError:  # not built: only the reference is measured
    _ringfast = None  # type: ignore[assignment]

IMPLS = {"python": (ringcursor.PyWriter, ringcursor.PyReader)}
if _ringfast is not None:
    IMPLS["c"] = (_ringfast.Writer, _ringfast.Reader)


@pytest.fixture(params=sorted(IMPLS))
def shm_pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    writer, reader = IMPLS[request.param]
    monkeypatch.setattr(ring.RingWriter, "_cursor_type", writer)
    monkeypatch.setattr(ring.RingReader, "_cursor_type", reader)
    a, b = ipckit.pair("shm://")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.benchmark(group="ring-call-64B")
def test_send_recv_64b(benchmark: Any, shm_pair: tuple[Any, Any]) -> None:
    a, b = shm_pair
    payload = b"x" * 64
    send, recv = a.send_bytes, b.recv_bytes

    def round_() -> None:
        for _ in range(1000):
            send(payload)
            recv()

    benchmark.pedantic(round_, rounds=50, iterations=1, warmup_rounds=2)
    assert b.poll(0) is False  # every message was received
