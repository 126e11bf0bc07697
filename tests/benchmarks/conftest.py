"""pytest-benchmark comparisons: every ipckit channel and every baseline, grouped by size.

Run:  pytest tests/benchmarks --benchmark-only  [--benchmark-group-by=group]
Placement: IPCKIT_BENCH_PLACEMENT=split|same|none (default split; the pytest process is pinned to
the first CPU, each peer to the second).  One spawned peer per subject, shared by the session and
shut down (with its OS objects) at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ipckit.bench.runner import BenchConfig, Peer, all_subjects, placement_cpus, start_peer
from ipckit.bench.subject import Subject

SIZES = [64, 4096, 65536, 1 << 20]
PLACEMENT = os.environ.get("IPCKIT_BENCH_PLACEMENT", "split")
if PLACEMENT == "split" and len(os.sched_getaffinity(0)) < 2:
    PLACEMENT = "same"

SUBJECTS, SKIPPED = all_subjects(BenchConfig(sizes=SIZES))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Interleave: all subjects for one size before the next size, so ratios share conditions.
    def key(item: pytest.Item) -> tuple[str, int]:
        callspec = getattr(item, "callspec", None)
        size = callspec.params.get("size", 0) if callspec is not None else 0
        return (item.module.__name__ if item.module else "", size)  # type: ignore[attr-defined]

    items.sort(key=key)


class Peers:
    """Lazily spawned peers, one per subject, all closed at session end."""

    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}
        self.cfg = BenchConfig(sizes=SIZES, verify_count=4)

    def get(self, subject: Subject) -> Peer:
        peer = self._peers.get(subject.name)
        if peer is None:
            peer = self._peers[subject.name] = start_peer(subject, PLACEMENT, self.cfg)
        if peer.skip is not None:
            pytest.skip(peer.skip)
        if peer.error is not None:
            pytest.fail(f"{subject.name}: {peer.error}")
        return peer

    def close(self) -> None:
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()


@pytest.fixture(scope="session")
def peers() -> Iterator[Peers]:
    original = os.sched_getaffinity(0)
    parent_cpus, _ = placement_cpus(PLACEMENT)
    if parent_cpus is not None:
        os.sched_setaffinity(0, parent_cpus)
    registry = Peers()
    try:
        yield registry
    finally:
        registry.close()
        os.sched_setaffinity(0, original)
