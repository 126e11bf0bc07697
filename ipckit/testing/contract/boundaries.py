"""ErrorBoundaries: what leaves a channel at the edges of its inputs and of the OS's limits.

Part of :class:`~ipckit.testing.contract.ChannelContract` (so it runs on every backend):

* **Any non-negative timeout is valid** — 30 days, ``1e9``, ``inf`` and ``2**63`` on every blocking
  call (send, recv and its variants, poll, accept, connect) that then returns or is woken at once:
  no ``OverflowError`` from ``poll(2)`` or from a lock's ``acquire``.
* **The descriptor limit is ResourceExhausted** — in a forked child with ``RLIMIT_NOFILE`` leaving
  0, 1, 2, ... descriptors free, ``pair()``, ``listen()`` and ``connect()`` either work or raise
  :class:`~ipckit.errors.ResourceExhausted` naming the limit, and a failed call leaves no
  descriptor, no file, no SysV segment and no unclosed half-made channel behind; channels made
  before keep working.
* **Plain pickling is a TypeError** — for every end (a pair's, a connected client's, an accepted
  one): only a ``multiprocessing`` hand-off may carry a channel to another process.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import pickle
import resource
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

import ipckit

from ... import _proc
from ...channel import Channel, Listener
from ...errors import ChannelBroken, ChannelClosed, EndOfChannel, ResourceExhausted
from ...options import Capabilities
from ..peers import run_forked
from .helpers import ResultThread, wait_until_blocked

__all__ = ["ErrorBoundaries", "HUGE_TIMEOUTS", "in_forked_child"]

#: Timeouts past every clamp: poll(2)'s int milliseconds (~24.8 days), threading.TIMEOUT_MAX, a C long.
HUGE_TIMEOUTS: tuple[float, ...] = (30 * 86400.0, 1e9, math.inf, float(2**63))
_HUGE_IDS = ["30days", "1e9", "inf", "2**63"]


def in_forked_child(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run *fn* in a forked child (same user) and return its result; re-raise what it raised.

    For checks that change the process itself (resource limits): the test runner keeps its own.
    Raises:
        PeerFailed: the child crashed or did not report within *timeout*.
    """
    return run_forked(fn, timeout=timeout, what=f"forked child running {getattr(fn, '__name__', fn)}")


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _tree(root: str) -> list[str]:
    """Every path below *root*, relative to it."""
    out = []
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            out.append(os.path.relpath(os.path.join(top, name), root))
    return sorted(out)


def _fill_fds(free: int) -> list[int]:
    """Open /dev/null until the descriptor limit is reached, then close *free* of them again."""
    fill: list[int] = []
    try:
        while True:
            fill.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        pass
    for _ in range(min(free, len(fill))):
        os.close(fill.pop())
    return fill


