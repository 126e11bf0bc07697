"""The examples run as a user would run them: as scripts, in a subprocess, and leave nothing behind.

What a run leaves in /dev/shm, /proc/sysvipc or the temp directory is caught by the ipckit leak
guard (tests/conftest.py) around every test; these tests also check the example's own private
directory is gone.
"""

from __future__ import annotations

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


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", str(PING_PONG), *args], capture_output=True,
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
