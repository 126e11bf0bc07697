"""The examples run as a user would run them: as scripts, in a subprocess, and leave nothing behind.

They also use only the public API (an ast scan below), since users copy them.

What a run leaves in /dev/shm, /proc/sysvipc or the temp directory is caught by the ipckit leak
guard (tests/conftest.py) around every test; these tests also check the example's own private
directory is gone.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

import ipckit
from ipckit.registry import get_backend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PING_PONG = EXAMPLES / "ping_pong.py"
CLIENT_SERVER = EXAMPLES / "client_server.py"
ASYNC_ECHO = EXAMPLES / "async_echo.py"
THREADS_VS_PROCESSES = EXAMPLES / "threads_vs_processes.py"
ALL_EXAMPLES = sorted(EXAMPLES.glob("*.py"))
TIMEOUT = 120  # seconds for one example run (spawning a child imports a fresh interpreter)

pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ping_pong_example", PING_PONG)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ping_pong = _load_example()
WORKING = sorted(s for s, ok in ipckit.available_backends().items() if ok)
CROSS_PROCESS = [s for s in WORKING if not ping_pong.in_process_only(get_backend(s).capabilities)]
IN_PROCESS = [s for s in WORKING if s not in CROSS_PROCESS]
NAMED_CROSS_PROCESS = [s for s in CROSS_PROCESS if get_backend(s).capabilities.named]


def run_example(*args: str, script: Path = PING_PONG) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", str(script), *args], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL)


def _pingpong_dirs() -> set[str]:
    tmp = tempfile.gettempdir()
    return {e for e in os.listdir(tmp) if e.startswith("ipckit-pingpong-")}


def check_ran(proc: subprocess.CompletedProcess[str], count: int) -> None:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == ""
    assert f"{count} round trips" in proc.stdout
    assert "round trip: p50" in proc.stdout
    assert "messages/s" in proc.stdout


def test_pipe_and_memory_are_covered() -> None:
    assert "pipe" in CROSS_PROCESS
    assert "memory" in IN_PROCESS


@pytest.mark.parametrize("scheme", CROSS_PROCESS)
def test_ping_pong_across_processes(scheme: str) -> None:
    dirs_before = _pingpong_dirs()
    proc = run_example("--backend", scheme, "-n", "50", "--size", "100")
    check_ran(proc, 50)
    assert "child process" in proc.stdout
    assert _pingpong_dirs() == dirs_before


@pytest.mark.parametrize("scheme", NAMED_CROSS_PROCESS)
def test_ping_pong_listen_connect_across_processes(scheme: str) -> None:
    dirs_before = _pingpong_dirs()
    proc = run_example("--backend", scheme, "--mode", "listen", "-n", "50")
    check_ran(proc, 50)
    assert "child process that connected to" in proc.stdout
    assert _pingpong_dirs() == dirs_before


def test_ping_pong_pair_only_backend_refuses_listen_mode() -> None:
    proc = run_example("--backend", "pipe", "--mode", "listen", "-n", "1")
    assert proc.returncode == 1
    assert "UnsupportedOperation" in proc.stderr


@pytest.mark.parametrize("mode", ["pair", "listen"])
def test_ping_pong_memory_runs_in_a_thread(mode: str) -> None:
    proc = run_example("--backend", "memory", "--mode", mode, "-n", "50")
    check_ran(proc, 50)
    assert "a thread" in proc.stdout


@pytest.mark.parametrize("scheme", IN_PROCESS)
def test_ping_pong_in_process_backend_uses_a_thread(scheme: str) -> None:
    proc = run_example("--backend", scheme, "-n", "50")
    check_ran(proc, 50)
    assert "a thread" in proc.stdout


def test_ping_pong_default_backend() -> None:
    proc = run_example("-n", "20")
    check_ran(proc, 20)
    # The child interpreter decides from its own registry; it picks one of the preferred schemes.
    assert any(f"over {scheme}://" in proc.stdout for scheme in ping_pong.PREFERRED), proc.stdout


@pytest.mark.parametrize("serializer", ["pickle", "json", "raw"])
def test_ping_pong_serializers(serializer: str) -> None:
    proc = run_example("--backend", "pipe", "-n", "20", "--serializer", serializer, "--size", "10")
    check_ran(proc, 20)
    assert f"serializer {serializer}" in proc.stdout


def test_ping_pong_url_with_options() -> None:
    proc = run_example("--url", "pipe://?checksum=true", "-n", "20")
    check_ran(proc, 20)


def test_ping_pong_help() -> None:
    proc = run_example("--help")
    assert proc.returncode == 0
    for option in ("--backend", "--url", "--count", "--size", "--serializer", "--mode"):
        assert option in proc.stdout


def test_ping_pong_unknown_backend_fails_cleanly() -> None:
    proc = run_example("--backend", "nosuchscheme", "-n", "1")
    assert proc.returncode == 1
    assert "UnknownScheme" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert ping_pong.percentile(values, 50) == 50
    assert ping_pong.percentile(values, 99) == 99
    assert ping_pong.percentile([7], 99) == 7


def test_readme_backend_table_lists_every_registered_scheme() -> None:
    from ipckit.registry import schemes

    readme = (EXAMPLES.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    for scheme in schemes():
        assert any(f"`{scheme}://" in row for row in rows), f"README's backend table has no row for {scheme}://"


# --------------------------------------------------------------------------- client_server.py
@pytest.mark.parametrize("args", [[], ["--type", "seqpacket"], ["--authkey", "example-key"]],
                         ids=["stream", "seqpacket", "authkey"])
def test_client_server_serves_everyone_and_survives_a_crashing_client(args: list[str]) -> None:
    before = {e for e in os.listdir(tempfile.gettempdir()) if e.startswith("ipckit-example-")}
    proc = run_example("--clients", "3", "-n", "40", *args, script=CLIENT_SERVER)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "from 3 clients" in proc.stdout
    assert "3 closed cleanly" in proc.stdout
    # The stream variants have a client that dies mid-request; the server keeps serving the rest.
    crashes = 0 if "seqpacket" in args else 1
    assert f"{crashes} client(s) died mid-request" in proc.stdout
    assert {e for e in os.listdir(tempfile.gettempdir()) if e.startswith("ipckit-example-")} == before


# --------------------------------------------------------------------------- public API only
def _private_uses(path: Path) -> list[str]:
    """Where *path* reaches into ipckit's internals: ``obj._name`` on anything but the example's
    own ``self``/``cls``, imports from underscored ipckit modules, or names a module does not export."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ipckit":
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{where}: from {node.module} import ...")
                continue
            exported = set(getattr(importlib.import_module(node.module), "__all__", ()))
            for alias in node.names:
                if alias.name not in exported:
                    found.append(f"{where}: {alias.name} is not in {node.module}.__all__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ipckit" and any(p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"{where}: import {alias.name}")
    return found


def test_examples_are_found() -> None:
    assert PING_PONG in ALL_EXAMPLES and CLIENT_SERVER in ALL_EXAMPLES and ASYNC_ECHO in ALL_EXAMPLES


@pytest.mark.parametrize("args", [[], ["--backend", "unix", "--clients", "3"], ["--uvloop"]],
                         ids=["shm", "unix", "uvloop"])
def test_async_echo_serves_every_client_on_one_loop(args: list[str]) -> None:
    if "--uvloop" in args:
        pytest.importorskip("uvloop")
    backend = args[args.index("--backend") + 1] if "--backend" in args else "shm"
    if not ipckit.available_backends().get(backend, False):
        pytest.skip(f"{backend}:// is not available here")
    proc = run_example(*args, script=ASYNC_ECHO)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == ""
    clients = int(args[args.index("--clients") + 1]) if "--clients" in args else 4
    assert f"served {clients} client processes x 200 messages ({clients * 200} echoes)" in proc.stdout
    assert "with 1 thread(s) in this process" in proc.stdout  # no thread per channel
    assert "the late message arrived" in proc.stdout


def test_threads_vs_processes_measures_both_workloads() -> None:
    proc = run_example("--tasks", "4", "--work", "200000", "--wait", "0.1", script=THREADS_VS_PROCESSES)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == ""
    cpu = next(line for line in proc.stdout.splitlines() if line.startswith("CPU-bound "))
    io = next(line for line in proc.stdout.splitlines() if line.startswith("I/O-bound "))
    assert "threads" in cpu and "processes" in cpu
    # Four 0.1 s waits on four threads overlap (the CPU rows depend on how busy the machine is).
    threads_x = float(io.split("threads")[1].split("(")[1].split("x")[0])
    assert threads_x > 2.0, io


@pytest.mark.parametrize("path", ALL_EXAMPLES, ids=lambda p: p.name)
def test_examples_use_only_the_public_api(path: Path) -> None:
    assert _private_uses(path) == []


def test_the_private_use_scan_finds_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import ipckit\n"
        "from ipckit.url import parse_url\n"          # public: in ipckit.url.__all__
        "from ipckit.errors import from_oserror\n"    # importable, but a backend helper
        "from ipckit._handoff import x\n"
        "import ipckit.backends._x\n"
        "a, b = ipckit.pair()\n"
        "a._wfd\n"
        "self._ok\n"
        "a.__class__\n"
    )
    assert sorted(u.split(": ", 1)[1] for u in _private_uses(bad)) == [
        "a._wfd",
        "from ipckit._handoff import ...",
        "from_oserror is not in ipckit.errors.__all__",
        "import ipckit.backends._x",
    ]


# --------------------------------------------------------------------------- crash_isolation.py
CRASH_ISOLATION = EXAMPLES / "crash_isolation.py"


@pytest.mark.parametrize("crash,ended", [("segfault", "killed by SIGSEGV"), ("exit", "exited with status 3")])
def test_crash_isolation_process_pool_survives_a_crash_the_thread_pool_does_not(crash: str, ended: str) -> None:
    proc = run_example("--crash", crash, script=CRASH_ISOLATION)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == ""
    assert "job 13: WorkerDied: worker pid" in proc.stdout and ended in proc.stdout
    assert "39 jobs completed, 1 failed" in proc.stdout
    assert f"the whole process {ended}" in proc.stdout
    assert "isolated: the process pool survived the crash, the thread pool did not" in proc.stdout