class ErrorBoundaries:
    """Huge timeouts, an exhausted descriptor limit and plain pickling (see the module docstring)."""

    scheme: ClassVar[str]
    options: ClassVar[dict[str, Any]]
    tmpdir: str
    make_pair: Callable[..., tuple[Channel, Channel]]
    connect_pair: Callable[..., tuple[Channel, Channel]]
    own: Callable[[Any], Any]
    fresh_url: Callable[[], str]

    if TYPE_CHECKING:
        @property
        def caps(self) -> Capabilities: ...  # ChannelContract's

    # ------------------------------------------------------------------ huge timeouts
    @pytest.mark.parametrize("timeout", HUGE_TIMEOUTS, ids=_HUGE_IDS)
    def test_huge_timeout_with_a_message_waiting(self, timeout: float) -> None:
        a, b = self.make_pair()
        a.send_bytes(b"one", timeout=timeout)
        a.send(2, timeout=timeout)
        a.send_bytes(b"three", timeout=timeout)
        a.send_bytes(b"four", timeout=timeout)
        assert b.poll(timeout) is True
        assert b.recv_bytes(timeout=timeout) == b"one"
        assert b.recv(timeout=timeout) == 2
        buf = bytearray(5)
        assert b.recv_bytes_into(buf, timeout=timeout) == 5 and buf == b"three"
        assert bytes(b.recv_view(timeout=timeout)) == b"four"

    @pytest.mark.parametrize("timeout", HUGE_TIMEOUTS, ids=_HUGE_IDS)
    def test_huge_default_timeout(self, timeout: float) -> None:
        a, b = self.make_pair(default_timeout=timeout)
        a.send_bytes(b"x")
        assert b.recv_bytes() == b"x"

    @pytest.mark.parametrize("timeout", HUGE_TIMEOUTS, ids=_HUGE_IDS)
    def test_huge_timeout_waits_are_woken(self, timeout: float) -> None:
        a, b = self.make_pair()
        # A receive waiting for a message, and a second one waiting for the receive lock behind it.
        first = ResultThread(lambda: b.recv(timeout=timeout), name="ipckit-huge-recv-1")
        first.start()
        wait_until_blocked(first)
        second = ResultThread(lambda: b.recv(timeout=timeout), name="ipckit-huge-recv-2")
        second.start()
        wait_until_blocked(second)
        a.send("m1", timeout=timeout)
        a.send("m2", timeout=timeout)
        assert sorted([first.outcome(), second.outcome()]) == ["m1", "m2"]
        # A poll woken by a message, then a receive and a poll woken by close() from another thread.
        poller = ResultThread(lambda: b.poll(timeout), name="ipckit-huge-poll")
        poller.start()
        wait_until_blocked(poller, ("_poll",))
        a.send_bytes(b"m3", timeout=timeout)
        assert poller.outcome() is True
        assert b.recv_bytes(timeout=timeout) == b"m3"
        waiter = ResultThread(lambda: b.recv(timeout=timeout), name="ipckit-huge-blocked")
        waiter.start()
        wait_until_blocked(waiter)
        b.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()

    @pytest.mark.parametrize("timeout", HUGE_TIMEOUTS, ids=_HUGE_IDS)
    def test_huge_timeout_accept_and_connect(self, timeout: float) -> None:
        if not self.caps.named:
            pytest.skip(f"{self.scheme}:// has no named endpoints")
        lst: Listener = self.own(ipckit.listen(self.fresh_url(), **self.options))
        client = ResultThread(lambda: ipckit.connect(lst.url, timeout=timeout, **self.options), name="ipckit-connect")
        client.start()
        server = self.own(lst.accept(timeout=timeout))
        cl = self.own(client.outcome())
        cl.send_bytes(b"hello", timeout=timeout)
        assert server.recv_bytes(timeout=timeout) == b"hello"
        lst.close()  # its address is free again (path-based schemes hand out one address per test)
        # An accept waiting with a huge timeout is woken by close() from another thread.
        lst2: Listener = self.own(ipckit.listen(self.fresh_url(), **self.options))
        waiter = ResultThread(lambda: lst2.accept(timeout=timeout), name="ipckit-huge-accept")
        waiter.start()
        wait_until_blocked(waiter)
        lst2.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()

    # ------------------------------------------------------------------ RLIMIT_NOFILE
    def test_descriptor_limit_is_resource_exhausted_and_nothing_is_left(self) -> None:
        problems = in_forked_child(self._exhaust_descriptors, timeout=120.0)
        assert not problems, "\n".join(problems)

    def _exhaust_descriptors(self) -> list[str]:
        """In the forked child: every factory at 0, 1, 2, ... free descriptors."""
        # Generated directories and records go to the test's own directory (a private
        # $XDG_RUNTIME_DIR), where everything a failed call leaves is this call's.
        os.environ["XDG_RUNTIME_DIR"] = self.tmpdir
        opts = dict(self.options)
        problems: list[str] = []
        before: tuple[Channel, Channel] | None = None
        if self.caps.anonymous_pair:
            before = ipckit.pair(f"{self.scheme}://", **opts)

        ops: list[tuple[str, Callable[[], list[Any]]]] = []
        if self.caps.anonymous_pair:
            ops.append(("pair()", lambda: list(ipckit.pair(f"{self.scheme}://", **opts))))
        if self.caps.named:
            ops.append(("listen()", lambda: [ipckit.listen(self.fresh_url(), **opts)]))
        for name, op in ops:
            for obj in op():  # warm up: lazy imports and one-time probes run with descriptors to spare
                obj.close()
            self._each_free_count(name, op, problems)
        if self.caps.named:
            lst = ipckit.listen(self.fresh_url(), **opts)
            try:
                url = lst.url
                connected = self._each_free_count(
                    "connect()", lambda: [ipckit.connect(url, timeout=1.0, **opts)], problems, keep=True)
                if connected:
                    client = connected[0]
                    try:
                        client.send_bytes(b"after the limit", timeout=10.0)
                        if self._accept_live(lst) != b"after the limit":
                            problems.append("connect(): the channel made once descriptors were free is broken")
                    finally:
                        client.close()
            finally:
                lst.close()
        if before is not None:
            a, b = before
            a.send_bytes(b"made before", timeout=10.0)
            if b.recv_bytes(timeout=10.0) != b"made before":
                problems.append("a channel made before the limit was reached no longer works")
            a.close()
            b.close()
        for entry in os.listdir(self.tmpdir):  # a registry directory stays by design (sysv+shm), empty
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(self.tmpdir, entry))
        return problems

    @staticmethod
    def _accept_live(lst: Listener) -> bytes:
        """The first message of the first accepted peer that is alive: a multi-client listener may
        hold connections of attempts that failed after connecting (their ends are closed)."""
        for _ in range(64):
            server = lst.accept(timeout=10.0)
            try:
                return server.recv_bytes(timeout=10.0)
            except (EndOfChannel, ChannelBroken):
                continue
            finally:
                server.close()
        raise AssertionError(f"no live peer among 64 accepted on {lst.url}")

    def _each_free_count(self, name: str, op: Callable[[], list[Any]], problems: list[str], *,
                         keep: bool = False) -> list[Any]:
        """Run *op* with 0, 1, 2, ... descriptors free until it works; check each failure left nothing."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        me = str(os.getpid())
        for free in range(64):
            gc.collect()
            fds_before = _fds()
            files_before = _tree(self.tmpdir)
            segments_before = {row["shmid"] for row in _proc.sysv_table("shm") if row.get("cpid") == me}
            where = f"{name} with {free} descriptor(s) free"
            made: list[Any] = []
            failed = False
            with warnings.catch_warnings(record=True) as caught:
                # Recorded until the failed call's objects are gone: a half-made channel that is
                # not marked closed would warn (unclosed) from __del__ and close descriptors twice.
                warnings.simplefilter("always")
                resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds_before) + 1 + 16, hard))
                fill = _fill_fds(free)
                try:
                    made = op()
                except BaseException as exc:
                    failed = True
                    if not isinstance(exc, ResourceExhausted):
                        problems.append(f"{where}: raised {type(exc).__module__}.{type(exc).__name__}: {exc}")
                    elif "RLIMIT_NOFILE" not in str(exc):
                        problems.append(f"{where}: ResourceExhausted does not name RLIMIT_NOFILE: {exc}")
                    del exc  # and with it the traceback that keeps the failed call's frames alive
                finally:
                    for fd in fill:
                        os.close(fd)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                gc.collect()
            for w in caught:
                problems.append(f"{where}: warning {w.category.__name__}: {w.message}")
            if not failed:
                if not keep:
                    for obj in made:
                        obj.close()
                return made
            leaked = _fds() - fds_before
            if leaked:
                targets = _proc.fd_targets("self")
                problems.append(f"{where}: left descriptors {sorted(targets.get(fd, '?') for fd in leaked)}")
            files = _tree(self.tmpdir)
            if files != files_before:
                problems.append(f"{where}: left files {sorted(set(files) - set(files_before))} (removed "
                                f"{sorted(set(files_before) - set(files))})")
                for entry in sorted(set(files) - set(files_before), reverse=True):  # judge the next attempt alone
                    path = os.path.join(self.tmpdir, entry)
                    with contextlib.suppress(OSError):
                        os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            segments = {row["shmid"] for row in _proc.sysv_table("shm") if row.get("cpid") == me} - segments_before
            if segments:
                problems.append(f"{where}: left SysV segments {sorted(segments)}")
        problems.append(f"{name} still failed with 63 descriptors free")
        return []

    # ------------------------------------------------------------------ pickling
    def test_plain_pickling_of_every_end_is_a_type_error(self) -> None:
        pairs: list[tuple[str, Channel, Channel]] = []
        if self.caps.anonymous_pair:
            a, b = self.make_pair()
            pairs += [("a pair end", a, b), ("the other pair end", b, a)]
        if self.caps.named:
            client, server = self.connect_pair()
            pairs += [("a connected client end", client, server), ("an accepted end", server, client)]
        for what, end, peer in pairs:
            with pytest.raises(TypeError):
                pickle.dumps(end)
            if self.caps.duplex or what in ("a pair end", "a connected client end"):
                end.send_bytes(b"still usable", timeout=5.0)  # the refusal changed nothing
                assert peer.recv_bytes(timeout=5.0) == b"still usable", what
