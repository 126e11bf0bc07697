"""Presenting results: rich tables, ratios, before/after comparison, Markdown.

Reads the records of :mod:`.model` (which also holds the JSON file format; ``save_json`` and
``load_json`` are re-exported here) and the verdicts of :mod:`.targets`; never the runner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .model import BenchReport, Cell, fmt_size, load_json, save_json
from .targets import evaluate_targets

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = [
    "fmt_size",
    "fmt_us",
    "ratio",
    "save_json",
    "load_json",
    "print_report",
    "compare_reports",
    "print_compare",
    "to_markdown",
    "REFERENCES",
]

#: Ratios are shown against these two baselines.
REFERENCES = ("mp.Pipe", "os.pipe")


def fmt_us(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v >= 1000:
        return f"{v / 1000:.2f} ms"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e4:
        return f"{v / 1e3:.0f} k"
    return f"{v:.{digits}f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def headline(cell: Cell) -> float | None:
    """The number a ratio compares: p50 µs (rtt, lower is better) or MB/s (stream/memcpy)."""
    if cell.workload in ("rtt", "obj-rtt", "aio-rtt", "uvloop-rtt"):
        return cell.p50_us
    if cell.workload == "serializer":
        return cell.mean_us
    if cell.workload == "pool":
        return cell.msg_s  # jobs/s, higher is better
    return cell.mb_s


def _ref_ratio(report: BenchReport, cell: Cell, ref: str) -> float | None:
    other = report.find(ref, cell.placement, cell.workload if cell.workload != "memcpy" else "stream", cell.size)
    if other is None or other.error:
        return None
    return ratio(headline(cell), headline(other))


def _style(kind: str) -> str:
    return {"ipckit": "bold cyan", "baseline": "", "reference": "dim"}.get(kind, "")


_TITLES = {
    "rtt": "Ping-pong round trip, send_bytes/recv_bytes",
    "obj-rtt": "Ping-pong round trip of objects, send/recv (dict up to 4 KiB, numpy array above)",
    "stream": "One-way streaming, send_bytes/recv_bytes",
    "obj-stream": "One-way streaming of objects, send/recv",
    "aio-rtt": "Ping-pong round trip awaited through ipckit.aio on asyncio",
    "uvloop-rtt": "Ping-pong round trip awaited through ipckit.aio on uvloop",
}


def _rtt_table(report: BenchReport, placement: str, workload: str = "rtt") -> Table:
    from rich.table import Table

    t = Table(title=f"{_TITLES[workload]}, placement={placement} (µs; xref = p50 / ref p50, lower is better)",
              title_justify="left")
    for col in ("size", "subject", "p50", "p90", "p99", "max", *(f"x{r}" for r in REFERENCES), "CPU µs/rt",
                "steal %", "n"):
        t.add_column(col, justify="left" if col in ("size", "subject") else "right")
    sizes = sorted({c.size for c in report.cells if c.workload == workload and c.placement == placement})
    for size in sizes:
        rows = [c for c in report.cells if c.workload == workload and c.placement == placement and c.size == size]
        for i, c in enumerate(rows):
            label = fmt_size(size) if i == 0 else ""
            if c.error:
                t.add_row(label, c.subject, f"[red]error: {c.error[:70]}[/red]", end_section=i == len(rows) - 1)
                continue
            t.add_row(label, f"[{_style(c.kind)}]{c.subject}[/]" if _style(c.kind) else c.subject,
                      fmt_us(c.p50_us), fmt_us(c.p90_us), fmt_us(c.p99_us), fmt_us(c.max_us),
                      *(fmt_ratio(_ref_ratio(report, c, r)) for r in REFERENCES), fmt_us(c.cpu_us_per_msg),
                      "-" if c.steal_pct is None else f"{c.steal_pct:.1f}", str(c.count),
                      end_section=i == len(rows) - 1)
    return t


def _stream_table(report: BenchReport, placement: str, workload: str = "stream") -> Table:
    from rich.table import Table

    t = Table(title=f"{_TITLES[workload]}, placement={placement} (xref = MB/s / ref MB/s, higher is better)",
              title_justify="left")
    kinds = ("stream", "memcpy") if workload == "stream" else (workload,)
    for col in ("size", "subject", "MB/s", "msg/s", *(f"x{r}" for r in REFERENCES), "CPU µs/msg", "steal %", "n"):
        t.add_column(col, justify="left" if col in ("size", "subject") else "right")
    sizes = sorted({c.size for c in report.cells if c.workload in kinds and c.placement == placement})
    for size in sizes:
        rows = [c for c in report.cells if c.workload in kinds and c.placement == placement and c.size == size]
        for i, c in enumerate(rows):
            label = fmt_size(size) if i == 0 else ""
            name = c.subject + (" (1 process)" if c.workload == "memcpy" else "")
            if c.error:
                t.add_row(label, name, f"[red]error: {c.error[:70]}[/red]", end_section=i == len(rows) - 1)
                continue
            t.add_row(label, f"[{_style(c.kind)}]{name}[/]" if _style(c.kind) else name,
                      fmt_num(c.mb_s), fmt_num(c.msg_s), *(fmt_ratio(_ref_ratio(report, c, r)) for r in REFERENCES),
                      fmt_us(c.cpu_us_per_msg), "-" if c.steal_pct is None else f"{c.steal_pct:.1f}", str(c.count),
                      end_section=i == len(rows) - 1)
    return t


def _serializer_table(report: BenchReport) -> Table:
    from rich.table import Table

    t = Table(title="Serializer cost on its own (µs per message, one process)", title_justify="left")
    for col in ("size", "serializer", "object", "dumps", "loads", "total", "encoded"):
        t.add_column(col, justify="left" if col in ("size", "serializer", "object") else "right")
    cells = [c for c in report.cells if c.workload == "serializer"]
    for size in sorted({c.size for c in cells}):
        rows = [c for c in cells if c.size == size]
        for i, c in enumerate(rows):
            label = fmt_size(size) if i == 0 else ""
            if c.error:
                t.add_row(label, c.subject, f"[red]{c.error[:60]}[/red]", end_section=i == len(rows) - 1)
                continue
            t.add_row(label, c.subject, str(c.extra.get("object", "")), fmt_us(c.extra.get("dumps_us")),
                      fmt_us(c.extra.get("loads_us")), fmt_us(c.mean_us),
                      fmt_size(int(c.extra.get("encoded_bytes", 0))),
                      end_section=i == len(rows) - 1)
    return t


#: The pool tables' ratios: jobs/s ÷ these subjects' jobs/s in the same placement (higher is better).
POOL_REFERENCES = ("mp.Queue", "mp.Pool")


def _pool_ratio(report: BenchReport, cell: Cell, ref: str) -> float | None:
    other = report.find(ref, cell.placement, "pool", cell.size)
    if other is None or other.error:
        return None
    return ratio(cell.msg_s, other.msg_s)


def _pool_spread(c: Cell) -> str:
    lo, hi = c.extra.get("min_jobs_s"), c.extra.get("max_jobs_s")
    return "-" if lo is None or hi is None else f"{fmt_num(lo)}..{fmt_num(hi)}"


def _pool_subject(c: Cell, jobs: object) -> str:
    """The subject, with its job count where it ran fewer jobs than the title says."""
    n = c.extra.get("jobs")
    return c.subject if n in (None, jobs) else f"{c.subject} ({n} jobs)"


def _pool_table(report: BenchReport, placement: str) -> Table:
    from rich.table import Table

    cells = [c for c in report.cells if c.workload == "pool" and c.placement == placement]
    jobs = next((c.extra.get("jobs") for c in cells if c.extra.get("jobs")), "?")
    t = Table(title=f"Worker pool: {jobs} small dict jobs to 2 worker processes and back, placement={placement} "
                    "(median of the repeats; xref = jobs/s / ref jobs/s, higher is better)", title_justify="left")
    for col in ("subject", "jobs/s", "min..max", *(f"x{r}" for r in POOL_REFERENCES), "CPU µs/job", "steal %",
                "runs"):
        t.add_column(col, justify="left" if col == "subject" else "right")
    for c in cells:
        if c.error:
            t.add_row(c.subject, f"[red]error: {c.error[:70]}[/red]")
            continue
        name = _pool_subject(c, jobs)
        t.add_row(f"[{_style(c.kind)}]{name}[/]" if _style(c.kind) else name, fmt_num(c.msg_s),
                  _pool_spread(c), *(fmt_ratio(_pool_ratio(report, c, r)) for r in POOL_REFERENCES),
                  fmt_us(c.cpu_us_per_msg), "-" if c.steal_pct is None else f"{c.steal_pct:.1f}",
                  str(c.extra.get("repeats", "")))
    return t


def _pool_markdown(report: BenchReport, placement: str) -> str:
    cells = [c for c in report.cells if c.workload == "pool" and c.placement == placement]
    jobs = next((c.extra.get("jobs") for c in cells if c.extra.get("jobs")), "?")
    rows = []
    for c in cells:
        if c.error:
            rows.append([c.subject, "error", "", "", ""])
            continue
        rows.append([_pool_subject(c, jobs), f"{fmt_num(c.msg_s)} ({_pool_spread(c)})",
                     *(fmt_ratio(_pool_ratio(report, c, r)) for r in POOL_REFERENCES), fmt_us(c.cpu_us_per_msg)])
    head = (f"**Worker pool, {jobs} small dict jobs to 2 workers and back, placement `{placement}`** — jobs/s "
            "median (min..max of the repeats); ratio is jobs/s ÷ the baseline's, higher is better\n")
    return head + "\n" + _md_table(["subject", "jobs/s", "÷ mp.Queue", "÷ mp.Pool", "CPU µs/job"], rows) + "\n"


def print_report(report: BenchReport, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = report.meta
    console.print(f"[bold]ipckit bench[/bold]  {m.get('cpu_model', '?')} x {m.get('cpu_count', '?')}, "
                  f"Linux {m.get('kernel', '?')}, Python {m.get('python', '?')}, "
                  f"ipckit {m.get('versions', {}).get('ipckit', '?')} "
                  f"(ring fast path: {m.get('ring_fast_path', '?')}), run steal "
                  f"{_pct(m.get('steal_pct_run'))}, wall {report.wall_s:.1f} s")
    placements = [p for p in m.get("placements", []) if any(c.placement == p for c in report.cells)]
    for p in placements:
        if any(c.workload == "rtt" and c.placement == p for c in report.cells):
            console.print(_rtt_table(report, p))
        if any(c.workload in ("stream", "memcpy") and c.placement == p for c in report.cells):
            console.print(_stream_table(report, p))
        if any(c.workload == "obj-rtt" and c.placement == p for c in report.cells):
            console.print(_rtt_table(report, p, "obj-rtt"))
        if any(c.workload == "obj-stream" and c.placement == p for c in report.cells):
            console.print(_stream_table(report, p, "obj-stream"))
        for w in ("aio-rtt", "uvloop-rtt"):
            if any(c.workload == w and c.placement == p for c in report.cells):
                console.print(_rtt_table(report, p, w))
        if any(c.workload == "pool" and c.placement == p for c in report.cells):
            console.print(_pool_table(report, p))
    if any(c.workload == "serializer" for c in report.cells):
        console.print(_serializer_table(report))
    t = Table(title="Targets (docs/design.md §5.3; ratios within this run)", title_justify="left")
    for col in ("id", "target", "status", "measured"):
        t.add_column(col, overflow="fold")
    colors = {"met": "green", "not met": "red"}
    for r in evaluate_targets(report):
        color = colors.get(r.status, "yellow")
        t.add_row(r.id, r.what, f"[{color}]{r.status}[/{color}]", r.detail)
    console.print(t)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {s['name']}: {s['reason']}")


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.1f} %"


# ----------------------------------------------------------------------------------- compare
def compare_reports(before: BenchReport, after: BenchReport) -> list[dict[str, Any]]:
    """Cells present in both, with ``after / before`` ratios of p50, p99 and MB/s."""
    rows: list[dict[str, Any]] = []
    for c in after.cells:
        if c.error:
            continue
        b = before.find(c.subject, c.placement, c.workload, c.size)
        if b is None or b.error:
            continue
        rows.append({
            "subject": c.subject, "placement": c.placement, "workload": c.workload, "size": c.size,
            "before": headline(b), "after": headline(c),
            "p50": ratio(c.p50_us, b.p50_us), "p99": ratio(c.p99_us, b.p99_us), "mb_s": ratio(c.mb_s, b.mb_s),
            "mean": ratio(c.mean_us, b.mean_us),
        })
    return rows


def print_compare(before: BenchReport, after: BenchReport, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = compare_reports(before, after)
    t = Table(title="after / before (rtt & serializer: <1 is faster; stream: >1 is faster; under 1.5x is noise "
                    "on this VM)", title_justify="left")
    for col in ("workload", "placement", "size", "subject", "before", "after", "p50 x", "p99 x", "MB/s x"):
        t.add_column(col, justify="left" if col in ("workload", "placement", "size", "subject") else "right")
    for r in rows:
        unit = {"rtt": "µs", "serializer": "µs", "pool": "jobs/s"}.get(r["workload"], "MB/s")
        fmt = fmt_us if unit == "µs" else fmt_num
        t.add_row(r["workload"], r["placement"], fmt_size(r["size"]), r["subject"],
                  f"{fmt(r['before'])} {unit}", f"{fmt(r['after'])} {unit}",
                  fmt_ratio(r["p50"] if r["workload"] != "serializer" else r["mean"]), fmt_ratio(r["p99"]),
                  fmt_ratio(r["mb_s"]))
    console.print(t)
    missing = {c.key for c in before.cells} ^ {c.key for c in after.cells}
    if missing:
        console.print(f"[yellow]{len(missing)} cell(s) appear in only one of the two files[/yellow]")


# ---------------------------------------------------------------------------------- markdown
def _md_rows(report: BenchReport, subjects: list[str], sizes: list[int], placement: str,
             workloads: tuple[str, ...], cell_text: Callable[[Cell], str]) -> list[list[str]]:
    """One Markdown row per subject with a cell of one of *workloads*: ``text (x mp.Pipe, x os.pipe)``."""
    rows = []
    for s in subjects:
        row = [s if s != "memcpy" else "memcpy (1 process)"]
        present = False
        for size in sizes:
            c = next((c for w in workloads if (c := report.find(s, placement, w, size)) is not None), None)
            if c is None:
                row.append("")
                continue
            present = True
            if c.error:
                row.append("error")
                continue
            r1 = _ref_ratio(report, c, "mp.Pipe")
            r2 = _ref_ratio(report, c, "os.pipe")
            row.append(f"{cell_text(c)} ({fmt_ratio(r1)}, {fmt_ratio(r2)})")
        if present:
            rows.append(row)
    return rows


def _md_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _aio_markdown(report: BenchReport, cells: list[Cell], placement: str) -> str:
    """One row per subject and size: the awaited round trip on each loop, ÷ the same subject's
    synchronous ``rtt`` p50 of this run (what ``ipckit.aio`` adds), and the CPU per round trip."""
    loops = [w for w in ("aio-rtt", "uvloop-rtt") if any(c.workload == w for c in cells)]
    names = {"aio-rtt": "asyncio", "uvloop-rtt": "uvloop"}
    rows = []
    for subject in dict.fromkeys(c.subject for c in cells):
        for size in sorted({c.size for c in cells if c.subject == subject}):
            sync = report.find(subject, placement, "rtt", size)
            row = [subject, fmt_size(size), "-" if sync is None or sync.error else fmt_us(sync.p50_us)]
            for w in loops:
                c = next((x for x in cells if x.subject == subject and x.size == size and x.workload == w), None)
                if c is None:
                    row.append("")
                elif c.error:
                    row.append(f"error: {c.error[:40]}")
                else:
                    r = ratio(c.p50_us, None if sync is None or sync.error else sync.p50_us)
                    row.append(f"{fmt_us(c.p50_us)} ({fmt_ratio(r)}; CPU {fmt_us(c.cpu_us_per_msg)})")
            rows.append(row)
    head = (f"**Awaited round trip through ipckit.aio, p50 (µs), placement `{placement}`** — ratio is ÷ the "
            "same channel's synchronous send_bytes/recv_bytes p50 in this run; CPU µs per round trip, both "
            "processes (the peer echoes synchronously)\n")
    return head + _md_table(["subject", "size", "sync p50", *(names[w] for w in loops)], rows) + "\n"


def to_markdown(report: BenchReport) -> str:
    """Compact matrices (one row per subject, one column per size) for docs/benchmarks.md."""
    out: list[str] = []
    sizes = sorted({c.size for c in report.cells if c.workload in ("rtt", "stream")})
    subjects = report.subjects()
    fast_path = report.meta.get("ring_fast_path")
    if fast_path:
        out.append(f"The shm rings ran their `{fast_path}` per-message fast path (see shm.md).\n")
    for p in report.meta.get("placements", []):
        if any(c.workload == "rtt" and c.placement == p for c in report.cells):
            out.append(f"**Round trip p50 / p99 (µs), placement `{p}`** — ratio is p50 ÷ mp.Pipe p50, "
                       "(÷ os.pipe p50)\n")
            rows = _md_rows(report, subjects, sizes, p, ("rtt",),
                            lambda c: f"{fmt_us(c.p50_us)} / {fmt_us(c.p99_us)}")
            out.append(_md_table(["subject", *(fmt_size(s) for s in sizes)], rows) + "\n")
        if any(c.workload == "stream" and c.placement == p for c in report.cells):
            out.append(f"**One-way streaming MB/s (CPU µs/msg), placement `{p}`** — ratio is ÷ mp.Pipe, "
                       "(÷ os.pipe)\n")
            rows = _md_rows(report, subjects, sizes, p, ("stream", "memcpy"),
                            lambda c: f"{fmt_num(c.mb_s)} ({fmt_us(c.cpu_us_per_msg)})")
            out.append(_md_table(["subject", *(fmt_size(s) for s in sizes)], rows) + "\n")
        osizes = sorted({c.size for c in report.cells if c.workload in ("obj-rtt", "obj-stream")})
        osubjects = list(dict.fromkeys(c.subject for c in report.cells if c.workload in ("obj-rtt", "obj-stream")))
        if any(c.workload == "obj-rtt" and c.placement == p for c in report.cells):
            out.append(f"**Objects through send/recv, round trip p50 / p99 (µs), placement `{p}`** — a dict "
                       "up to 4 KiB, a numpy uint8 array above; ratio is p50 ÷ mp.Pipe send/recv p50\n")
            rows = _md_rows(report, osubjects, osizes, p, ("obj-rtt",),
                            lambda c: f"{fmt_us(c.p50_us)} / {fmt_us(c.p99_us)}")
            out.append(_md_table(["subject", *(fmt_size(s) for s in osizes)], rows) + "\n")
        if any(c.workload == "obj-stream" and c.placement == p for c in report.cells):
            out.append(f"**Objects through send/recv, one-way msg/s (CPU µs/msg), placement `{p}`** — ratio is "
                       "MB/s ÷ mp.Pipe\n")
            rows = _md_rows(report, osubjects, osizes, p, ("obj-stream",),
                            lambda c: f"{fmt_num(c.msg_s)} ({fmt_us(c.cpu_us_per_msg)})")
            out.append(_md_table(["subject", *(fmt_size(s) for s in osizes)], rows) + "\n")
        aio = [c for c in report.cells if c.workload in ("aio-rtt", "uvloop-rtt") and c.placement == p]
        if aio:
            out.append(_aio_markdown(report, aio, p))
        if any(c.workload == "pool" and c.placement == p for c in report.cells):
            out.append(_pool_markdown(report, p))
        steals = [c.steal_pct for c in report.cells if c.placement == p and c.steal_pct is not None]
        if steals:
            out.append(f"Host steal per cell, placement `{p}`: median {sorted(steals)[len(steals) // 2]:.1f} %, "
                       f"max {max(steals):.1f} %.\n")
    ser = [c for c in report.cells if c.workload == "serializer" and not c.error]
    if ser:
        names = list(dict.fromkeys(c.subject for c in ser))
        ssizes = sorted({c.size for c in ser})
        out.append("**Serializer dumps + loads (µs), one process**\n")
        rows = []
        for n in names:
            row = [n]
            for size in ssizes:
                c = next((x for x in ser if x.subject == n and x.size == size), None)
                row.append("" if c is None else f"{fmt_us(c.mean_us)} ({c.extra.get('object', '')})")
            rows.append(row)
        out.append(_md_table(["serializer", *(fmt_size(s) for s in ssizes)], rows) + "\n")
    out.append("**Targets** ([design.md §5.3](design.md#53-targets); ratios within this run)\n")
    out.append(_md_table(["id", "target", "status", "measured"],
                         [[r.id, r.what, f"**{r.status}**", r.detail] for r in evaluate_targets(report)]) + "\n")
    if report.skipped:
        out.append("Skipped: " + "; ".join(f"`{s['name']}` ({s['reason']})" for s in report.skipped) + "\n")
    return "\n".join(out)
