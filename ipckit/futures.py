"""``ipckit.futures.ProcessPoolExecutor``: a drop-in for :class:`concurrent.futures.ProcessPoolExecutor`
over ipckit channels, where a worker that dies fails only the task it was running.

>>> from ipckit.futures import ProcessPoolExecutor
>>> with ProcessPoolExecutor(2) as ex:
...     print(list(ex.map(abs, [-1, -2, 3])))
[1, 2, 3]

Design (docs/futures.md has the measurements behind each choice):

* **One channel per worker** (``ipckit.pair(url)``, default ``shm://``), one parent thread per
  worker (its *slot*): the thread starts the worker process, reads its results in order and
  starts its replacement.  shm channels have no descriptor to select on, and a thread per worker
  blocked in ``recv`` costs nothing while it waits.
* **Order instead of ids.**  A worker runs its tasks one at a time in the order it received
  them, so the result that arrives belongs to the oldest task in flight on that channel, and the
  oldest task in flight is the one the worker is running.  When the worker dies (the channel
  says ``PeerDied`` after every result it sent, or its process is found dead), that task gets
  :class:`~ipckit.errors.WorkerDied`, the tasks queued behind it go back to the front of the
  pending queue, and the slot starts a new worker.
* **Credit, in batches.**  A slot keeps a few tasks in flight so the worker never waits for the
  parent: about :data:`QUEUE_BUDGET` seconds of work (learned from how fast its results come
  back), at least 2 and at most :data:`MAX_WINDOW`, refilled in one message when half is done and a
  quarter is pending (or the worker runs low: tasks submitted one by one still travel in batches).
  Idle workers are served first, each its share, so slow tasks never pile up behind one busy
  worker while another idles, and small tasks stream.
* **map() without a Future per call**: its calls are queued under one lock and share one ordered
  result list (:class:`_MapResults`); ``submit`` returns real Futures.
* **No send blocks a reader.**  A task is sent with ``timeout=0`` to a worker that still has
  work in flight (if it does not fit, it waits in the pending queue for the next result); only a
  worker with nothing in flight, which is reading, gets a blocking send.  So the parent never
  waits on a worker that waits on the parent, whatever the message sizes.
* **Per-task timeout** counts from the moment the task became the oldest in flight on a ready
  worker (when the worker started it); past it the worker is killed and the task gets
  :class:`~ipckit.errors.TaskTimeout`.
* **No orphans.**  Each worker asks the kernel for SIGKILL when its parent thread ends
  (``PR_SET_PDEATHSIG``; the slot threads live until their worker is reaped, so that is when the
  parent process ends) and also stops when its channel says the parent is gone.

Workers are started lazily on the first ``submit`` (all ``max_workers`` at once).  A worker that
fails or dies before it has run its initializer breaks the pool (as in the standard executor:
every pending task and every later ``submit`` raise :class:`BrokenProcessPool`): a crashing
initializer would otherwise be restarted forever.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import itertools
import multiprocessing
import multiprocessing.context
import os
import select
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool as _StdBrokenProcessPool
from typing import Any

from .api import pair
from .channel import Channel
from .errors import (
    ChannelBroken,
    ChannelClosed,
    DecodeError,
    EncodeError,
    EndOfChannel,
    IPCError,
    RecvTimeout,
    SendTimeout,
    TaskTimeout,
    WorkerDied,
)

__all__ = [
    "ProcessPoolExecutor",
    "BrokenProcessPool",
    "RemoteTraceback",
    "WorkerDied",
    "TaskTimeout",
    "DEFAULT_URL",
    "MAX_WINDOW",
    "QUEUE_BUDGET",
]

#: The backend of the worker channels unless ``url=`` says otherwise: the fastest local one here
#: (docs/futures.md: shm:// ran the 10,000-task workload fastest of shm, unix and pipe).
DEFAULT_URL = "shm://"
#: Most tasks in flight per worker: enough that small tasks stream.
MAX_WINDOW = 64
#: Seconds of work a slot keeps queued on its worker: a slow task never has many others stuck
#: behind it on one worker while another worker idles.
QUEUE_BUDGET = 0.002
#: How often (seconds) an idle slot checks its worker process and its task's timeout.  A dead
#: worker is normally seen at once (its channel reports PeerDied); this bounds the rest.
_SLICE = 0.05

# Worker -> parent message kinds.  Parent -> worker: a list of ``(fn, args, kwargs or None)``
# (a batch: one message, one answer per task), ``None`` = stop.
_OK, _RAISED, _READY, _INIT_FAILED, _UNDECODABLE = 0, 1, 2, 3, 4

_PR_SET_PDEATHSIG = 1

#: Held while a worker's channel is made, its process started and the parent's copy of the
#: child's end closed.  Slot threads start workers concurrently; without it a worker forked in one
#: thread inherits the end (and the exit-sentinel pipe) meant for a sibling started at the same
#: moment in another, and that sibling's death is then not seen until the other exits too
#: (CI: an ``os._exit`` under fork was reported only when ``join(1.0)`` ran out).
_START_LOCK = threading.Lock()


class BrokenProcessPool(ChannelBroken, _StdBrokenProcessPool):
    """The pool cannot run tasks any more: a worker failed or died in its initializer.

    Also a :class:`concurrent.futures.process.BrokenProcessPool`, so code written for the
    standard executor catches it unchanged.  ``__cause__`` says what happened.
    """


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker (the ``__cause__`` of that exception)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


# ------------------------------------------------------------------------------------ the worker
def _die_with_parent(parent_pid: int | None) -> None:
    """Ask for SIGKILL when the parent (thread) ends; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0))
    except (OSError, AttributeError):
        pass  # no prctl here: the channel's liveness check still ends this worker
    # The parent may have died before prctl took effect: then our parent is already someone else.
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _die_with_owner(owner_pid: int) -> None:
    """A forkserver worker: its parent is the fork server, which outlives the pool's owner while
    any worker lives (every forkserver child holds the server's alive descriptor), so the parent-death
    signal alone would leave a worker inside a long task running.  Watch the owner itself."""
    try:
        pidfd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        os._exit(1)  # the owner is gone already
    except (OSError, AttributeError):
        return  # no pidfd here: the channel's liveness check still ends an idle worker

    def watch() -> None:
        select.select([pidfd], [], [])  # readable once the owner has exited
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ipckit.futures-owner-watch", daemon=True).start()


