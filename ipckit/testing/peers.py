"""Real peer processes for tests: a READY handshake, SIGKILL at chosen points, other-user runs.

Why it looks like this:

* Peers are real processes (``multiprocessing``, *fork* or *spawn*), never threads, so crashes,
  descriptor inheritance and credentials are the real thing.  A peer says READY through a status
  pipe (:func:`ready`), so a test never sleeps to synchronise.
* Every peer asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), and every
  :class:`Peer` handle kills and reaps its process on ``close()``: a crashed or interrupted test
  leaves no orphan behind.
* ``as_user`` forks, drops to another uid (root bypasses file permissions, so permission checks
  must run as someone else), asserts the drop really happened, and reports back through a pipe.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = [
    "run_forked",
    "Peer",
    "PeerFailed",
    "spawn_peer",
    "ready",
    "set_pdeathsig",
    "kill_self",
    "as_user",
    "NOBODY",
]

#: The uid (and gid) ``as_user`` drops to by default: ``nobody`` on Linux.
NOBODY = 65534

_PR_SET_PDEATHSIG = 1
_status: multiprocessing.connection.Connection | None = None


class PeerFailed(AssertionError):
    """A peer process raised, died before READY, or did not finish in time."""


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send *sig* to this process when its parent (thread) exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ready() -> None:
    """Tell the test that started this peer that it is ready (call it inside a peer function)."""
    if _status is None:
        raise RuntimeError("ready() called outside a peer started by spawn_peer()")
    _status.send(("ready", None))


def kill_self() -> NoReturn:
    """SIGKILL this process at once (no atexit, no finalizers, no goodbye frames)."""
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pragma: no cover - the signal is delivered before this loop matters
        signal.pause()


def _peer_main(fn: Callable[..., Any], args: tuple[Any, ...], status: multiprocessing.connection.Connection,
               parent: int) -> None:
    global _status
    set_pdeathsig()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)
    _status = status
    try:
        result = fn(*args)
    except BaseException as exc:
        tb = traceback.format_exc()
        try:
            status.send(("error", f"{type(exc).__name__}: {exc}", tb))
        finally:
            status.close()
        os._exit(1)
    try:
        status.send(("result", result))
    except Exception as exc:  # the result does not pickle: report that instead
        status.send(("error", f"result of {fn.__name__} cannot be sent back: {exc!r}", ""))
    status.close()


class Peer:
    """Handle of a peer process started by :func:`spawn_peer`; use it as a context manager."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], method: str) -> None:
        ctx: Any = multiprocessing.get_context(method)
        self._name = getattr(fn, "__name__", "peer")
        self._status, child_status = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_peer_main, args=(fn, args, child_status, os.getpid()), daemon=True,
                                    name=f"ipckit-peer-{self._name}")
        self._ready = False
        self._done = False
        self._result: Any = None
        self._error: str | None = None
        self._closed = False
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns about fork() in a process with threads (pytest-timeout's timer);
                # the child only runs the peer function, so the warning does not apply.
                warnings.simplefilter("ignore", DeprecationWarning)
                self._process.start()
        except BaseException:
            self._status.close()
            child_status.close()
            raise
        child_status.close()  # the parent's copy: its EOF tells us the child is gone

    @property
    def pid(self) -> int:
        pid: int | None = self._process.pid
        assert pid is not None
        return pid

    @property
    def exitcode(self) -> int | None:
        """Exit code once reaped (negative: killed by that signal)."""
        code: int | None = self._process.exitcode
        return code

    def _read(self, deadline: float) -> bool:
        """Read one status message; False on timeout. Records ready/result/error/EOF."""
        left = max(0.0, deadline - time.monotonic())
        if not self._status.poll(left):
            return False
        try:
            kind, *rest = self._status.recv()
        except (EOFError, OSError):
            self._done = True
            return True
        if kind == "ready":
            self._ready = True
        elif kind == "result":
            self._result = rest[0]
            self._done = True
        else:
            self._error = f"peer {self._name} (pid {self.pid}) raised {rest[0]}\n{rest[1]}"
            self._done = True
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the peer called :func:`ready`.

        Raises:
            PeerFailed: the peer raised or exited first, or did not become ready in time.
        """
        deadline = time.monotonic() + timeout
        while not self._ready:
            if self._done:
                self._process.join(5.0)
                raise PeerFailed(self._error or f"peer {self._name} exited with {self.exitcode} before READY")
            if not self._read(deadline):
                raise PeerFailed(f"peer {self._name} was not ready after {timeout} s")

    def join(self, timeout: float = 30.0) -> Any:
        """Wait for the peer function to return and the process to exit; return its result.

        Raises:
            PeerFailed: the peer raised, was killed, or did not finish in time (it is then killed).
        """
        deadline = time.monotonic() + timeout
        while not self._done:
            if not self._read(deadline):
                self.kill()
                self._process.join(5.0)
                raise PeerFailed(f"peer {self._name} did not finish within {timeout} s (killed)")
        self._process.join(max(0.5, deadline - time.monotonic()))
        if self._process.exitcode is None:
            self.kill()
            self._process.join(5.0)
            raise PeerFailed(f"peer {self._name} reported but did not exit (killed)")
        if self._error is not None:
            raise PeerFailed(self._error)
        if self._process.exitcode != 0:
            raise PeerFailed(f"peer {self._name} exited with {self._process.exitcode}")
        return self._result

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the process to end however it ends (for peers that kill themselves); return the exit code."""
        self._process.join(timeout)
        code: int | None = self._process.exitcode
        if code is None:
            self.kill()
            self._process.join(5.0)
            raise PeerFailed(f"peer {self._name} still running after {timeout} s (killed)")
        return code

    def kill(self) -> None:
        """SIGKILL the peer (no-op once it is gone)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGSTOP the peer (a stuck reader); :meth:`cont` resumes it."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self._process.exitcode is None and self._process.pid is not None:
            try:
                os.kill(self._process.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Kill the peer if it still runs, reap it and release every descriptor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._process.exitcode is None:
            self._process.join(0)
        if self._process.exitcode is None:
            self._signal(signal.SIGCONT)
            self.kill()
            self._process.join(10.0)
        self._status.close()
        self._process.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Peer {self._name} pid={self._process.pid} exitcode={self._process.exitcode}>"


def spawn_peer(fn: Callable[..., Any], *args: Any, method: str = "fork") -> Peer:
    """Start ``fn(*args)`` in a new process (``method``: ``"fork"`` or ``"spawn"``).

    *fn* must be a module-level function (spawn imports it by name) and should call :func:`ready`
    once it is ready; the test calls :meth:`Peer.wait_ready`.  Channels among *args* travel to the
    child like ``multiprocessing`` arguments.  The process dies with the test runner
    (``PR_SET_PDEATHSIG``) and :meth:`Peer.close` always reaps it.
    """
    return Peer(fn, args, method)


# --------------------------------------------------------------------------- other users
def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid or os.getgroups():
        raise RuntimeError(f"could not drop to uid {uid}: still uid={os.getuid()} euid={os.geteuid()}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeError("regained root after dropping privileges: the drop did not happen")


def as_user(fn: Callable[..., Any], *args: Any, uid: int = NOBODY, gid: int | None = None,
            timeout: float = 30.0) -> Any:
    """Run ``fn(*args)`` in a forked child running as *uid* (default ``nobody``); return its result.

    Root bypasses file permissions, so a permission check only means something as another user.
    An exception raised by *fn* is re-raised here (the same type, if it pickles).  Skips the
    calling test when not running as root.

    Raises:
        PeerFailed: the child crashed, could not drop privileges, or did not finish in time.
    """
    if os.geteuid() != 0:
        import pytest

        pytest.skip("as_user() needs root to switch to another uid")
    gid = uid if gid is None else gid
    return run_forked(fn, *args, timeout=timeout, what=f"as_user({getattr(fn, '__name__', fn)})",
                      before=lambda: _drop_to(uid, gid))


def run_forked(fn: Callable[..., Any], *args: Any, timeout: float = 60.0, what: str = "forked child",
               before: Callable[[], object] | None = None) -> Any:
    """Run ``fn(*args)`` in a child made by a bare ``os.fork()`` and return its result.

    For checks that change the process itself (uid, resource limits, inherited ends): the test
    runner keeps its own state.  *before* runs first in the child (e.g. dropping privileges).  The
    child ends with ``os._exit`` and never returns into the caller; an exception of *fn* that
    pickles is re-raised here with its own type.

    Raises:
        PeerFailed: the child crashed, raised something that does not pickle, or did not report
            within *timeout* (it is then killed).
    """
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with the runner's threads: fn uses none
        pid = os.fork()
    if pid == 0:  # child: never return into the test runner
        code = 0
        try:
            os.close(rfd)
            set_pdeathsig()
            try:
                if before is not None:
                    before()
                    # A change of uid or gid (as_user) clears the parent-death signal: ask again,
                    # and go if the parent died meanwhile (we would be an orphan already).
                    set_pdeathsig()
                    if os.getppid() != parent:
                        os._exit(70)
                outcome: tuple[Any, ...] = ("result", fn(*args))
            except BaseException as exc:
                try:
                    pickle.dumps(exc)
                    outcome = ("raised", exc, traceback.format_exc())
                except Exception:
                    outcome = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            try:
                data = pickle.dumps(outcome)
            except Exception as exc:
                data = pickle.dumps(("error", f"result cannot be sent back: {exc!r}", ""))
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        import select

        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                os.kill(pid, signal.SIGKILL)
                raise PeerFailed(f"{what} did not finish within {timeout} s")
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        raise PeerFailed(f"{what} exited with status {status} without reporting")
    outcome = pickle.loads(b"".join(chunks))
    if outcome[0] == "result":
        return outcome[1]
    if outcome[0] == "raised":
        raise outcome[1]
    raise PeerFailed(f"{what} failed: {outcome[1]}\n{outcome[2]}")
