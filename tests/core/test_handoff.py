"""The hand-off of channel ends to multiprocessing children, and the CPython internals it relies on.

``ipckit._handoff`` reads a few multiprocessing internals.  Each is checked here on the running
interpreter, and every failure names the internal that changed, so a new Python release that
moves one fails these tests loudly instead of leaving peers told "closed" by a parent's close.
Then the hand-off itself runs with real children under fork, spawn and forkserver.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.popen_fork
import multiprocessing.process
import multiprocessing.reduction
import multiprocessing.util
import os
import pickle
import sys
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import ipckit
from ipckit import _handoff
from ipckit.errors import EndOfChannel, UnsupportedOperation

LAUNCH = "multiprocessing.popen_fork.Popen._launch"


def _changed(internal: str, what: str) -> str:
    return f"CPython internal changed: {internal} {what}; ipckit._handoff must be adapted"


# --------------------------------------------------------------------------- the internals, one by one


def test_popen_fork_launch_holds_process_obj_and_forks() -> None:
    launch = getattr(multiprocessing.popen_fork.Popen, "_launch", None)
    code = getattr(launch, "__code__", None)
    assert code is not None, _changed(LAUNCH, "is gone (or no longer a Python function)")
    assert code.co_name == "_launch", _changed(LAUNCH, f"is now named {code.co_name!r} (the stack walk reads the name)")
    assert "process_obj" in code.co_varnames, _changed(LAUNCH, f"has no local 'process_obj' ({code.co_varnames})")
    assert "fork" in code.co_names, _changed(LAUNCH, "no longer calls os.fork() itself")


def test_process_keeps_its_arguments_in_args_and_kwargs() -> None:
    proc = multiprocessing.get_context("fork").Process(target=abs, args=(1, 2), kwargs={"k": 3})
    internal = "multiprocessing.process.BaseProcess._args/_kwargs"
    assert getattr(proc, "_args", None) == (1, 2), _changed(internal, "no longer holds the positional arguments")
    assert getattr(proc, "_kwargs", None) == {"k": 3}, _changed(internal, "no longer holds the keyword arguments")


def test_get_spawning_popen_exists_and_is_none_outside_a_spawn() -> None:
    internal = "multiprocessing.context.get_spawning_popen"
    get = getattr(multiprocessing.context, "get_spawning_popen", None)
    assert callable(get), _changed(internal, "is gone")
    assert get() is None, _changed(internal, "is not None outside a spawn")


def test_reduction_dupfd_exists() -> None:
    assert callable(getattr(multiprocessing.reduction, "DupFd", None)), _changed(
        "multiprocessing.reduction.DupFd", "is gone")


BOOTSTRAP = "multiprocessing.process.BaseProcess._bootstrap"


def test_bootstrap_runs_the_after_fork_hooks_and_then_the_exit_finalizers() -> None:
    # A child's exit closes its channels through these: _bootstrap clears the inherited finalizers
    # and runs the after-fork hooks (_after_fork), runs the target, then util._exit_function(),
    # which runs the finalizers, before a fork or forkserver child's os._exit.
    names = multiprocessing.process.BaseProcess._bootstrap.__code__.co_names
    assert "_after_fork" in names, _changed(BOOTSTRAP, "no longer runs _after_fork()")
    assert "_exit_function" in names, _changed(BOOTSTRAP, "no longer runs util._exit_function()")
    after_fork = multiprocessing.process.BaseProcess._after_fork.__code__.co_names
    assert "_run_after_forkers" in after_fork, _changed(BOOTSTRAP, "_after_fork() no longer runs the after-fork hooks")
    exit_code = multiprocessing.util._exit_function.__code__
    assert "_run_finalizers" in exit_code.co_names + exit_code.co_varnames, _changed(
        "multiprocessing.util._exit_function", "no longer runs the finalizers")


def test_register_after_fork_and_finalize_exist() -> None:
    internal = "multiprocessing.util.register_after_fork/Finalize"
    assert callable(getattr(multiprocessing.util, "register_after_fork", None)), _changed(
        internal, "has no register_after_fork")
    assert callable(getattr(multiprocessing.util, "Finalize", None)), _changed(internal, "has no Finalize")


def _exit_if_close_all_is_a_finalizer() -> None:
    registry = multiprocessing.util._finalizer_registry  # type: ignore[attr-defined]
    found = [f for f in list(registry.values()) if getattr(f, "_callback", None) is _handoff._close_all_in_child]
    sys.exit(0 if found else 3)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_childs_exit_finalizers_hold_the_close_all(method: str, forkserver: None) -> None:
    """In a child of every start method, ipckit's close-all is among the finalizers multiprocessing
    runs at the child's end (after its _bootstrap cleared the inherited ones)."""
    ctx: Any = multiprocessing.get_context(method)
    proc = ctx.Process(target=_exit_if_close_all_is_a_finalizer, daemon=True)
    proc.start()
    proc.join(30)
    code = proc.exitcode
    proc.close()
    assert code == 0, (f"{method}: the close-all is not a finalizer of the child (exit {code}): "
                       + _changed(BOOTSTRAP, "or multiprocessing.util.Finalize changed"))


