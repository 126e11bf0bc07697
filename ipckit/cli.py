"""The ``ipckit`` command: ``backends``, ``bench``, ``limits``, ``cleanup``.

Every subcommand reads the registry and the capabilities as data; nothing here knows a backend by
name.  ``rich`` (the ``bench`` extra) draws the tables when it is installed; without it the same
tables are printed as aligned plain text.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import resource
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["main", "backend_rows", "kernel_limits", "find_stale", "StaleObject"]

#: Every object ipckit names starts with this; cleanup never touches anything else.
PREFIX = "ipckit"
_SHM_DIR = "/dev/shm"
_MQUEUE_DIR = "/dev/mqueue"
#: An empty private directory younger than this may belong to a listener that is about to bind.
_EMPTY_DIR_GRACE = 60.0


# --------------------------------------------------------------------------- tables
def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, plain: bool,
           out: TextIO) -> None:
    """Print a table with rich when available (and wanted), else as aligned plain text."""
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
        else:
            table = Table(title=title, show_lines=False)
            for h in headers:
                table.add_column(h, overflow="fold")
            for row in rows:
                table.add_row(*row)
            # A pipe or a file gets a wide table rather than one folded to 80 columns.
            width = None if out.isatty() else 200
            Console(file=out, width=width).print(table)
            return
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print(title, file=out)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


# --------------------------------------------------------------------------- backends
def _caps_text(caps: Any) -> str:
    """The capabilities that are true, plus the transport's size limit, as one short string."""
    parts = []
    for f in dataclasses.fields(caps):
        value = getattr(caps, f.name)
        if value is True:
            parts.append(f.name)
        elif f.name == "max_message_size" and value is not None:
            parts.append(f"max_message_size={value}")
    return ", ".join(parts)


def backend_rows() -> list[dict[str, Any]]:
    """One record per registered scheme: ``scheme``, ``available``, ``reason``, ``capabilities``.

    ``capabilities`` is a dict of the backend's Capabilities, or None when it cannot be loaded.
    """
    from .errors import ConfigurationError
    from .registry import availability, get_backend, schemes

    rows: list[dict[str, Any]] = []
    for scheme in schemes():
        ok, reason = availability(scheme)
        caps: dict[str, Any] | None = None
        doc = ""
        try:
            cls = get_backend(scheme)
        except ConfigurationError:
            pass
        else:
            caps = dataclasses.asdict(cls.capabilities)
            doc = (inspect.getdoc(sys.modules.get(cls.__module__)) or "").split("\n", 1)[0]
        rows.append({"scheme": scheme, "available": ok, "reason": reason, "capabilities": caps, "summary": doc})
    return rows


def _cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    from .options import Capabilities

    rows = backend_rows()
    if args.json:
        json.dump(rows, out, indent=2)
        print(file=out)
        return 0
    table_rows = []
    for r in rows:
        caps = r["capabilities"]
        caps_text = _caps_text(Capabilities(**caps)) if caps is not None else "?"
        status = "yes" if r["available"] else "no"
        table_rows.append([r["scheme"], status, r["reason"] or "", caps_text])
    _table("ipckit backends", ["scheme", "works here", "why not", "capabilities"], table_rows,
           plain=args.plain, out=out)
    print(_ring_fast_path_note(), file=out)
    return 0


def _ring_fast_path_note() -> str:
    from .backends.common.ring import cursor as ringcursor

    if ringcursor.IMPLEMENTATION == "c":
        return "shm rings: C per-message fast path"
    if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
        return "shm rings: pure-Python fast path (IPCKIT_PURE_PYTHON is set)"
    return ("shm rings: pure-Python fast path -- the C extension was not built; reinstall ipckit with a C "
            "compiler and the Python headers (gcc, python3-dev) for several times faster small messages")


