"""``ipckit.bench`` — measure every available backend against the usual alternatives.

>>> from ipckit import bench
>>> report = bench.run(bench.quick_config(placements=["split"]))   # doctest: +SKIP
>>> bench.print_report(report)                                       # doctest: +SKIP

Backends come from the registry and their capabilities only (third-party schemes included).
The CLI is ``python -m ipckit.bench`` / ``ipckit bench``; see docs/benchmarks.md for the method.

This package imports numpy, rich and matplotlib lazily (``pip install ipckit[bench]``); the peer
process imports none of them.

Modules, each importing only those listed before it:

``model``      the records (``BenchConfig``, ``Cell``, ``BenchReport``) and the JSON file format
``subject``    the shape of a measured transport: ``Subject``, ``Prepared``, ``Link``
``baselines``  mp.Pipe, mp.Queue, os.pipe, unix.socket, faster-fifo, iceoryx2 (memcpy: the runner)
``links``      the ipckit channels, one subject per registered scheme
``peer``       the spawned peer process
``runner``     the measurement
``targets``    the performance targets, evaluated from a report
``report``     tables, comparisons, Markdown
``plot``       PNGs
``__main__``   the CLI (``ipckit bench``)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .baselines import BASELINES
    from .links import ipckit_subjects
    from .model import (
        DEFAULT_SIZES,
        PLACEMENTS,
        QUICK_SIZES,
        BenchConfig,
        BenchReport,
        Cell,
        load_json,
        quick_config,
        save_json,
    )
    from .plot import write_plots
    from .report import compare_reports, print_compare, print_report, to_markdown
    from .runner import measure_memcpy, measure_serializers, run

__all__ = [
    "run",
    "quick_config",
    "BenchConfig",
    "BenchReport",
    "Cell",
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "PLACEMENTS",
    "BASELINES",
    "ipckit_subjects",
    "measure_memcpy",
    "measure_serializers",
    "print_report",
    "print_compare",
    "compare_reports",
    "save_json",
    "load_json",
    "to_markdown",
    "write_plots",
]

#: The module of each name; the records come from ``model``, so loading or comparing saved runs
#: imports neither numpy nor the measuring code.
_WHERE = {
    "run": "runner", "measure_memcpy": "runner", "measure_serializers": "runner",
    "BenchConfig": "model", "BenchReport": "model", "Cell": "model", "quick_config": "model",
    "DEFAULT_SIZES": "model", "QUICK_SIZES": "model", "PLACEMENTS": "model",
    "save_json": "model", "load_json": "model",
    "BASELINES": "baselines", "ipckit_subjects": "links", "write_plots": "plot",
    "compare_reports": "report", "print_compare": "report", "print_report": "report", "to_markdown": "report",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'ipckit.bench' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_WHERE[name]}", __name__)
    return getattr(module, name)
