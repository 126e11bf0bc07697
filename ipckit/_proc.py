"""What live processes hold, read from ``/proc``: the one scanner behind ``ipckit cleanup`` and the
leak guard (:mod:`ipckit.testing.snapshots`).

* :class:`Holders` — which files some process has open (by inode), mapped (by path) or bound
  (Unix socket paths), optionally leaving out a set of processes (the leak guard leaves out its
  own process tree: what only the test itself holds is still a leak).
* Small readers for the rest: the process table (:func:`processes`, :func:`children_of`,
  :func:`process_tree`), a process's descriptors, command line and mapped paths, the rows of
  ``/proc/sysvipc/*``.

Every reader tolerates processes that exit mid-scan and entries it may not read (another user's
process): what cannot be read counts as not held.  The module uses the standard library only and
imports nothing from ipckit, so it also runs from a bare checkout (see ``main``)::

    printf '%s\\n' /dev/shm/ipckit.x /tmp/ipckit-y | python3 ipckit/_proc.py unheld
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = [
    "Holders",
    "pids",
    "processes",
    "children_of",
    "process_tree",
    "fd_targets",
    "cmdline",
    "mapped_paths",
    "bound_unix_sockets",
    "sysv_table",
]

PROC = "/proc"
_DELETED = " (deleted)"


def pids() -> list[int]:
    """Every process visible in ``/proc``."""
    return [int(n) for n in os.listdir(PROC) if n.isdigit()]


def processes() -> dict[int, tuple[int, str]]:
    """``{pid: (ppid, state)}`` of every visible process, zombies included."""
    out: dict[int, tuple[int, str]] = {}
    for pid in pids():
        try:
            with open(f"{PROC}/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ..." — comm may hold spaces and parentheses: split after the last ")".
        rest = raw[raw.rfind(b")") + 2:].split()
        if len(rest) > 1:
            out[pid] = (int(rest[1]), rest[0].decode())
    return out


def children_of(pid: int) -> dict[int, str]:
    """``{child_pid: state}`` of every process whose parent is *pid* (zombies included)."""
    return {child: state for child, (ppid, state) in processes().items() if ppid == pid}


def process_tree(root: int) -> set[int]:
    """*root* and all its descendants (one read of the process table)."""
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _state) in processes().items():
        kids.setdefault(ppid, []).append(pid)
    tree = {root}
    frontier = [root]
    while frontier:
        for child in kids.get(frontier.pop(), ()):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def fd_targets(pid: int | str = "self") -> dict[int, str]:
    """``{fd: link target}`` of *pid*'s open descriptors (``"self"``: this process)."""
    base = f"{PROC}/{pid}/fd"
    out: dict[int, str] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except OSError:  # closed meanwhile (for "self": the listing's own descriptor)
            continue
    return out


