"""The ``ipckit`` command line: backends, bench dispatch, limits, cleanup."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipckit import cleanup, cli

pytestmark = pytest.mark.timeout(60)

SUBCOMMANDS = ["backends", "limits", "cleanup"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- help
def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0
    for command in [*SUBCOMMANDS, "bench"]:
        assert command in out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    rc, out, _ = run_cli(capsys, command, "--help")
    assert rc == 0
    assert f"ipckit {command}" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys)
    assert rc == 2
    assert "usage:" in err


def test_console_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "ipckit", "--help"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "backends" in proc.stdout


# --------------------------------------------------------------------------- backends
def test_backends_plain_table_lists_memory_and_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "backends", "--plain")
    assert rc == 0
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["scheme", "works"]
    rows = {line.split()[0]: line for line in lines[3:] if line.strip()}
    assert "memory" in rows and "pipe" in rows
    assert rows["pipe"].split()[1] == "yes"
    assert "inheritable" in rows["pipe"]
    assert "inheritable" not in rows["memory"]


def test_backends_names_the_ring_fast_path(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ipckit.backends.common.ring import cursor as ringcursor

    rc, out, _ = run_cli(capsys, "backends", "--plain")
    assert rc == 0
    expected = "C per-message" if ringcursor.IMPLEMENTATION == "c" else "pure-Python"
    assert f"shm rings: {expected}" in out
    monkeypatch.setattr(ringcursor, "IMPLEMENTATION", "python")
    monkeypatch.delenv("IPCKIT_PURE_PYTHON", raising=False)
    rc, out, _ = run_cli(capsys, "backends", "--plain")
    assert "the C extension was not built; reinstall" in out


def test_backends_json_matches_capabilities(capsys: pytest.CaptureFixture[str]) -> None:
    from ipckit.registry import get_backend, schemes

    rc, out, _ = run_cli(capsys, "backends", "--json")
    assert rc == 0
    rows = {r["scheme"]: r for r in json.loads(out)}
    assert set(rows) == set(schemes())
    assert rows["memory"]["available"] is True
    assert rows["pipe"]["available"] is True
    assert rows["pipe"]["capabilities"]["selectable"] is get_backend("pipe").capabilities.selectable


def test_backends_rich_table(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    rc, out, _ = run_cli(capsys, "backends")
    assert rc == 0
    assert "memory" in out and "pipe" in out


def test_backends_without_rich_falls_back_to_plain(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setitem(sys.modules, "rich.table", None)
    rc, out, _ = run_cli(capsys, "backends")
    assert rc == 0
    assert out.splitlines()[2].startswith("------")


def test_backends_reports_why_a_backend_does_not_work(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ipckit import registry

    monkeypatch.setitem(registry._SPECS, "nosuchthing", registry.BackendSpec("ipckit_no_such_module:Backend"))
    rc, out, _ = run_cli(capsys, "backends", "--plain")
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("nosuchthing"))
    assert " no " in row
    assert "ipckit_no_such_module" in row


# --------------------------------------------------------------------------- bench
def test_bench_passes_every_argument_to_the_harness(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    fake = types.ModuleType("ipckit.bench.__main__")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ipckit.bench.__main__", fake)
    assert cli.main(["bench", "--help", "--backend", "pipe"]) == 3
    assert seen == [["--help", "--backend", "pipe"]]


def test_bench_help_reaches_the_real_harness(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ipckit.bench.__main__")
    rc, out, _ = run_cli(capsys, "bench", "--help")
    assert rc == 0
    assert "usage:" in out


def test_bench_missing_harness_is_a_clear_error(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipckit.bench.__main__", None)
    rc, _, err = run_cli(capsys, "bench")
    assert rc == 2
    assert "ipckit bench:" in err and "harness" in err


# --------------------------------------------------------------------------- limits
def test_limits_prints_the_limits_that_matter(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "limits", "--plain")
    assert rc == 0
    for name in ("fs.pipe-max-size", "fs.mqueue.msgsize_max", "kernel.msgmax", "kernel.msgmnb", "/dev/shm size",
                 "/dev/shm free", "RLIMIT_NOFILE", "RLIMIT_MSGQUEUE"):
        assert name in out


def test_limits_json_values_match_proc(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "limits", "--json")
    assert rc == 0
    values = {r["name"]: r["value"] for r in json.loads(out)}
    assert values["fs.pipe-max-size"] == Path("/proc/sys/fs/pipe-max-size").read_text().strip()


# --------------------------------------------------------------------------- cleanup
@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix no other test or process uses, so cleanup here touches only what the test planted."""
    token = f"ipckit-test-{secrets.token_hex(6)}"
    yield token
    for d in ("/dev/shm", tempfile.gettempdir()):
        for entry in os.listdir(d):
            if entry.startswith(token):
                path = os.path.join(d, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)


