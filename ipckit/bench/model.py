"""The harness's data: what to measure (:class:`BenchConfig`), one measurement (:class:`Cell`),
a run (:class:`BenchReport`) and its JSON file format.

This is the bottom of the bench package: the runner fills these records, the report, the targets
and the plots read them, and this module imports none of them (nor numpy, rich or matplotlib), so
a saved run can be loaded, shown and compared without measuring anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchConfig",
    "Cell",
    "BenchReport",
    "quick_config",
    "save_json",
    "load_json",
    "fmt_size",
    "DEFAULT_SIZES",
    "DEFAULT_OBJ_SIZES",
    "FRAME_1080P",
    "QUICK_SIZES",
    "PLACEMENTS",
    "WORKLOADS",
    "AIO_MAX_SIZE",
    "FORMAT",
]

KiB = 1024
MiB = 1024 * 1024
DEFAULT_SIZES = [64, 4 * KiB, 64 * KiB, 1 * MiB]
QUICK_SIZES = [64, 4 * KiB, 64 * KiB, 1 * MiB]
#: ``split``/``same``: both processes pinned to two CPUs / one CPU; ``none``: unpinned, as users
#: run; ``busy``: unpinned while one CPU-bound process runs on each core (a machine doing other work).
PLACEMENTS = ("split", "same", "none", "busy")
#: ``rtt``/``stream``: bytes through send_bytes/recv_bytes; ``obj-rtt``/``obj-stream``: Python objects
#: through send/recv (a small dict at sizes up to 4 KiB, numpy uint8 arrays above: what users send);
#: ``pool``: small dict jobs to two worker processes and the results back (bench/pool.py);
#: ``aio-rtt``/``uvloop-rtt``: the ``rtt`` ping-pong awaited through ``ipckit.aio`` on an asyncio /
#: uvloop event loop (ipckit subjects, sizes up to :data:`AIO_MAX_SIZE`; the peer echoes synchronously).
WORKLOADS = ("rtt", "stream", "obj-rtt", "obj-stream", "aio-rtt", "uvloop-rtt", "pool", "memcpy", "serializer",
             "import")
#: The async workloads measure the loop's wake-up and dispatch cost, which small messages show.
AIO_MAX_SIZE = 4 * KiB
#: The object workloads' sizes: a small dict with a 64-byte blob, a 1 MiB array, a 1080p RGB frame.
FRAME_1080P = 1920 * 1080 * 3
DEFAULT_OBJ_SIZES = [64, 1 * MiB, FRAME_1080P]
#: The ``format`` field of a saved run; a reader that changes the layout bumps it.
FORMAT = "ipckit-bench/1"


@dataclass
class BenchConfig:
    """What to measure.  ``backends=None`` means every registered scheme; ``baselines=None`` all."""

    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    obj_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_OBJ_SIZES))  # obj-rtt / obj-stream
    backends: list[str] | None = None
    baselines: list[str] | None = None
    serializers: list[str] | None = None  # None: every registered serializer; [] none
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    placements: list[str] = field(default_factory=lambda: ["split"])
    duration: float = 1.0  # seconds per cell
    warmup: int = 50  # round trips before a ping-pong cell is timed
    min_count: int = 20  # at least this many round trips / messages, even past the duration
    max_count: int = 1_000_000
    verify_count: int = 16  # random-size messages echoed per subject before timing
    urls: dict[str, str] = field(default_factory=dict)  # label -> URL overrides / extra variants
    cell_timeout: float = 60.0  # a cell taking longer than duration + this is aborted
    pool_jobs: int = 10_000  # jobs per timed repeat of the pool workload
    pool_repeats: int = 3  # timed repeats of each pool subject (the cell reports the median)
    seed: int = 0


def quick_config(**overrides: Any) -> BenchConfig:
    """The ``--quick`` settings: all backends and baselines, short cells (under a minute here)."""
    cfg = BenchConfig(sizes=list(QUICK_SIZES), duration=0.12, warmup=20, verify_count=8, pool_jobs=2000)
    return dataclasses.replace(cfg, **overrides)


@dataclass
class Cell:
    """One measurement.  Latencies in µs; throughput in MB/s (10^6 bytes) and messages/s."""

    subject: str
    kind: str  # "ipckit", "baseline", "reference" (memcpy), "serializer"
    workload: str  # "rtt", "stream", "memcpy", "serializer"
    placement: str
    size: int
    count: int = 0
    elapsed_s: float = 0.0
    p50_us: float | None = None
    p90_us: float | None = None
    p99_us: float | None = None
    max_us: float | None = None
    mean_us: float | None = None
    mb_s: float | None = None
    msg_s: float | None = None
    cpu_us_per_msg: float | None = None
    parent_cpu_s: float | None = None
    child_cpu_s: float | None = None
    steal_pct: float | None = None
    verified: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.subject, self.placement, self.workload, self.size)


@dataclass
class BenchReport:
    """A run: machine metadata, the configuration, every cell, the skipped subjects with reasons."""

    meta: dict[str, Any]
    config: dict[str, Any]
    cells: list[Cell]
    skipped: list[dict[str, str]]
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "meta": self.meta, "config": self.config,
                "cells": [dataclasses.asdict(c) for c in self.cells], "skipped": self.skipped,
                "wall_s": self.wall_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        # Fields a newer writer added are dropped, so older readers still load its files.
        names = {f.name for f in dataclasses.fields(Cell)}
        cells = [Cell(**{k: v for k, v in c.items() if k in names}) for c in data.get("cells", [])]
        return cls(data.get("meta", {}), data.get("config", {}), cells, data.get("skipped", []),
                   float(data.get("wall_s", 0.0)))

    def find(self, subject: str, placement: str, workload: str, size: int) -> Cell | None:
        for c in self.cells:
            if c.key == (subject, placement, workload, size):
                return c
        return None

    def subjects(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.cells:
            if c.workload in ("rtt", "stream", "memcpy"):
                seen.setdefault(c.subject, None)
        return list(seen)


def save_json(report: BenchReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=1, sort_keys=False) + "\n")


def load_json(path: str | Path) -> BenchReport:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return BenchReport.from_dict(data)


def fmt_size(n: int) -> str:
    """``64 B``, ``4 KiB``, ``1 MiB``: how every table, plot and progress line names a size."""
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"
