"""ipckit.futures.ProcessPoolExecutor: the standard executor's semantics, and crash isolation.

The first part checks what code written for :class:`concurrent.futures.ProcessPoolExecutor`
relies on (submit, map with chunksize and timeout, exceptions, cancel, shutdown with
wait/cancel_futures, initializer, max_tasks_per_child, argument checks).  The second part is
what the standard executor does not do: a worker that dies (SIGKILL, ``os._exit``, a segfault)
fails only the task it ran, with WorkerDied, under fork and spawn; a task past its timeout;
a parent killed with SIGKILL takes its workers with it.  The ipckit leak guard runs around every
test (nothing in /dev/shm, SysV, the temp directory).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ipckit
from ipckit.futures import BrokenProcessPool, ProcessPoolExecutor

pytestmark = pytest.mark.timeout(60)

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
CONTEXTS = {"fork": FORK, "spawn": SPAWN}


# ------------------------------------------------------------------------------ task functions
def add(a: int, b: int = 0) -> int:
    return a + b


def pid_of(_: object = None) -> int:
    return os.getpid()


def fail(message: str) -> None:
    raise KeyError(message)


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def _stamp(path: str | None) -> None:
    # When the crash happens (CLOCK_MONOTONIC is one clock for every process of the machine).
    if path is not None:
        with open(path, "w") as f:
            f.write(repr(time.monotonic()))


def kill_self(stamp: str | None = None) -> None:
    _stamp(stamp)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(code: int, stamp: str | None = None) -> None:
    _stamp(stamp)
    os._exit(code)


def segfault(stamp: str | None = None) -> None:
    _stamp(stamp)
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def unpicklable_result() -> object:
    return lambda: None


_initialized: object = None


def remember(value: object) -> None:
    global _initialized
    _initialized = value


def initialized(_: object = None) -> object:
    return _initialized


def init_fails() -> None:
    raise ValueError("no database")


def init_dies() -> None:
    os._exit(7)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------ the standard semantics
@pytest.fixture
def ex() -> Any:
    with ProcessPoolExecutor(2, mp_context=FORK) as executor:
        yield executor


def test_submit_returns_a_future_with_the_result(ex: ProcessPoolExecutor) -> None:
    f = ex.submit(add, 1, b=2)
    assert isinstance(f, concurrent.futures.Future)
    assert f.result(timeout=10) == 3
    assert f.done() and not f.cancelled() and f.exception() is None


def test_map_keeps_order_with_any_chunksize_and_several_iterables(ex: ProcessPoolExecutor) -> None:
    for chunksize in (1, 3, 7, 500):
        assert list(ex.map(add, range(50), range(100, 150), chunksize=chunksize)) == [
            a + b for a, b in zip(range(50), range(100, 150), strict=True)]
    assert list(ex.map(add, [])) == []
    assert list(ex.map(add, [1, 2, 3], [10])) == [11]  # the shortest iterable ends it, as map() does
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(add, [1], chunksize=0)


def test_map_timeout_raises_timeout_error_when_reached(ex: ProcessPoolExecutor) -> None:
    results = ex.map(sleep_then, [0.0, 1.0], ["a", "b"], timeout=0.3)
    assert next(results) == "a"
    with pytest.raises(TimeoutError):
        next(results)


def test_an_exception_in_the_task_comes_back_with_its_type_and_remote_traceback(ex: ProcessPoolExecutor) -> None:
    f = ex.submit(fail, "missing")
    with pytest.raises(KeyError, match="missing") as info:
        f.result(timeout=10)
    assert type(f.exception()) is KeyError
    assert "in fail" in str(info.value.__cause__) and "raise KeyError" in str(info.value.__cause__)
    # An exception in a map stops the iteration there, as in the standard executor.
    results = ex.map(fail, ["x"])
    with pytest.raises(KeyError):
        next(results)


def test_what_cannot_be_pickled_fails_its_own_future_only(ex: ProcessPoolExecutor) -> None:
    bad = ex.submit(add, lambda: 1)  # the argument cannot be pickled
    with pytest.raises(ipckit.EncodeError):
        bad.result(timeout=10)
    res = ex.submit(unpicklable_result)  # the result cannot be pickled in the worker
    with pytest.raises(ipckit.EncodeError):
        res.result(timeout=10)
    assert ex.submit(add, 2, 2).result(timeout=10) == 4


def test_its_futures_are_futures_with_every_method_the_standard_one() -> None:
    # submit() makes a Future subclass whose only own method is __init__ (a Condition the garbage
    # collector tracks less of); all the behaviour is concurrent.futures.Future's.
    from ipckit import futures as module

    assert module._LIGHT_FUTURES  # this Python keeps the state the subclass relies on
    f = module._new_future()
    assert isinstance(f, concurrent.futures.Future)
    assert vars(f).keys() == vars(concurrent.futures.Future()).keys()
    own = {k for k, v in vars(type(f)).items() if callable(v)}
    assert own == {"__init__"}, own
    assert isinstance(f._condition, threading.Condition)
    # Waiting on it from another thread: a timeout, then a wake-up by set_result.
    with pytest.raises(concurrent.futures.TimeoutError):
        f.result(timeout=0.01)
    assert f.set_running_or_notify_cancel()
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(f.result(timeout=10)))
    t.start()
    while not f._waiters and not f._condition._waiters:
        if not t.is_alive():
            break
        time.sleep(0.001)
    f.set_result("x")
    t.join(10)
    assert got == ["x"]
    g = module._new_future()
    assert g.cancel() and g.cancelled() and not g.set_running_or_notify_cancel()


def test_standard_helpers_work_on_its_futures(ex: ProcessPoolExecutor) -> None:
    fs = [ex.submit(add, i, i) for i in range(20)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(fs, timeout=10)) == [2 * i for i in range(20)]
    done, not_done = concurrent.futures.wait(fs, timeout=10)
    assert len(done) == 20 and not not_done
    seen: list[int] = []
    f = ex.submit(add, 5)
    f.add_done_callback(lambda fut: seen.append(fut.result()))
    f.result(timeout=10)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [5]


def test_a_pending_future_can_be_cancelled_a_running_one_not() -> None:
    with ProcessPoolExecutor(1, mp_context=FORK) as ex:
        running = ex.submit(sleep_then, 0.5, "slow")
        while not running.running():
            time.sleep(0.005)
        queued = [ex.submit(add, i) for i in range(200)]  # beyond the one worker's credit
        assert not running.cancel()
        assert queued[-1].cancel() and queued[-1].cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            queued[-1].result()
        assert running.result(timeout=10) == "slow"
        assert [f.result(timeout=10) for f in queued[:-1]] == list(range(199))


def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_slow_tasks_spread_over_the_workers_not_queued_behind_one(method: str) -> None:
    with ProcessPoolExecutor(2, mp_context=CONTEXTS[method]) as ex:
        fs = [ex.submit(sleep_pid, 0.4) for _ in range(4)]  # on a fresh pool, workers still starting
        pids = [f.result(timeout=30) for f in fs]
    assert len(set(pids)) == 2 and all(pids.count(p) == 2 for p in set(pids)), pids


def test_shutdown_waits_for_pending_work_then_refuses_new_work() -> None:
    ex = ProcessPoolExecutor(2, mp_context=FORK)
    fs = [ex.submit(sleep_then, 0.01, i) for i in range(30)]
    pids = {ex.submit(pid_of).result(timeout=10) for _ in range(4)}
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs) and [f.result() for f in fs] == list(range(30))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(add, 1)
    ex.shutdown()  # idempotent
    assert not any(_alive(p) for p in pids)


def test_shutdown_cancel_futures_cancels_what_no_worker_started() -> None:
    ex = ProcessPoolExecutor(1, mp_context=FORK)
    first = ex.submit(sleep_then, 0.3, "first")
    while not first.running():
        time.sleep(0.005)
    rest = [ex.submit(sleep_then, 0.3, i) for i in range(10)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "first"
    cancelled = [f for f in rest if f.cancelled()]
    assert len(cancelled) >= 8  # at most the worker's credit had started
    assert all(f.done() for f in rest)


def test_shutdown_without_wait_returns_at_once_and_the_work_still_finishes() -> None:
    ex = ProcessPoolExecutor(1, mp_context=FORK)
    f = ex.submit(sleep_then, 0.5, "done")
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.4
    assert f.result(timeout=10) == "done"
    ex.shutdown(wait=True)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_initializer_runs_in_every_worker_before_its_tasks(method: str) -> None:
    with ProcessPoolExecutor(2, mp_context=CONTEXTS[method], initializer=remember, initargs=("ready",)) as ex:
        assert set(ex.map(initialized, range(20))) == {"ready"}


def test_a_failing_initializer_breaks_the_pool() -> None:
    ex = ProcessPoolExecutor(2, mp_context=FORK, initializer=init_fails)
    f = ex.submit(add, 1)
    with pytest.raises(BrokenProcessPool) as info:
        f.result(timeout=10)
    assert isinstance(info.value, concurrent.futures.process.BrokenProcessPool)
    assert isinstance(info.value, ipckit.IPCError)
    assert type(info.value.__cause__) is ValueError
    with pytest.raises(BrokenProcessPool):
        ex.submit(add, 1)
    ex.shutdown()


def test_max_tasks_per_child_replaces_workers() -> None:
    with ProcessPoolExecutor(2, mp_context=SPAWN, max_tasks_per_child=3) as ex:
        pids = [ex.submit(pid_of).result(timeout=30) for _ in range(9)]
    counts = {p: pids.count(p) for p in set(pids)}
    assert max(counts.values()) <= 3 and len(counts) >= 3
    assert not any(_alive(p) for p in counts)


def test_arguments_are_checked_like_the_standard_executor() -> None:
    with pytest.raises(ValueError):
        ProcessPoolExecutor(0)
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, initializer=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, task_timeout=0)


@pytest.mark.parametrize("url", ["shm://", "pipe://", "unix://"])
def test_runs_over_each_local_backend(url: str) -> None:
    with ProcessPoolExecutor(2, mp_context=FORK, url=url) as ex:
        assert list(ex.map(add, range(300), range(300), chunksize=4)) == [2 * i for i in range(300)]


def echo_reversed(data: bytes) -> bytes:
    return data[::-1]


@pytest.mark.parametrize("url", ["shm://", "pipe://", "unix://"])
def test_messages_larger_than_any_buffer_never_deadlock(url: str) -> None:
    # 4 MiB each way, more of them than two workers hold at once: a send that would wait on a busy
    # worker is never made (the parent would wait on a worker that waits on the parent).
    blobs = [bytes([i]) * (4 << 20) for i in range(12)]
    small = list(range(200))
    with ProcessPoolExecutor(2, mp_context=FORK, url=url) as ex:
        big = [ex.submit(echo_reversed, b) for b in blobs]
        quick = ex.map(add, small, small)
        assert list(quick) == [2 * i for i in small]
        assert [f.result(timeout=30) for f in big] == [b[::-1] for b in blobs]


def test_large_numpy_arrays_travel_both_ways_over_shm() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(2 * 1024 * 1024, dtype=np.float64)  # 16 MiB: over shm's large_message, in a slot
    with ProcessPoolExecutor(1, mp_context=FORK, url="shm://") as ex:
        out = ex.submit(np.multiply, a, 2.0).result(timeout=30)
        assert np.array_equal(out, a * 2.0)
        # Received without a copy: the array's memory is the channel's shared-memory slot.
        assert not out.flags.owndata
        del out


# ------------------------------------------------------------------------------ crashes
def _warm(ex: ProcessPoolExecutor) -> None:
    assert list(ex.map(add, range(4))) == list(range(4))


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("crash,exitcode", [(kill_self, -signal.SIGKILL), (segfault, -signal.SIGSEGV),
                                            ("exit", 3)], ids=["sigkill", "segfault", "os._exit"])
def test_a_dying_worker_fails_only_its_task_and_is_replaced(method: str, crash: Any, exitcode: int,
                                                            tmp_path: Path) -> None:
    stamp = str(tmp_path / "crashed-at")
    reported: list[float] = []
    with ProcessPoolExecutor(2, mp_context=CONTEXTS[method]) as ex:
        _warm(ex)
        others = [ex.submit(sleep_then, 0.002, i) for i in range(100)]
        bad = ex.submit(exit_now, 3, stamp) if crash == "exit" else ex.submit(crash, stamp)
        bad.add_done_callback(lambda f: reported.append(time.monotonic()))
        err = bad.exception(timeout=10)
        more = [ex.submit(add, i) for i in range(100)]
        assert [f.result(timeout=30) for f in others] == list(range(100))
        assert [f.result(timeout=30) for f in more] == list(range(100))
    with open(stamp) as f:
        crashed_at = float(f.read())
    os.unlink(stamp)
    assert reported and reported[0] - crashed_at < 1.0, "the crash was not reported within 1 s"
    assert type(err) is ipckit.WorkerDied
    assert isinstance(err, ipckit.PeerDied)
    assert err.exitcode == exitcode and err.pid is not None and str(err.pid) in str(err)
    assert err.signal == (-exitcode if exitcode < 0 else None)
    if exitcode < 0:
        assert signal.Signals(-exitcode).name in str(err)
    assert not _alive(err.pid)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_worker_dying_in_its_initializer_breaks_the_pool_with_the_cause(method: str) -> None:
    ex = ProcessPoolExecutor(1, mp_context=CONTEXTS[method], initializer=init_dies)
    f = ex.submit(add, 1)
    with pytest.raises(BrokenProcessPool) as info:
        f.result(timeout=30)
    cause = info.value.__cause__
    assert type(cause) is ipckit.WorkerDied and cause.exitcode == 7
    with pytest.raises(BrokenProcessPool):
        ex.submit(add, 1)
    ex.shutdown()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_task_past_its_timeout_is_killed_and_the_rest_run(method: str) -> None:
    with ProcessPoolExecutor(2, mp_context=CONTEXTS[method]) as ex:
        _warm(ex)
        t0 = time.monotonic()
        hung = ex.submit_with_timeout(0.3, sleep_then, 30, "never")
        fine = [ex.submit_with_timeout(5, sleep_then, 0.01, i) for i in range(10)]
        err = hung.exception(timeout=10)
        assert 0.3 <= time.monotonic() - t0 < 5.0  # (generous: a loaded machine is slow to kill and reap)
        assert [f.result(timeout=10) for f in fine] == list(range(10))
    assert type(err) is ipckit.TaskTimeout and isinstance(err, TimeoutError)
    assert err.timeout == 0.3 and err.pid is not None and not _alive(err.pid)


def test_the_executor_wide_task_timeout_applies_to_submit_and_map() -> None:
    with ProcessPoolExecutor(1, mp_context=FORK, task_timeout=0.3) as ex:
        _warm(ex)
        results = ex.map(sleep_then, [0.0, 30.0, 0.0], ["a", "b", "c"])
        assert next(results) == "a"
        with pytest.raises(ipckit.TaskTimeout):
            next(results)
        assert ex.submit(add, 1).result(timeout=10) == 1


PARENT = """
import os, sys, time
from ipckit.futures import ProcessPoolExecutor
import multiprocessing

