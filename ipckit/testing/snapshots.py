"""Leak snapshots: what a test may not leave behind (P6 in docs/contract.md).

A :class:`Snapshot` records, for this process: open descriptors (number → target), live child
processes (reaped or not), and non-daemon threads; and, machine-wide: ``/dev/shm`` entries,
``/proc/sysvipc/{shm,msg,sem}`` rows and ``ipckit*`` entries in the temp directory.
:func:`leaks` compares two snapshots.

Machine-wide objects may belong to other programs (or another test run) working at the same
time, so a new machine-wide object only counts as a leak if it is still there after a short grace
period and no process outside this process tree holds it open, mapped or bound — and not at all
while another ipckit user (a pytest or ipckit process outside this tree) is running.  Set
``IPCKIT_LEAK_GUARD=local`` to check only this process's own resources, ``off`` to disable.

Everything read from ``/proc`` is read through :mod:`ipckit._proc`, the scanner ``ipckit cleanup``
uses too (there with no process left out).
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field

from .. import _proc
from .._proc import children_of

__all__ = ["Snapshot", "take_snapshot", "leaks", "settle", "guard_mode", "owned_names", "remove_object",
           "children_of", "others_active", "SHM_DIR"]

SHM_DIR = "/dev/shm"
_SYSV = ("shm", "msg", "sem")
# The id column's name in each /proc/sysvipc table (the key column is "key" in all three).
_ID = {"shm": "shmid", "msg": "msqid", "sem": "semid"}


def guard_mode() -> str:
    """``full`` (default), ``local`` (no machine-wide objects) or ``off``, from ``IPCKIT_LEAK_GUARD``."""
    mode = os.environ.get("IPCKIT_LEAK_GUARD", "full").strip().lower() or "full"
    return mode if mode in ("full", "local", "off") else "full"


def _fds() -> dict[int, str]:
    return _proc.fd_targets("self")


def _threads() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if not t.daemon and t.ident is not None}


def _listdir(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _sysv_rows() -> set[str]:
    return {f"{kind}:{row['key']}:{row[_ID[kind]]}" for kind in _SYSV for row in _proc.sysv_table(kind)}  # kind:key:id


def _tmp_entries() -> set[str]:
    tmp = tempfile.gettempdir()
    mine = f"ipckit-test-{os.getpid()}-"
    # Contract directories of other test runs (named by their pid) are theirs to check.
    return {os.path.join(tmp, n) for n in _listdir(tmp)
            if n.startswith(("ipckit", "ikt-")) and (not n.startswith("ipckit-test-") or n.startswith(mine))}


@dataclass
class Snapshot:
    fds: dict[int, str] = field(default_factory=dict)
    children: dict[int, str] = field(default_factory=dict)
    threads: dict[int, str] = field(default_factory=dict)
    shm: set[str] = field(default_factory=set)
    sysv: set[str] = field(default_factory=set)
    tmp: set[str] = field(default_factory=set)


def take_snapshot(machine_wide: bool = True) -> Snapshot:
    snap = Snapshot(fds=_fds(), children=children_of(os.getpid()), threads=_threads())
    if machine_wide:
        snap.shm = _listdir(SHM_DIR)
        snap.sysv = _sysv_rows()
        snap.tmp = _tmp_entries()
    return snap


# --------------------------------------------------------------------------- who holds what
def _my_tree() -> set[int]:
    return _proc.process_tree(os.getpid())


def _foreign_holders(paths: set[str]) -> set[str]:
    """The subset of *paths* some process outside this process tree has open, mapped or bound
    (a directory: anything below it)."""
    if not paths:
        return set()
    holders = _proc.Holders.scan(exclude=_my_tree())
    return {p for p in paths if holders.holds_tree(p)}


def others_active() -> bool:
    """True when a process outside this process tree looks like an ipckit user (pytest, ipckit, python
    with ipckit objects mapped)."""
    mine = _my_tree()
    for pid in _proc.pids():
        if pid in mine:
            continue
        cmd = _proc.cmdline(pid)
        if cmd is None or b"python" not in cmd:
            continue
        if b"pytest" in cmd or b"ipckit" in cmd:
            return True
        if any("ipckit" in path for path in _proc.mapped_paths(pid) or ()):
            return True
    return False


def _sysv_foreign(rows: set[str]) -> set[str]:
    """SysV rows whose creator / last user is a live process outside this process tree."""
    if not rows:
        return set()
    mine = _my_tree()
    foreign: set[str] = set()
    for kind in ("shm", "msg"):
        for row in _proc.sysv_table(kind):
            name = f"{kind}:{row['key']}:{row[_ID[kind]]}"
            if name not in rows:
                continue
            for col in ("cpid", "lpid", "lspid", "lrpid"):
                pid = int(row.get(col, "0") or 0)
                if pid and pid not in mine and os.path.exists(f"/proc/{pid}"):
                    foreign.add(name)
    return foreign


# --------------------------------------------------------------------------- diff
@dataclass
class Leaks(Snapshot):
    """What a later snapshot has that an earlier one had not (same fields as Snapshot)."""

    def __bool__(self) -> bool:
        return bool(self.fds or self.children or self.threads or self.shm or self.sysv or self.tmp)

    def describe(self) -> str:
        parts = []
        if self.fds:
            parts.append("open descriptors: " + ", ".join(f"{n} -> {t}" for n, t in sorted(self.fds.items())))
        if self.children:
            parts.append("child processes: " + ", ".join(f"{p} ({s})" for p, s in sorted(self.children.items())))
        if self.threads:
            parts.append("non-daemon threads: " + ", ".join(sorted(self.threads.values())))
        if self.shm:
            parts.append(f"{SHM_DIR} entries: " + ", ".join(sorted(self.shm)))
        if self.sysv:
            parts.append("SysV IPC objects (kind:key:id): " + ", ".join(sorted(self.sysv)))
        if self.tmp:
            parts.append("temp files: " + ", ".join(sorted(self.tmp)))
        return "; ".join(parts)


def _diff(before: Snapshot, after: Snapshot) -> Leaks:
    return Leaks(
        fds={n: t for n, t in after.fds.items() if before.fds.get(n) != t},
        children={p: s for p, s in after.children.items() if p not in before.children},
        threads={i: n for i, n in after.threads.items() if i not in before.threads},
        shm=after.shm - before.shm,
        sysv=after.sysv - before.sysv,
        tmp=after.tmp - before.tmp,
    )


def leaks(before: Snapshot, machine_wide: bool = True, grace: float = 1.0) -> Leaks:
    """What exists now that did not exist at *before*, after waiting up to *grace* seconds for it to go.

    Threads and processes get the grace to finish; garbage is collected once; machine-wide
    objects that another process tree holds are not counted.
    """
    deadline = time.monotonic() + grace
    found = _diff(before, take_snapshot(machine_wide))
    collected = False
    while found and time.monotonic() < deadline:
        if not collected:
            gc.collect()
            collected = True
        else:
            for t in threading.enumerate():
                if t.ident in found.threads:
                    t.join(max(0.0, deadline - time.monotonic()) / 4)
            time.sleep(0.02)
        found = _diff(before, take_snapshot(machine_wide))
    if (found.shm or found.tmp or found.sysv) and others_active():
        # Another ipckit program or test run works on this machine right now: its objects cannot be
        # told from ours, so machine-wide differences are not judged (the session sweep and an
        # exclusive CI run still are).
        found.shm, found.tmp, found.sysv = set(), set(), set()
    if found.shm or found.tmp:
        paths = {os.path.join(SHM_DIR, n) for n in found.shm} | found.tmp
        held = _foreign_holders(paths)
        found.shm = {n for n in found.shm if os.path.join(SHM_DIR, n) not in held}
        found.tmp -= held
    if found.sysv:
        found.sysv -= _sysv_foreign(found.sysv)
    return found


def settle(before: Snapshot, machine_wide: bool = True) -> Leaks:
    """Alias of :func:`leaks` with the default grace."""
    return leaks(before, machine_wide)


# --------------------------------------------------------------------------- session sweep
def owned_names(since: float) -> list[str]:
    """``ipckit*`` objects in /dev/shm and the temp dir created since *since* (epoch seconds) that no
    live process holds: leftovers a crashed or careless test left behind."""
    candidates: set[str] = set()
    for n in _listdir(SHM_DIR):
        if n.startswith(("ipckit", "sem.ipckit", "ikt-", "sem.ikt-")):
            candidates.add(os.path.join(SHM_DIR, n))
    candidates |= _tmp_entries()
    fresh = set()
    for path in candidates:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_ctime >= since:
            fresh.add(path)
    held = _foreign_holders(fresh)
    return sorted(fresh - held)


def remove_object(path: str) -> None:
    """Remove a leftover file, FIFO, socket or directory tree."""
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass
