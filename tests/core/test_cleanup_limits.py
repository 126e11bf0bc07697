"""The hooks behind ``ipckit backends|limits|cleanup``: each Backend class contributes its notes, its
kernel limits and its stale sweep; the CLI only dispatches.  Also the one ``/proc`` scanner."""

from __future__ import annotations

import ast
import mmap
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

import ipckit
from ipckit import _proc, cleanup, cli, limits, registry
from ipckit.backend import Backend
from ipckit.cleanup import StaleObject, Sweep
from ipckit.limits import KernelLimit

pytestmark = pytest.mark.timeout(60)

#: The package under test: the source tree, or the installed wheel when CI tests that.
PKG = Path(ipckit.__file__).resolve().parent


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def prefix() -> str:
    """A prefix no other test or process uses."""
    return f"ipckit-test-{secrets.token_hex(6)}"


# --------------------------------------------------------------------------- a third-party backend
class FakeBackend(Backend):
    """A backend from outside ipckit: its leftovers are files in a directory it knows."""

    scheme: ClassVar[str] = "fakeipc"
    where: ClassVar[str] = ""
    removed: ClassVar[list[str]] = []
    broken: ClassVar[bool] = False

    @classmethod
    def notes(cls) -> list[str]:
        return ["fakeipc: runs on a fake kernel"]

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        if cls.broken:
            raise RuntimeError("probe exploded")
        return [KernelLimit("fake.max_widgets", "42", "fakeipc: widgets per user"),
                limits.sysctl("/proc/sys/fs/pipe-max-size", "a row another backend gives too")]

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        if cls.broken:
            raise RuntimeError("sweep exploded")
        out = []
        for entry in sorted(os.listdir(cls.where)):
            if sweep.wants(entry):
                obj = sweep.unheld_file(os.path.join(cls.where, entry), "the fake says so", name=entry)
                if obj is not None:
                    out.append(StaleObject(obj.path, "fake widget", obj.reason, name=entry, label=f"widget {entry}"))
        return out

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        cls.removed.append(obj.path)
        return super().remove_stale(obj)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[type[FakeBackend]]:
    FakeBackend.where = str(tmp_path)
    FakeBackend.removed = []
    FakeBackend.broken = False
    registry.register_backend("fakeipc", FakeBackend)
    try:
        yield FakeBackend
    finally:
        registry._SPECS.pop("fakeipc", None)
        registry._LOADED.pop("fakeipc", None)


def test_cli_names_no_backend() -> None:
    """cli.py, cleanup.py and limits.py import no backend module and name no scheme."""
    schemes = registry.schemes()
    for module in ("cli.py", "cleanup.py", "limits.py", "_proc.py"):
        source = (PKG / module).read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "backends" not in (node.module or ""), f"{module} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any("backends" in a.name for a in node.names), module
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for scheme in schemes:
                    assert f"{scheme}://" not in node.value, f"{module} names {scheme}://"


def test_a_registered_backend_adds_a_note_and_a_limit_row(capsys: pytest.CaptureFixture[str],
                                                          fake: type[FakeBackend]) -> None:
    rc, out, _ = run_cli(capsys, "backends", "--plain")
    assert rc == 0
    assert out.count("fakeipc: runs on a fake kernel") == 1
    rc, out, _ = run_cli(capsys, "limits", "--plain")
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("fake.max_widgets"))
    assert row.split()[1] == "42" and "widgets per user" in row
    assert out.count("fs.pipe-max-size") == 1  # a limit two backends give is shown once


def test_a_broken_limits_probe_is_a_row_not_a_crash(capsys: pytest.CaptureFixture[str],
                                                    fake: type[FakeBackend]) -> None:
    fake.broken = True
    rc, out, _ = run_cli(capsys, "limits", "--plain")
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("fakeipc://"))
    assert "probe exploded" in row
    assert "RLIMIT_NOFILE" in out


def test_a_registered_backend_contributes_stale_objects(capsys: pytest.CaptureFixture[str],
                                                        fake: type[FakeBackend], prefix: str) -> None:
    stale = os.path.join(fake.where, f"{prefix}-w1")
    held = os.path.join(fake.where, f"{prefix}-w2")
    other = os.path.join(fake.where, f"not-{prefix}")
    for path in (stale, held, other):
        Path(path).touch()
    fd = os.open(held, os.O_RDONLY)
    try:
        rc, out, _ = run_cli(capsys, "cleanup", "--dry-run", "--prefix", prefix)
        assert rc == 0
        assert out.splitlines() == [f"would remove fake widget widget {prefix}-w1 (the fake says so)",
                                    "1 object(s) would be removed"]
        assert fake.removed == [] and os.path.exists(stale)
        rc, out, _ = run_cli(capsys, "cleanup", "--prefix", prefix)
    finally:
        os.close(fd)
    assert rc == 0
    assert f"removed fake widget widget {prefix}-w1" in out
    assert fake.removed == [stale]
    assert not os.path.exists(stale) and os.path.exists(held) and os.path.exists(other)