# --------------------------------------------------------------------------- bench
def _cmd_bench(argv: list[str], out: TextIO) -> int:
    try:
        bench = importlib.import_module("ipckit.bench.__main__")
    except ImportError as exc:
        if (exc.name or "").startswith("ipckit"):
            why = "this ipckit installation has no benchmark harness (ipckit.bench)"
        else:
            why = f"a dependency of the harness is missing ({exc}); install it with `pip install 'ipckit[bench]'`"
        print(f"ipckit bench: {why}", file=sys.stderr)
        return 2
    bench_main: Callable[[list[str]], int] = bench.main
    try:
        return int(bench_main(argv) or 0)
    except SystemExit as exc:  # argparse inside the harness (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


# --------------------------------------------------------------------------- limits
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _fmt_rlimit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def kernel_limits() -> list[tuple[str, str, str]]:
    """``(name, value, what it limits)`` for the kernel limits that matter to ipckit."""
    rows: list[tuple[str, str, str]] = []

    def sysctl(path: str, what: str) -> None:
        name = path.removeprefix("/proc/sys/").replace("/", ".")
        value = _read(path)
        rows.append((name, value if value is not None else "n/a", what))

    sysctl("/proc/sys/fs/pipe-max-size", "largest pipe buffer an unprivileged F_SETPIPE_SZ may ask for (bytes)")
    sysctl("/proc/sys/fs/pipe-user-pages-soft", "pipe pages per user before new pipes shrink to one page")
    sysctl("/proc/sys/fs/mqueue/msg_max", "POSIX mq: most messages per queue")
    sysctl("/proc/sys/fs/mqueue/msgsize_max", "POSIX mq: largest message (bytes); mq:// fragments above it")
    sysctl("/proc/sys/fs/mqueue/queues_max", "POSIX mq: queues system-wide")
    sysctl("/proc/sys/kernel/msgmax", "SysV mq: largest message (bytes)")
    sysctl("/proc/sys/kernel/msgmnb", "SysV mq: bytes per queue")
    sysctl("/proc/sys/kernel/msgmni", "SysV mq: queues system-wide")
    sysctl("/proc/sys/kernel/shmmax", "SysV shm: largest segment (bytes)")
    sysctl("/proc/sys/kernel/shmmni", "SysV shm: segments system-wide")
    sysctl("/proc/sys/kernel/sem", "SysV sem: SEMMSL SEMMNS SEMOPM SEMMNI")
    sysctl("/proc/sys/fs/file-max", "open files system-wide")
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        rows.append(("/dev/shm", "n/a", "POSIX shared memory filesystem (shm://)"))
    else:
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        rows.append(("/dev/shm size", _fmt_bytes(size), "POSIX shared memory filesystem (shm://)"))
        rows.append(("/dev/shm free", _fmt_bytes(free), "room for new shm:// rings"))
    for name, what in (("RLIMIT_NOFILE", "open descriptors per process (each channel holds a few)"),
                       ("RLIMIT_MSGQUEUE", "bytes of POSIX message queues per user")):
        res = getattr(resource, name, None)
        if res is None:
            rows.append((name, "n/a", what))
            continue
        soft, hard = resource.getrlimit(res)
        rows.append((name, f"{_fmt_rlimit(soft)} (hard {_fmt_rlimit(hard)})", what))
    return rows


def _cmd_limits(args: argparse.Namespace, out: TextIO) -> int:
    rows = kernel_limits()
    if args.json:
        json.dump([{"name": n, "value": v, "meaning": w} for n, v, w in rows], out, indent=2)
        print(file=out)
        return 0
    _table("kernel limits that matter to ipckit", ["limit", "value", "meaning"], [list(r) for r in rows],
           plain=args.plain, out=out)
    return 0


# --------------------------------------------------------------------------- cleanup
@dataclass(frozen=True)
class StaleObject:
    """A leftover ipckit object: where it is, what it is, and why it is considered stale."""

    path: str
    kind: str
    reason: str


