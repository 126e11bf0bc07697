"""The ``pool`` workload: small dict jobs to two worker processes and their results back.

What users build on a channel most often is a process pool, so this measures it against what
they would use instead: a hand-written :class:`multiprocessing.Queue` pool (one task queue, one
result queue, a ``None`` per worker to stop), ``multiprocessing.Pool.imap_unordered(chunksize=1)``
and ``concurrent.futures.ProcessPoolExecutor.map`` (default chunksize).

The ipckit subjects are the harness's own (:func:`~.links.ipckit_subjects`: every scheme, or
``--backends`` / ``--url``): one channel per worker, opened the way the subject opens its peer's
end, the default serializer.  The parent keeps at most :data:`WINDOW` jobs in flight per worker
(credit: a pipe or socket buffer cannot hold 10,000 jobs, and two full buffers would deadlock)
and takes the workers' results in turn, topping up the worker it took one from, so both stay busy.

Method, per placement:

* every subject's workers are spawned, pinned (``split``: the parent on the first CPU, both
  workers on the second; ``same``: all three on the first; ``none``/``busy``: unpinned) and
  warmed up with :data:`WARMUP_JOBS` jobs, all outside the timed region;
* the timed region is sending every job and receiving every result; afterwards every result is
  checked (each id exactly once, the right value);
* the repeats are interleaved (repeat *r* of every subject before repeat *r + 1*) so the ratios
  of one run share the machine's conditions; a cell reports the median jobs/s and the spread;
* CPU per job is the parent's ``process_time`` plus the workers' CPU (every thread, from /proc),
  over all repeats, like the other workloads' ``CPU µs/msg``.

The worker functions live here so that spawned workers import this module and :mod:`ipckit`
only (no numpy, rich or the runner).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import random
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import ipckit

from .links import ipckit_subjects
from .model import BenchConfig, Cell
from .subject import SPAWN, ChildArg, Prepared, SkippedSubject, Subject

__all__ = [
    "PoolSpec",
    "WorkerPool",
    "pool_subjects",
    "open_pool",
    "make_jobs",
    "handle_job",
    "check_results",
    "measure_pool",
    "pool_cell_count",
    "BLOB_SIZE",
    "WINDOW",
    "WORKERS",
    "WARMUP_JOBS",
    "EXECUTOR_MAX_JOBS",
    "REFERENCES",
]

#: Bytes of the blob in every job (the object workloads' small dict has the same shape).
BLOB_SIZE = 64
#: Jobs in flight per worker on an ipckit channel: enough that a worker never waits for the parent,
#: few enough that the jobs (~150 bytes pickled) and results fit in a 64 KiB pipe buffer.
WINDOW = 128
WORKERS = 2
#: Jobs through every pool before timing: the spawned workers have imported everything and the
#: lazily started ones (ProcessPoolExecutor) all exist.
WARMUP_JOBS = 200
#: ProcessPoolExecutor runs about a tenth of the others' jobs/s: 10,000 jobs would take it seconds
#: a repeat, so it gets fewer (its cell says how many).
EXECUTOR_MAX_JOBS = 2000
#: The pool tables show jobs/s ratios against these two.
REFERENCES = ("mp.Queue", "mp.Pool")

Job = dict[str, Any]


# ------------------------------------------------------------------------------------ jobs
def make_jobs(n: int, blob_size: int = BLOB_SIZE) -> list[Job]:
    """*n* jobs ``{"id": i, "op": "add", "args": [1, 2.5], "blob": <blob_size bytes>}``."""
    blob = random.Random(blob_size).randbytes(blob_size)
    return [{"id": i, "op": "add", "args": [1, 2.5], "blob": blob} for i in range(n)]


def handle_job(job: Job) -> Job:
    """What every worker does with a job: a small dict result naming the job."""
    a, b = job["args"]
    return {"id": job["id"], "ok": job["op"] == "add", "value": a + b, "blob_len": len(job["blob"])}


def check_results(jobs: Sequence[Job], results: Sequence[Any]) -> None:
    """Every job's result came back exactly once and is the right one.

    Raises:
        AssertionError: a result is missing, duplicated, unknown or wrong.
    """
    n = len(jobs)
    seen = bytearray(n)
    for r in results:
        i = r.get("id") if isinstance(r, dict) else None
        if not isinstance(i, int) or not 0 <= i < n:
            raise AssertionError(f"a result names no job that was sent: {r!r:.80}")
        if seen[i]:
            raise AssertionError(f"the result of job {i} came back twice")
        if r != handle_job(jobs[i]):
            raise AssertionError(f"the result of job {i} is wrong: {r!r:.80}")
        seen[i] = 1
    missing = seen.count(0)
    if missing:
        raise AssertionError(f"{missing} of {n} results never came back")


def _ready(cpus: set[int] | None, ready: Connection) -> None:
    """A worker's first step (a Pool's initializer): pin itself, then tell the parent its pid."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        ready.send(os.getpid())  # one small write: atomic, however many workers share the pipe
        ready.close()
    except OSError:
        pass  # the parent gave up waiting; it stops this pool


