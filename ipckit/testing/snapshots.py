"""Leak snapshots: what a test may not leave behind (contract P6).

A :class:`Snapshot` records, for this process: open descriptors (number → target), live child
processes (reaped or not), and non-daemon threads; and, machine-wide: ``/dev/shm`` entries,
``/proc/sysvipc/{shm,msg,sem}`` rows and ``ipckit*`` entries in the temp directory.
:func:`leaks` compares two snapshots.

Machine-wide objects may belong to other programs (or another test run) working at the same
time, so a new machine-wide object only counts as a leak if it is still there after a short grace
period and no process outside this process tree holds it open, mapped or bound — and not at all
while another ipckit user (a pytest or ipckit process outside this tree) is running.  Set
``IPCKIT_LEAK_GUARD=local`` to check only this process's own resources, ``off`` to disable.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Snapshot", "take_snapshot", "leaks", "settle", "guard_mode", "owned_names", "remove_object",
           "children_of", "others_active", "SHM_DIR"]

SHM_DIR = "/dev/shm"
_SYSV = ("shm", "msg", "sem")


def guard_mode() -> str:
    """``full`` (default), ``local`` (no machine-wide objects) or ``off``, from ``IPCKIT_LEAK_GUARD``."""
    mode = os.environ.get("IPCKIT_LEAK_GUARD", "full").strip().lower() or "full"
    return mode if mode in ("full", "local", "off") else "full"


def _fds() -> dict[int, str]:
    out: dict[int, str] = {}
    base = "/proc/self/fd"
    for name in os.listdir(base):
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return out


def children_of(pid: int) -> dict[int, str]:
    """``{child_pid: state}`` of every process whose parent is *pid* (zombies included)."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ..." — comm may contain spaces and parentheses.
        rest = stat[stat.rfind(b")") + 2:].split()
        if len(rest) > 1 and int(rest[1]) == pid:
            out[int(name)] = rest[0].decode()
    return out


def _threads() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if not t.daemon and t.ident is not None}


def _listdir(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _sysv_rows() -> set[str]:
    rows: set[str] = set()
    for kind in _SYSV:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 1:
                rows.add(f"{kind}:{cols[0]}:{cols[1]}")  # kind:key:id
    return rows


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
    me = os.getpid()
    tree = {me}
    frontier = [me]
    while frontier:
        kids = children_of(frontier.pop())
        tree.update(kids)
        frontier.extend(kids)
    return tree


def _foreign_holders(paths: set[str]) -> set[str]:
    """The subset of *paths* some process outside this process tree has open, mapped or bound."""
    if not paths:
        return set()
    inside: dict[str, str] = {}  # entries of candidate directories -> the directory
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            for root, dirs, files in os.walk(path):
                for n in dirs + files:
                    inside[os.path.join(root, n)] = path
            inside[path] = path
    mine = _my_tree()
    held: set[str] = set()
    bound = _bound_unix_paths()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                try:
                    target = os.readlink(f"/proc/{name}/fd/{fd}")
                except OSError:
                    continue
                if target in paths:
                    held.add(target)
                elif target in inside:
                    held.add(inside[target])
                elif target.startswith("socket:[") and target[8:-1] in bound:
                    sock = bound[target[8:-1]]
                    held.add(inside.get(sock, sock))
            with open(f"/proc/{name}/maps") as f:
                for line in f:
                    path = line.rstrip("\n").split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                    if path.endswith(" (deleted)"):
                        continue
                    if path in paths:
                        held.add(path)
                    elif path in inside:
                        held.add(inside[path])
        except OSError:
            continue
    return held & paths


def _bound_unix_paths() -> dict[str, str]:
    """``{socket_inode: path}`` of bound Unix sockets (from ``/proc/net/unix``)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/net/unix") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) >= 8:
                    out[cols[6]] = cols[7]
    except OSError:
        pass
    return out


def others_active() -> bool:
    """True when a process outside this process tree looks like an ipckit user (pytest, ipckit, python
    with ipckit objects mapped)."""
    mine = _my_tree()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in mine:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"python" not in cmd:
            continue
        if b"pytest" in cmd or b"ipckit" in cmd:
            return True
        try:
            with open(f"/proc/{name}/maps", "rb") as f:
                if b"ipckit" in f.read():
                    return True
        except OSError:
            continue
    return False


def _sysv_foreign(rows: set[str]) -> set[str]:
    """SysV rows whose creator / last user is a live process outside this process tree."""
    if not rows:
        return set()
    mine = _my_tree()
    foreign: set[str] = set()
    for kind in ("shm", "msg"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header = f.readline().split()
                lines = f.read().splitlines()
        except OSError:
            continue
        pid_cols = [i for i, h in enumerate(header) if h in ("cpid", "lpid", "lspid", "lrpid")]
        for line in lines:
            cols = line.split()
            row = f"{kind}:{cols[0]}:{cols[1]}"
            if row not in rows:
                continue
            for i in pid_cols:
                pid = int(cols[i])
                if pid and pid not in mine and os.path.exists(f"/proc/{pid}"):
                    foreign.add(row)
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