def _send_error(ch: Channel, kind: int, exc: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        ch.send((kind, exc, tb))
    except EncodeError as enc:
        # The exception itself cannot be pickled: send one that can, naming it.
        ch.send((kind, EncodeError(f"the task raised {type(exc).__qualname__}: {exc} ({enc})"), tb))


def _worker_main(ch: Channel, parent_pid: int | None, initializer: Callable[..., object] | None,
                 initargs: tuple[Any, ...], max_tasks: int | None, owner_pid: int | None = None) -> None:
    """A worker process: run tasks in the order they arrive, one answer per task."""
    _die_with_parent(parent_pid)
    if parent_pid is None and owner_pid is not None:
        _die_with_owner(owner_pid)
    try:
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                _send_error(ch, _INIT_FAILED, exc)
                return
        send, recv = ch.send, ch.recv
        send((_READY, os.getpid()))
        done = 0
        while max_tasks is None or done < max_tasks:
            try:
                batch = recv()
            except DecodeError as exc:
                # The tasks cannot be unpickled here (their function is not importable, say).  The
                # parent knows how many that message carried and fails all of them.
                _send_error(ch, _UNDECODABLE, exc)
                continue
            if batch is None:
                return
            for fn, args, kwargs in batch:
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                except BaseException as exc:
                    del fn, args, kwargs
                    _send_error(ch, _RAISED, exc)
                else:
                    del fn, args, kwargs  # the arguments go now: on shm a large array's slot is freed
                    try:
                        send((_OK, result))
                    except EncodeError as exc:
                        _send_error(ch, _RAISED, exc)
                    del result
            done += len(batch)
            del batch
    except (EndOfChannel, ChannelBroken, ChannelClosed):
        return  # the parent closed or died: nothing left to answer
    finally:
        ch.close()


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


# ------------------------------------------------------------------------------------ the parent
class _FutureCondition(threading.Condition):
    """The Condition of a :class:`_PoolFuture`: the standard one, over an RLock as usual, whose
    lock methods are looked up on the class instead of being bound per instance.

    ``threading.Condition()`` stores five bound methods of its lock on itself; with the Condition's
    deque and the Future's two lists, a standard Future is ten objects the garbage collector
    tracks, and a caller that keeps 10,000 of them waiting for their results pays for it in
    collections (docs/futures.md: 35-70 ms of a 130-200 ms run).  This one is two.
    """

    def __init__(self) -> None:  # deliberately not Condition.__init__ (see above)
        self._lock = threading.RLock()
        self._waiters: collections.deque[Any] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]


class _PoolFuture(Future[Any]):
    """What :meth:`ProcessPoolExecutor.submit` returns: a :class:`concurrent.futures.Future`
    (every method is Future's own) whose Condition costs the garbage collector less.

    Only ``__init__`` differs: it sets the attributes ``Future.__init__`` sets, with a
    :class:`_FutureCondition`.  :data:`_LIGHT_FUTURES` checks at import that this Python's Future
    and Condition keep the state this relies on; if not, ``submit`` makes plain Futures.
    """

    def __init__(self) -> None:  # deliberately not Future.__init__ (see above)
        self._condition = _FutureCondition()
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []


