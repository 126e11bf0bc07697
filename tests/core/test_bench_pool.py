"""The bench's ``pool`` workload: its result check, its pools' lifecycle, and a tiny run.

No timing assertions: the jobs reach the workers and every result comes back once, the cells
are well formed, and a pool leaves no process, descriptor or shm object behind, also when a
worker dies under it (the leak guard checks after every test).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import pytest
from rich.console import Console

from ipckit.bench import BenchConfig, print_report, run, to_markdown
from ipckit.bench import pool as pool_module
from ipckit.bench.links import ipckit_subjects
from ipckit.bench.pool import (
    WARMUP_JOBS,
    Job,
    PoolSpec,
    WorkerPool,
    _ChannelPool,
    check_results,
    handle_job,
    make_jobs,
    measure_pool,
    open_pool,
    pool_subjects,
)
from ipckit.errors import PeerDied

pytestmark = pytest.mark.timeout(120)

PLACEMENT = "split" if len(os.sched_getaffinity(0)) >= 2 else "same"


def _spec(name: str) -> PoolSpec:
    specs, _ = pool_subjects(["shm", "unix", "pipe"])
    return next(s for s in specs if s.name == name)


def test_check_results_accepts_every_order_and_rejects_missing_duplicate_and_wrong() -> None:
    jobs = make_jobs(50)
    results = [handle_job(j) for j in reversed(jobs)]
    check_results(jobs, results)
    with pytest.raises(AssertionError, match="1 of 50 results never came back"):
        check_results(jobs, results[1:])
    with pytest.raises(AssertionError, match="came back twice"):
        check_results(jobs, [*results, results[0]])
    wrong = [dict(r) for r in results]
    wrong[3]["value"] = 0
    with pytest.raises(AssertionError, match="is wrong"):
        check_results(jobs, wrong)
    with pytest.raises(AssertionError, match="names no job"):
        check_results(jobs, [*results[:-1], {"id": 50}])


@pytest.mark.parametrize("name", ["shm", "unix", "pipe", "futures(shm)", "futures(shm) submit", "mp.Queue", "mp.Pool",
                                  "cf.ProcessPool"])
def test_each_pool_runs_jobs_on_two_pinned_workers_and_stops(name: str) -> None:
    cpu = min(os.sched_getaffinity(0))
    with open_pool(_spec(name), cpus={cpu}, timeout=30) as pool:
        assert len(pool.workers) == 2
        assert all(os.sched_getaffinity(p.pid) == {cpu} for p in pool.workers if p.pid is not None)
        jobs = make_jobs(3 * WARMUP_JOBS)  # more than the ipckit window of both workers
        check_results(jobs, pool.run(jobs))
        check_results(jobs[:1], pool.run(jobs[:1]))
        pids = [p.pid for p in pool.workers if p.pid is not None]
    assert len(pids) == 2
    for pid in pids:  # stopped and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_worker_fails_the_run_and_the_pool_still_cleans_up() -> None:
    with open_pool(_spec("shm"), timeout=30) as pool:
        pool.workers[0].kill()
        pool.workers[0].join()
        with pytest.raises(PeerDied):
            pool.run(make_jobs(1000))


class _LossyPool(_ChannelPool):
    """Drops a result of every timed run (the warm-up runs are smaller and stay intact)."""

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        results = super().run(jobs)
        return results[1:] if len(jobs) > WARMUP_JOBS else results


def _broken(workers: int, cpus: set[int] | None, timeout: float) -> WorkerPool:
    raise RuntimeError("cannot start")


def test_measure_pool_reports_failed_subjects_and_measures_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    shm = ipckit_subjects(["shm"])[0][0]
    queue = _spec("mp.Queue")
    lossy = PoolSpec("lossy", "ipckit", "", lambda w, c, t: _LossyPool(shm, w, c, t))
    monkeypatch.setattr(pool_module, "pool_subjects",
                        lambda *a: ([lossy, PoolSpec("broken", "ipckit", "", _broken), queue], []))
    cells = measure_pool(BenchConfig(pool_jobs=WARMUP_JOBS + 1, pool_repeats=2), "none", None)
    by_name = {c.subject: c for c in cells}
    assert by_name["lossy"].error is not None and "1 of 201 results never came back" in by_name["lossy"].error
    assert by_name["broken"].error == "could not start the pool: RuntimeError('cannot start')"
    assert by_name["mp.Queue"].error is None and by_name["mp.Queue"].extra["repeats"] == 2
    assert not by_name["lossy"].verified and by_name["lossy"].msg_s is None


def test_measure_pool_cells() -> None:
    cfg = BenchConfig(backends=["shm"], pool_jobs=300, pool_repeats=2)
    ticks: list[str] = []
    cells = measure_pool(cfg, "none", None, lambda desc, cell: ticks.append(desc))
    assert [c.subject for c in cells] == ["shm", "futures(shm)", "futures(shm) submit", "mp.Queue", "mp.Pool",
                                          "cf.ProcessPool"]
    for c in cells:
        assert c.error is None and c.verified and c.workload == "pool" and c.placement == "none", c
        assert c.count == 300 and c.extra["repeats"] == 2 and len(c.extra["jobs_s_runs"]) == 2
        assert c.msg_s is not None and c.extra["min_jobs_s"] <= c.msg_s <= c.extra["max_jobs_s"]
        assert c.cpu_us_per_msg is not None and c.cpu_us_per_msg > 0
        assert c.parent_cpu_s is not None and c.parent_cpu_s > 0
        assert c.child_cpu_s is not None and c.child_cpu_s > 0  # the workers' CPU was read
    assert any("starting shm" in t for t in ticks)


def test_run_reports_the_pool_per_placement_with_ratios() -> None:
    rep = run(BenchConfig(workloads=["pool"], backends=["pipe"], placements=[PLACEMENT], pool_jobs=200,
                          pool_repeats=1, serializers=[]))
    assert {c.subject for c in rep.cells} == {"pipe", "futures(shm)", "futures(shm) submit", "mp.Queue", "mp.Pool",
                                              "cf.ProcessPool"}
    assert all(c.error is None and c.verified and c.placement == PLACEMENT for c in rep.cells)
    md = to_markdown(rep)
    assert f"**Worker pool, 200 small dict jobs to 2 workers and back, placement `{PLACEMENT}`**" in md
    row = next(line for line in md.splitlines() if line.startswith("| mp.Queue |"))
    assert row.split(" | ")[2] == "1.00x"  # mp.Queue ÷ mp.Queue
    out = io.StringIO()
    print_report(rep, Console(file=out, width=150))
    assert "Worker pool" in out.getvalue() and "xmp.Queue" in out.getvalue()


def test_the_executor_rows_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def names() -> list[str]:
        return [s.name for s in pool_subjects(["shm"])[0]]

    monkeypatch.delenv(pool_module.FUTURES_ENV, raising=False)
    assert names() == ["shm", "futures(shm)", "futures(shm) submit", "mp.Queue", "mp.Pool", "cf.ProcessPool"]
    monkeypatch.setenv(pool_module.FUTURES_ENV, "")
    assert names() == ["shm", "mp.Queue", "mp.Pool", "cf.ProcessPool"]
    monkeypatch.setenv(pool_module.FUTURES_ENV, "pipe, unix")
    assert names()[1:5] == ["futures(pipe)", "futures(pipe) submit", "futures(unix)", "futures(unix) submit"]


def test_pool_cli_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from ipckit.bench.__main__ import _config, build_parser

    cfg = _config(build_parser().parse_args(["--workloads", "pool", "--pool-jobs", "500", "--pool-repeats", "4"]))
    assert (cfg.workloads, cfg.pool_jobs, cfg.pool_repeats) == (["pool"], 500, 4)
    assert _config(build_parser().parse_args(["--quick"])).pool_jobs == 2000
    assert BenchConfig().pool_jobs == 10_000 and "pool" in BenchConfig().workloads
    for bad in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--pool-jobs", bad])
    assert "positive integer" in capsys.readouterr().err