def plant(path: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)


def test_cleanup_dry_run_reports_and_keeps(capsys: pytest.CaptureFixture[str], prefix: str) -> None:
    stale = f"/dev/shm/{prefix}-stale"
    plant(stale)
    rc, out, _ = run_cli(capsys, "cleanup", "--dry-run", "--prefix", prefix)
    assert rc == 0
    assert f"would remove file {stale}" in out
    assert os.path.exists(stale)


def test_cleanup_removes_only_stale_objects_of_this_user(capsys: pytest.CaptureFixture[str], prefix: str) -> None:
    stale = f"/dev/shm/{prefix}-stale"
    held = f"/dev/shm/{prefix}-held"
    other = f"/dev/shm/{prefix}-other-user"
    unrelated = f"/dev/shm/not-{prefix}"
    for path in (stale, held, other, unrelated):
        plant(path)
    if os.geteuid() == 0:
        os.chown(other, 65534, 65534)
    fd = os.open(held, os.O_RDONLY)  # a live process (this one) holds it: not stale
    try:
        rc, out, _ = run_cli(capsys, "cleanup", "--prefix", prefix)
    finally:
        os.close(fd)
    try:
        assert rc == 0
        assert f"removed file {stale}" in out
        assert not os.path.exists(stale)
        assert os.path.exists(held)
        assert os.path.exists(unrelated)
        if os.geteuid() == 0:
            assert os.path.exists(other)
    finally:
        os.unlink(unrelated)


def test_cleanup_removes_stale_fifo_and_its_private_dir_but_not_a_bound_socket(
        capsys: pytest.CaptureFixture[str], prefix: str) -> None:
    stale_dir = tempfile.mkdtemp(prefix=f"{prefix}-a")
    live_dir = tempfile.mkdtemp(prefix=f"{prefix}-b")
    fifo = os.path.join(stale_dir, "ch.fifo")
    os.mkfifo(fifo, 0o600)
    sock_path = os.path.join(live_dir, "ch.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(sock_path)
        srv.listen(1)
        rc, out, _ = run_cli(capsys, "cleanup", "--prefix", prefix)
    assert rc == 0
    assert f"removed fifo {fifo}" in out
    assert f"removed directory {stale_dir}" in out
    assert not os.path.exists(stale_dir)
    assert os.path.exists(sock_path) and os.path.isdir(live_dir)
    # Once nothing is bound to it, the socket file is stale too.
    rc, out, _ = run_cli(capsys, "cleanup", "--prefix", prefix)
    assert rc == 0
    assert f"removed socket {sock_path}" in out
    assert not os.path.exists(live_dir)


def test_cleanup_refuses_a_prefix_outside_ipckit(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "cleanup", "--prefix", "sem.")
    assert rc == 2
    assert "--prefix" in err
    with pytest.raises(ValueError, match="start with 'ipckit'"):
        cleanup.find_stale("tmp")


def test_cleanup_nothing_to_do(capsys: pytest.CaptureFixture[str], prefix: str) -> None:
    rc, out, _ = run_cli(capsys, "cleanup", "--prefix", prefix)
    assert rc == 0
    assert out.strip() == "nothing to remove"