_PENDING: str = getattr(concurrent.futures._base, "PENDING", "")


def _light_futures_work() -> bool:
    """True if a :class:`_PoolFuture` has exactly the state a Future has here, and a Condition
    over an RLock no other (checked once: a later Python may add some)."""
    try:
        plain: Future[Any] = Future()
        light = _PoolFuture()
        if vars(plain).keys() != vars(light).keys() or plain._state != light._state:
            return False
        cond_attrs = set(vars(threading.Condition(threading.RLock())))
        if cond_attrs != {"_lock", "_waiters", "acquire", "release", "_release_save", "_acquire_restore",
                          "_is_owned"}:
            return False
        # And it works: a wait that times out, a wake-up, a result.
        if light._condition.acquire():
            try:
                light._condition.wait(0.0)
                light._condition.notify_all()
            finally:
                light._condition.release()
        light.set_running_or_notify_cancel()
        light.set_result(1)
        return bool(light.result(0) == 1 and light.done())
    except Exception:
        return False


#: Whether ``submit`` makes :class:`_PoolFuture` objects (else plain Futures).
_LIGHT_FUTURES = _light_futures_work()
_new_future: Callable[[], Future[Any]] = _PoolFuture if _LIGHT_FUTURES else Future


class _MapResults:
    """The results of one :meth:`ProcessPoolExecutor.map` call, in order, without a Future each.

    A Future costs ~4 µs to make and ~2 µs to complete (a Condition each); map() needs neither
    waiting per call nor callbacks, only "the next result in order", so its calls share one
    condition and one list.
    """

    _UNSET: Any = object()

    def __init__(self, n: int) -> None:
        self.values: list[Any] = [self._UNSET] * n
        self.ok = bytearray(n)
        self.cond = threading.Condition(threading.Lock())
        self.waiting = -1  # the index the consumer sleeps on, or -1
        self.closed = False

    def put(self, i: int, ok: bool, value: Any) -> None:
        with self.cond:
            if self.values[i] is not self._UNSET:
                return  # already cancelled (or answered): first answer wins, as on a Future
            self.values[i] = value
            self.ok[i] = ok
            if self.waiting == i:
                self.cond.notify()

    def iterate(self, end: float | None, chunked: bool) -> Iterator[Any]:
        values, unset, cond = self.values, self._UNSET, self.cond
        try:
            for i in range(len(values)):
                if values[i] is unset:
                    with cond:
                        self.waiting = i
                        while values[i] is unset:
                            left = None if end is None else end - time.monotonic()
                            if left is not None and left <= 0:
                                raise concurrent.futures.TimeoutError()
                            cond.wait(left)
                        self.waiting = -1
                value = values[i]
                values[i] = None  # drop the reference: the caller holds what it keeps
                if not self.ok[i]:
                    raise value
                if chunked:
                    yield from value
                else:
                    yield value
                del value
        finally:
            self.closed = True  # calls not started yet are skipped (cancelled)


class _MapEntry:
    """What a map() call's task holds instead of a Future: the subset of its API the pool uses."""

    __slots__ = ("i", "results")

    def __init__(self, results: _MapResults, i: int) -> None:
        self.results = results
        self.i = i

    def set_running_or_notify_cancel(self) -> bool:
        return not self.results.closed

    def set_result(self, value: Any) -> None:
        self.results.put(self.i, True, value)

    def set_exception(self, exc: BaseException | None) -> None:
        self.results.put(self.i, False, exc)

    def cancel(self) -> bool:
        self.results.put(self.i, False, concurrent.futures.CancelledError())
        return True


class _Item:
    """One task: its Future (or map() entry), the call, and the pool's state of it.

    The call's parts are fields, not a ``(fn, args, kwargs)`` tuple kept beside them: one object
    less per waiting task for the garbage collector (the tuple is made when the task is sent).
    """

    __slots__ = ("args", "batch", "fn", "future", "kwargs", "started", "timeout")

    def __init__(self, future: Future[Any] | _MapEntry, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any] | None, timeout: float | None) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.started = False
        self.batch = 0  # which message carried it (a worker that cannot decode one fails them all)