class _InUse:
    """Which files some live process has open or mapped (read once from /proc)."""

    def __init__(self) -> None:
        self.inodes: set[tuple[int, int]] = set()
        self.mapped: set[str] = set()
        self.sockets: set[str] = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            fd_dir = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    st = os.stat(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                self.inodes.add((st.st_dev, st.st_ino))
            try:
                with open(f"/proc/{pid}/maps") as f:
                    for line in f:
                        fields = line.split(None, 5)
                        if len(fields) == 6:
                            self.mapped.add(fields[5].rstrip("\n").removesuffix(" (deleted)"))
            except OSError:
                continue
        try:
            with open("/proc/net/unix") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) >= 8 and fields[7].startswith("/"):
                        self.sockets.add(fields[7])
        except OSError:
            pass

    def holds(self, path: str, st: os.stat_result) -> bool:
        if (st.st_dev, st.st_ino) in self.inodes or path in self.mapped:
            return True
        return stat.S_ISSOCK(st.st_mode) and path in self.sockets


def _kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file"


def _own(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def _temp_dirs() -> list[str]:
    dirs = [tempfile.gettempdir(), "/tmp", "/var/tmp"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        dirs.append(runtime)
    seen: list[str] = []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in seen and os.path.isdir(real):
            seen.append(real)
    return seen


def find_stale(prefix: str = PREFIX, *, in_use: _InUse | None = None) -> list[StaleObject]:
    """Leftover ipckit objects of this user that no live process holds.

    Looks at ``/dev/shm`` (shared memory and semaphores), ``/dev/mqueue`` (if mounted) and the
    temporary directories (``ipckit*`` sockets, FIFOs and files, and the ``ipckit*`` private
    directories that hold them).  An object is stale when its name starts with *prefix*, the
    current user owns it, and no process has it open, mapped or bound.  Nothing else is touched.
    """
    if not prefix.startswith(PREFIX):
        raise ValueError(f"cleanup only touches names that start with {PREFIX!r}, got prefix {prefix!r}")
    held = in_use if in_use is not None else _InUse()
    now = time.time()
    found: list[StaleObject] = []

    def consider(path: str, why: str) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not _own(st) or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) or held.holds(path, st):
            return
        found.append(StaleObject(path, _kind(st.st_mode), why))

    # POSIX shared memory and named semaphores (the latter appear as sem.<name>).
    for dirname in (_SHM_DIR, _MQUEUE_DIR):
        try:
            entries = sorted(os.listdir(dirname))
        except OSError:
            continue
        for entry in entries:
            name = entry.removeprefix("sem.")
            if name.startswith(prefix):
                consider(os.path.join(dirname, entry), "no live process has it open or mapped")

    # Socket/FIFO files and the private 0700 directories the named backends create.
    for tmp in _temp_dirs():
        try:
            entries = sorted(os.listdir(tmp))
        except OSError:
            continue
        for entry in entries:
            if not entry.startswith(prefix):
                continue
            if entry.startswith("ipckit-sysv-"):
                continue  # sysv+shm manifests: liveness is in SysV semaphores; its cleanup_stale() judges them
            path = os.path.join(tmp, entry)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not _own(st):
                continue
            if not stat.S_ISDIR(st.st_mode):
                consider(path, "no live process has it open or bound")
                continue
            inner_total = 0
            inner_stale = 0
            try:
                inner = sorted(os.listdir(path))
            except OSError:
                continue
            for sub in inner:
                inner_total += 1
                before = len(found)
                consider(os.path.join(path, sub), "no live process has it open or bound")
                inner_stale += len(found) - before
            # Remove the directory only when everything in it is stale; an empty one only when it
            # is old enough that no listener can be about to bind in it.
            if inner_total and inner_stale == inner_total:
                found.append(StaleObject(path, "directory", "every object in it is stale"))
            elif not inner_total and now - st.st_mtime > _EMPTY_DIR_GRACE:
                found.append(StaleObject(path, "directory", "empty and older than a minute"))
    return found


def _remove(obj: StaleObject) -> None:
    if obj.kind == "directory":
        os.rmdir(obj.path)
    else:
        os.unlink(obj.path)


def _backend_cleanups() -> Iterable[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """Backend modules that offer ``cleanup_stale()`` for objects only they can recognise (SysV)."""
    from .errors import ConfigurationError
    from .registry import get_backend, schemes

    seen: set[str] = set()
    for scheme in schemes():
        try:
            cls = get_backend(scheme)
        except ConfigurationError:
            continue
        module = sys.modules.get(cls.__module__)
        fn = getattr(module, "cleanup_stale", None)
        if module is None or not callable(fn) or module.__name__ in seen:
            continue
        seen.add(module.__name__)
        yield scheme, fn, {}


def _cmd_cleanup(args: argparse.Namespace, out: TextIO) -> int:
    prefix: str = args.prefix
    if not prefix.startswith(PREFIX):
        print(f"ipckit cleanup: --prefix must start with {PREFIX!r}", file=sys.stderr)
        return 2
    stale = find_stale(prefix)
    verb = "would remove" if args.dry_run else "removed"
    failures = 0
    count = 0
    for obj in stale:
        if not args.dry_run:
            try:
                _remove(obj)
            except FileNotFoundError:
                continue  # someone else removed it meanwhile
            except OSError as exc:
                failures += 1
                print(f"could not remove {obj.path}: {exc.strerror or exc}", file=sys.stderr)
                continue
        count += 1
        print(f"{verb} {obj.kind} {obj.path} ({obj.reason})", file=out)
    # Backends' own sweeps apply their own criteria to every ipckit object they recognise, so they
    # run only for the full sweep, never for a narrowed --prefix or a dry run.
    if not args.dry_run and prefix == PREFIX:
        for scheme, fn, kwargs in _backend_cleanups():
            try:
                names = fn(**kwargs)
            except Exception as exc:  # one backend's failure must not stop the rest
                failures += 1
                print(f"{scheme}:// cleanup failed: {exc!r}", file=sys.stderr)
                continue
            for name in names or ():
                count += 1
                print(f"{verb} {scheme}:// object {name} (reclaimed by the backend)", file=out)
    if count == 0:
        print("nothing stale found" if args.dry_run else "nothing to remove", file=out)
    else:
        print(f"{count} object(s) {'would be removed' if args.dry_run else 'removed'}", file=out)
    return 1 if failures else 0


# --------------------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipckit",
        description="ipckit: one Channel interface over every Linux IPC mechanism.",
        epilog="Run `ipckit COMMAND --help` for the options of one command.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ipckit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("backends", help="list the backends: do they work here, and what can they do",
                       description="List every registered scheme, whether it works on this machine "
                                   "(and why not), and its capabilities.")
    p.add_argument("--plain", action="store_true", help="plain text table even if rich is installed")
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")

    sub.add_parser("bench", help="run the latency/bandwidth harness (see `ipckit bench --help`)",
                   description="Run the benchmark harness; every argument goes to `python -m ipckit.bench`.",
                   add_help=False)

    p = sub.add_parser("limits", help="show the kernel limits that matter to ipckit",
                       description="Show pipe, POSIX/SysV message queue and shared memory limits, "
                                   "/dev/shm size and the resource limits of this process.")
    p.add_argument("--plain", action="store_true", help="plain text table even if rich is installed")
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")

    p = sub.add_parser(
        "cleanup", help="remove stale ipckit objects left by crashed processes",
        description="Remove ipckit objects (names starting with 'ipckit') owned by the current user that no "
                    "live process holds: /dev/shm segments and semaphores, message queues, and socket/FIFO "
                    "files in ipckit's private temporary directories.  Nothing else is touched.")
    p.add_argument("-n", "--dry-run", action="store_true", help="only report what would be removed")
    p.add_argument("--prefix", default=PREFIX,
                   help="only objects whose name starts with this (must start with 'ipckit'; default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ipckit`` command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    # `bench` hands every remaining argument (including --help) to the harness untouched.
    if args_list and args_list[0] == "bench":
        return _cmd_bench(args_list[1:], out)
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help / --version / usage errors
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handlers: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
        "backends": _cmd_backends,
        "limits": _cmd_limits,
        "cleanup": _cmd_cleanup,
    }
    try:
        return handlers[args.command](args, out)
    except BrokenPipeError:  # `ipckit backends | head`
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


if __name__ == "__main__":
    sys.exit(main())