def test_a_failing_sweep_is_reported_and_the_others_still_run(capsys: pytest.CaptureFixture[str],
                                                              fake: type[FakeBackend], prefix: str) -> None:
    planted = f"/dev/shm/{prefix}-x"
    Path(planted).touch()
    fake.broken = True
    try:
        rc, out, err = run_cli(capsys, "cleanup", "--prefix", prefix)
    finally:
        if os.path.exists(planted):
            os.unlink(planted)
    assert rc == 1
    assert "fakeipc:// cleanup failed: RuntimeError('sweep exploded')" in err
    assert f"removed file {planted}" in out
    with pytest.raises(RuntimeError, match="sweep exploded"):
        cleanup.find_stale(prefix)  # a library caller without on_error hears the failure


def test_reserved_names_are_left_to_their_backend(fake: type[FakeBackend], prefix: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory whose records only its backend can judge is not taken for leftovers by the
    shared file sweep (fifo, unix), however unheld its files are."""
    d = tempfile.mkdtemp(prefix=f"{prefix}-records-")
    try:
        Path(d, "record").touch()
        names = {os.path.basename(o.path) for o in cleanup.find_stale(prefix)}
        assert "record" in names  # nobody reserved it: the file sweep judges it
        monkeypatch.setattr(FakeBackend, "reserved_names", classmethod(lambda cls: (f"{prefix}-records-",)))
        assert [o for o in cleanup.find_stale(prefix) if o.path.startswith(d)] == []
    finally:
        shutil.rmtree(d)


# --------------------------------------------------------------------------- real stale objects
def _run_and_die(code: str) -> str:
    """Run *code* in a fresh interpreter that prints one line and then SIGKILLs itself; the line."""
    die = "import os, signal, sys\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    script = textwrap.dedent(code) + "\n" + die
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.stdout.strip()


def _sem_ids() -> set[str]:
    return {row["semid"] for row in _proc.sysv_table("sem")}


def test_dry_run_reports_a_stale_sysv_object_and_removes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sysv_ipc")
    manifest, semid = _run_and_die("""
        import ipckit
        a, b = ipckit.pair("sysv+shm")
        print(a._seg.manifest, a._seg.semid)
    """).split()
    entry = os.path.basename(manifest)
    registry_dir = os.path.dirname(manifest)
    # This test's own set only: other programs create and remove SysV objects at the same time.
    leftover = {semid}
    try:
        assert leftover <= _sem_ids()  # the semaphore set outlives kill -9 (no SEM_UNDO for the set itself)
        # Only this user's SysV records carry the ipckit-sysv prefix: other runs' files stay out of it.
        rc, out, _ = run_cli(capsys, "cleanup", "--dry-run", "--prefix", "ipckit-sysv")
        assert rc == 0
        assert f"would remove sysv+shm:// object {entry} (every end is dead" in out
        assert os.path.exists(manifest) and leftover <= _sem_ids()  # nothing removed
        obj = next(o for o in cleanup.find_stale("ipckit-sysv") if o.label == entry)
        assert obj.scheme == "sysv+shm" and obj.path == manifest
        assert cleanup.remove(obj) is True
        assert not os.path.exists(manifest) and not leftover & _sem_ids()
        assert cleanup.remove(obj) is False  # gone: nothing to do
    finally:
        from ipckit.backends import sysv_shm

        sysv_shm._RECORD.reclaim_if_stale(manifest)
        try:
            os.rmdir(registry_dir)
        except OSError:
            pass  # other records live there


def test_dry_run_lists_exactly_what_the_real_run_removes_for_sysv(capsys: pytest.CaptureFixture[str]) -> None:
    """A.5: the same lines (object, kind, reason) in both runs for this test's stale SysV channel, and
    what the dry run listed is gone after the real run: its record, semaphore set and segment."""
    pytest.importorskip("sysv_ipc")
    manifest, semid, shmid = _run_and_die("""
        import ipckit
        a, b = ipckit.pair("sysv+shm")
        print(a._seg.manifest, a._seg.semid, a._seg.shmid)
    """).split()
    entry = os.path.basename(manifest)
    try:
        assert semid in _sem_ids()  # the set outlives kill -9
        rc, dry, _ = run_cli(capsys, "cleanup", "--dry-run", "--prefix", "ipckit-sysv")
        assert rc == 0
        listed = [line.removeprefix("would remove ") for line in dry.splitlines() if line.startswith("would remove ")]
        mine = [line for line in listed if f" {entry} " in line]
        assert len(mine) == 1 and os.path.exists(manifest)
        rc, real, _ = run_cli(capsys, "cleanup", "--prefix", "ipckit-sysv")
        assert rc == 0
        removed = [line.removeprefix("removed ") for line in real.splitlines() if line.startswith("removed ")]
        assert [line for line in removed if f" {entry} " in line] == mine
        # Other runs' stale records may come and go between the two runs; none the dry run listed survives.
        for line in listed:
            assert line in removed or not os.path.exists(os.path.join(os.path.dirname(manifest),
                                                                      line.split()[2]))
        assert not os.path.exists(manifest)
        assert semid not in _sem_ids() and shmid not in {row["shmid"] for row in _proc.sysv_table("shm")}
    finally:
        from ipckit.backends import sysv_shm

        sysv_shm._RECORD.reclaim_if_stale(manifest)


def test_a_live_sysv_channel_is_not_reported(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sysv_ipc")
    import ipckit

    a, b = ipckit.pair("sysv+shm")
    with a, b:
        manifest = a._seg.manifest  # type: ignore[attr-defined]
        assert manifest not in {o.path for o in cleanup.find_stale("ipckit-sysv")}
        a.send_bytes(b"still here")
        assert b.recv_bytes(timeout=5) == b"still here"


def test_a_stale_shm_segment_goes_through_the_backends_reclaim(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("posix_ipc")
    name = f"t{secrets.token_hex(8)}"
    url = _run_and_die(f"""
        import ipckit
        lst = ipckit.listen("shm://{name}")
        print(lst.url)
    """)
    assert url == f"shm://{name}"
    entries = sorted(e for e in os.listdir("/dev/shm") if name in e)
    try:
        assert entries == [f"ipckit.{name}", f"sem.ipckit.{name}.a", f"sem.ipckit.{name}.b"]
        prefix = f"ipckit.{name}"
        rc, out, _ = run_cli(capsys, "cleanup", "--dry-run", "--prefix", prefix)
        assert rc == 0
        for e in entries:
            assert f"would remove file /dev/shm/{e} (no live process has it open or mapped)" in out
        assert sorted(e for e in os.listdir("/dev/shm") if name in e) == entries
        rc, out, _ = run_cli(capsys, "cleanup", "--prefix", prefix)
        assert rc == 0
        # The segment's reclaim removes its semaphores with it (under the segment's lock).
        assert f"removed file /dev/shm/ipckit.{name}" in out
        assert [e for e in os.listdir("/dev/shm") if name in e] == []
    finally:
        for e in os.listdir("/dev/shm"):
            if name in e:
                os.unlink(os.path.join("/dev/shm", e))


# --------------------------------------------------------------------------- the /proc scanner
def test_holders_sees_open_mapped_and_bound(tmp_path: Path) -> None:
    opened, mapped, sock_path, free = (str(tmp_path / n) for n in ("opened", "mapped", "s.sock", "free"))
    for path in (opened, mapped, free):
        Path(path).write_bytes(b"x" * 4096)
    fd = os.open(opened, os.O_RDONLY)
    with open(mapped, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(sock_path)
        held = _proc.Holders.scan()
        assert held.holds(opened) and held.holds(mapped) and held.holds(sock_path)
        assert not held.holds(free) and not held.holds(str(tmp_path / "absent"))
        assert held.holds_tree(str(tmp_path))  # a directory is held when something in it is
        assert held.unheld([opened, free]) == [free]
        # Left out of the scan (the leak guard leaves out its own tree), this process holds nothing.
        mine = _proc.Holders.scan(exclude=_proc.process_tree(os.getpid()))
        assert not mine.holds(opened) and not mine.holds(mapped) and not mine.holds(sock_path)
    finally:
        srv.close()
        mm.close()
        os.close(fd)


def test_process_table_readers() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in _proc.children_of(os.getpid())
        assert child.pid in _proc.process_tree(os.getpid())
        assert b"sys.stdin.read()" in (_proc.cmdline(child.pid) or b"")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    assert set(_proc.fd_targets()) >= {0, 1, 2}


def test_the_scanner_runs_from_a_bare_checkout(tmp_path: Path) -> None:
    """Stdlib only, no ipckit imports: CI can run the file before ipckit is installed."""
    copy = tmp_path / "_proc.py"
    shutil.copy(PKG / "_proc.py", copy)
    held = tmp_path / "held"
    held.touch()
    with open(held) as keep:
        lines = f"{held}\n{tmp_path / 'free'}\nsysv-sem key=1 id=2\n"
        (tmp_path / "free").touch()
        proc = subprocess.run([sys.executable, "-I", "-S", str(copy), "unheld"], input=lines, capture_output=True,
                              text=True, timeout=30, check=False)
        assert not keep.closed
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "free"), "sysv-sem key=1 id=2"]