class _Slot:
    """One worker place: the current worker process, its channel and the tasks in flight on it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.pid: int | None = None
        self.channel: Channel | None = None
        self.inflight: collections.deque[_Item] = collections.deque()
        # Held across "append to inflight, send", so the channel's order is inflight's order.
        self.send_lock = threading.Lock()
        self.accepting = False
        self.ready = False
        self.credit = 2
        self.ewma = 0.0
        self.head_since = 0.0
        self.quota: int | None = None
        self.stop_sent = False
        self.timed_out: tuple[_Item, float] | None = None
        self.batch_idle = False
        # A send with timeout=0 did not fit: no more tries until the worker has nothing in flight
        # (each try would serialize the batch again, and on a stream send part of it for nothing).
        self.congested = False
        self.starting = False  # its worker is being started: counts as idle when sharing tasks out
        self.thread: threading.Thread | None = None


def _reap(proc: multiprocessing.process.BaseProcess, seconds: float) -> int | None:
    """The exit code of ``proc`` once waitpid reports it, or None after ``seconds``.

    Polled in short, growing steps instead of ``join()``, which waits on the process's sentinel
    pipe: a process forked elsewhere in the program may hold that pipe open long after the worker
    died.
    """
    deadline, step = time.monotonic() + seconds, 0.0005
    while proc.exitcode is None and time.monotonic() < deadline:
        time.sleep(step)
        step = min(step * 2, 0.02)
    return proc.exitcode


def _describe_exit(pid: int | None, exitcode: int | None) -> str:
    if exitcode is None:
        return f"worker pid {pid} stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker pid {pid} was killed by {name} (exit status {exitcode})"
    return f"worker pid {pid} exited with status {exitcode}"


_live: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()


def _at_exit() -> None:
    # As the standard executor does: pending work finishes before the interpreter exits.  A forked
    # child inherits this hook and the set; the executors there are the parent's, not its own.
    for ex in list(_live):
        if ex._owner_pid == os.getpid():
            ex.shutdown(wait=True)


# threading's hook runs before non-daemon threads are joined and before atexit (where ipckit
# closes every channel): the slot threads are daemons and still need their channels then.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_at_exit)


class ProcessPoolExecutor(Executor):
    """Run calls in worker processes, over ipckit channels; a drop-in for the standard executor.

    Arguments as :class:`concurrent.futures.ProcessPoolExecutor` (``max_workers`` defaults to
    ``os.cpu_count()``; ``mp_context`` to multiprocessing's default start method), plus:

    * ``url``: the backend of the worker channels (``"shm://"``, ``"pipe://"``, ``"unix://"``,
      with options in the query; a bare scheme: each worker's channel gets a generated name).
    * ``serializer``: the channels' serializer (default pickle; it must carry functions).
    * ``task_timeout``: seconds a task may run (None: no limit); see :meth:`submit_with_timeout`.

    A worker that dies fails only the task it was running, with :class:`WorkerDied`; the others
    run on a replacement.  Raises ValueError / TypeError on bad arguments, like the standard one.
    """

    def __init__(self, max_workers: int | None = None,
                 mp_context: multiprocessing.context.BaseContext | None = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = (), *,
                 max_tasks_per_child: int | None = None, url: str = DEFAULT_URL,
                 serializer: Any = None, task_timeout: float | None = None) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError("task_timeout must be > 0 or None")
        self._max_workers = max_workers
        self._ctx = mp_context if mp_context is not None else multiprocessing.get_context()
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_child
        self._url = url
        self._channel_options: dict[str, Any] = {} if serializer is None else {"serializer": serializer}
        self._task_timeout = task_timeout
        self._timeouts = task_timeout is not None
        self._lock = threading.Lock()
        self._pending: collections.deque[_Item] = collections.deque()
        self._slots = [_Slot(i) for i in range(max_workers)]
        self._started = False
        # started, not shut down, not broken: submit()'s one check on its fast path (under the lock)
        self._open = False
        self._batches = 0
        self._shutdown = False
        self._broken: BrokenProcessPool | None = None
        self._owner_pid = os.getpid()
        # Forked workers are children of the forking thread, so their parent pid is ours; the
        # forkserver's children are the server's, which may outlive us: they watch our pid too.
        self._child_parent = None if self._ctx.get_start_method() == "forkserver" else os.getpid()
        _live.add(self)

    # ------------------------------------------------------------------ public API
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future.

        Raises:
            RuntimeError: after :meth:`shutdown`.
            BrokenProcessPool: a worker failed in its initializer.
        """
        # The fast path, inlined: per call one Future, one _Item, one lock round trip and a look
        # at the slots.  Everything else a submit allocates is garbage-collector work: in a loop
        # of 10,000 submits the collections cost as much as the rest of the submit
        # (docs/futures.md), so nothing here builds a list or a closure.
        f = _new_future()
        item = _Item(f, fn, args, kwargs or None, self._task_timeout)
        with self._lock:
            if not self._open:
                self._check_open()
            self._pending.append(item)
            # A busy worker is refilled by its slot thread as its answers come in, in batches;
            # only an idle one (reading, nobody else would wake it) is served from here.
            for slot in self._slots:
                if not slot.inflight and slot.accepting and slot.channel is not None:
                    break
            else:
                return f
        self._pump_idle()
        return f

    def submit_with_timeout(self, timeout: float | None, fn: Callable[..., Any], /, *args: Any,
                            **kwargs: Any) -> Future[Any]:
        """:meth:`submit` with this task's own limit: past *timeout* seconds of running, its
        worker is killed and the Future raises :class:`TaskTimeout` (None: no limit)."""
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 or None")
        if timeout is not None:
            self._timeouts = True
        return self._submit(fn, args, kwargs, timeout)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like :func:`map`, the calls run in the workers; results in order.

        *chunksize* calls travel as one task.  *timeout* counts from this call; a result not
        ready by then raises TimeoutError when the iterator reaches it.  Every call is submitted
        before this returns; leaving the iterator early cancels the ones not yet started.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)
        if chunksize == 1:
            calls_each: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [(fn, args) for args in calls]
        else:
            calls_each = []
            while chunk := list(itertools.islice(calls, chunksize)):
                calls_each.append((_run_chunk, (fn, chunk)))
        results = _MapResults(len(calls_each))
        timeout_each = self._task_timeout
        self._enqueue([_Item(_MapEntry(results, i), f, a, None, timeout_each)
                       for i, (f, a) in enumerate(calls_each)])
        return results.iterate(end, chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; workers stop once every task submitted so far is done.

        *cancel_futures*: cancel the tasks no worker has started.  *wait*: return once every
        worker has stopped and everything is released.  Idempotent.
        """
        cancelled: list[_Item] = []
        with self._lock:
            self._shutdown = True
            self._open = False
            if cancel_futures:
                keep = [item for item in self._pending if item.started]  # started ones must still run
                cancelled = [item for item in self._pending if not item.started]
                self._pending.clear()
                self._pending.extend(keep)
            slots = list(self._slots)
        for item in cancelled:
            item.future.cancel()
        for slot in slots:
            self._maybe_stop(slot)
        if wait:
            me = threading.current_thread()
            for slot in slots:
                t = slot.thread
                if t is not None and t is not me:
                    t.join()

    # ------------------------------------------------------------------ submitting
    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                timeout: float | None) -> Future[Any]:
        f = _new_future()
        self._enqueue([_Item(f, fn, args, kwargs or None, timeout)])
        return f

    def _check_open(self) -> None:
        # Called with the lock held, when _open is False: raise why no task is accepted, or
        # start the slots (the first submit).
        if self._broken is not None:
            raise self._broken_copy()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if not self._started:
            self._start_slots()
        self._open = True

    def _enqueue(self, items: list[_Item]) -> None:
        with self._lock:
            if not self._open:
                self._check_open()
            self._pending.extend(items)
        self._pump_idle()

    def _pump_idle(self) -> None:
        # Only idle workers are served from the submitting thread: a busy one is refilled by its
        # slot thread as its answers come in, in batches (from here each submit would send a
        # batch of one, and the submitting thread would pay for every send).
        with self._lock:
            targets = [s for s in self._slots if not s.inflight and self._wants_more(s)]
        for slot in targets:
            self._pump(slot)
            if not self._pending:
                break

    def _start_slots(self) -> None:
        # Called with the lock held.  Each worker is started by its own slot thread, which lives
        # until that worker is reaped: PR_SET_PDEATHSIG fires when the *thread* that forked the
        # worker ends, so a short-lived submitting thread must not be the one.
        self._started = True
        for slot in self._slots:
            slot.starting = True
            t = threading.Thread(target=self._run_slot, args=(slot,), daemon=True,
                                 name=f"ipckit.futures-slot-{slot.index}")
            slot.thread = t
            t.start()

    def _pump(self, slot: _Slot) -> None:
        """Send pending tasks to *slot* up to its credit, as one message (see the module
        docstring: a send that could wait on a busy worker never blocks)."""
        lock = self._lock
        while True:
            if not slot.send_lock.acquire(False):
                return  # the holder re-checks after it lets go
            try:
                ch = slot.channel
                with lock:
                    batch = self._take_batch(slot)
                if ch is None or not batch:
                    return  # nothing for this worker now (no credit, or idle ones go first)
                self._send_batch(slot, ch, batch)
            finally:
                slot.send_lock.release()
            with lock:
                if not self._wants_more(slot):
                    return

    def _wants_more(self, slot: _Slot) -> bool:
        # Called with the lock held.  Refill at half the credit, so one message carries several
        # tasks (each send on a stream backend is a system call, which also hands the GIL away).
        # And a busy worker gets a batch worth sending: when tasks are submitted one by one as
        # fast as the answers come back, "refill whatever is pending" sends one task per answer,
        # one message and two lock round trips each.  So it waits for a quarter of its credit to
        # be pending, unless its own queue runs low (then anything goes, it must not run dry).
        inflight, credit = len(slot.inflight), slot.credit
        return (slot.channel is not None and slot.accepting and inflight <= credit // 2
                and not (slot.congested and inflight)
                and (len(self._pending) >= credit // 4 if inflight > credit // 4 else bool(self._pending)))

    def _take_batch(self, slot: _Slot) -> list[_Item]:
        # Called with the lock and the slot's send lock held: moves tasks from pending to in flight.
        pending, inflight = self._pending, slot.inflight
        if slot.channel is None or not slot.accepting:
            return []
        room = slot.credit - len(inflight)
        if slot.quota is not None:
            room = min(room, slot.quota)
        idle = not inflight
        if slot.congested and not idle:
            return []
        slot.congested = False
        # Idle workers first, each its share: queueing a task behind a busy worker while another
        # waits would make it wait for nothing (slow tasks would run one after the other).  A
        # worker still starting gets its share too; it holds a busy one back only while that one's
        # tasks are slow or not yet known (credit at its minimum): fast tasks keep flowing.
        if idle:
            idle_others = sum(1 for s in self._slots
                              if s is not slot and (s.accepting or s.starting) and not s.inflight)
            if idle_others:
                room = min(room, max(1, len(pending) // (idle_others + 1)))
        elif any(not s.inflight and (s.accepting or (s.starting and slot.credit <= 2))
                 for s in self._slots if s is not slot):
            return []  # an idle worker takes it (_refill serves those first)
        if room <= 0:
            return []
        batch: list[_Item] = []
        while pending and len(batch) < room:
            item = pending.popleft()
            if not item.started:
                if not item.future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                item.started = True
            batch.append(item)
        if not batch:
            return batch
        self._batches += 1
        for item in batch:
            item.batch = self._batches
        inflight.extend(batch)
        if idle:
            slot.head_since = time.monotonic()
        if slot.quota is not None:
            slot.quota -= len(batch)
            if slot.quota <= 0:
                slot.accepting = False  # the worker exits after these
        slot.batch_idle = idle
        return batch

    def _send_batch(self, slot: _Slot, ch: Channel, batch: list[_Item]) -> None:
        # Called with the slot's send lock held.
        timeout = None if slot.batch_idle else 0.0
        try:
            ch.send([(item.fn, item.args, item.kwargs) for item in batch], timeout=timeout)
        except SendTimeout:
            self._unsend(slot, batch, [])
            with self._lock:
                slot.congested = True
        except EncodeError as exc:
            if len(batch) == 1:
                self._unsend(slot, batch, [], failed=True)
                batch[0].future.set_exception(exc)
                return
            # One of them cannot be pickled: send them one by one, so only that one fails.
            self._unsend(slot, batch, [], requeue=False)
            for i, item in enumerate(batch):
                with self._lock:
                    slot.inflight.append(item)
                    if slot.quota is not None:
                        slot.quota -= 1
                try:
                    ch.send([(item.fn, item.args, item.kwargs)], timeout=timeout)
                except EncodeError as exc:
                    self._unsend(slot, [item], [], failed=True)
                    item.future.set_exception(exc)
                except (SendTimeout, ChannelBroken, EndOfChannel, ChannelClosed):
                    self._unsend(slot, [item], batch[i + 1:])
                    return
        except (ChannelBroken, EndOfChannel, ChannelClosed):
            self._unsend(slot, batch, [])  # its slot thread handles the worker

    def _unsend(self, slot: _Slot, batch: list[_Item], more: list[_Item], requeue: bool = True,
                failed: bool = False) -> None:
        """Take *batch* (the newest in flight, never sent) back; requeue it and *more* in front."""
        with self._lock:
            # Still the newest in flight: we hold the send lock, and no result can be for them.
            for item in reversed(batch):
                if slot.inflight and slot.inflight[-1] is item:
                    slot.inflight.pop()
            if slot.quota is not None:
                slot.quota += len(batch)
                slot.accepting = slot.channel is not None and not slot.stop_sent and self._broken is None
            if requeue and not failed:
                self._pending.extendleft(reversed([*batch, *more]))
            elif more:
                self._pending.extendleft(reversed(more))

    def _refill(self, slot: _Slot) -> None:
        """After an answer on *slot*: idle workers first (they are reading, and nobody else
        would wake them), then *slot* itself once half its credit is free (see _wants_more)."""
        for other in self._slots:
            if other is not slot and not other.inflight and other.accepting and self._pending:
                self._pump(other)
        if self._pending and self._wants_more(slot):
            self._pump(slot)

    def _pump_all(self) -> None:
        for slot in self._slots:
            if not self._pending:
                return
            self._pump(slot)

    def _maybe_stop(self, slot: _Slot) -> None:
        """After shutdown: tell an idle worker to stop once nothing is left for it to do."""
        if not self._shutdown:
            return
        with slot.send_lock:
            with self._lock:
                ch = slot.channel
                if ch is None or slot.stop_sent or slot.inflight or self._pending:
                    return
                slot.stop_sent = True
                slot.accepting = False
            try:
                ch.send(None)  # nothing in flight: the worker is reading, this does not wait
            except IPCError:
                pass  # gone already: its slot thread sees that

    # ------------------------------------------------------------------ the slot threads
    def _run_slot(self, slot: _Slot) -> None:
        while self._start_worker(slot):
            clean = self._serve(slot)
            self._end_worker(slot, clean)

    def _start_worker(self, slot: _Slot) -> bool:
        with self._lock:
            if self._broken is not None or (self._shutdown and not self._pending):
                slot.starting = False
                return False
            slot.starting = True
        # Only fork copies the parent's descriptors into the child; spawn and forkserver pass the
        # child exactly the ones it needs, so they start workers in parallel.
        forks = self._ctx.get_start_method() == "fork"
        if forks:
            _START_LOCK.acquire()
        try:
            try:
                ours, theirs = pair(self._url, **self._channel_options)
            except IPCError as exc:
                slot.starting = False
                self._break(f"could not make a channel for a worker on {self._url}", exc)
                return False
            try:
                proc: multiprocessing.process.BaseProcess = self._ctx.Process(  # type: ignore[attr-defined]
                    target=_worker_main, name=f"ipckit.futures-worker-{slot.index}",
                    args=(theirs, self._child_parent, self._initializer, self._initargs, self._max_tasks,
                          self._owner_pid))
                proc.start()
            except Exception as exc:
                ours.close()
                slot.starting = False
                self._break("could not start a worker process", exc)
                return False
            finally:
                theirs.close()  # the child has its own end now (contract: close your copy after start)
        finally:
            if forks:
                _START_LOCK.release()
        with self._lock:
            slot.proc, slot.pid, slot.channel = proc, proc.pid, ours
            slot.ready = slot.stop_sent = False
            slot.timed_out = None
            slot.credit, slot.ewma = 2, 0.0
            slot.congested = False
            slot.quota = self._max_tasks
            slot.accepting = self._broken is None
            slot.starting = False
        self._pump(slot)
        return True

    def _recv_timeout(self, slot: _Slot) -> float:
        if not self._timeouts or not slot.ready:
            return _SLICE
        with self._lock:
            head = slot.inflight[0] if slot.inflight else None
            if head is None or head.timeout is None:
                return _SLICE
            left = slot.head_since + head.timeout - time.monotonic()
        return min(_SLICE, max(left, 0.0))

    def _serve(self, slot: _Slot) -> bool:
        """Read *slot*'s worker until it ends; True if it ended cleanly (closed its channel)."""
        ch, proc = slot.channel, slot.proc
        assert ch is not None and proc is not None
        recv, inflight, lock = ch.recv, slot.inflight, self._lock
        monotonic = time.monotonic
        exited = False
        while True:
            try:
                msg = recv(timeout=self._recv_timeout(slot) if self._timeouts else _SLICE)
            except RecvTimeout:
                if exited:
                    return False  # everything it sent before it died has been read
                if proc.exitcode is not None:
                    exited = True  # read what it had sent, then handle the death
                    continue
                self._check_timeout(slot)
                self._maybe_stop(slot)
                continue
            except DecodeError as exc:  # one result could not be unpickled here; the channel is fine
                msg = (_RAISED, exc, None)
            except EndOfChannel:
                return True
            except (ChannelBroken, ChannelClosed):
                return False
            kind = msg[0]
            if kind <= _RAISED:
                now = monotonic()
                with lock:
                    item = inflight.popleft()
                    if slot.ready:
                        # How long this task took: the credit keeps ~QUEUE_BUDGET of work queued.
                        # (Written out: this runs once per answer, on the path every task takes.)
                        ewma = slot.ewma = 0.75 * slot.ewma + 0.25 * (now - slot.head_since)
                        credit = int(QUEUE_BUDGET / ewma) + 1 if ewma > 0 else MAX_WINDOW
                        slot.credit = 2 if credit < 2 else MAX_WINDOW if credit > MAX_WINDOW else credit
                    slot.head_since = now
                if kind == _OK:
                    item.future.set_result(msg[1])
                else:
                    err = msg[1]
                    if msg[2] is not None and isinstance(err, BaseException):
                        err.__cause__ = RemoteTraceback(msg[2])
                    item.future.set_exception(err)
                del item, msg
                if self._pending:
                    self._refill(slot)
                elif self._shutdown:
                    self._maybe_stop(slot)
            elif kind == _UNDECODABLE:
                with lock:
                    failed = [inflight.popleft()]
                    while inflight and inflight[0].batch == failed[0].batch:
                        failed.append(inflight.popleft())
                    slot.head_since = time.monotonic()
                for item in failed:
                    item.future.set_exception(DecodeError(f"worker pid {slot.pid} could not unpickle the task: "
                                                          f"{msg[1]}"))
                del failed
                if self._pending:
                    self._pump(slot)
            elif kind == _READY:
                with lock:
                    slot.ready = True
                    slot.head_since = time.monotonic()
            else:  # _INIT_FAILED
                err = msg[1]
                if isinstance(err, BaseException) and msg[2] is not None:
                    err.__cause__ = RemoteTraceback(msg[2])
                self._break(f"the initializer failed in worker pid {slot.pid}",
                            err if isinstance(err, BaseException) else None)

    def _check_timeout(self, slot: _Slot) -> None:
        if not self._timeouts or slot.pid is None:
            return
        with self._lock:
            head = slot.inflight[0] if slot.inflight else None
            if (not slot.ready or head is None or head.timeout is None or slot.timed_out is not None
                    or time.monotonic() - slot.head_since < head.timeout):
                return
            slot.timed_out = (head, head.timeout)
            slot.accepting = False
        try:
            os.kill(slot.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # died by itself meanwhile

    def _end_worker(self, slot: _Slot, clean: bool) -> None:
        proc, ch = slot.proc, slot.channel
        assert proc is not None and ch is not None
        # Its channel has ended, so the process is gone or going.
        if _reap(proc, 1.0) is None:  # its channel broke but it lives on: it cannot be reached, end it
            proc.kill()
            _reap(proc, 5.0)
        exitcode = proc.exitcode
        with slot.send_lock, self._lock:
            items = list(slot.inflight)
            slot.inflight.clear()
            slot.accepting = False
            slot.channel = None
            timed = slot.timed_out
            ready = slot.ready
            broken = self._broken
        ch.close()
        if exitcode is not None:  # close() refuses a process that still runs (SIGKILL not yet done)
            proc.close()
        if broken is not None:
            for item in items:
                item.future.set_exception(self._broken_copy())
            return
        why = _describe_exit(slot.pid, exitcode)
        if not ready and not (clean and not items):
            died = WorkerDied(f"{why} before it was ready (in its initializer or start-up)", slot.pid, exitcode)
            self._break("a worker died before it was ready", died)
            for item in items:
                item.future.set_exception(self._broken_copy())
            return
        if not items:
            return  # a clean stop (shutdown, max_tasks_per_child) or an idle worker's death
        head, rest = items[0], items[1:]
        with self._lock:
            self._pending.extendleft(reversed(rest))
        exc: IPCError
        if timed is not None and timed[0] is head:
            exc = TaskTimeout(f"the task ran past its timeout of {timed[1]:g} s; its worker pid {slot.pid} was "
                              "killed", slot.pid, timed[1])
        else:
            exc = WorkerDied(f"{why} while it ran this task", slot.pid, exitcode)
        head.future.set_exception(exc)
        self._pump_all()

    def _break(self, what: str, cause: BaseException | None) -> None:
        """Mark the pool broken: fail every pending task, stop every worker."""
        with self._lock:
            if self._broken is not None:
                return
            err = BrokenProcessPool(f"{what}; the pool cannot run tasks any more")
            err.__cause__ = cause
            self._broken = err
            self._open = False
            items = list(self._pending)
            self._pending.clear()
            slots = list(self._slots)
            for slot in slots:
                slot.accepting = False
        for item in items:
            if item.started or item.future.set_running_or_notify_cancel():
                item.future.set_exception(self._broken_copy())
        for slot in slots:
            proc = slot.proc
            if proc is not None and slot.channel is not None:
                try:
                    proc.kill()
                except (ValueError, ProcessLookupError):
                    pass  # reaped meanwhile

    def _broken_copy(self) -> BrokenProcessPool:
        # A fresh exception per Future: raising one object from many places piles up tracebacks.
        assert self._broken is not None
        err = BrokenProcessPool(*self._broken.args)
        err.__cause__ = self._broken.__cause__
        return err
