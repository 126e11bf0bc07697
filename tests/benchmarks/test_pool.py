"""Worker pool (pytest-benchmark): small dict jobs to two worker processes and the results back.

Group ``pool (<placement>)``: one shm:// channel per worker and ``ipckit.futures`` (``map`` and
``submit``) against a hand-written ``multiprocessing.Queue`` pool and
``multiprocessing.Pool.imap_unordered`` — compare the rows.
Each round sends :data:`JOBS` jobs and receives their results; the workers are started, pinned
and warmed up outside the timing, and every round's results are checked (each id exactly once),
so a broken pool fails instead of looking fast.  ``python -m ipckit.bench --workloads pool`` is
the full version (every scheme, every placement, ratios).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ipckit.bench.pool import PoolSpec, check_results, make_jobs, open_pool, pool_subjects
from ipckit.bench.runner import placement_cpus

from .conftest import PLACEMENT

JOBS = 1000
NAMES = ["shm", "futures(shm)", "futures(shm) submit", "mp.Queue", "mp.Pool"]

pytestmark = pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")


def _spec(name: str) -> PoolSpec:
    specs, skipped = pool_subjects(["shm"])
    for spec in specs:
        if spec.name == name:
            return spec
    pytest.skip("; ".join(s.reason for s in skipped) or f"{name} is not measured here")


@pytest.fixture
def child_cpus() -> Iterator[set[int] | None]:
    """Pins this process as the placement says (restored afterwards); yields the workers' CPUs."""
    original = os.sched_getaffinity(0)
    parent_cpus, workers = placement_cpus(PLACEMENT)
    if parent_cpus is not None:
        os.sched_setaffinity(0, parent_cpus)
    try:
        yield workers
    finally:
        os.sched_setaffinity(0, original)


@pytest.mark.parametrize("name", NAMES)
def test_pool(benchmark: Any, child_cpus: set[int] | None, name: str) -> None:
    spec = _spec(name)
    benchmark.group = f"pool ({PLACEMENT})"
    benchmark.extra_info.update(kind=spec.kind, placement=PLACEMENT, jobs=JOBS, workers=2, note=spec.note)
    jobs = make_jobs(JOBS)
    rounds: list[list[Any]] = []
    with open_pool(spec, cpus=child_cpus) as pool:
        benchmark.pedantic(lambda: rounds.append(pool.run(jobs)), rounds=5, iterations=1, warmup_rounds=1)
    assert rounds
    for results in rounds:
        check_results(jobs, results)