def _exit_if_launch_holds_the_current_process() -> None:
    frame: types.FrameType | None = sys._getframe()
    while frame is not None and frame.f_code.co_name != "_launch":
        frame = frame.f_back
    found = None if frame is None else frame.f_locals.get("process_obj")
    sys.exit(0 if found is not None and found is multiprocessing.process.current_process() else 3)


def test_a_fork_child_is_the_process_obj_of_the_launch_frame_it_inherited() -> None:
    # A fork-started child that forks a helper finds its own _launch frame on the stack: the
    # at-fork handler tells it from a real start by this identity.
    proc = multiprocessing.get_context("fork").Process(target=_exit_if_launch_holds_the_current_process)
    proc.start()
    proc.join(30)
    code = proc.exitcode
    proc.close()
    assert code == 0, _changed("multiprocessing.process.current_process",
                               "in a fork child is not the Process its inherited _launch frame started")


def test_the_module_finds_nothing_changed_here() -> None:
    _handoff.check_internals()


_probe: dict[str, Any] = {"armed": False}


def _probe_before_fork() -> None:
    # An at-fork handler of this test's own: the stack it runs on, and the Process it finds there.
    if not _probe["armed"]:
        return
    frame: types.FrameType | None = sys._getframe(1)
    names: list[str] = []
    found = None
    while frame is not None:
        names.append(frame.f_code.co_name)
        if found is None and frame.f_code.co_name == "_launch":
            found = frame.f_locals.get("process_obj")
        frame = frame.f_back
    _probe.update(stack=names, found=found)


def test_fork_start_method_runs_the_at_fork_handlers_within_launch() -> None:
    if not _probe.get("registered"):
        os.register_at_fork(before=_probe_before_fork)  # no-op unless armed; cannot be unregistered
        _probe["registered"] = True
    proc = multiprocessing.get_context("fork").Process(target=abs, args=(0,))
    _probe.update(armed=True, stack=None, found=None)
    try:
        proc.start()
    finally:
        _probe["armed"] = False
    proc.join(30)
    assert proc.exitcode == 0
    proc.close()
    assert _probe["stack"] is not None, _changed(
        "os.fork() / multiprocessing fork start method", "no longer runs os.register_at_fork handlers")
    assert _probe["stack"][0] == "_launch", _changed(
        LAUNCH, f"no longer calls os.fork() directly (handler's stack: {_probe['stack'][:6]})")
    assert _probe["found"] is proc, _changed(LAUNCH, "does not hold the Process being started in 'process_obj'")


