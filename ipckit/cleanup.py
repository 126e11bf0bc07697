"""The stale-object sweep behind ``ipckit cleanup``: every registered backend finds its own.

An object is *stale* when a crashed process left it behind: its name starts with ``ipckit``,
the current user owns it, and the backend that made it says no live end uses it.  For most
objects that is "no live process has it open, mapped or bound" (one :class:`ipckit._proc.Holders`
scan of ``/proc``); a backend whose liveness lives elsewhere (SysV semaphores) judges its own.

The sweep is two-phase, so ``--dry-run`` reports exactly what a real run would remove:

1. :func:`find_stale` asks every backend's :meth:`~ipckit.backend.Backend.find_stale` (read-only)
   and applies the two rules no backend may relax — the prefix rule (the object's ipckit name
   starts with *prefix*, which starts with ``ipckit``) and the own-user rule (the current user owns
   the file that represents it).
2. :func:`remove` hands each object back to the backend that found it
   (:meth:`~ipckit.backend.Backend.remove_stale`), which re-checks under its own locks.

:class:`Sweep` is what a backend's ``find_stale`` gets: the prefix, the scan, and helpers for the
common case of files no process holds.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._proc import Holders

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["PREFIX", "StaleObject", "Sweep", "find_stale", "remove", "remove_file", "kind_of"]

#: Every object ipckit names starts with this; cleanup never touches anything else.
PREFIX = "ipckit"

# POSIX message queues: no mq backend exists yet, so their directory is swept here, by the file
# rule, until the mq backend lands and contributes its own sweep through its Backend class.
_MQUEUE_DIR = "/dev/mqueue"


@dataclass(frozen=True)
class StaleObject:
    """A leftover ipckit object: where it is, what it is, and why it is considered stale.

    ``path`` is the file that represents the object (for a SysV object: its manifest); the
    own-user rule is checked on it.  ``name`` is its ipckit name, the one the prefix rule checks:
    a file's own name, the ``ipckit*`` directory holding it, the name without ``sem.``; empty
    means the base name of ``path``.  ``label`` is how the report names it (default: ``path``).
    ``scheme`` is the backend that found it (set by :func:`find_stale`; empty for the general
    sweep), the one :func:`remove` hands it back to.
    """

    path: str
    kind: str
    reason: str
    name: str = ""
    label: str = ""
    scheme: str = ""

    @property
    def ipckit_name(self) -> str:
        return self.name or os.path.basename(self.path)

    @property
    def shown_as(self) -> str:
        return self.label or self.path


def kind_of(mode: int) -> str:
    """``socket``, ``fifo``, ``directory`` or ``file``, from an ``st_mode``."""
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file"


def _own(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


@dataclass(frozen=True)
class Sweep:
    """One sweep, as a backend's ``find_stale`` sees it.

    ``prefix`` — only objects whose ipckit name starts with it (it starts with ``ipckit``).
    ``holders`` — what live processes hold, read once for the whole sweep.
    ``reserved`` — name prefixes some backend judges by its own rule
    (:meth:`~ipckit.backend.Backend.reserved_names`): :meth:`wants` is false for them, so the
    shared file sweeps leave them alone; the backend that reserved them checks ``prefix`` itself.
    ``now`` — the sweep's clock (``time.time()``), for grace periods.
    """

    prefix: str = PREFIX
    holders: Holders = field(default_factory=Holders.scan)
    reserved: tuple[str, ...] = ()
    now: float = field(default_factory=time.time)

    def wants(self, name: str) -> bool:
        """True if the entry *name* is in this sweep: it has the prefix and nobody reserved it."""
        return name.startswith(self.prefix) and not (self.reserved and name.startswith(self.reserved))

    def unheld_file(self, path: str, reason: str, *, name: str = "") -> StaleObject | None:
        """*path* as a stale object if it is a non-directory, non-symlink of ours no process holds."""
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not _own(st) or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) or self.holders.holds(path, st):
            return None
        return StaleObject(path, kind_of(st.st_mode), reason, name=name)

    def unheld_entries(self, directory: str, reason: str, *, strip: str = "") -> list[StaleObject]:
        """The entries of a flat object directory (``/dev/shm``, ``/dev/mqueue``) in this sweep
        that no process holds.  *strip* is a name prefix the kernel adds (``sem.`` for POSIX
        semaphores); the prefix rule applies to the name without it."""
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            return []
        found: list[StaleObject] = []
        for entry in entries:
            name = entry.removeprefix(strip) if strip else entry
            if self.wants(name):
                obj = self.unheld_file(os.path.join(directory, entry), reason, name=name)
                if obj is not None:
                    found.append(obj)
        return found


def _check_prefix(prefix: str) -> None:
    if not prefix.startswith(PREFIX):
        raise ValueError(f"cleanup only touches names that start with {PREFIX!r}, got prefix {prefix!r}")


def _backends() -> list[tuple[str, type[Backend]]]:
    """``(scheme, Backend class)`` of every registered backend that loads here, each class once."""
    from .errors import ConfigurationError
    from .registry import get_backend, schemes

    out: list[tuple[str, type[Backend]]] = []
    seen: set[type[Backend]] = set()
    for scheme in schemes():
        try:
            cls = get_backend(scheme)
        except ConfigurationError:  # not importable here: it cannot have made anything on this machine either
            continue
        if cls not in seen:
            seen.add(cls)
            out.append((scheme, cls))
    return out


def _general(sweep: Sweep) -> list[StaleObject]:
    """Objects of mechanisms that have no backend yet (POSIX message queues)."""
    return sweep.unheld_entries(_MQUEUE_DIR, "no live process has it open")


OnError = Callable[[str, Exception], None]


def find_stale(prefix: str = PREFIX, *, holders: Holders | None = None,
               on_error: OnError | None = None) -> list[StaleObject]:
    """Leftover ipckit objects of this user that no live end uses, from every registered backend.

    Read-only.  *holders* reuses a scan of ``/proc`` (default: a fresh one).  A backend whose
    ``find_stale`` raises is reported to ``on_error(scheme, exc)`` and skipped; without
    *on_error* the exception propagates.  Each path is reported once (backends sharing a kit
    sweep find the same files), by the first backend in scheme order.

    Raises:
        ValueError: *prefix* does not start with ``ipckit``.
    """
    _check_prefix(prefix)
    backends = _backends()
    reserved = tuple(dict.fromkeys(name for _scheme, cls in backends for name in cls.reserved_names()))
    sweep = Sweep(prefix, holders if holders is not None else Holders.scan(), reserved)
    found: list[StaleObject] = []
    seen: set[str] = set()

    def admit(objs: list[StaleObject], scheme: str) -> None:
        for obj in objs:
            if obj.path in seen or not obj.ipckit_name.startswith(prefix):
                continue
            try:
                st = os.lstat(obj.path)
            except OSError:
                continue  # gone already
            if not _own(st):
                continue
            seen.add(obj.path)
            found.append(dataclasses.replace(obj, scheme=scheme))

    for scheme, cls in backends:
        try:
            objs = cls.find_stale(sweep)
        except Exception as exc:  # one backend's failure must not hide the others' objects
            if on_error is None:
                raise
            on_error(scheme, exc)
            continue
        admit(objs, scheme)
    admit(_general(sweep), "")
    return found


def remove_file(obj: StaleObject) -> bool:
    """Remove the file or (empty) directory *obj* names; False if it is gone, or a directory
    that is not empty any more.

    The default :meth:`~ipckit.backend.Backend.remove_stale`, for objects whose staleness the
    holder scan decided.
    """
    try:
        if obj.kind == "directory":
            os.rmdir(obj.path)
        else:
            os.unlink(obj.path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            return False  # something was created in it since the sweep: in use again
        raise
    return True


def remove(obj: StaleObject) -> bool:
    """Remove *obj* through the backend that found it; True if removed, False if it is gone or
    turned out to be in use after all.

    Raises:
        OSError: it could not be removed.
    """
    if not obj.scheme:
        return remove_file(obj)
    from .registry import get_backend

    return bool(get_backend(obj.scheme).remove_stale(obj))
