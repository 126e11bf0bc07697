"""The measurement: peers, placement, verification, the timed loops, steal and metadata.

Method (docs/benchmarks.md): for one placement, every subject's peer is spawned up front and the
cells are interleaved — for each size, every subject in turn — so the ratios of one run share
the same machine conditions.  Each subject is verified (random-size messages echoed and compared
byte for byte) before any timing; every ping-pong cell checks its last reply and every streaming
cell checks the count and CRC of its (distinct) last message in the peer's ack.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .baselines import select_baselines
from .links import ipckit_subjects
from .model import (
    AIO_MAX_SIZE,
    DEFAULT_SIZES,
    FRAME_1080P,
    PLACEMENTS,
    QUICK_SIZES,
    WORKLOADS,
    BenchConfig,
    BenchReport,
    Cell,
    KiB,
    MiB,
    fmt_size,
    quick_config,
)
from .peer import ACK, peer_main
from .subject import SPAWN, CrossProcessUnsupported, Link, Prepared, SkippedSubject, Subject

# The records (BenchConfig, Cell, BenchReport, the size lists) live in .model; they stay importable
# from here for the callers that named them ipckit.bench.runner.* before the split.
__all__ = [
    "BenchConfig",
    "Cell",
    "BenchReport",
    "run",
    "quick_config",
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "PLACEMENTS",
    "read_steal",
    "machine_metadata",
    "measure_memcpy",
    "measure_serializers",
    "measure_import_time",
    "Peer",
    "all_subjects",
    "start_peer",
    "placement_cpus",
]


# ----------------------------------------------------------------------------- machine state
def read_steal() -> tuple[int, int]:
    """``(steal_ticks, total_ticks)`` from the aggregate ``cpu`` line of /proc/stat (0, 0 if absent)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0, 0
    values = [int(v) for v in fields[1:]]
    steal = values[7] if len(values) > 7 else 0
    # guest time is already counted in user/nice: the first 8 fields are the whole
    return steal, sum(values[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    if total <= 0:
        return None
    return 100.0 * (after[0] - before[0]) / total


#: The CPUs this process may use, taken at import (before any placement pinned it).
_INITIAL_AFFINITY = frozenset(os.sched_getaffinity(0))


def _cpus_for(placement: str, allowed: set[int] | None = None) -> tuple[set[int] | None, set[int] | None]:
    """``(parent_cpus, child_cpus)`` for a placement; None leaves affinity alone.

    ``split``: parent on the first allowed CPU, child on the second; ``same``: both on the first;
    ``none`` and ``busy``: unpinned (``busy`` adds the CPU hogs of :class:`_Hogs`).
    """
    if placement in ("none", "busy"):
        return None, None
    cpus = sorted(allowed if allowed is not None else _INITIAL_AFFINITY)
    if placement == "same":
        return {cpus[0]}, {cpus[0]}
    if placement == "split":
        if len(cpus) < 2:
            raise ValueError("placement 'split' needs two CPUs")
        return {cpus[0]}, {cpus[1]}
    raise ValueError(f"unknown placement {placement!r}; use one of {', '.join(PLACEMENTS)}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for name in ("ipckit", "numpy", "rich", "matplotlib", "pytest-benchmark", "faster-fifo", "posix_ipc",
                 "sysv_ipc", "pyzmq", "msgpack", "iceoryx2"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import ipckit

    out.setdefault("ipckit", ipckit.__version__)
    return out


def _git_commit() -> str | None:
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _ring_fast_path() -> str:
    """Which cursor the shm rings run ("c" or "python"): runs are only comparable within one."""
    from ipckit.backends.common.ring import cursor as ringcursor

    return str(ringcursor.IMPLEMENTATION)


def machine_metadata() -> dict[str, Any]:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            pipe_max = int(f.read())
    except (OSError, ValueError):
        pipe_max = None
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "hostname": platform.node(),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "pipe_max_size": pipe_max,
        "ring_fast_path": _ring_fast_path(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ------------------------------------------------------------------------------------ peers
class Peer:
    """One subject's spawned peer, its control pipe and the parent's link."""

    def __init__(self, subject: Subject, child_cpus: set[int] | None) -> None:
        self.subject = subject
        self.error: str | None = None
        self.skip: str | None = None  # set when the subject turns out not to cross processes
        self.link: Link | None = None
        self.prepared: Prepared | None = None
        self._ctrl: Connection | None = None
        self._pending: tuple[Any, ...] | None = None  # a control message read early by _peer_gone
        self.proc: Any = None
        try:
            self.prepared = subject.prepare()
            ctrl, child_ctrl = SPAWN.Pipe(duplex=True)
            self._ctrl = ctrl
            self.proc = SPAWN.Process(target=peer_main, args=(self.prepared.child_arg, child_ctrl, child_cpus),
                                      name=f"ipckit-bench-peer-{subject.name}", daemon=True)
            self.proc.start()
            child_ctrl.close()
            self.prepared.after_start()
        except Exception as exc:
            self.fail(f"could not start the peer: {exc!r}")

    def connect(self, timeout: float) -> None:
        if self.error is not None or self.prepared is None or self._ctrl is None:
            return
        try:
            self.link = self.prepared.complete(timeout, self._peer_gone)
            msg = self.control(timeout)
            if msg[0] != "ready":
                self.fail(str(msg[1]))
        except CrossProcessUnsupported as exc:
            self.skip = f"the peer process cannot reach it: {exc}"
            self.fail(self.skip)
        except Exception as exc:
            self.fail(f"peer did not connect: {exc!r}")

    def _peer_gone(self) -> str | None:
        assert self._ctrl is not None
        if self._pending is None and self._ctrl.poll(0):
            self._pending = self._ctrl.recv()
        if self._pending is not None and self._pending[0] == "error":
            return str(self._pending[1])
        if self.proc is not None and not self.proc.is_alive():
            return f"peer exited with code {self.proc.exitcode}"
        return None

    def command(self, *cmd: Any) -> None:
        assert self._ctrl is not None
        self._ctrl.send(cmd)

    def control(self, timeout: float) -> tuple[Any, ...]:
        assert self._ctrl is not None
        msg: tuple[Any, ...]
        if self._pending is not None:
            msg, self._pending = self._pending, None
        else:
            if not self._ctrl.poll(timeout):
                raise TimeoutError(f"peer of {self.subject.name} did not answer in {timeout:.0f} s")
            msg = self._ctrl.recv()
        if msg[0] == "error":
            raise RuntimeError(str(msg[1]))
        return msg

    def abort(self) -> None:
        """Called by the watchdog: kill the peer and wake our blocked receive."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.link is not None:
            try:
                self.link.abort()
            except Exception:
                pass

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()

    def close(self) -> None:
        if self.error is None and self._ctrl is not None:
            try:
                self._ctrl.send(("quit",))
            except OSError:
                pass
        if self.proc is not None:
            self.proc.join(5.0)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5.0)
        for closer in (self.link.close if self.link is not None else None,
                       self._ctrl.close if self._ctrl is not None else None,
                       self.prepared.cleanup if self.prepared is not None else None):
            if closer is None:
                continue
            try:
                closer()
            except Exception:
                pass
        if self.proc is not None:
            try:
                self.proc.close()
            except ValueError:
                pass


class _Watchdog:
    """Aborts a peer whose cell runs past its deadline, so a hung transport cannot hang the run."""

    def __init__(self, peer: Peer, seconds: float) -> None:
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire, args=(peer,))
        self._timer.daemon = True

    def _fire(self, peer: Peer) -> None:
        self.fired = True
        peer.abort()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


# ------------------------------------------------------------------------------------ loops
def _payload(size: int, rng: random.Random) -> bytes:
    return rng.randbytes(size)


def _verify(peer: Peer, cfg: BenchConfig, rng: random.Random) -> None:
    """Echo random-size (and every cell size) random messages; compare byte for byte."""
    assert peer.link is not None
    top = max(cfg.sizes)
    sizes = list(cfg.sizes) + [rng.randint(1, top) for _ in range(cfg.verify_count)] + [1]
    rng.shuffle(sizes)
    peer.command("echo")
    send, recv = peer.link.send, peer.link.recv
    for n in sizes:
        msg = _payload(n, rng)
        send(msg)
        back = recv()
        if bytes(back) != msg:
            raise AssertionError(f"verification failed: sent {n} bytes, got {len(back)} different bytes back")
    send(b"")
    peer.control(cfg.cell_timeout)


@dataclasses.dataclass
class _Timed:
    """What a timed loop measured (the peer's CPU time and the final steal reading come after)."""

    count: int  # timed round trips or messages
    elapsed: float  # seconds
    parent_cpu: float  # seconds, this process, warm-up included
    steal0: tuple[int, int]
    warm: int = 0  # warm-up round trips (the CPU times cover them too)
    lat: list[int] = dataclasses.field(default_factory=list)  # ns per round trip
    last: Any = None  # the last reply


def _ping_pong(send: Callable[[Any], Any], recv: Callable[[], Any], item: Any, warmup: int,
               cfg: BenchConfig) -> _Timed:
    """Warm-up (*warmup* round trips, at most a tenth of the cell), then round trips of *item* for
    ``cfg.duration`` seconds; the peer already echoes.  The loop binds everything it calls."""
    pc = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    end_ns = int(cfg.duration * 1e9)
    min_count, max_count = cfg.min_count, cfg.max_count
    steal0 = read_steal()
    cpu0 = time.process_time()
    warm_end = pc() + end_ns // 10
    warm = 0
    while warm < warmup:
        send(item)
        recv()
        warm += 1
        if pc() > warm_end:
            break
    start = pc()
    deadline = start + end_ns
    back: Any = None
    while True:
        t0 = pc()
        send(item)
        back = recv()
        t1 = pc()
        append(t1 - t0)
        if (t1 >= deadline and len(lat) >= min_count) or len(lat) >= max_count:
            break
    elapsed = (pc() - start) / 1e9
    return _Timed(len(lat), elapsed, time.process_time() - cpu0, steal0, warm, lat, back)


def _rtt_cell(cell: Cell, t: _Timed, size: int, child_cpu: float) -> Cell:
    """Fill a round-trip cell: percentiles, rates, CPU per round trip (both processes)."""
    steal1 = read_steal()
    arr = np.asarray(t.lat, dtype=np.float64) / 1e3
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    cell.count = t.count
    cell.elapsed_s = t.elapsed
    cell.p50_us, cell.p90_us, cell.p99_us = float(p50), float(p90), float(p99)
    cell.max_us = float(arr.max())
    cell.mean_us = float(arr.mean())
    cell.msg_s = t.count / t.elapsed if t.elapsed > 0 else None
    if cell.workload == "obj-rtt":
        cell.mb_s = t.count * size / t.elapsed / 1e6 if t.elapsed > 0 else None
    cell.parent_cpu_s, cell.child_cpu_s = t.parent_cpu, child_cpu
    cell.cpu_us_per_msg = 1e6 * (t.parent_cpu + child_cpu) / (t.warm + t.count)
    cell.steal_pct = steal_pct(t.steal0, steal1)
    cell.verified = True
    return cell


def _streamed(send: Callable[[Any], Any], item: Any, size: int, cfg: BenchConfig) -> tuple[int, float, tuple[int, int]]:
    """Send *item* in batches for ``cfg.duration`` seconds (the peer already sinks): (count, the
    start time, the steal reading before)."""
    batch = max(1, min(256, (256 * KiB) // max(size, 1)))
    steal0 = read_steal()
    start = time.perf_counter()
    deadline = start + cfg.duration
    n = 0
    rng_batch = range(batch)
    while True:
        for _ in rng_batch:
            send(item)
        n += batch
        if (time.perf_counter() >= deadline and n >= cfg.min_count) or n >= cfg.max_count:
            break
    return n, start, steal0


def _stream_cell(cell: Cell, n: int, size: int, elapsed: float, parent_cpu: float, child_cpu: float,
                 steal0: tuple[int, int]) -> Cell:
    """Fill a streaming cell: rates and CPU per message (both processes)."""
    steal1 = read_steal()
    cell.count = n
    cell.elapsed_s = elapsed
    cell.msg_s = n / elapsed
    cell.mb_s = n * size / elapsed / 1e6
    cell.mean_us = 1e6 * elapsed / n
    cell.parent_cpu_s, cell.child_cpu_s = parent_cpu, child_cpu
    cell.cpu_us_per_msg = 1e6 * (parent_cpu + child_cpu) / n
    cell.steal_pct = steal_pct(steal0, steal1)
    cell.verified = True
    return cell


def _rtt(peer: Peer, cfg: BenchConfig, size: int, placement: str, rng: random.Random) -> Cell:
    assert peer.link is not None
    cell = Cell(peer.subject.name, peer.subject.kind, "rtt", placement, size)
    payload = _payload(size, rng)
    send, recv = peer.link.send, peer.link.recv
    peer.command("echo")
    t = _ping_pong(send, recv, payload, cfg.warmup, cfg)
    send(b"")
    child_cpu = float(peer.control(cfg.cell_timeout)[1])
    if bytes(t.last) != payload:
        raise AssertionError(f"last reply of the ping-pong differs from what was sent ({len(t.last)} bytes)")
    return _rtt_cell(cell, t, size, child_cpu)


async def _aio_ping_pong(channel: Any, item: bytes, warmup: int, cfg: BenchConfig) -> _Timed:
    """:func:`_ping_pong` awaited through ``ipckit.aio.wrap(channel)`` (the same bounds and counts)."""
    from ipckit import aio

    ach = aio.wrap(channel)  # not closed afterwards: that would close the subject's channel
    send, recv = ach.send_bytes, ach.recv_bytes
    pc = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    end_ns = int(cfg.duration * 1e9)
    min_count, max_count = cfg.min_count, cfg.max_count
    steal0 = read_steal()
    cpu0 = time.process_time()
    warm_end = pc() + end_ns // 10
    warm = 0
    while warm < warmup:
        await send(item)
        await recv()
        warm += 1
        if pc() > warm_end:
            break
    start = pc()
    deadline = start + end_ns
    back: Any = None
    while True:
        t0 = pc()
        await send(item)
        back = await recv()
        t1 = pc()
        append(t1 - t0)
        if (t1 >= deadline and len(lat) >= min_count) or len(lat) >= max_count:
            break
    elapsed = (pc() - start) / 1e9
    return _Timed(len(lat), elapsed, time.process_time() - cpu0, steal0, warm, lat, back)


def _aio_runner(workload: str) -> Callable[[Any], Any]:
    """``asyncio.run`` for ``aio-rtt``, ``uvloop.run`` for ``uvloop-rtt`` (_NoObjectPath-style
    skip when uvloop is not installed)."""
    import asyncio

    if workload == "aio-rtt":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        raise _NotMeasured("uvloop is not installed") from None
    return uvloop.run


def _aio_rtt(peer: Peer, cfg: BenchConfig, size: int, placement: str, rng: random.Random,
             workload: str = "aio-rtt") -> Cell:
    """The ``rtt`` ping-pong with the parent's side awaited on an event loop (ipckit.aio)."""
    assert peer.link is not None
    from ipckit.channel import Channel

    channel = getattr(peer.link, "conn", None)
    if peer.subject.kind != "ipckit" or not isinstance(channel, Channel):
        raise _NotMeasured("not an ipckit channel")
    run_loop = _aio_runner(workload)
    cell = Cell(peer.subject.name, peer.subject.kind, workload, placement, size)
    payload = _payload(size, rng)
    peer.command("echo")
    t = run_loop(_aio_ping_pong(channel, payload, cfg.warmup, cfg))
    peer.link.send(b"")
    child_cpu = float(peer.control(cfg.cell_timeout)[1])
    if bytes(t.last) != payload:
        raise AssertionError(f"last reply of the async ping-pong differs from what was sent ({len(t.last)} bytes)")
    cell.extra["loop"] = "uvloop" if workload == "uvloop-rtt" else "asyncio"
    return _rtt_cell(cell, t, size, child_cpu)


class _NotMeasured(Exception):
    """This workload does not apply to the subject (a baseline for the async workloads, uvloop
    missing): no cell, no failure."""


def _stream(peer: Peer, cfg: BenchConfig, size: int, placement: str, rng: random.Random) -> Cell:
    assert peer.link is not None
    cell = Cell(peer.subject.name, peer.subject.kind, "stream", placement, size)
    payload = _payload(size, rng)
    last = _payload(size, rng)
    while last == payload:
        last = _payload(size, rng)
    send, recv = peer.link.send, peer.link.recv
    peer.command("sink")
    cpu0 = time.process_time()
    n, start, steal0 = _streamed(send, payload, size, cfg)
    send(last)
    n += 1
    send(b"")
    ack = recv()
    elapsed = time.perf_counter() - start
    parent_cpu = time.process_time() - cpu0
    child_cpu = float(peer.control(cfg.cell_timeout)[1])
    count, crc = ACK.unpack(bytes(ack))
    if count != n or crc != zlib.crc32(last):
        raise AssertionError(f"stream check failed: peer counted {count} of {n} messages, "
                             f"last-message crc {'ok' if crc == zlib.crc32(last) else 'WRONG'}")
    return _stream_cell(cell, n, size, elapsed, parent_cpu, child_cpu, steal0)


#: A hog spins until killed, and dies with the bench (PR_SET_PDEATHSIG, then a check that the
#: parent did not die first): a killed bench must not leave CPU-bound orphans behind.
_HOG = ("import ctypes, os, sys\nctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n"
        "if os.getppid() != int(sys.argv[1]): sys.exit(0)\nwhile True: pass")


class _Hogs:
    """One CPU-bound process per allowed CPU, unpinned, for the ``busy`` placement.

    They are plain interpreters spinning in a loop (what a machine doing other work looks like to
    the scheduler); they run at the same priority as the measured processes and are killed when
    the placement ends.
    """

    def __init__(self, n: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for _ in range(n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", _HOG, str(os.getpid())],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()


def _stop_object(peer: Peer) -> Any:
    """What ends an object workload: None, or ``b""`` where the link carries bytes objects only."""
    return b"" if getattr(peer.link, "bytes_objects", False) else None


def _object_for(peer: Peer, size: int) -> Any:
    if getattr(peer.link, "bytes_objects", False):
        return random.Random(size).randbytes(size)
    return sample_object(size)


def sample_object(size: int) -> Any:
    """What the object workloads send: a small dict up to 4 KiB, numpy uint8 arrays above.

    The dict is the one users send most, ``{"id", "op", "args", "blob"}`` with a *size*-byte blob;
    :data:`~.model.FRAME_1080P` is a 1080x1920x3 frame, other sizes a flat array.
    """
    if size <= 4 * KiB:
        return {"id": 7, "op": "add", "args": [1, 2.5], "blob": random.Random(size).randbytes(size)}
    shape = (1080, 1920, 3) if size == FRAME_1080P else (size,)
    return np.random.default_rng(size).integers(0, 256, size=shape, dtype=np.uint8)


def _same_object(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(np.array_equal(a, b))
    return bool(a == b)


def _obj_link(peer: Peer) -> tuple[Callable[[Any], None], Callable[[], Any]]:
    link = peer.link
    send_obj, recv_obj = getattr(link, "send_obj", None), getattr(link, "recv_obj", None)
    if send_obj is None or recv_obj is None:
        raise _NoObjectPath(f"{peer.subject.name} has no object path")
    return send_obj, recv_obj


class _NoObjectPath(Exception):
    """The subject carries bytes only (raw fd baselines): its object cells are left out."""


def _obj_rtt(peer: Peer, cfg: BenchConfig, size: int, placement: str, rng: random.Random) -> Cell:
    """Ping-pong of one object through ``send``/``recv`` (the peer echoes it with the same calls)."""
    send, recv = _obj_link(peer)
    cell = Cell(peer.subject.name, peer.subject.kind, "obj-rtt", placement, size)
    obj = _object_for(peer, size)
    # Large objects take milliseconds a round trip: a shorter warm-up keeps the cell near its duration.
    warmup = cfg.warmup if size <= 64 * KiB else max(3, cfg.warmup // 10)
    peer.command("echo-obj")
    t = _ping_pong(send, recv, obj, warmup, cfg)
    send(_stop_object(peer))
    child_cpu = float(peer.control(cfg.cell_timeout)[1])
    if not _same_object(t.last, obj):
        raise AssertionError("the last reply of the object ping-pong differs from what was sent")
    cell.extra["object"] = type(obj).__name__
    return _rtt_cell(cell, t, size, child_cpu)


def _obj_stream(peer: Peer, cfg: BenchConfig, size: int, placement: str, rng: random.Random) -> Cell:
    """One-way stream of objects through ``send``; the peer counts what ``recv`` returned."""
    send, _ = _obj_link(peer)
    cell = Cell(peer.subject.name, peer.subject.kind, "obj-stream", placement, size)
    obj = _object_for(peer, size)
    peer.command("sink-obj")
    cpu0 = time.process_time()
    n, start, steal0 = _streamed(send, obj, size, cfg)
    send(_stop_object(peer))
    assert peer.link is not None
    count, _ = ACK.unpack(bytes(peer.link.recv()))
    elapsed = time.perf_counter() - start
    parent_cpu = time.process_time() - cpu0
    child_cpu = float(peer.control(cfg.cell_timeout)[1])
    if count != n:
        raise AssertionError(f"object stream check failed: the peer received {count} of {n} objects")
    cell.extra["object"] = type(obj).__name__
    return _stream_cell(cell, n, size, elapsed, parent_cpu, child_cpu, steal0)


def measure_memcpy(size: int, duration: float, placement: str = "none") -> Cell:
    """One-process copy bandwidth (numpy ``copyto``) of *size* bytes: the ceiling for target T3."""
    cell = Cell("memcpy", "reference", "memcpy", placement, size)
    src = np.frombuffer(random.Random(size).randbytes(size), dtype=np.uint8)
    dst = np.empty_like(src)
    copyto = np.copyto
    batch = max(1, min(1000, (4 * MiB) // max(size, 1)))
    steal0 = read_steal()
    cpu0 = time.process_time()
    for _ in range(batch):
        copyto(dst, src)  # warm the pages
    start = time.perf_counter()
    deadline = start + duration
    n = 0
    while True:
        for _ in range(batch):
            copyto(dst, src)
        n += batch
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    if not np.array_equal(src, dst):
        raise AssertionError("memcpy produced different bytes")
    cell.count = n
    cell.elapsed_s = elapsed
    cell.msg_s = n / elapsed
    cell.mb_s = n * size / elapsed / 1e6
    cell.mean_us = 1e6 * elapsed / n
    cell.parent_cpu_s = time.process_time() - cpu0
    cell.cpu_us_per_msg = 1e6 * cell.parent_cpu_s / (n + batch)
    cell.steal_pct = steal_pct(steal0, read_steal())
    cell.verified = True
    return cell


def _sample_object(size: int, ser: Any) -> tuple[str, Any]:
    """A message of about *size* bytes the serializer accepts (dict with bytes, with str, or bytes)."""
    data = random.Random(size).randbytes(size)
    candidates: list[tuple[str, Any]] = [
        ("dict+bytes", {"seq": 1, "name": "sample", "data": data}),
        ("dict+str", {"seq": 1, "name": "sample", "data": data.hex()[:size]}),
        ("bytes", data),
    ]
    for kind, obj in candidates:
        try:
            ser.loads(memoryview(_join(ser.dumps(obj))))
        except Exception:
            continue
        return kind, obj
    raise TypeError(f"serializer {getattr(ser, 'name', ser)!r} accepts none of the sample objects")


def _join(encoded: Any) -> bytes:
    return bytes(encoded) if not isinstance(encoded, bytes) else encoded


def measure_serializers(names: Sequence[str] | None, sizes: Sequence[int], duration: float) -> list[Cell]:
    """dumps/loads cost of each serializer on its own, in this process."""
    from ipckit.serializers import get_serializer, serializer_names

    cells: list[Cell] = []
    for name in names if names is not None else serializer_names():
        for size in sizes:
            cell = Cell(name, "serializer", "serializer", "none", size)
            cells.append(cell)
            try:
                ser = get_serializer(name)
                kind, obj = _sample_object(size, ser)
                dumps, loads = ser.dumps, ser.loads
                encoded = memoryview(_join(dumps(obj)))
                per = duration / 2
                dumps_us, n1 = _time_loop(functools.partial(dumps, obj), per)
                loads_us, n2 = _time_loop(functools.partial(loads, encoded), per)
                cell.count = n1 + n2
                cell.mean_us = dumps_us + loads_us
                cell.p50_us = cell.mean_us
                cell.mb_s = size / cell.mean_us if cell.mean_us else None
                cell.extra = {"object": kind, "dumps_us": dumps_us, "loads_us": loads_us,
                              "encoded_bytes": encoded.nbytes}
                cell.verified = True
            except Exception as exc:
                cell.error = repr(exc)
    return cells


def _time_loop(fn: Callable[[], Any], duration: float) -> tuple[float, int]:
    """Mean µs per call of *fn*, repeating it for about *duration* seconds."""
    fn()
    batch = 1
    start = time.perf_counter()
    n = 0
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now - start >= duration:
            break
        if now - start < duration / 20:
            batch *= 2
    return 1e6 * (time.perf_counter() - start) / n, n


def measure_import_time(runs: int = 9) -> dict[str, Any]:
    """Median wall time of ``python -c 'import ipckit'`` vs ``python -c 'pass'`` (fresh interpreters).

    Also lists the ``ipckit.backends`` modules that ``import ipckit`` loaded (target T7: none).
    """
    probe = ("import time, sys; t = time.perf_counter(); import ipckit; print(time.perf_counter() - t); "
             "print(','.join(m for m in sys.modules if m.startswith('ipckit.backends')))")

    # Measure what users see: bytecode cached.  Under PYTHONDONTWRITEBYTECODE (CI sets it) every
    # run would recompile ipckit and time the compiler, so drop it and warm the cache once.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def wall(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
        return time.perf_counter() - t

    wall("import ipckit")
    bare, full, inproc = [], [], []
    backends = ""
    for _ in range(runs):  # interleaved
        bare.append(wall("pass"))
        full.append(wall("import ipckit"))
        out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                             env=env).stdout
        first, _, rest = out.partition("\n")
        inproc.append(float(first))
        backends = rest.strip()
    return {"runs": runs, "bare_ms": 1e3 * statistics.median(bare), "ipckit_ms": 1e3 * statistics.median(full),
            "in_process_ms": 1e3 * statistics.median(inproc), "backends_imported": backends}


# ------------------------------------------------------------------------------------- run
ProgressFn = Callable[[str, int, int, "Cell | None"], None]


def all_subjects(cfg: BenchConfig) -> tuple[list[Subject], list[SkippedSubject]]:
    """The ipckit subjects then the baselines *cfg* selects, and the skipped ones with reasons."""
    ipc, skipped = ipckit_subjects(cfg.backends, cfg.urls)
    base, base_skipped = _select_baselines(cfg)
    return [*ipc, *base], [*skipped, *base_skipped]


def start_peer(subject: Subject, placement: str = "split", cfg: BenchConfig | None = None) -> Peer:
    """Spawn, connect and verify one subject's peer (the caller pins itself; see ``placement_cpus``).

    Check ``peer.error`` / ``peer.skip``; always ``peer.close()``.
    """
    cfg = cfg or BenchConfig()
    peer = Peer(subject, placement_cpus(placement)[1])
    peer.connect(cfg.cell_timeout)
    if peer.error is None:
        _guarded(peer, cfg, lambda: _verify(peer, cfg, random.Random(cfg.seed)))
    return peer


def placement_cpus(placement: str) -> tuple[set[int] | None, set[int] | None]:
    """``(parent_cpus, child_cpus)`` for *placement* on this machine (None: leave alone)."""
    return _cpus_for(placement)


def _select_baselines(cfg: BenchConfig) -> tuple[list[Subject], list[SkippedSubject]]:
    return select_baselines(cfg.baselines, max(cfg.sizes))


def run(cfg: BenchConfig | None = None, progress: ProgressFn | None = None) -> BenchReport:
    """Measure; returns every cell (failed cells carry ``error``), the skipped subjects and metadata.

    *progress* is called as ``progress(description, done, total, cell_or_None)``.
    """
    cfg = cfg or BenchConfig()
    for p in cfg.placements:
        _cpus_for(p)  # validate early
    unknown = [w for w in cfg.workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    wall0 = time.perf_counter()
    rng = random.Random(cfg.seed)
    ipc_subjects, skipped = ipckit_subjects(cfg.backends, cfg.urls)
    base_subjects, base_skipped = _select_baselines(cfg)
    skipped += base_skipped
    subjects: list[Subject] = [*ipc_subjects, *base_subjects]
    want_memcpy = "memcpy" in cfg.workloads and (cfg.baselines is None or "memcpy" in cfg.baselines)

    do_rtt = "rtt" in cfg.workloads
    do_stream = "stream" in cfg.workloads
    n_obj = len(cfg.obj_sizes) * (("obj-rtt" in cfg.workloads) + ("obj-stream" in cfg.workloads))
    per_subject = len(cfg.sizes) * (do_rtt + do_stream) + n_obj
    # (the async cells, ipckit subjects only, are counted on the progress bar as they come)
    per_placement = len(subjects) * per_subject + (len(cfg.sizes) if want_memcpy else 0)
    if "pool" in cfg.workloads:
        from .pool import measure_pool, pool_cell_count  # its own subjects and worker processes

        per_placement += pool_cell_count(cfg)
    ser_names = cfg.serializers
    if "serializer" in cfg.workloads:
        from ipckit.serializers import serializer_names

        ser_names = list(serializer_names()) if ser_names is None else ser_names
    n_ser = len(ser_names or []) * len(cfg.sizes) if "serializer" in cfg.workloads else 0
    total = per_placement * len(cfg.placements) + n_ser
    done = 0

    def tick(desc: str, cell: Cell | None) -> None:
        nonlocal done
        if cell is not None:
            done += 1
        if progress is not None:
            progress(desc, done, total, cell)

    cells: list[Cell] = []
    steal_run0 = read_steal()
    original_affinity = os.sched_getaffinity(0)
    try:
        for placement in cfg.placements:
            parent_cpus, child_cpus = _cpus_for(placement, original_affinity)
            os.sched_setaffinity(0, parent_cpus if parent_cpus is not None else original_affinity)
            tick(f"[{placement}] starting {len(subjects)} peers", None)
            hogs = _Hogs(len(original_affinity)) if placement == "busy" else None
            # no peers when only workloads without one run (pool, memcpy): nothing would use them
            peers = [Peer(s, child_cpus) for s in subjects] if per_subject else []
            try:
                for peer in peers:
                    peer.connect(cfg.cell_timeout)
                for peer in [p for p in peers if p.skip is not None]:
                    peers.remove(peer)
                    peer.close()
                    total -= per_subject
                    if not any(s.name == peer.subject.name for s in skipped):
                        skipped.append(SkippedSubject(peer.subject.name, peer.skip or ""))
                for peer in peers:
                    if peer.error is None:
                        tick(f"[{placement}] verifying {peer.subject.name}", None)
                        _guarded(peer, cfg, lambda p=peer: _verify(p, cfg, rng))  # type: ignore[misc]
                for workload in ("rtt", "stream"):
                    if workload not in cfg.workloads:
                        continue
                    for size in cfg.sizes:
                        if workload == "stream" and want_memcpy:
                            tick(f"[{placement}] memcpy {fmt_size(size)}", None)
                            cells.append(measure_memcpy(size, cfg.duration, placement))
                            tick(f"[{placement}] memcpy {fmt_size(size)}", cells[-1])
                        for peer in peers:
                            desc = f"[{placement}] {workload} {fmt_size(size)} {peer.subject.name}"
                            tick(desc, None)
                            cell = _run_cell(peer, cfg, workload, size, placement, rng)
                            cells.append(cell)
                            tick(desc, cell)
                for workload in ("obj-rtt", "obj-stream"):
                    if workload not in cfg.workloads:
                        continue
                    for size in cfg.obj_sizes:
                        for peer in peers:
                            desc = f"[{placement}] {workload} {fmt_size(size)} {peer.subject.name}"
                            tick(desc, None)
                            cell = _run_cell(peer, cfg, workload, size, placement, rng)
                            if cell.error != _NO_OBJECT_PATH:
                                cells.append(cell)
                            tick(desc, cell)
                for workload in ("aio-rtt", "uvloop-rtt"):
                    if workload not in cfg.workloads:
                        continue
                    for size in [x for x in cfg.sizes if x <= AIO_MAX_SIZE]:
                        for peer in [p for p in peers if p.subject.kind == "ipckit"]:
                            desc = f"[{placement}] {workload} {fmt_size(size)} {peer.subject.name}"
                            tick(desc, None)
                            cell = _run_cell(peer, cfg, workload, size, placement, rng)
                            if cell.error is None or not cell.error.startswith(_NOT_MEASURED):
                                cells.append(cell)
                            tick(desc, cell)
                if want_memcpy and not do_stream:
                    for size in cfg.sizes:
                        cells.append(measure_memcpy(size, cfg.duration, placement))
                        tick(f"[{placement}] memcpy {fmt_size(size)}", cells[-1])
                if "pool" in cfg.workloads:
                    cells += measure_pool(cfg, placement, child_cpus, tick, read_steal)
            finally:
                for peer in peers:
                    peer.close()
                if hogs is not None:
                    hogs.stop()
        if "serializer" in cfg.workloads and ser_names:
            os.sched_setaffinity(0, _cpus_for(cfg.placements[0], original_affinity)[0] or original_affinity)
            tick("serializers", None)
            for cell in measure_serializers(ser_names, cfg.sizes, min(cfg.duration, 0.5)):
                cells.append(cell)
                tick(f"serializer {cell.subject} {fmt_size(cell.size)}", cell)
        import_time = None
        if "import" in cfg.workloads:
            tick("import ipckit (T7)", None)
            import_time = measure_import_time(runs=5 if cfg.duration < 0.5 else 11)
    finally:
        os.sched_setaffinity(0, original_affinity)
    meta = machine_metadata()
    if import_time is not None:
        meta["import_time"] = import_time
    meta["steal_pct_run"] = steal_pct(steal_run0, read_steal())
    meta["placements"] = list(cfg.placements)
    meta["subjects"] = {s.name: {"kind": s.kind, "note": s.note,
                                 **({"url": getattr(s, "url", "")} if s.kind == "ipckit" else {})}
                        for s in subjects}
    meta["ratios_against"] = ["mp.Pipe", "os.pipe"]
    config = dataclasses.asdict(cfg)
    return BenchReport(meta, config, cells, [dataclasses.asdict(s) for s in skipped],
                       wall_s=time.perf_counter() - wall0)


def _guarded(peer: Peer, cfg: BenchConfig, fn: Callable[[], object]) -> None:
    watchdog = _Watchdog(peer, cfg.duration * 4 + cfg.cell_timeout)
    try:
        with watchdog:
            fn()
    except Exception as exc:
        reason = "aborted: the cell exceeded its time limit" if watchdog.fired else repr(exc)
        peer.fail(reason)


def _run_cell(peer: Peer, cfg: BenchConfig, workload: str, size: int, placement: str,
              rng: random.Random) -> Cell:
    if peer.error is not None:
        return Cell(peer.subject.name, peer.subject.kind, workload, placement, size, error=peer.error)
    result: list[Cell] = []
    fn = _LOOPS[workload]
    if workload.startswith("obj-"):
        try:
            _obj_link(peer)
        except _NoObjectPath:
            return Cell(peer.subject.name, peer.subject.kind, workload, placement, size, error=_NO_OBJECT_PATH)
    if workload in ("aio-rtt", "uvloop-rtt"):
        try:
            _aio_runner(workload)
        except _NotMeasured as exc:
            return Cell(peer.subject.name, peer.subject.kind, workload, placement, size,
                        error=f"{_NOT_MEASURED}: {exc}")
    _guarded(peer, cfg, lambda: result.append(fn(peer, cfg, size, placement, rng)))
    if result:
        return result[0]
    return Cell(peer.subject.name, peer.subject.kind, workload, placement, size, error=peer.error)


_LOOPS: dict[str, Callable[[Peer, BenchConfig, int, str, random.Random], Cell]] = {
    "rtt": _rtt, "stream": _stream, "obj-rtt": _obj_rtt, "obj-stream": _obj_stream, "aio-rtt": _aio_rtt,
    "uvloop-rtt": functools.partial(_aio_rtt, workload="uvloop-rtt")}
#: The error prefix of an async cell that does not apply (dropped from the report, not a failure).
_NOT_MEASURED = "not measured"
#: The error of an object cell for a bytes-only subject (dropped from the report, not a failure).
_NO_OBJECT_PATH = "no object path"
