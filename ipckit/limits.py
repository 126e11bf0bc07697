"""The live kernel limits behind ``ipckit limits``: each backend's own, then the general ones.

A backend lists the limits its scheme runs into in :meth:`~ipckit.backend.Backend.kernel_limits`,
built with :func:`sysctl`, :func:`rlimit` and :func:`fmt_bytes`; :func:`kernel_limits` gathers
them from every registered backend (in scheme order, each name once) and adds the limits that
concern every channel or a mechanism with no backend yet.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["KernelLimit", "kernel_limits", "sysctl", "rlimit", "fmt_bytes"]


@dataclass(frozen=True)
class KernelLimit:
    """One row of ``ipckit limits``: the limit's name, its current value (text), what it limits."""

    name: str
    value: str
    meaning: str


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def sysctl(path: str, meaning: str) -> KernelLimit:
    """The sysctl at *path* (``/proc/sys/fs/pipe-max-size`` → ``fs.pipe-max-size``), ``n/a`` if unreadable."""
    value = _read(path)
    return KernelLimit(path.removeprefix("/proc/sys/").replace("/", "."), value if value is not None else "n/a",
                       meaning)


def _fmt_rlimit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def rlimit(name: str, meaning: str) -> KernelLimit:
    """This process's soft and hard ``resource.<name>`` limit, ``n/a`` where the platform has none."""
    res = getattr(resource, name, None)
    if res is None:
        return KernelLimit(name, "n/a", meaning)
    soft, hard = resource.getrlimit(res)
    return KernelLimit(name, f"{_fmt_rlimit(soft)} (hard {_fmt_rlimit(hard)})", meaning)


def fmt_bytes(n: int) -> str:
    """``512 B``, ``1.5 KiB`` ... ``2.0 TiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _general() -> list[KernelLimit]:
    """Limits every channel runs into, whatever its scheme."""
    return [
        sysctl("/proc/sys/fs/file-max", "open files system-wide"),
        rlimit("RLIMIT_NOFILE", "open descriptors per process (each channel holds a few)"),
    ]


def kernel_limits() -> list[KernelLimit]:
    """The kernel limits that matter to ipckit: every registered backend's, then the general ones.

    A backend that cannot be loaded here contributes nothing; one whose ``kernel_limits()``
    raises gets a row saying so instead of hiding the rest.
    """
    from .errors import ConfigurationError
    from .registry import get_backend, schemes

    rows: list[KernelLimit] = []
    seen_classes: set[type] = set()
    for scheme in schemes():
        try:
            cls = get_backend(scheme)
        except ConfigurationError:
            continue
        if cls in seen_classes:
            continue
        seen_classes.add(cls)
        try:
            rows.extend(cls.kernel_limits())
        except Exception as exc:  # one backend's broken probe must not hide the other limits
            rows.append(KernelLimit(f"{scheme}://", "n/a", f"reading its limits failed: {exc!r}"))
    rows += _general()
    names: set[str] = set()
    unique: list[KernelLimit] = []
    for row in rows:  # several schemes may share a limit (a kit's rows): show it once
        if row.name not in names:
            names.add(row.name)
            unique.append(row)
    return unique
