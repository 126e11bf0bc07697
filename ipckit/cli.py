"""The ``ipckit`` command: ``backends``, ``bench``, ``limits``, ``cleanup``, ``keygen``.

Argument parsing, tables and dispatch only.  The work is elsewhere: the registry and each
Backend class (capabilities, ``notes()``), :mod:`ipckit.limits`, :mod:`ipckit.cleanup`; nothing
here knows a backend by name.  ``rich`` (the ``bench`` extra) draws the tables when it is
installed; without it the same tables are printed as aligned plain text.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import cleanup

__all__ = ["main", "backend_rows"]


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
    """One record per registered scheme: ``scheme``, ``available``, ``reason``, ``capabilities``,
    ``summary``, ``notes``.

    ``capabilities`` is a dict of the backend's Capabilities, or None when it cannot be loaded;
    ``notes`` are the backend's own lines about how it runs here (``Backend.notes()``).
    """
    from .errors import ConfigurationError
    from .registry import availability, get_backend, schemes

    rows: list[dict[str, Any]] = []
    for scheme in schemes():
        ok, reason = availability(scheme)
        caps: dict[str, Any] | None = None
        doc = ""
        notes: list[str] = []
        try:
            cls = get_backend(scheme)
        except ConfigurationError:
            pass
        else:
            caps = dataclasses.asdict(cls.capabilities)
            doc = (inspect.getdoc(sys.modules.get(cls.__module__)) or "").split("\n", 1)[0]
            notes = list(cls.notes())
        rows.append({"scheme": scheme, "available": ok, "reason": reason, "capabilities": caps, "summary": doc,
                     "notes": notes})
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
    shown: set[str] = set()
    for r in rows:
        for note in r["notes"]:
            if note not in shown:  # schemes on one kit say the same thing once
                shown.add(note)
                print(note, file=out)
    return 0


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
def _cmd_limits(args: argparse.Namespace, out: TextIO) -> int:
    from .limits import kernel_limits

    rows = kernel_limits()
    if args.json:
        json.dump([{"name": r.name, "value": r.value, "meaning": r.meaning} for r in rows], out, indent=2)
        print(file=out)
        return 0
    _table("kernel limits that matter to ipckit", ["limit", "value", "meaning"],
           [[r.name, r.value, r.meaning] for r in rows], plain=args.plain, out=out)
    return 0


# --------------------------------------------------------------------------- cleanup
def _cmd_cleanup(args: argparse.Namespace, out: TextIO) -> int:
    prefix: str = args.prefix
    if not prefix.startswith(cleanup.PREFIX):
        print(f"ipckit cleanup: --prefix must start with {cleanup.PREFIX!r}", file=sys.stderr)
        return 2
    failures = 0

    def failed(scheme: str, exc: Exception) -> None:
        nonlocal failures
        failures += 1
        print(f"{scheme}:// cleanup failed: {exc!r}", file=sys.stderr)

    verb = "would remove" if args.dry_run else "removed"
    count = 0
    for obj in cleanup.find_stale(prefix, on_error=failed):
        if not args.dry_run:
            try:
                if not cleanup.remove(obj):
                    continue  # removed by someone else meanwhile, or in use again
            except Exception as exc:  # one object's failure must not stop the rest
                failures += 1
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                print(f"could not remove {obj.shown_as}: {why}", file=sys.stderr)
                continue
        count += 1
        print(f"{verb} {obj.kind} {obj.shown_as} ({obj.reason})", file=out)
    if count == 0:
        print("nothing stale found" if args.dry_run else "nothing to remove", file=out)
    else:
        print(f"{count} object(s) {'would be removed' if args.dry_run else 'removed'}", file=out)
    return 1 if failures else 0


# --------------------------------------------------------------------------- keygen
def _cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    # The key files' format, modes and the no-overwrite rule live in the zmq security kit (the API
    # does the same).  Imported by name: the command line knows no backend module (the kit is no
    # backend, but the check in tests/core/test_cleanup_limits.py cannot tell).
    from .errors import IPCError

    kit = importlib.import_module("ipckit.backends.common.zmq_security")
    try:
        kp = kit.generate_keypair()
        secret_path, public_path = kit.save_keypair(kp, args.path, overwrite=args.force)
    except IPCError as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc  # no "[Errno 17]" prefix
        print(f"ipckit keygen: {why}", file=sys.stderr)
        return 1
    # The public key alone on stdout, so `KEY=$(ipckit keygen NAME)` works; what was written goes to stderr.
    print(kp.public.decode(), file=out)
    print(f"wrote {secret_path} (secret key, mode 0600: keep it on this machine) and {public_path} "
          "(public key: give it to the peers)", file=sys.stderr)
    return 0


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
    p.add_argument("--prefix", default=cleanup.PREFIX,
                   help="only objects whose name starts with this (must start with 'ipckit'; default: %(default)s)")

    p = sub.add_parser(
        "keygen", help="make a ZeroMQ CURVE key pair (PATH.key_secret and PATH.key)",
        description="Write a new CURVE key pair: PATH.key_secret (both keys, mode 0600) and PATH.key (the public "
                    "key), in the ZPL certificate format czmq and pyzmq read, and print the public key.  A server "
                    "uses curve=PATH.key_secret and lists its clients' public keys in allow=; a client uses "
                    "curve=PATH.key_secret and server_key=SERVER.key.  Existing files are never overwritten "
                    "without --force.")
    p.add_argument("path", metavar="PATH", help="where to write: PATH.key_secret and PATH.key")
    p.add_argument("--force", action="store_true",
                   help="replace existing key files (atomically); peers with the old public key need the new one")
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
        "keygen": _cmd_keygen,
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
