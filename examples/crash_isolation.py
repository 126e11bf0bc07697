"""Crash isolation: a supervisor whose worker processes may crash, against the same work on threads.

Part 1 runs 40 jobs through ``ipckit.futures.ProcessPoolExecutor``.  One job crashes its worker
(a segfault, read through ctypes, or ``os._exit``): that job alone fails with ``WorkerDied``
naming the worker's pid and how it ended, a replacement worker starts, the 39 other jobs
complete, and the supervisor carries on.

Part 2 runs the same jobs on a ``ThreadPoolExecutor``.  A fault in one thread ends the whole
process: every other job and the supervisor go with it.  It runs in a child interpreter so that
this example survives to report how that child ended.

    python examples/crash_isolation.py [--crash segfault|exit]

Exits 0 when both parts behave as described.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from os import _exit as exit_at_once  # os._exit: no cleanup, no exception, the process just ends

import ipckit
from ipckit.futures import ProcessPoolExecutor

JOBS = 40
CRASHING_JOB = 13


def job(i: int, crash: str) -> int:
    """A small piece of work; job CRASHING_JOB crashes whatever runs it."""
    if i == CRASHING_JOB:
        if crash == "segfault":
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        exit_at_once(3)
    time.sleep(0.005)
    return i * i


def with_processes(crash: str) -> bool:
    print(f"1) {JOBS} jobs on ipckit.futures.ProcessPoolExecutor(2); job {CRASHING_JOB} crashes ({crash})")
    done, failed = 0, []
    t0 = time.monotonic()
    with ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(job, i, crash) for i in range(JOBS)]
        for i, f in enumerate(futures):
            try:
                assert f.result(timeout=30) == i * i
                done += 1
            except ipckit.WorkerDied as exc:
                failed.append(i)
                print(f"   job {i}: {type(exc).__name__}: {exc}")
        # The pool is still whole: a replacement worker took the dead one's place.
        after = ex.submit(job, 2, crash).result(timeout=30)
    print(f"   {done} jobs completed, {len(failed)} failed, and the pool ran one more (result {after}) "
          f"in {time.monotonic() - t0:.2f} s; the supervisor carries on")
    return done == JOBS - 1 and failed == [CRASHING_JOB]


THREADS_CHILD = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, {here!r})
from crash_isolation import JOBS, job

with ThreadPoolExecutor(2) as ex:
    futures = [ex.submit(job, i, {crash!r}) for i in range(JOBS)]
    done = sum(1 for f in futures if f.result() is not None)
print(f"all {{done}} jobs completed", flush=True)
"""


def with_threads(crash: str) -> bool:
    print(f"2) the same {JOBS} jobs on concurrent.futures.ThreadPoolExecutor(2), in a child interpreter")
    code = THREADS_CHILD.format(here=os.path.dirname(os.path.abspath(__file__)), crash=crash)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    if proc.returncode < 0:
        how = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
        how = f"exited with status {proc.returncode}"
    print(f"   the whole process {how}: the supervisor and every other job went with it "
          f"(its output: {proc.stdout.strip() or 'nothing'})")
    return proc.returncode != 0 and "completed" not in proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crash", choices=["segfault", "exit"], default="segfault",
                        help="how the crashing job dies (default: segfault)")
    args = parser.parse_args(argv)
    processes_ok = with_processes(args.crash)
    threads_died = with_threads(args.crash)
    ok = processes_ok and threads_died
    print("isolated: the process pool survived the crash, the thread pool did not" if ok else
          "unexpected: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
