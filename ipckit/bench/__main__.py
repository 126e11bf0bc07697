"""``python -m ipckit.bench`` / ``ipckit bench``: run the harness, print tables, write JSON/plots.

Examples::

    ipckit bench --quick --json r.json --plot out/
    ipckit bench --placement split,same --sizes 64,4KiB,64KiB,1MiB --duration 1
    ipckit bench --backends pipe,shm --baselines mp.Pipe,os.pipe --workloads rtt
    ipckit bench --url shm8=shm://?capacity=8MiB        # an extra variant, labelled shm8
    ipckit bench --workloads pool --backends shm,unix,pipe --pool-jobs 10000   # the worker pool alone
    ipckit bench --compare before.json after.json
    ipckit bench --show r.json --markdown docs/benchmarks.md --plot docs/img   # re-render, no measuring
    ipckit bench fanout --transports ipc,tcp --subscribers 1,2,4   # pub/sub fan-out (ipckit.bench.fanout)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

__all__ = ["main", "build_parser"]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _sizes(value: str) -> list[int]:
    from ipckit.options import parse_size

    try:
        sizes = [parse_size(v) for v in _csv(value)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive (e.g. 64,4KiB,1MiB)")
    return sizes


def _none_or_csv(value: str) -> list[str]:
    return [] if value.strip().lower() == "none" else _csv(value)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _url(value: str) -> tuple[str, str]:
    label, sep, url = value.partition("=")
    if not sep or "://" not in url or not label:
        raise argparse.ArgumentTypeError("--url takes LABEL=URL, e.g. unix=unix:///tmp/b.sock or "
                                         "pipe64k=pipe://?pipe_size=64KiB")
    return label, url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipckit bench",
        description="Measure ipckit backends (round trip, streaming, serializers) against multiprocessing, "
                    "raw pipes/sockets and faster-fifo, with pinned processes. Method: docs/benchmarks.md.",
    )
    p.add_argument("--quick", action="store_true", help="short cells: everything in under a minute")
    p.add_argument("--sizes", type=_sizes, help="message sizes, e.g. 64,4KiB,64KiB,1MiB")
    p.add_argument("--obj-sizes", dest="obj_sizes", type=_sizes,
                   help="object workload sizes: up to 4KiB a dict with that blob, above a numpy array "
                        "(default 64,1MiB,6220800 = a 1080p frame)")
    p.add_argument("--backends", type=_none_or_csv, help="ipckit schemes / --url labels (default: all available)")
    p.add_argument("--baselines", type=_none_or_csv,
                   help="mp.Pipe,mp.Queue,os.pipe,os.pipe+hdr20,unix.socket,faster-fifo,pyzmq,pyzmq.tcp,iceoryx2,"
                        "sysv_ipc.mq,posix_ipc.mq,memcpy or none (default: all)")
    p.add_argument("--serializers", type=_none_or_csv, help="serializers to cost on their own (default: all; none)")
    p.add_argument("--workloads", type=_csv,
                   help="rtt,stream,obj-rtt,obj-stream,aio-rtt,uvloop-rtt,pool,memcpy,serializer,import (default: all)")
    p.add_argument("--pool-jobs", dest="pool_jobs", type=_positive,
                   help="jobs per timed repeat of the pool workload (default 10000; --quick 2000)")
    p.add_argument("--pool-repeats", dest="pool_repeats", type=_positive,
                   help="timed repeats of each pool subject, median reported (default 3)")
    p.add_argument("--duration", type=float, help="seconds per cell (default 1.0; --quick 0.12)")
    p.add_argument("--placement", type=_csv, default=None,
                   help="split (parent cpu0, peer cpu1), same (both cpu0), none (unpinned), busy (unpinned, "
                        "one CPU-bound process per core); comma list, 'both' (split,same) or 'all' "
                        "(default: all)")
    p.add_argument("--url", type=_url, action="append", default=[], metavar="LABEL=URL",
                   help="URL for a scheme (LABEL = scheme) or an extra labelled variant; repeatable")
    p.add_argument("--seed", type=int, default=0, help="payload RNG seed")
    p.add_argument("--json", metavar="FILE", help="write all cells and machine metadata as JSON")
    p.add_argument("--plot", metavar="DIR", help="write latency/throughput vs size PNGs into DIR")
    p.add_argument("--markdown", metavar="FILE",
                   help="write compact Markdown tables; in an existing file, only between the "
                        "<!-- bench:begin --> / <!-- bench:end --> markers (docs/benchmarks.md)")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two JSON files and exit")
    p.add_argument("--show", metavar="FILE",
                   help="render a saved JSON (tables, --markdown, --plot) without measuring")
    p.add_argument("--list", action="store_true", help="list what would be measured (and what is skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _config(args: argparse.Namespace) -> Any:
    from .model import PLACEMENTS, BenchConfig, quick_config

    # Every placement by default: users do not pin, and their machines do other work (issue 11).
    placements = args.placement or list(PLACEMENTS)
    if placements in (["both"], ["all"]):
        placements = ["split", "same"] if placements == ["both"] else list(PLACEMENTS)
    overrides: dict[str, Any] = {"placements": placements, "seed": args.seed, "urls": dict(args.url)}
    for name in ("sizes", "obj_sizes", "backends", "baselines", "serializers", "workloads", "duration",
                 "pool_jobs", "pool_repeats"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return quick_config(**overrides) if args.quick else BenchConfig(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ipckit bench``; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fanout"]:  # pub/sub fan-out has its own small driver (many receivers per cell)
        from .fanout import main as fanout_main

        return fanout_main(argv[1:])
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # files and pipes: wide enough for every column
    err = Console(stderr=True)
    from .report import load_json, print_compare, print_report, save_json, to_markdown

    if args.compare:
        try:
            print_compare(load_json(args.compare[0]), load_json(args.compare[1]), console)
        except (OSError, ValueError, KeyError) as exc:
            err.print(f"[red]cannot compare: {exc}[/red]")
            return 2
        return 0
    try:
        cfg = _config(args)
    except (TypeError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    if args.list:
        try:
            return _list(cfg, console)
        except ValueError as exc:  # an unknown --backends / --baselines name
            err.print(f"[red]{exc}[/red]")
            return 2
    from .runner import run

    t0 = time.perf_counter()
    try:
        if args.show:
            report = load_json(args.show)
        elif args.no_progress:
            report = run(cfg)
        else:
            report = _run_with_progress(cfg, err)
    except (OSError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    print_report(report, console)
    if args.json:
        save_json(report, args.json)
        console.print(f"wrote {args.json}")
    if args.markdown:
        _write_markdown(args.markdown, to_markdown(report))
        console.print(f"wrote {args.markdown}")
    if args.plot:
        from .plot import write_plots

        for path in write_plots(report, args.plot):
            console.print(f"wrote {path}")
    console.print(f"total wall time {time.perf_counter() - t0:.1f} s")
    failed = [c for c in report.cells if c.error]
    if failed:
        err.print(f"[yellow]{len(failed)} cell(s) failed; see the tables / JSON[/yellow]")
    return 1 if failed else 0


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _write_markdown(path: str, text: str) -> None:
    """Write *text*; if *path* has ``<!-- bench:begin -->``/``<!-- bench:end -->`` markers, replace between them."""
    import os

    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if BEGIN in old and END in old:
            head, _, rest = old.partition(BEGIN)
            _, _, tail = rest.partition(END)
            text = f"{head}{BEGIN}\n{text}\n{END}{tail}"
    with open(path, "w") as f:
        f.write(text)


def _run_with_progress(cfg: Any, console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .model import Cell
    from .runner import run

    with Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def progress(desc: str, done: int, total: int, cell: Cell | None) -> None:
            bar.update(task, description=desc, completed=done, total=total)
            if cell is not None and cell.error:
                bar.console.print(f"[red]{cell.subject} {cell.workload} {cell.size}: {cell.error}[/red]")

        return run(cfg, progress)


def _list(cfg: Any, console: Any) -> int:
    from .baselines import select_baselines
    from .links import ipckit_subjects

    subjects, skipped = ipckit_subjects(cfg.backends, cfg.urls)
    base, base_skipped = select_baselines(cfg.baselines, max(cfg.sizes))
    for s in subjects:
        console.print(f"ipckit    {s.name:<16} {s.url:<28} via {s.method}")
    for b in base:
        console.print(f"baseline  {b.name:<16} {b.note}")
    for skip in [*skipped, *base_skipped]:
        console.print(f"[yellow]skipped   {skip.name:<16} {skip.reason}[/yellow]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