def _process_cpu_s(pid: int) -> float:
    """CPU seconds of process *pid*, every thread (an mp.Queue worker has a feeder thread).

    The per-thread schedstat is in ns; /proc/<pid>/stat (10 ms ticks) is the fallback.
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# ---------------------------------------------------------------------------------- workers
def _channel_worker(child_arg: ChildArg, cpus: set[int] | None, ready: Connection) -> None:
    _ready(cpus, ready)
    link = child_arg.open()
    channel = getattr(link, "conn")  # noqa: B009 - a Link need not have one; the ipckit links do
    send, recv = channel.send, channel.recv
    try:
        while (job := recv()) is not None:
            send(handle_job(job))
    finally:
        link.close()


def _queue_worker(tasks: Any, results: Any, cpus: set[int] | None, ready: Connection) -> None:
    _ready(cpus, ready)
    get, put = tasks.get, results.put
    while (job := get()) is not None:
        put(handle_job(job))
    # the results' feeder thread is flushed and joined as the process exits


# ------------------------------------------------------------------------------------ pools
def _reap(procs: Sequence[Any]) -> None:
    """Join each worker, killing one that does not stop within 5 s."""
    for p in procs:
        p.join(5.0)
        if p.is_alive():
            p.kill()
            p.join(5.0)


class WorkerPool:
    """A started pool: :meth:`run` sends jobs and returns their results (in any order).

    Subclasses implement ``_start``, :meth:`run`, ``_abort`` and ``_stop``.  :meth:`abort` may be
    called from another thread (the watchdog) and must wake a :meth:`run` blocked on a hung worker.
    """

    def __init__(self, name: str, kind: str, workers: int, cpus: set[int] | None, timeout: float) -> None:
        self.name, self.kind = name, kind
        self.n_workers = workers
        self.cpus = cpus
        self.timeout = timeout
        #: The worker processes: the multiprocessing children that reported ready on start.
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.aborted = False
        # Open until close(): a Pool that replaces a dead worker hands the new one this pipe again.
        self._ready_r, self._ready_w = SPAWN.Pipe(duplex=False)

    def start(self) -> None:
        """Start the workers, wait until every one is pinned and running, warm them up."""
        self._start(self._ready_w)
        # The executor starts its workers on demand, and one worker can take all the jobs of a
        # pool while the other still imports: jobs first, then wait for both, then jobs again.
        self._warm_up()
        pids: set[int] = set()
        while len(pids) < self.n_workers:
            if not self._ready_r.poll(self.timeout):
                raise RuntimeError(f"{self.name}: {len(pids)} of {self.n_workers} workers started")
            pids.add(self._ready_r.recv())
        self.workers = [p for p in multiprocessing.active_children() if p.pid in pids]
        if len(self.workers) != self.n_workers:
            raise RuntimeError(f"{self.name} runs {len(self.workers)} of its {self.n_workers} worker processes")
        self._warm_up()

    def _warm_up(self) -> None:
        jobs = make_jobs(WARMUP_JOBS)
        with _Watchdog(self):
            results = self.run(jobs)
        check_results(jobs, results)

    def worker_cpu_s(self) -> float:
        return sum(_process_cpu_s(p.pid) for p in self.workers if p.pid is not None)

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        raise NotImplementedError

    def abort(self) -> None:
        """Kill the workers and wake :meth:`run`; :meth:`close` then stops the pool the hard way.

        Also what a failed run calls: a pool with a lost job cannot be stopped politely
        (``multiprocessing.Pool.join`` would wait for that job forever).
        """
        self.aborted = True
        try:
            self._abort()
        except Exception:
            pass  # best effort: the workers are killed below either way
        finally:
            for p in self.workers:
                try:
                    if p.is_alive():
                        p.kill()
                except ValueError:
                    pass  # closed meanwhile

    def close(self) -> None:
        """Stop the workers (killed if they do not stop) and release everything; idempotent."""
        try:
            self._stop()
        finally:
            # _stop joined them; this catches a worker a broken pool left running
            for p in self.workers:
                try:
                    _reap([p])
                except ValueError:
                    pass  # already closed by _stop
            self.workers = []
            self._ready_r.close()
            self._ready_w.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        self.close()

    def _start(self, ready: Connection) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


def _safe_window(channel: ipckit.Channel) -> int:
    """Jobs in flight that *channel* holds without a deadlock: the parent sends a window before it
    reads, so the jobs (and the results that come back meanwhile) must fit what each direction
    holds unread, or the worker blocks on a full result direction while the parent blocks on a
    full job direction (a kernel message queue holds about ten messages)."""
    caps = channel.capabilities
    window = WINDOW
    if caps.buffered_messages is not None:
        window = min(window, caps.buffered_messages)
    if caps.buffered_bytes is not None:
        job = len(pickle.dumps(make_jobs(1)[0], protocol=pickle.HIGHEST_PROTOCOL)) + 64
        window = min(window, caps.buffered_bytes // job)
    return max(1, window)


class _ChannelPool(WorkerPool):
    """One ipckit channel per worker, a bounded window of jobs in flight on each."""

    def __init__(self, subject: Subject, workers: int, cpus: set[int] | None, timeout: float,
                 window: int = WINDOW) -> None:
        super().__init__(subject.name, "ipckit", workers, cpus, timeout)
        self.subject = subject
        self.window = window
        self._prepared: list[Prepared] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._channels: list[ipckit.Channel] = []
        self._links: list[Any] = []

    def _start(self, ready: Connection) -> None:
        for i in range(self.n_workers):
            prepared = self.subject.prepare()
            self._prepared.append(prepared)
            proc: multiprocessing.process.BaseProcess = SPAWN.Process(
                target=_channel_worker, args=(prepared.child_arg, self.cpus, ready),
                name=f"ipckit-bench-pool-{self.name}-{i}", daemon=True)
            proc.start()
            self._procs.append(proc)
            prepared.after_start()
        for prepared, proc in zip(self._prepared, self._procs, strict=True):
            def gone(p: multiprocessing.process.BaseProcess = proc) -> str | None:
                return None if p.is_alive() else f"pool worker exited with code {p.exitcode}"

            link = prepared.complete(self.timeout, gone)
            self._links.append(link)
            channel = getattr(link, "conn", None)
            if not isinstance(channel, ipckit.Channel):
                raise TypeError(f"{self.name}: the parent's link carries no ipckit channel")
            self._channels.append(channel)
        self.window = min(self.window, *(_safe_window(c) for c in self._channels))

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        # The workers take turns: one blocking recv from each in order, and that worker gets the next
        # job.  Each then has `window` jobs queued while the parent serves the other, so neither
        # waits; the cost is equal shares (a worker on a busier CPU sets the pace).  Taking whichever
        # result is ready instead needs poll(0) per result, and poll(0) costs more than a send plus a
        # recv on shm (shm has no descriptor to select on): a poll-scan ran at about half the rate.
        n, k, window = len(jobs), len(self._channels), self.window
        sends = [c.send for c in self._channels]
        recvs = [c.recv for c in self._channels]
        out: list[Any] = []
        append = out.append
        inflight = [0] * k
        nxt = 0
        for w in range(k):
            send = sends[w]
            while inflight[w] < window and nxt < n:
                send(jobs[nxt])
                nxt += 1
                inflight[w] += 1
        got = 0
        w = 0
        while got < n:
            if inflight[w]:
                append(recvs[w]())
                got += 1
                if nxt < n:
                    sends[w](jobs[nxt])
                    nxt += 1
                else:
                    inflight[w] -= 1
            w = w + 1 if w + 1 < k else 0
        return out

    def _abort(self) -> None:
        for c in self._channels:
            c.close()  # wakes a recv blocked in run()

    def _stop(self) -> None:
        try:
            if not self.aborted:
                for c in self._channels:
                    try:
                        c.send(None)
                    except ipckit.IPCError:
                        pass  # that worker is gone; it is killed below
            _reap(self._procs)
        finally:
            # The parent's own ends first, then the child ends it kept (see IpckitSubject.prepare).
            for closer in [*(link.close for link in self._links), *(p.cleanup for p in self._prepared)]:
                try:
                    closer()
                except Exception:
                    pass
            for p in self._procs:
                try:
                    p.close()
                except ValueError:
                    pass
            self._links, self._channels, self._prepared, self._procs = [], [], [], []


class _QueuePool(WorkerPool):
    """The hand-written pool: one task queue, one result queue, ``None`` per worker to stop."""

    def __init__(self, workers: int, cpus: set[int] | None, timeout: float) -> None:
        super().__init__("mp.Queue", "baseline", workers, cpus, timeout)
        self._tasks: Any = None
        self._results: Any = None
        self._procs: list[multiprocessing.process.BaseProcess] = []

    def _start(self, ready: Connection) -> None:
        self._tasks, self._results = SPAWN.Queue(), SPAWN.Queue()
        for i in range(self.n_workers):
            proc = SPAWN.Process(target=_queue_worker, args=(self._tasks, self._results, self.cpus, ready),
                                 name=f"ipckit-bench-pool-mp.Queue-{i}", daemon=True)
            proc.start()
            self._procs.append(proc)

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        put, get = self._tasks.put, self._results.get
        for job in jobs:
            put(job)
        out: list[Any] = []
        append = out.append
        for _ in range(len(jobs)):
            r = get()
            if r is None:  # the watchdog's marker (see _abort)
                raise RuntimeError("mp.Queue pool aborted")
            append(r)
        return out

    def _abort(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.kill()
        if self._results is not None:
            self._results.put(None)  # wakes a get() blocked in run()

    def _stop(self) -> None:
        if self._tasks is None:
            return
        try:
            if not self.aborted:
                for _ in self._procs:
                    self._tasks.put(None)
            _reap(self._procs)
        finally:
            broken = self.aborted or any(p.exitcode != 0 for p in self._procs)
            for q in (self._tasks, self._results):
                if broken:
                    q.cancel_join_thread()  # its buffer may never drain into a dead worker
                q.close()
                q.join_thread()
            for p in self._procs:
                p.close()
            self._tasks = self._results = None
            self._procs = []


class _MpPool(WorkerPool):
    """``multiprocessing.Pool(2).imap_unordered(handle_job, jobs, chunksize=1)``."""

    def __init__(self, workers: int, cpus: set[int] | None, timeout: float) -> None:
        super().__init__("mp.Pool", "baseline", workers, cpus, timeout)
        self._pool: Any = None

    def _start(self, ready: Connection) -> None:
        self._pool = SPAWN.Pool(self.n_workers, initializer=_ready, initargs=(self.cpus, ready))

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        # next(timeout) costs what next() does and raises instead of hanging if a worker died
        # (the pool replaces it and its job is never answered).
        nxt = self._pool.imap_unordered(handle_job, jobs, chunksize=1).next
        timeout = self.timeout
        return [nxt(timeout) for _ in range(len(jobs))]

    def _abort(self) -> None:
        pass  # run() times out by itself; close() terminates

    def _stop(self) -> None:
        if self._pool is None:
            return
        if self.aborted:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()
        self._pool = None


class _ExecutorPool(WorkerPool):
    """``concurrent.futures.ProcessPoolExecutor(2).map(handle_job, jobs)`` (default chunksize 1)."""

    def __init__(self, workers: int, cpus: set[int] | None, timeout: float) -> None:
        super().__init__("cf.ProcessPool", "baseline", workers, cpus, timeout)
        self._ex: ProcessPoolExecutor | None = None

    def _start(self, ready: Connection) -> None:
        self._ex = ProcessPoolExecutor(self.n_workers, mp_context=SPAWN, initializer=_ready,
                                       initargs=(self.cpus, ready))

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        assert self._ex is not None
        return list(self._ex.map(handle_job, jobs, timeout=self.timeout))

    def _abort(self) -> None:
        pass  # the killed workers break the executor: map() raises BrokenProcessPool

    def _stop(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=self.aborted)
            self._ex = None


class _FuturesPool(WorkerPool):
    """``ipckit.futures.ProcessPoolExecutor(2, url=...).map(handle_job, jobs)``: the same call as
    the cf.ProcessPool subject, on ipckit's executor (docs/futures.md)."""

    def __init__(self, url: str, workers: int, cpus: set[int] | None, timeout: float) -> None:
        super().__init__(f"futures({url.partition(':')[0]})", "ipckit", workers, cpus, timeout)
        self.url = url
        self._ex: Any = None

    def _start(self, ready: Connection) -> None:
        from ipckit.futures import ProcessPoolExecutor as IpckitExecutor  # only when measured

        self._ex = IpckitExecutor(self.n_workers, mp_context=SPAWN, initializer=_ready,
                                  initargs=(self.cpus, ready), url=self.url)

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        return list(self._ex.map(handle_job, jobs, timeout=self.timeout))

    def _abort(self) -> None:
        pass  # map() times out by itself; the killed workers are replaced or fail their tasks

    def _stop(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=self.aborted)
            self._ex = None


