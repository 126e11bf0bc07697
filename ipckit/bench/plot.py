"""matplotlib PNGs (Agg), one per workload and placement: latency and throughput vs size for the
bytes and the object workloads (one line per subject, log axes), and the worker pool's jobs/s
(one bar per subject and placement)."""

from __future__ import annotations

from pathlib import Path

from .model import BenchReport, fmt_size

__all__ = ["write_plots"]


def write_plots(report: BenchReport, directory: str | Path, dpi: int = 90) -> list[Path]:
    """Write ``latency-``/``throughput-``/``obj-latency-``/``obj-throughput-<placement>.png`` and
    ``pool.png`` (whatever the report has cells for); return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    placements = list(dict.fromkeys(c.placement for c in report.cells
                                    if c.workload in ("rtt", "stream", "obj-rtt", "obj-stream")))
    specs = (("rtt", "p50_us", "round-trip p50 (µs)", "latency"),
             ("stream", "mb_s", "one-way throughput (MB/s)", "throughput"),
             ("obj-rtt", "p50_us", "object round-trip p50 (µs), send/recv", "obj-latency"),
             ("obj-stream", "mb_s", "object one-way throughput (MB/s), send/recv", "obj-throughput"))
    for placement in placements:
        for workload, attr, ylabel, stem in specs:
            kinds = ("stream", "memcpy") if workload == "stream" else (workload,)
            cells = [c for c in report.cells if c.placement == placement and c.workload in kinds and not c.error
                     and getattr(c, attr) is not None]
            if not cells:
                continue
            fig, ax = plt.subplots(figsize=(7.5, 4.8))
            for subject in dict.fromkeys(c.subject for c in cells):
                pts = sorted((c.size, float(getattr(c, attr))) for c in cells if c.subject == subject)
                kind = next(c.kind for c in cells if c.subject == subject)
                style = {"ipckit": "-o", "baseline": "--s", "reference": ":^"}.get(kind, "-")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=subject,
                        linewidth=2.2 if kind == "ipckit" else 1.2, markersize=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            sizes = sorted({c.size for c in cells})
            ax.set_xticks(sizes, [fmt_size(s) for s in sizes])
            ax.set_xlabel("message size")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{stem} vs size — placement {placement}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            path = out / f"{stem}-{placement}.png"
            fig.savefig(path, dpi=dpi)
            plt.close(fig)
            written.append(path)
    pool = _pool_plot(report, out, dpi, plt)
    if pool is not None:
        written.append(pool)
    return written


def _pool_plot(report: BenchReport, out: Path, dpi: int, plt: object) -> Path | None:
    """Jobs/s of the worker pool: one group of bars per subject, one bar per placement."""
    cells = [c for c in report.cells if c.workload == "pool" and not c.error and c.msg_s]
    if not cells:
        return None
    subjects = list(dict.fromkeys(c.subject for c in cells))
    placements = list(dict.fromkeys(c.placement for c in cells))
    fig, ax = plt.subplots(figsize=(8.5, 4.8))  # type: ignore[attr-defined]
    width = 0.8 / max(1, len(placements))
    for i, placement in enumerate(placements):
        rate = {c.subject: float(c.msg_s or 0.0) for c in cells if c.placement == placement}
        xs = [j + i * width for j in range(len(subjects))]
        ax.bar(xs, [rate.get(s, 0.0) / 1e3 for s in subjects], width, label=placement)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(subjects))], subjects, rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("thousand jobs/s")
    ax.set_title("worker pool: small dict jobs to 2 workers and back")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "pool.png"
    fig.savefig(path, dpi=dpi)
    plt.close(fig)  # type: ignore[attr-defined]
    return path
