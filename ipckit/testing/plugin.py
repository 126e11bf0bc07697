"""pytest plugin: an autouse leak guard per test and a sweep at the end of the session.

Enable it with ``pytest_plugins = ["ipckit.testing.plugin"]`` in a ``conftest.py``.

* Per test: a snapshot is taken before the test's other fixtures are set up and compared after
  they are torn down (:mod:`ipckit.testing.snapshots`); anything new — a descriptor, a child process,
  a non-daemon thread, a ``/dev/shm`` entry, a SysV object, an ``ipckit*`` temp file — fails the
  test with a list of what leaked.  Mark a test ``@pytest.mark.leaks_ok`` to exempt it.
* Session end: machine-wide objects a test was failed for and that still exist are removed, and
  the run fails because it had to.  With ``IPCKIT_LEAK_SWEEP=all`` (a machine where nothing else
  uses ipckit, e.g. CI) every ``ipckit*`` object created during the run that no process holds is
  removed as well — never use that while other ipckit programs or test runs are active.
* ``IPCKIT_LEAK_GUARD=local`` limits both to this process's own resources; ``off`` disables them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .snapshots import SHM_DIR, guard_mode, leaks, owned_names, remove_object, take_snapshot

_session_start = time.time()
_swept: list[str] = []
_flagged: set[str] = set()  # machine-wide objects some test of this run was failed for
_collector_deaths: list[str] = []  # where pyzmq's zero-copy collector thread ended (if it did)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaks_ok: the ipckit leak guard does not check this test")


def pytest_sessionstart(session: pytest.Session) -> None:
    global _session_start
    _session_start = time.time() - 1.0
    # multiprocessing's spawn method starts a resource-tracker process (and keeps a descriptor to
    # it) on first use; start it now so it is part of every test's "before" snapshot.
    if guard_mode() != "off":
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        # uvloop (AioContract runs every row on it too) opens one process-wide pipe pair with its
        # first loop and keeps it: run one loop now so the pair is in every "before" snapshot.
        try:
            import uvloop
        except ImportError:
            pass
        else:
            import asyncio

            uvloop.run(asyncio.sleep(0))
        # pyzmq hands each zero-copy frame (the zmq kit sends large bytes with copy=False) to a
        # process-wide collector thread with its own context and sockets, started on first use
        # and kept: start it now so no test is charged with its descriptors.  Only if it is not
        # running: a second start() fails to bind inproc://pyzmq.gc.01 and leaves pyzmq
        # restarting collectors (and leaking their sockets) on every later zero-copy send.
        from zmq.utils.garbage import gc as zmq_gc

        if not zmq_gc.is_alive():
            zmq_gc.start()
        zmq_gc._push_socket  # noqa: B018 - its PUSH socket, made by the first zero-copy send


def _zmq_collector() -> Any:
    """pyzmq's zero-copy collector thread if it runs in this process (else None)."""
    import sys

    garbage = sys.modules.get("zmq.utils.garbage")
    gc = getattr(garbage, "gc", None)
    thread = getattr(gc, "thread", None)
    if thread is None or getattr(gc, "pid", None) != os.getpid() or not thread.is_alive():
        return None
    return thread


@pytest.fixture(autouse=True)
def _ipckit_leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    mode = guard_mode()
    if mode == "off" or request.node.get_closest_marker("leaks_ok") is not None:
        yield
        return
    machine_wide = mode == "full"
    collector = _zmq_collector()
    before = take_snapshot(machine_wide)
    yield
    if collector is not None and not collector.is_alive() and _zmq_collector() is None:
        # Once dead it cannot be restarted in this process (ipckit's zmq kit then copies large
        # frames instead: zero_copy_ok): name the test it ended in, in the run's summary.  Not a
        # failure: nothing the user sees changes, and the cause is pyzmq's, not the test's.
        _collector_deaths.append(f"{request.node.nodeid}: pyzmq's zero-copy collector thread ({collector.name}) "
                                 "ended during this test; zmq sends in this process copy from then on")
    found = leaks(before, machine_wide)
    _flagged.update(os.path.join(SHM_DIR, n) for n in found.shm)
    _flagged.update(found.tmp)
    if found:
        pytest.fail(f"{request.node.nodeid} leaked: {found.describe()}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    if guard_mode() != "full":
        return
    leftovers = sorted(p for p in _flagged if os.path.lexists(p))
    if os.environ.get("IPCKIT_LEAK_SWEEP", "").strip().lower() == "all":
        leftovers = sorted(set(leftovers) | set(owned_names(_session_start)))
    for path in leftovers:
        remove_object(path)
    if leftovers:
        _swept.extend(leftovers)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: Any, config: pytest.Config) -> None:
    if _collector_deaths:
        terminalreporter.section("pyzmq zero-copy collector", sep="=", yellow=True)
        for line in _collector_deaths:
            terminalreporter.write_line(line)
    if _swept:
        terminalreporter.section("ipckit leak sweep", sep="=", red=True, bold=True)
        terminalreporter.write_line(
            "the run left these ipckit objects behind (removed now; the run fails):")
        for path in _swept:
            terminalreporter.write_line(f"  {path}")