class _FuturesSubmitPool(_FuturesPool):
    """The same executor through ``submit()`` and ``result()``: a real Future per job, submitted
    one at a time while the workers already answer (the path code written for
    ``concurrent.futures`` takes most often)."""

    def __init__(self, url: str, workers: int, cpus: set[int] | None, timeout: float) -> None:
        super().__init__(url, workers, cpus, timeout)
        self.name = f"futures({url.partition(':')[0]}) submit"

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        submit, timeout = self._ex.submit, self.timeout
        futures = [submit(handle_job, job) for job in jobs]
        return [f.result(timeout) for f in futures]


#: The schemes whose ``ipckit.futures.ProcessPoolExecutor`` the pool workload measures, two rows
#: each (``map`` and ``submit``): ``shm`` (the executor's default) unless
#: ``IPCKIT_BENCH_POOL_FUTURES=shm,unix,pipe`` says otherwise (empty: none).
FUTURES_ENV = "IPCKIT_BENCH_POOL_FUTURES"
DEFAULT_FUTURES = "shm"


def _futures_specs() -> list[PoolSpec]:
    schemes = [x.strip() for x in os.environ.get(FUTURES_ENV, DEFAULT_FUTURES).split(",") if x.strip()]
    specs = []
    for scheme in schemes:
        url = f"{scheme}://"
        specs.append(PoolSpec(f"futures({scheme})", "ipckit",
                              f"ipckit.futures.ProcessPoolExecutor(url={url}).map, default chunksize",
                              functools.partial(_FuturesPool, url)))
        specs.append(PoolSpec(f"futures({scheme}) submit", "ipckit",
                              f"ipckit.futures.ProcessPoolExecutor(url={url}).submit, then result() each",
                              functools.partial(_FuturesSubmitPool, url)))
    return specs


