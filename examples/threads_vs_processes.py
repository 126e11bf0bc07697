#!/usr/bin/env python3
"""CPU-bound work scales with processes, I/O-bound work with threads: measured and printed.

Two workloads, each run three ways -- one after another in this thread, on a thread pool, on a
process pool (``ipckit.futures.ProcessPoolExecutor``: worker processes fed over ipckit channels):

* **CPU-bound**: a pure-Python loop.  Threads share one interpreter lock (the GIL), so only one
  of them runs Python code at a time: a thread pool is no faster than one thread.  Processes each
  have their own interpreter and lock, so on N cores N processes run N times as much.
* **I/O-bound**: waiting (here ``time.sleep``, standing for a socket, a disk, a peer process).
  A thread that waits releases the lock, so many threads wait at once: the pool finishes in about
  one wait.  Processes would too, but each costs a whole interpreter (tens of MB and tens of
  milliseconds to start), for no gain.

The numbers are printed as speed-ups over the serial run; on a machine with one core the CPU rows
show no process speed-up either (``os.sched_getaffinity`` decides how many workers run).

Examples::

    python examples/threads_vs_processes.py
    python examples/threads_vs_processes.py --tasks 8 --work 2000000
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import time
from collections.abc import Callable

import ipckit.futures


def cpu_task(n: int) -> int:
    """Pure Python arithmetic: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def io_task(seconds: float) -> float:
    """A blocking wait: releases the GIL while it waits."""
    time.sleep(seconds)
    return seconds


def timed(run: Callable[[], list[object]]) -> tuple[float, list[object]]:
    start = time.perf_counter()
    results = run()
    return time.perf_counter() - start, results


def compare(name: str, fn: Callable[[object], object], args: list[object], workers: int) -> None:
    serial_s, expected = timed(lambda: [fn(a) for a in args])
    with cf.ThreadPoolExecutor(workers) as pool:
        thread_s, got_threads = timed(lambda: list(pool.map(fn, args)))
    with ipckit.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(fn, args[:workers]))  # start every worker before timing (interpreters boot)
        process_s, got_processes = timed(lambda: list(pool.map(fn, args)))
    assert got_threads == expected and got_processes == expected
    print(f"{name:10s} serial {serial_s:6.2f} s | {workers} threads {thread_s:6.2f} s "
          f"({serial_s / thread_s:4.1f}x) | {workers} processes {process_s:6.2f} s ({serial_s / process_s:4.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--tasks", type=int, default=0, help="tasks per workload (default: 2 per core)")
    ap.add_argument("--work", type=int, default=1_000_000, help="loop iterations per CPU task (default 1e6)")
    ap.add_argument("--wait", type=float, default=0.1, help="seconds per I/O task (default 0.1)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    tasks = args.tasks or 2 * cores
    load = os.getloadavg()[0]
    print(f"{cores} core(s) usable, load average {load:.1f}; {tasks} tasks per workload, {cores} workers per pool")
    if load > cores / 2:
        print("(other processes are using the cores: the process speed-up shrinks to what is left of them)")
    compare("CPU-bound", cpu_task, [args.work] * tasks, cores)  # type: ignore[arg-type]
    compare("I/O-bound", io_task, [args.wait] * tasks, tasks)  # type: ignore[arg-type]
    print("CPU-bound work: threads take turns on the GIL, processes run in parallel on the cores.")
    print("I/O-bound work: waiting threads release the GIL, so one process with threads is enough.")


if __name__ == "__main__":
    main()
