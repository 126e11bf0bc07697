"""The attacks of issue 10 (B.9, B.10, B.11), run as another uid (65534) in a forked child.

The rules they break are in docs/design.md §4 (S4, S5, S6, S12); what every named backend promises
is also in the contract (ipckit.testing.contract.security, run by each backend's test class).
Root bypasses file permissions, so the attacker runs as ``nobody``; where it needs group access,
it runs with the group of the files it attacks (``gid=0``: root's group).
"""

from __future__ import annotations

import mmap
import os
import pickle
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

import pytest

import ipckit
from ipckit.backends.common import paths
from ipckit.backends.common.ring import buffer as ring_buffer
from ipckit.backends.common.ring.channel import ring_offsets
from ipckit.errors import DecodeError, EndpointExists, PermissionDenied, UnsafeSerializer
from ipckit.testing import NOBODY, as_user

pytestmark = pytest.mark.timeout(60)

ROOT_GROUP = 0

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the attacker is another uid: needs root to switch")


class _Exploit:
    """Unpickling this runs ``os.mkdir(canary)`` in the receiving process: the attacker's code."""

    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (self.canary,)


def _connect_in_thread(url: str, **options: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(ipckit.connect(url, timeout=10.0, **options))
        except BaseException as exc:  # reported by the test
            out.append(exc)

    t = threading.Thread(target=run, name="ipckit-test-connect", daemon=True)
    t.start()
    return t, out


# --------------------------------------------------------------------------- B.9: group members
def _forge_posix_record(shm_path: str, canary: str) -> tuple[int, int]:
    """As the group member: map the segment (group rw) and commit one pickle record into the ring
    the listener's end reads, with ipckit's own ring writer (the layout is no secret)."""
    fd = os.open(shm_path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    _forge_into(mm, size, canary)
    mm.close()
    return os.getuid(), os.getegid()


def _forge_sysv_record(shmid: int, canary: str) -> tuple[int, int]:
    import sysv_ipc

    from ipckit.backends.sysv_shm import _map

    shm = sysv_ipc.attach(shmid)
    _forge_into(_map(shm), int(shm.size), canary)
    return os.getuid(), os.getegid()


def _forge_into(buf: Any, size: int, canary: str) -> None:
    _off_a, off_b, region = ring_offsets(size)
    writer = ring_buffer.RingWriter(buf, off_b, region, 1 << 20)  # ring B: what end 0 (the listener's) reads
    assert writer.try_write(pickle.dumps(_Exploit(canary)))
    writer.detach()


def _segment_of(scheme: str, lst: Any) -> Any:
    seg = lst._chan._seg
    return f"/dev/shm{seg.name}" if scheme == "shm" else seg.shmid


@needs_root
@pytest.mark.parametrize("scheme", ["shm", "sysv+shm"])
@pytest.mark.security("S12")
def test_b9_group_member_forges_a_record_the_owner_never_unpickles(scheme: str, tmp: str) -> None:
    """issue 10, B.9: with ``mode=0o660`` a member of the group maps the segment before the peer
    attaches and commits a forged record; the owner's ``recv()`` must not run it.  The widened
    mode made the channel msgpack on both ends, so the record is a DecodeError, nothing more."""
    pytest.importorskip("posix_ipc" if scheme == "shm" else "sysv_ipc")
    canary = os.path.join(tmp, "attacker-code-ran")
    url = f"{scheme}://ikt-b9-{os.getpid()}-{os.urandom(4).hex()}"
    with ipckit.listen(url, mode=0o660) as lst:
        forge = _forge_posix_record if scheme == "shm" else _forge_sysv_record
        assert as_user(forge, _segment_of(scheme, lst), canary, uid=NOBODY, gid=ROOT_GROUP) == (NOBODY, ROOT_GROUP)
        thread, out = _connect_in_thread(url, mode=0o660)
        with lst.accept(timeout=10.0) as server:
            thread.join(15.0)
            (client,) = out
            assert not isinstance(client, BaseException), client
            with client:
                try:
                    got = server.recv(timeout=5.0)
                except DecodeError:
                    got = DecodeError
                assert not os.path.exists(canary), "the owner's recv() ran the group member's code"
                assert got is DecodeError
                assert server.serializer.name == client.serializer.name == "msgpack"
                client.send({"still": "usable"}, timeout=5.0)
                assert server.recv(timeout=5.0) == {"still": "usable"}
    if os.path.exists(canary):
        os.rmdir(canary)


@pytest.mark.parametrize("scheme", ["fifo", "unix", "shm", "sysv+shm", "memory"])
@pytest.mark.security("S12")
def test_b9_the_trust_decision_under_a_widened_mode(scheme: str, tmp: str) -> None:
    """The decision itself, for every named backend, before any object exists: pickle refused
    with a message naming the mode, unless ``trust=True``; unix:// keeps it (SO_PEERCRED)."""
    url = {"fifo": f"fifo://{tmp}/ep", "unix": f"unix://{tmp}/s.sock"}.get(scheme, f"{scheme}://ikt-b9-{os.getpid()}")
    if scheme == "unix":
        with ipckit.listen(url, mode=0o666, serializer="pickle"):
            pass
        return
    with pytest.raises(UnsafeSerializer, match="mode=0o660 lets other users open"):
        ipckit.listen(url, mode=0o660, serializer="pickle")
    assert os.listdir(tmp) == []
    with pytest.raises(UnsafeSerializer):
        ipckit.pair(f"{scheme}://", mode=0o640, serializer="pickle")
    with ipckit.listen(url, mode=0o660, serializer="pickle", trust=True):
        pass


# --------------------------------------------------------------------------- B.10: symlink races
@pytest.fixture
def group_dir() -> Any:
    """A directory root owns that root's group may write in (no sticky bit): a legitimate place to
    listen, where a group member can rename and replace entries."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="ipckit-test-group-")
    os.chmod(d, 0o770)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.fixture
def victim(tmp: str) -> Any:
    """A root-owned 0600 file the attacker wants chmod-ed."""
    path = os.path.join(tmp, "victim")
    with open(path, "w") as f:
        f.write("secret")
    os.chmod(path, 0o600)
    yield path
    os.unlink(path)


def _plant_symlink(path: str, target: str) -> None:
    """As the group member: replace whatever is at *path* with a symlink to *target*."""
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            os.rename(path, path + ".moved")
        else:
            os.unlink(path)
    os.symlink(target, path)


@needs_root
@pytest.mark.security("S4", "S6", subject="unix")
def test_b10_unix_socket_swapped_for_a_symlink_after_bind(group_dir: str, victim: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 10, B.10: right after ``bind()`` a group member replaces the socket file with a symlink
    to a root-owned file; ``listen()`` must not chmod that file (it did: to 0666)."""
    path = os.path.join(group_dir, "s.sock")
    real_bind = socket.socket.bind

    def bind_then_attack(sock: socket.socket, address: Any) -> None:
        real_bind(sock, address)
        if sock.family == socket.AF_UNIX:
            as_user(_plant_symlink, path, victim, uid=NOBODY, gid=ROOT_GROUP)

    monkeypatch.setattr(socket.socket, "bind", bind_then_attack)
    with pytest.raises(EndpointExists):
        ipckit.listen(f"unix://{path}", mode=0o666).close()
    monkeypatch.undo()
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert os.path.islink(path) and os.readlink(path) == victim  # the attacker's link, left alone
    assert os.listdir(group_dir) == ["s.sock"]  # our lock file removed, nothing of ours left


@needs_root
@pytest.mark.security("S4", "S6", subject="fifo")
def test_b10_fifo_directory_swapped_for_a_symlink_after_mkdir(group_dir: str, victim: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 10, B.10: right after ``mkdir()`` of the endpoint directory a group member moves it
    away and puts a symlink to a root-owned file there; ``listen()`` must not chmod the file (it
    did: to 0755 for mode=0o666, the directory mode), and refuses with PermissionDenied."""
    path = os.path.join(group_dir, "ep")
    real_mkdir = os.mkdir

    def mkdir_then_attack(p: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(p, mode, dir_fd=dir_fd)
        if p == path:
            as_user(_plant_symlink, path, victim, uid=NOBODY, gid=ROOT_GROUP)

    monkeypatch.setattr(os, "mkdir", mkdir_then_attack)
    with pytest.raises(PermissionDenied, match="symlink"):
        ipckit.listen(f"fifo://{path}", mode=0o666).close()
    monkeypatch.undo()
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert os.path.islink(path)
    assert stat.S_IMODE(os.stat(path + ".moved").st_mode) == 0o700  # ours, moved away: never widened


def _make_other_users_dir(parent: str) -> str:
    d = os.path.join(parent, "theirs")
    os.mkdir(d, 0o755)
    return d


@needs_root
@pytest.mark.parametrize("scheme", ["unix", "fifo"])
@pytest.mark.security("S6")
def test_b10_unsafe_parent_directories_are_refused(scheme: str, tmp: str, shared_dir: str) -> None:
    """Refused: world-writable without the sticky bit, or owned by another (non-root) user (here
    a directory uid 65534 made in a sticky shared directory).  Accepted: the sticky shared one."""
    def url(d: str) -> str:
        return f"unix://{d}/s.sock" if scheme == "unix" else f"fifo://{d}/ep"

    open_dir = os.path.join(tmp, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    try:
        with pytest.raises(PermissionDenied, match="sticky"):
            ipckit.listen(url(open_dir))
        assert os.listdir(open_dir) == []
    finally:
        os.rmdir(open_dir)
    theirs = as_user(_make_other_users_dir, shared_dir)
    with pytest.raises(PermissionDenied, match="belongs to uid 65534"):
        ipckit.listen(url(theirs))
    assert os.listdir(theirs) == []
    # Sticky: only an entry's owner may remove or rename it.
    with ipckit.listen(url(shared_dir)) as lst, ipckit.connect(lst.url, timeout=5.0) as cl, \
            lst.accept(timeout=5.0) as ch:
        cl.send("ok", timeout=5.0)
        assert ch.recv(timeout=5.0) == "ok"


@pytest.mark.security("S4", subject="unix")
def test_b10_bind_with_mode_sets_the_mode_before_the_name_appears(tmp: str) -> None:
    """The kit itself: the socket has its mode when it appears, nothing else is left, and an
    existing name is never replaced."""
    path = os.path.join(tmp, "k.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        dev_ino = paths.bind_with_mode(s, path, 0o640)
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and (st.st_dev, st.st_ino) == dev_ino
        assert os.listdir(tmp) == ["k.sock"]
        s.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s2, pytest.raises(EndpointExists):
        paths.bind_with_mode(s2, path, 0o600)
    assert os.listdir(tmp) == ["k.sock"]
    os.unlink(path)


# --------------------------------------------------------------------------- B.11: the SysV directory
def _squat(directory: str) -> int:
    os.mkdir(directory, 0o755)
    return os.lstat(directory).st_uid


@pytest.fixture
def sysv_places(shared_dir: str, tmp: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """No $XDG_RUNTIME_DIR, the shared temp directory is *shared_dir* (sticky, world-writable),
    and this user's home is a fresh private directory: the setting B.11 attacks."""
    from ipckit.backends.common import sysv as sysv_kit

    pytest.importorskip("sysv_ipc")
    import pwd
    import tempfile

    home = os.path.join(tmp, "home")
    os.mkdir(home, 0o700)
    real = pwd.getpwuid(os.geteuid())
    fake = pwd.struct_passwd((real.pw_name, real.pw_passwd, real.pw_uid, real.pw_gid, real.pw_gecos, home,
                              real.pw_shell))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", shared_dir)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: fake)
    primary = os.path.join(shared_dir, f"ipckit-sysv-{os.geteuid()}")
    fallback = os.path.join(home, ".cache", f"ipckit-sysv-{os.geteuid()}")
    assert sysv_kit.registry_dir() == primary
    yield primary, fallback, home
    cache = os.path.join(home, ".cache")
    assert not os.path.exists(fallback), f"left behind: {os.listdir(fallback)}"
    if os.path.isdir(cache):
        os.rmdir(cache)
    os.rmdir(home)


def _pair_and_named_roundtrip(name: str) -> None:
    a, b = ipckit.pair("sysv+shm://")
    with a, b:
        a.send("pair", timeout=5.0)
        assert b.recv(timeout=5.0) == "pair"
    url = f"sysv+shm://{name}"
    with ipckit.listen(url) as lst:
        thread, out = _connect_in_thread(url)
        with lst.accept(timeout=10.0) as server:
            thread.join(15.0)
            (client,) = out
            assert not isinstance(client, BaseException), client
            with client:
                client.send("named", timeout=5.0)
                assert server.recv(timeout=5.0) == "named"


@needs_root
@pytest.mark.security("S6", "S18", subject="sysv+shm")
def test_b11_a_squatted_registry_name_does_not_stop_pair_listen_connect(sysv_places: Any) -> None:
    """issue 10, B.11: uid 65534 creates ``<tmp>/ipckit-sysv-<uid>`` first; pair() and
    listen()/connect() still work (the records go to the home fallback, where connect() finds
    them), and the squatter's directory is left alone: nothing of ours in it, never removed."""
    from ipckit.backends.common import sysv as sysv_kit

    primary, fallback, _home = sysv_places
    assert as_user(_squat, primary) == NOBODY
    _pair_and_named_roundtrip(f"b11-{os.getpid()}")
    assert sysv_kit.registry_candidates() == [primary, fallback]
    assert sysv_kit.registry_dir() == fallback
    st = os.lstat(primary)
    assert st.st_uid == NOBODY and os.listdir(primary) == []
    assert sysv_kit.RecordFormat("ipckit-sysv-shm/1", "sysv+shm", 4, (2, 3)).sweep() == []
    assert os.path.isdir(primary)  # a sweep never removes another user's directory
    os.rmdir(primary)


@needs_root
def test_b11_without_a_squatter_the_shared_name_is_used_and_removed(sysv_places: Any) -> None:
    primary, fallback, _home = sysv_places
    a, b = ipckit.pair("sysv+shm://")
    with a, b:
        assert os.path.isdir(primary) and not os.path.exists(fallback)
    assert not os.path.exists(primary)


@needs_root
@pytest.mark.security("S6", subject="sysv+shm")
def test_b11_clear_error_only_when_nothing_safe_exists(sysv_places: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No private runtime directory and no home of ours to fall back to: PermissionDenied that
    says what to do, and nothing created anywhere."""
    from ipckit.backends.common import sysv as sysv_kit

    primary, _fallback, _home = sysv_places
    monkeypatch.setattr(sysv_kit, "_home_cache", lambda: None)
    assert as_user(_squat, primary) == NOBODY
    try:
        with pytest.raises(PermissionDenied, match="XDG_RUNTIME_DIR"):
            ipckit.pair("sysv+shm://")
        with pytest.raises(PermissionDenied, match="XDG_RUNTIME_DIR"):
            ipckit.listen(f"sysv+shm://b11-{os.getpid()}")
        assert os.listdir(primary) == []
    finally:
        os.rmdir(primary)


def test_b11_a_private_runtime_dir_is_the_only_place(tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ipckit.backends.common import sysv as sysv_kit

    pytest.importorskip("sysv_ipc")
    runtime = os.path.join(tmp, "run")
    os.mkdir(runtime, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    assert sysv_kit.registry_candidates() == [os.path.join(runtime, f"ipckit-sysv-{os.geteuid()}")]
    a, b = ipckit.pair("sysv+shm://")
    with a, b:
        assert os.listdir(runtime) == [f"ipckit-sysv-{os.geteuid()}"]
    assert os.listdir(runtime) == []
    os.rmdir(runtime)