@dataclass
class PoolSpec:
    """A pool subject: how to start it."""

    name: str
    kind: str  # "ipckit" or "baseline"
    note: str
    factory: Callable[[int, set[int] | None, float], WorkerPool]
    #: Jobs a repeat at most (a rate, so comparable): keeps a slow pool's cell near a second.
    max_jobs: int | None = None


def pool_subjects(backends: list[str] | None = None,
                  urls: dict[str, str] | None = None) -> tuple[list[PoolSpec], list[SkippedSubject]]:
    """The ipckit subjects (as :func:`~.links.ipckit_subjects` selects them) then the baselines.

    The baselines are always there: they are what the ratios are taken against.
    """
    subjects, skipped = ipckit_subjects(backends, urls)
    # Jobs are dicts: a channel whose serializer carries bytes only cannot run them.
    def bytes_only(url: str) -> bool:
        return "raw" in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("serializer", [])

    raw = [s for s in subjects if bytes_only(s.url)]
    subjects = [s for s in subjects if s not in raw]
    skipped = [*skipped, *(SkippedSubject(s.name, "its serializer carries bytes only: pool jobs are dicts")
                           for s in raw)]
    specs = [PoolSpec(s.name, "ipckit",
                      f"one {s.url} channel per worker ({s.note}), window {WINDOW} or what the channel holds",
                      functools.partial(_ChannelPool, s))
             for s in subjects]
    specs += _futures_specs()
    specs += [
        PoolSpec("mp.Queue", "baseline", "task + result multiprocessing.Queue, None to stop", _QueuePool),
        PoolSpec("mp.Pool", "baseline", "multiprocessing.Pool.imap_unordered, chunksize=1", _MpPool),
        PoolSpec("cf.ProcessPool", "baseline",
                 f"concurrent.futures.ProcessPoolExecutor.map, at most {EXECUTOR_MAX_JOBS} jobs a repeat",
                 _ExecutorPool, max_jobs=EXECUTOR_MAX_JOBS),
    ]
    return specs, skipped