def cmdline(pid: int) -> bytes | None:
    """The NUL-separated command line of *pid*, or None if it cannot be read."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def mapped_paths(pid: int | str) -> set[str] | None:
    """The files *pid* has mapped (a `` (deleted)`` suffix removed), or None if unreadable.

    A mapping of a file unlinked since still names it: whoever judges "is this name held?" errs
    on the side of keeping the name.
    """
    try:
        with open(f"{PROC}/{pid}/maps") as f:
            lines = f.readlines()
    except OSError:
        return None
    out: set[str] = set()
    for line in lines:
        # "address perms offset dev inode pathname" — the pathname may contain spaces.
        fields = line.rstrip("\n").split(None, 5)
        if len(fields) == 6:
            out.add(fields[5].removesuffix(_DELETED))
    return out


def bound_unix_sockets() -> dict[int, str]:
    """``{socket inode: path}`` of the Unix sockets bound to a file-system path (``/proc/net/unix``)."""
    out: dict[int, str] = {}
    try:
        with open(f"{PROC}/net/unix") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                # Num RefCount Protocol Flags Type St Inode Path — abstract names start with "@".
                if len(cols) >= 8 and cols[7].startswith("/"):
                    out[int(cols[6])] = cols[7]
    except (OSError, ValueError):
        pass
    return out


def sysv_table(kind: str) -> list[dict[str, str]]:
    """The rows of ``/proc/sysvipc/<kind>`` (``shm``, ``msg`` or ``sem``) keyed by the header's names.

    Every row has at least ``key`` and the id column (``shmid``, ``msqid``, ``semid``); a row
    shorter than the header (a kernel that adds columns to one and not the other) keeps the
    columns it has.
    """
    try:
        with open(f"{PROC}/sysvipc/{kind}") as f:
            header = f.readline().split()
            lines = f.read().splitlines()
    except OSError:
        return []
    return [dict(zip(header, cols, strict=False)) for cols in map(str.split, lines) if len(cols) > 1]


@dataclass(frozen=True)
class Holders:
    """What the scanned processes hold: open files (by ``(st_dev, st_ino)``), mapped paths and
    bound Unix socket paths.  Take one with :meth:`scan`; ask it with :meth:`holds`."""

    inodes: frozenset[tuple[int, int]]
    mapped: frozenset[str]
    bound: frozenset[str]

    @classmethod
    def scan(cls, exclude: Collection[int] = ()) -> Holders:
        """Read every visible process except those in *exclude*, once.

        Open descriptors are compared by inode (``stat`` of ``/proc/<pid>/fd/<n>``), so a renamed
        or differently spelled path still matches.  A socket file is held when its bound socket
        is: ``/proc/net/unix`` maps the path to the socket's inode, which a holder's descriptor
        has.  A bound socket no scanned process holds still counts as held unless one of the
        excluded processes holds it: it may be in flight in a message, or held in another pid
        namespace; only a socket known to be the excluded processes' alone is left out.
        """
        skip = set(exclude)
        inodes: set[tuple[int, int]] = set()
        excluded: set[tuple[int, int]] = set()
        mapped: set[str] = set()
        for pid in pids():
            into = excluded if pid in skip else inodes
            base = f"{PROC}/{pid}/fd"
            try:
                fds = os.listdir(base)
            except OSError:
                continue
            for fd in fds:
                try:
                    st = os.stat(f"{base}/{fd}")
                except OSError:
                    continue
                into.add((st.st_dev, st.st_ino))
            if pid not in skip:
                mapped |= mapped_paths(pid) or set()
        held_socks = {ino for _dev, ino in inodes}
        excluded_socks = {ino for _dev, ino in excluded}
        bound = {path for ino, path in bound_unix_sockets().items()
                 if ino in held_socks or ino not in excluded_socks}
        return cls(frozenset(inodes), frozenset(mapped), frozenset(bound))

    def holds(self, path: str, st: os.stat_result | None = None) -> bool:
        """True if a scanned process has *path* open, mapped or (a socket file) bound.

        *st* is the caller's ``lstat`` of *path*, if it has one; a path that does not exist is
        not held.
        """
        if st is None:
            try:
                st = os.lstat(path)
            except OSError:
                return False
        if (st.st_dev, st.st_ino) in self.inodes or path in self.mapped:
            return True
        return stat.S_ISSOCK(st.st_mode) and path in self.bound

    def holds_tree(self, path: str) -> bool:
        """True if *path* is held or, for a directory (never followed through a symlink),
        anything below it is."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if self.holds(path, st):
            return True
        if not stat.S_ISDIR(st.st_mode):
            return False
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                if self.holds(os.path.join(root, name)):
                    return True
        return False

    def unheld(self, paths: Iterable[str]) -> list[str]:
        """The *paths* for which :meth:`holds_tree` is false, in order."""
        return [p for p in paths if not self.holds_tree(p)]


def main(argv: list[str] | None = None) -> int:
    """``unheld``: read lines on stdin, print the ones no live process holds.

    Lines that are not absolute paths (e.g. SysV rows) are printed unchanged; a directory is
    held when anything below it is.
    """
    args = sys.argv[1:] if argv is None else argv
    if args != ["unheld"]:
        print("usage: python3 ipckit/_proc.py unheld  < lines", file=sys.stderr)
        return 2
    items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    holders = Holders.scan()
    for item in items:
        if not item.startswith("/") or not holders.holds_tree(item):
            print(item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