def block(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(60)

if __name__ == "__main__":
    ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(sys.argv[1]))
    marks = [os.path.join(sys.argv[2], f"started-{i}") for i in range(2)]
    fs = [ex.submit(block, m) for m in marks]
    while not all(os.path.exists(m) for m in marks):
        time.sleep(0.01)
    print("READY", *(open(m).read() for m in marks), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_killing_the_parent_takes_its_workers_with_it(method: str, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    proc = subprocess.Popen([sys.executable, str(script), method, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(p) for p in pids), "a worker outlived its killed parent"
    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)


def test_the_new_errors_keep_their_attributes_through_pickle() -> None:
    import pickle

    died = pickle.loads(pickle.dumps(ipckit.WorkerDied("worker pid 7 was killed by SIGKILL", 7, -9)))
    assert (type(died), died.pid, died.exitcode, died.signal, str(died)) == (
        ipckit.WorkerDied, 7, -9, 9, "worker pid 7 was killed by SIGKILL")
    late = pickle.loads(pickle.dumps(ipckit.TaskTimeout("too slow", 8, 0.5)))
    assert (type(late), late.pid, late.timeout) == (ipckit.TaskTimeout, 8, 0.5)
    assert issubclass(ipckit.TaskTimeout, TimeoutError) and issubclass(ipckit.WorkerDied, ipckit.PeerDied)