def open_pool(spec: PoolSpec, workers: int = WORKERS, cpus: set[int] | None = None,
              timeout: float = 60.0) -> WorkerPool:
    """Start and warm up *spec*'s pool (workers pinned to *cpus*); the caller closes it."""
    pool = spec.factory(workers, cpus, timeout)
    try:
        pool.start()
    except BaseException:
        pool.abort()
        pool.close()
        raise
    return pool


class _Watchdog:
    """Aborts *pool* if the block runs past the pool's timeout: a hung worker cannot hang the run."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._timer = threading.Timer(pool.timeout, pool.abort)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._timer.cancel()
        if self.pool.aborted:
            raise TimeoutError(f"{self.pool.name}: aborted after {self.pool.timeout:.0f} s") from exc


# ------------------------------------------------------------------------------ measurement
@dataclass
class _Sample:
    elapsed: float
    parent_cpu: float
    worker_cpu: float
    steal: tuple[int, int]  # (steal ticks, total ticks) during the repeat


StealFn = Callable[[], tuple[int, int]]


def _no_steal() -> tuple[int, int]:
    return 0, 0


def _timed_run(pool: WorkerPool, jobs: Sequence[Job], read_steal: StealFn) -> _Sample:
    steal0 = read_steal()
    w0 = pool.worker_cpu_s()
    c0 = time.process_time()
    with _Watchdog(pool):  # started before the clock: its thread costs nothing in the timed region
        t0 = time.perf_counter()
        results = pool.run(jobs)
        t1 = time.perf_counter()
    c1 = time.process_time()
    w1 = pool.worker_cpu_s()
    steal1 = read_steal()
    check_results(jobs, results)
    return _Sample(t1 - t0, c1 - c0, w1 - w0, (steal1[0] - steal0[0], steal1[1] - steal0[1]))


def _cell(spec: PoolSpec, placement: str, n: int, samples: list[_Sample], error: str | None) -> Cell:
    cell = Cell(spec.name, spec.kind, "pool", placement, BLOB_SIZE, error=error)
    cell.extra = {"jobs": n, "workers": WORKERS, "note": spec.note}
    if error is not None or not samples:
        return cell
    rates = [n / s.elapsed for s in samples]
    median = statistics.median(rates)
    parent = sum(s.parent_cpu for s in samples)
    workers = sum(s.worker_cpu for s in samples)
    cell.count = n
    cell.elapsed_s = statistics.median(s.elapsed for s in samples)
    cell.msg_s = median
    cell.mean_us = 1e6 / median
    cell.parent_cpu_s, cell.child_cpu_s = parent, workers
    cell.cpu_us_per_msg = 1e6 * (parent + workers) / (n * len(samples))
    ticks = sum(s.steal[1] for s in samples)
    cell.steal_pct = 100.0 * sum(s.steal[0] for s in samples) / ticks if ticks > 0 else None
    cell.verified = True
    cell.extra.update(repeats=len(samples), jobs_s_runs=rates, min_jobs_s=min(rates), max_jobs_s=max(rates),
                      spread_pct=100.0 * (max(rates) - min(rates)) / median)
    return cell


ProgressFn = Callable[[str, "Cell | None"], None]


def pool_cell_count(cfg: BenchConfig) -> int:
    """Cells :func:`measure_pool` returns for one placement (for a progress bar's total)."""
    return len(pool_subjects(cfg.backends, cfg.urls)[0])


def measure_pool(cfg: BenchConfig, placement: str, child_cpus: set[int] | None,
                 progress: ProgressFn | None = None, read_steal: StealFn = _no_steal) -> list[Cell]:
    """One ``pool`` cell per subject for *placement*; the caller has pinned this process already.

    *child_cpus* pins the workers (None: unpinned).  *progress* is called as
    ``progress(description, cell_or_None)``.  *read_steal* returns the host's ``(steal, total)``
    CPU ticks (the runner's ``read_steal``; the runner imports this module, so it hands it in);
    without it ``steal_pct`` is None.  A subject that fails gets a cell with ``error``.
    """
    def tick(desc: str, cell: Cell | None = None) -> None:
        if progress is not None:
            progress(desc, cell)

    specs, _ = pool_subjects(cfg.backends, cfg.urls)
    jobs = make_jobs(cfg.pool_jobs)
    pools: dict[str, WorkerPool] = {}
    errors: dict[str, str] = {}
    samples: dict[str, list[_Sample]] = {s.name: [] for s in specs}
    try:
        for spec in specs:
            tick(f"[{placement}] pool: starting {spec.name}")
            try:
                pools[spec.name] = open_pool(spec, WORKERS, child_cpus, cfg.cell_timeout)
            except Exception as exc:
                errors[spec.name] = f"could not start the pool: {exc!r}"
        for r in range(max(1, cfg.pool_repeats)):
            for spec in specs:
                pool = pools.get(spec.name)
                if pool is None:
                    continue
                tick(f"[{placement}] pool {spec.name} {r + 1}/{cfg.pool_repeats}")
                try:
                    samples[spec.name].append(_timed_run(pool, jobs[:spec.max_jobs], read_steal))
                except Exception as exc:
                    errors[spec.name] = repr(exc)
                    pools.pop(spec.name).abort()
                    pool.close()
    finally:
        for pool in pools.values():
            pool.close()
    cells = []
    for spec in specs:
        cell = _cell(spec, placement, len(jobs[:spec.max_jobs]), samples[spec.name], errors.get(spec.name))
        cells.append(cell)
        tick(f"[{placement}] pool {spec.name}", cell)
    return cells