class _SpawnProbe:
    seen: ClassVar[list[bool]] = []

    def __reduce__(self) -> Any:
        _SpawnProbe.seen.append(multiprocessing.context.get_spawning_popen() is not None)
        return int, (0,)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_pickles_arguments_while_get_spawning_popen_is_set(method: str, forkserver: None) -> None:
    _SpawnProbe.seen.clear()
    ctx: Any = multiprocessing.get_context(method)
    proc = ctx.Process(target=abs, args=(_SpawnProbe(),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    proc.close()
    assert _SpawnProbe.seen == [True], _changed(
        "multiprocessing.context.get_spawning_popen",
        f"is not set while {method} pickles the Process ({_SpawnProbe.seen})")


# --------------------------------------------------------------------------- the module fails clearly


def test_a_launch_without_process_obj_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def _launch(self: Any, proc: Any) -> None:
        os.fork()

    fake = types.ModuleType("multiprocessing.popen_fork")
    fake.Popen = type("Popen", (), {"_launch": _launch})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "multiprocessing.popen_fork", fake)
    with pytest.raises(UnsupportedOperation, match=r"multiprocessing\.popen_fork\.Popen\._launch.*process_obj"):
        _handoff.check_internals()
    a, b = ipckit.pair("memory://")
    try:
        # What the at-fork handler does before a fork: it refuses loudly (Python prints the error,
        # at-fork handlers cannot stop a fork) instead of handing nothing off.
        with pytest.raises(UnsupportedOperation, match=r"Popen\._launch"):
            _handoff._before_fork()
    finally:
        _handoff._after_fork_in_parent()
        a.close()
        b.close()


def test_a_missing_get_spawning_popen_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_handoff, "_get_spawning_popen", None)
    monkeypatch.delattr(multiprocessing.context, "get_spawning_popen")
    a, b = ipckit.pair("pipe://")
    try:
        with pytest.raises(UnsupportedOperation, match=r"multiprocessing\.context\.get_spawning_popen"):
            pickle.dumps(a)
    finally:
        a.close()
        b.close()


def test_a_missing_finalize_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(multiprocessing.util, "Finalize")
    with pytest.raises(UnsupportedOperation, match=r"multiprocessing\.util\.register_after_fork/Finalize"):
        _handoff.check_internals()


def test_a_missing_dupfd_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_handoff, "_dup_fd", None)
    monkeypatch.delattr(multiprocessing.reduction, "DupFd")
    with pytest.raises(UnsupportedOperation, match=r"multiprocessing\.reduction\.DupFd"):
        _handoff.check_internals()


def test_plain_pickling_is_refused_with_the_backends_advice() -> None:
    a, b = ipckit.pair("pipe://")
    try:
        with pytest.raises(TypeError, match=r"multiprocessing\.Process"):
            pickle.dumps(a)
        assert not a._handed_off
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- real hand-offs


@pytest.fixture(scope="module")
def forkserver() -> Iterator[None]:
    """The forkserver process, started before the leak guard's first snapshot and stopped after the
    module (it is a child process holding descriptors for the rest of the run otherwise)."""
    multiprocessing.forkserver.ensure_running()
    yield
    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]


def _echo_child(end: ipckit.Channel) -> None:
    """Echo every message until the parent closes; exit with how many (a forkserver child is not
    ours to talk to through spawn_peer, so the exit code carries the answer)."""
    count = 0
    try:
        while True:
            try:
                data = end.recv_bytes(timeout=20.0)
            except EndOfChannel:
                break
            end.send_bytes(data, timeout=20.0)
            count += 1
    finally:
        end.close()
    sys.exit(count)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_pipe_end_handed_to_a_child_works_and_the_parents_close_is_silent(method: str, forkserver: None) -> None:
    a, b = ipckit.pair("pipe://")
    ctx: Any = multiprocessing.get_context(method)
    proc = ctx.Process(target=_echo_child, args=(b,), daemon=True)
    try:
        proc.start()
        how = "the at-fork handler found no Process on the stack (see the internals tests above)" \
            if method == "fork" else "get_spawning_popen() was None while the Process was pickled"
        assert b._handed_off, f"{method}: the end was not marked handed off: {how}"
        b.close()  # the parent's copy: must not say goodbye to a
        assert not a.poll(0), f"{method}: closing the parent's copy told the peer 'closed'"
        for i in range(3):
            a.send_bytes(b"ping %d" % i, timeout=20.0)
            assert a.recv_bytes(timeout=20.0) == b"ping %d" % i
        a.close()
        proc.join(30)
        assert proc.exitcode == 3, f"{method}: child exit code {proc.exitcode}"
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        proc.close()
        a.close()
        b.close()
