"""Two "hosts" on one machine: two network namespaces joined by a veth pair (Linux, root only).

Used by the two-host tests of zmq+tcp:// (tests/backends/test_zmq_netns.py) and by
``examples/cross_host.py --netns``::

    with netns_pair() as net:                     # ip netns add, ip link add ... type veth peer ...
        worker = net.spawn(net.a, [sys.executable, "worker.py", "--bind", f"tcp://{net.a.address}:5555"])
        client = net.run(net.b, [sys.executable, "client.py", f"tcp://{net.a.address}:5555"])
    # both namespaces and the veth pair are gone, every process started through net is killed

Each namespace has its loopback and one end of the veth pair (``10.213.X.Y/30``) and nothing else:
no route out, so the traffic of a test stays between the two namespaces.  The processes run with
``ip netns exec`` (same file system, same users; only the network differs).  ``close()`` (the end
of the ``with``) kills the process group of every process spawned, deletes the namespaces (which
destroys the veth pair) and, if setting up failed half-way, the veth pair left in this namespace.
Namespaces of an earlier run whose process is gone (SIGKILLed before it could clean up) are
removed by :func:`remove_stale`, which :func:`netns_pair` calls first.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ipckit.errors import IPCError

__all__ = ["NetnsError", "Host", "NetnsPair", "unavailable", "netns_pair", "remove_stale", "PREFIX"]

PREFIX = "ipckit-netns-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[0-9a-f]+-[ab]$")
_IP_TIMEOUT = 20.0  # seconds for one `ip` command (they take milliseconds)
_KILL_TIMEOUT = 10.0


class NetnsError(IPCError):
    """An ``ip`` command failed; the message has its stderr."""


@dataclass(frozen=True)
class Host:
    """One side: its namespace, its veth interface and the address on it."""

    netns: str
    iface: str
    address: str


def unavailable() -> str | None:
    """Why two namespaces cannot be made here (a skip reason), or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root: creating network namespaces and veth pairs (ip netns add, ip link add) is privileged"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`ip {' '.join(args)}` could not run: {exc}") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces of this helper whose creating process is gone; returns their names."""
    removed = []
    for name in _namespaces():
        m = _NAME.match(name)
        if m and not _pid_alive(int(m.group(1))) and _ip("netns", "del", name, check=False).returncode == 0:
            removed.append(name)
    return removed


class NetnsPair:
    """Two namespaces ``a`` and ``b`` joined by a veth pair; see the module docstring."""

    def __init__(self) -> None:
        why = unavailable()
        if why:
            raise NetnsError(why)
        token = secrets.token_hex(3)
        octet3, octet4 = secrets.randbelow(256), 4 * secrets.randbelow(64)
        net = f"10.213.{octet3}"
        self.a = Host(f"{PREFIX}{os.getpid()}-{token}-a", f"ipk{token}a", f"{net}.{octet4 + 1}")
        self.b = Host(f"{PREFIX}{os.getpid()}-{token}-b", f"ipk{token}b", f"{net}.{octet4 + 2}")
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        for host in (self.a, self.b):
            _ip("netns", "add", host.netns)
        # Created in this namespace, then each end is moved into its own one.
        _ip("link", "add", self.a.iface, "type", "veth", "peer", "name", self.b.iface)
        for host in (self.a, self.b):
            _ip("link", "set", host.iface, "netns", host.netns)
            _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", host.iface)
            _ip("-n", host.netns, "link", "set", host.iface, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """*argv* as a command that runs inside *host*'s namespace."""
        return ["ip", "netns", "exec", host.netns, *argv]

    def spawn(self, host: Host, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start *argv* inside *host*'s namespace, in a session of its own (killed as a group by close())."""
        if self._closed:
            raise NetnsError("this NetnsPair is closed")
        popen.setdefault("stdin", subprocess.DEVNULL)
        try:
            proc: subprocess.Popen[Any] = subprocess.Popen(self.command(host, argv), start_new_session=True,
                                                           **popen)
        except OSError as exc:
            raise NetnsError(f"cannot start {argv[0]} in {host.netns}: {exc}") from exc
        self._procs.append(proc)
        return proc

    def run(self, host: Host, argv: Sequence[str], *, timeout: float, **popen: Any) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside *host*'s namespace to its end (text output captured); killed at *timeout*."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        proc = self.spawn(host, argv, text=True, **popen)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            out, err = proc.communicate()
            raise NetnsError(f"{argv} in {host.netns} did not end within {timeout} s; stdout: {out!r}; "
                             f"stderr: {err!r}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    @staticmethod
    def _kill(proc: subprocess.Popen[Any]) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(_KILL_TIMEOUT)
        except subprocess.TimeoutExpired:  # unkillable (D state): reported by the leak guard
            pass

    def close(self) -> None:
        """Kill the spawned processes, delete both namespaces and the veth pair.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for proc in self._procs:
            self._kill(proc)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        # The namespaces go first: a namespace with no process in it dies with its veth end, and
        # the other end goes with it.  A veth still here means the set-up stopped before moving it.
        existing = set(_namespaces())
        for host in (self.a, self.b):
            if host.netns in existing:
                done = _ip("netns", "del", host.netns, check=False)
                if done.returncode != 0:
                    errors.append(done.stderr.strip())
        for host in (self.a, self.b):
            if _ip("link", "show", host.iface, check=False).returncode == 0:
                _ip("link", "del", host.iface, check=False)
        if errors:
            raise NetnsError(f"could not delete the namespaces: {'; '.join(errors)}")

    def __enter__(self) -> NetnsPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """A :class:`NetnsPair` for the ``with`` block, removed at its end whatever happens inside."""
    remove_stale()
    pair = NetnsPair()
    try:
        yield pair
    finally:
        pair.close()
