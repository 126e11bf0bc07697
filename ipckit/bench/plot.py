"""matplotlib PNGs: latency vs size and throughput vs size, one line per subject, log axes (Agg)."""

from __future__ import annotations

from pathlib import Path

from .model import BenchReport, fmt_size

__all__ = ["write_plots"]


def write_plots(report: BenchReport, directory: str | Path, dpi: int = 90) -> list[Path]:
    """Write ``latency-<placement>.png`` and ``throughput-<placement>.png``; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    placements = list(dict.fromkeys(c.placement for c in report.cells if c.workload in ("rtt", "stream")))
    specs = (("rtt", "p50_us", "round-trip p50 (µs)", "latency"),
             ("stream", "mb_s", "one-way throughput (MB/s)", "throughput"))
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
    return written
