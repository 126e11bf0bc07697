"""``ipckit.bench`` — measure every available backend against the usual alternatives.

>>> from ipckit import bench
>>> report = bench.run(bench.quick_config(placements=["split"]))   # doctest: +SKIP
>>> bench.print_report(report)                                       # doctest: +SKIP

Backends come from the registry and their capabilities only (third-party schemes included).
The CLI is ``python -m ipckit.bench`` / ``ipckit bench``; see docs/benchmarks.md for the method.

This package imports numpy, rich and matplotlib lazily (``pip install ipckit[bench]``); the peer
process imports none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .links import BASELINES, ipckit_subjects
    from .plot import write_plots
    from .report import compare_reports, load_json, print_compare, print_report, save_json, to_markdown
    from .runner import (
        DEFAULT_SIZES,
        PLACEMENTS,
        QUICK_SIZES,
        BenchConfig,
        BenchReport,
        Cell,
        measure_memcpy,
        measure_serializers,
        quick_config,
        run,
    )

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

_WHERE = {
    "BASELINES": "links", "ipckit_subjects": "links", "write_plots": "plot",
    "compare_reports": "report", "load_json": "report", "print_compare": "report", "print_report": "report",
    "save_json": "report", "to_markdown": "report",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'ipckit.bench' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_WHERE.get(name, 'runner')}", __name__)
    return getattr(module, name)
