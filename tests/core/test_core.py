"""Core pieces: lazy registry, errors, deadlines, channel base behaviour, and the testing helpers."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

import ipckit
from ipckit import errors
from ipckit.backend import Backend
from ipckit.deadline import Backoff, deadline_from, poll_ms, remaining
from ipckit.registry import availability, get_backend, register_backend, schemes
from ipckit.testing import (
    NOBODY,
    PeerFailed,
    as_user,
    leaks,
    ready,
    signal_storm,
    spawn_peer,
    take_snapshot,
)
from ipckit.testing.snapshots import children_of

# --------------------------------------------------------------------------- registry


@pytest.fixture(autouse=True)
def _restore_registries() -> Iterator[None]:
    """Schemes and serializers registered by these tests do not outlive them."""
    from ipckit import registry, serializers

    specs, loaded, factories = dict(registry._SPECS), dict(registry._LOADED), dict(serializers._FACTORIES)
    yield
    for live, saved in ((registry._SPECS, specs), (registry._LOADED, loaded), (serializers._FACTORIES, factories)):
        live.clear()
        live.update(saved)  # type: ignore[attr-defined]


# `import ipckit` imports no backend and no kit: tests/core/test_package_layout.py.


def test_backend_loads_on_first_use() -> None:
    code = ("import ipckit, sys; a, b = ipckit.pair('memory://'); a.close(); b.close(); "
            "print(sorted(m for m in sys.modules if m.startswith('ipckit.backends.')"
            " and not m.startswith('ipckit.backends.common')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['ipckit.backends.memory']"  # only the scheme asked for (kits may load)


def test_unknown_scheme_did_you_mean() -> None:
    with pytest.raises(errors.UnknownScheme, match="did you mean 'pipe'"):
        ipckit.pair("piep://")
    with pytest.raises(errors.UnknownScheme, match="registered"):
        get_backend("zzzzzz")
    assert issubclass(errors.UnknownScheme, ValueError)


def test_backend_unavailable_has_install_hint() -> None:
    register_backend("test-missing", "ipckit_test_no_such_module:Backend", install_hint="pip install ipckit-missing",
                     replace=True)
    with pytest.raises(errors.BackendUnavailable, match="pip install ipckit-missing"):
        ipckit.pair("test-missing://")
    ok, why = availability("test-missing")
    assert not ok and "pip install" in why
    assert ipckit.available_backends()["test-missing"] is False
    register_backend("test-missing2", "ipckit_test_no_such_module2:Backend", replace=True)
    with pytest.raises(errors.BackendUnavailable, match="pip install ipckit_test_no_such_module2"):
        get_backend("test-missing2")


def test_register_backend_rules() -> None:
    class Dummy(Backend):
        scheme = "test-dummy"

    register_backend("test-dummy", Dummy, replace=True)
    assert get_backend("test-dummy") is Dummy
    with pytest.raises(errors.ConfigurationError, match="already registered"):
        register_backend("test-dummy", Dummy)
    with pytest.raises(errors.ConfigurationError):
        register_backend("bad scheme!", Dummy)
    with pytest.raises(errors.UnsupportedOperation):
        ipckit.pair("test-dummy://")
    register_backend("test-notabackend", "ipckit.errors:IPCError", replace=True)
    with pytest.raises(errors.ConfigurationError, match="not an ipckit Backend"):
        get_backend("test-notabackend")


def test_available_backends_here() -> None:
    avail = ipckit.available_backends()
    assert avail["memory"] is True and avail["pipe"] is True
    assert {"memory", "pipe"} <= set(schemes())


# --------------------------------------------------------------------------- errors and deadlines


def test_error_tree_subclasses_builtins() -> None:
    assert issubclass(errors.ChannelTimeout, TimeoutError)
    assert issubclass(errors.RecvTimeout, errors.ChannelTimeout)
    assert issubclass(errors.SendTimeout, errors.ChannelTimeout)
    assert issubclass(errors.MessageTooLarge, ValueError)
    assert issubclass(errors.BufferTooSmall, errors.MessageTooLarge)
    assert issubclass(errors.PeerDied, errors.ChannelBroken)
    assert issubclass(errors.EndpointNotFound, FileNotFoundError)
    assert issubclass(errors.EndpointExists, FileExistsError)
    assert issubclass(errors.PermissionDenied, PermissionError)
    assert issubclass(errors.ConnectFailed, ConnectionError)
    assert issubclass(errors.ConfigurationError, ValueError)
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.IPCError)
            assert getattr(ipckit, name) is obj


@pytest.mark.parametrize("code,cls", [(2, errors.EndpointNotFound), (17, errors.EndpointExists),
                                      (13, errors.PermissionDenied), (32, errors.PeerDied),
                                      (28, errors.ResourceExhausted), (24, errors.ResourceExhausted),
                                      (5, errors.ChannelBroken)])
def test_from_oserror(code: int, cls: type[errors.IPCError]) -> None:
    err = errors.from_oserror(OSError(code, os.strerror(code)), "doing it")
    assert type(err) is cls
    assert "doing it" in str(err)


def test_deadlines() -> None:
    assert deadline_from(None) is None and remaining(None) is None and poll_ms(None) is None
    d = deadline_from(0)
    assert d is not None and remaining(d) == 0.0 and poll_ms(d) == 0
    d = deadline_from(0.5)
    left = remaining(d)
    assert left is not None and 0.4 < left <= 0.5
    assert poll_ms(d, cap=0.1) == 100
    with pytest.raises(ValueError):
        deadline_from(-1)
    with pytest.raises(ValueError):
        deadline_from(float("nan"))
    b = Backoff(first=0.001, maximum=0.002)
    assert b.sleep(deadline_from(1.0)) is True
    assert b.sleep(deadline_from(0)) is False


# --------------------------------------------------------------------------- channel base


def test_unclosed_channel_warns_and_still_closes() -> None:
    a, b = ipckit.pair("pipe://")
    fds = [a._rfd, a._wfd]  # type: ignore[attr-defined]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del a
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(errors.EndOfChannel):
        b.recv(timeout=5)
    b.close()


def test_negative_timeout_is_refused() -> None:
    a, b = ipckit.pair("memory://")
    try:
        with pytest.raises(ValueError):
            b.recv(timeout=-1)
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- testing helpers


def _ready_then(result: object) -> object:
    ready()
    return result


def _raise_after_ready() -> None:
    ready()
    raise KeyError("boom")


def _exit_before_ready() -> None:
    os._exit(3)


def _sleep_forever() -> None:
    ready()
    while True:
        signal.pause()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_spawn_peer_ready_and_result(method: str) -> None:
    with spawn_peer(_ready_then, {"x": 1}, method=method) as peer:
        peer.wait_ready()
        assert peer.join() == {"x": 1}
        assert peer.exitcode == 0


def test_spawn_peer_reports_exceptions() -> None:
    with spawn_peer(_raise_after_ready) as peer:
        peer.wait_ready()
        with pytest.raises(PeerFailed, match="KeyError"):
            peer.join()
    with spawn_peer(_exit_before_ready) as peer, pytest.raises(PeerFailed, match="before READY"):
        peer.wait_ready()


def test_spawn_peer_kill_stop_and_reap() -> None:
    with spawn_peer(_sleep_forever) as peer:
        peer.wait_ready()
        peer.stop()
        peer.cont()
        peer.kill()
        assert peer.wait_exit() == -signal.SIGKILL
    # a peer left running is killed and reaped by close()
    peer = spawn_peer(_sleep_forever)
    peer.wait_ready()
    pid = peer.pid
    peer.close()
    assert pid not in children_of(os.getpid())  # killed and reaped: no zombie left


def _whoami() -> tuple[int, int, list[int]]:
    return os.getuid(), os.geteuid(), os.getgroups()


def _touch_root_file(path: str) -> None:
    with open(path, "w") as f:
        f.write("x")


def test_as_user_runs_as_nobody(tmp_path: object) -> None:
    uid, euid, groups = as_user(_whoami)
    assert uid == euid == NOBODY and groups == []
    path = os.path.join(str(tmp_path), "private")
    with open(path, "w"):
        pass
    os.chmod(path, 0o600)
    with pytest.raises(PermissionError):
        as_user(_touch_root_file, path)


def test_signal_storm_interrupts_sleep_but_not_deadline() -> None:
    with signal_storm(hz=200) as storm:
        start = time.monotonic()
        time.sleep(0.2)
        elapsed = time.monotonic() - start
    assert storm.count >= 10
    assert 0.19 <= elapsed < 0.5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_signal_storm_needs_main_thread() -> None:
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with signal_storm():
                pass
        except RuntimeError as exc:
            failure.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert failure


@pytest.mark.leaks_ok
def test_leak_guard_sees_each_kind_of_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipckit.testing.snapshots as leak_module

    monkeypatch.setattr(leak_module, "others_active", lambda: False)  # judge even on a busy machine
    before = take_snapshot()
    r, w = os.pipe()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="ipckit-leaky-thread")
    t.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    shm = f"/dev/shm/ipckit-leaktest-{os.getpid()}"
    open(shm, "w").close()
    try:
        found = leaks(before, grace=0.1)
        assert r in found.fds and w in found.fds
        assert child.pid in found.children
        assert t.ident in found.threads
        assert os.path.basename(shm) in found.shm
        assert "ipckit-leaky-thread" in found.describe()
    finally:
        os.close(r)
        os.close(w)
        stop.set()
        t.join()
        child.kill()
        child.wait()
        os.unlink(shm)
    assert not leaks(before, grace=1.0)


def test_unclosed_channel_closes_even_when_warnings_are_errors() -> None:
    a, b = ipckit.pair("pipe://")
    fds = [a._rfd, a._wfd]  # type: ignore[attr-defined]
    unraisable: list[object] = []
    old = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            del a
            gc.collect()
    finally:
        sys.unraisablehook = old
    assert unraisable  # the ResourceWarning surfaced (as an error) ...
    for fd in fds:  # ... and the descriptors were released anyway
        with pytest.raises(OSError):
            os.fstat(fd)
    b.close()


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), "1", True])
def test_bad_timeout_is_a_configuration_error(bad: object) -> None:
    a, b = ipckit.pair("memory://")
    with a, b:
        with pytest.raises(ipckit.ConfigurationError, match="timeout must be None or a number"):
            b.recv(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(ipckit.ConfigurationError):
            a.send(1, timeout=bad)  # type: ignore[arg-type]
        a.send(1)
        assert b.recv(timeout=1) == 1
