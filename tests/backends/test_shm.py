"""shm:// backend: the whole conformance contract, plus lifecycle, cross-process use, peer death
and the POSIX shared-memory fault rows S-1…S-14 (docs/design.md).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import threading
import time
from typing import Any

import pytest

import ipckit
from ipckit.errors import (
    ChannelClosed,
    EndOfChannel,
    EndpointNotFound,
    PeerDied,
    PermissionDenied,
    RecvTimeout,
    SendTimeout,
)
from ipckit.registry import is_registered, register_backend
from ipckit.testing import (
    AioContract,
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    ForkContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    PeerDeathContract,
    PeerExitContract,
    SecurityContract,
    WaitContract,
)

posix_ipc = pytest.importorskip("posix_ipc")

pytestmark = pytest.mark.timeout(60)

if not is_registered("shm"):  # until the registry lists it
    register_backend("shm", "ipckit.backends.shm:ShmBackend")


class TestShm(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, CrossProcessContract,
              PeerDeathContract, ListenerContract, SecurityContract, PeerExitContract, ForkContract,
              WaitContract, AioContract):
    scheme = "shm"


class TestShmPurePython(TestShm):
    """The whole contract again on the pure-Python ring cursors, what runs where the C fast path was
    not built; spawned peers get ``IPCKIT_PURE_PYTHON=1``, forked ones inherit the patch."""

    @pytest.fixture(autouse=True)
    def _pure_python_cursors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from ipckit.backends.common.ring import buffer as ring
        from ipckit.backends.common.ring import cursor as ringcursor

        monkeypatch.setattr(ring.RingWriter, "_cursor_type", ringcursor.PyWriter)
        monkeypatch.setattr(ring.RingReader, "_cursor_type", ringcursor.PyReader)
        monkeypatch.setenv("IPCKIT_PURE_PYTHON", "1")

    def test_runs_the_python_cursors(self) -> None:
        a, b = self.make_pair()
        from ipckit.backends.common.ring import cursor as ringcursor

        assert isinstance(a._wc, ringcursor.PyWriter) and isinstance(b._rc, ringcursor.PyReader)
        a.send_bytes(b"pure")
        assert b.recv_bytes(timeout=5) == b"pure"


def _ours() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith(("ipckit.", "sem.ipckit."))}


# Leaks of /dev/shm names, fds and children are checked after every test by the ipckit.testing
# leak guard (tests/conftest.py), which tells this run's objects from other programs' ones.


def _echo(ch: Any, n: int) -> None:
    for _ in range(n):
        ch.send_bytes(ch.recv_bytes())
    ch.close()


def _hold_then_die(ch: Any, count: int) -> None:
    for i in range(count):
        ch.send_bytes(b"m%d" % i)
    ch.send_bytes(b"READY")
    ch.recv_bytes()  # blocks until killed
    raise AssertionError("unreachable")


def test_pair_round_trip_and_sizes() -> None:
    a, b = ipckit.pair("shm", capacity=64 * 1024)
    with a, b:
        for n in (0, 1, 64, 4096, 65_000, 300_000):
            msg = os.urandom(n)
            t = threading.Thread(target=a.send_bytes, args=(msg,))
            t.start()
            assert b.recv_bytes(timeout=10) == msg
            t.join()
        b.send({"k": [1, 2]})
        assert a.poll(1.0)
        assert a.recv() == {"k": [1, 2]}
        b.send_bytes(b"view")
        v = a.recv_view(timeout=5)
        assert bytes(v) == b"view"
        buf = bytearray(10)
        b.send_bytes(b"into")
        assert a.recv_bytes_into(buf, timeout=5) == 4 and buf[:4] == b"into"


def test_numpy_out_of_band() -> None:
    np = pytest.importorskip("numpy")
    a, b = ipckit.pair("shm", capacity=1 << 20)
    arr = np.random.default_rng(1).random(1_000_000)
    with a, b:
        t = threading.Thread(target=a.send, args=(arr,))
        t.start()
        got = b.recv(timeout=10)
        t.join()
        assert np.array_equal(got, arr)


def test_cross_process_spawn_echo() -> None:
    a, b = ipckit.pair("shm", capacity=16 * 1024)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_echo, args=(b, 50))
    p.start()
    b.close()
    try:
        sizes = [0, 10, 100, 5000, 40_000] * 10
        for n in sizes:
            msg = os.urandom(n)
            a.send_bytes(msg, timeout=20)
            assert a.recv_bytes(timeout=20) == msg
        with pytest.raises(EndOfChannel):
            a.recv_bytes(timeout=20)
    finally:
        p.join(20)
        a.close()
    assert p.exitcode == 0


def test_sigkilled_peer_is_peer_died_after_drain() -> None:
    a, b = ipckit.pair("shm")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_hold_then_die, args=(b, 3))
    p.start()
    b.close()
    try:
        got = [a.recv_bytes(timeout=20) for _ in range(4)]
        assert got[-1] == b"READY"
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        t0 = time.monotonic()
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=10)
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(PeerDied):
            a.send_bytes(b"x" * (5 << 20), timeout=10)  # larger than the ring: must wait
    finally:
        a.close()


def test_listen_connect_and_names_removed_after_accept() -> None:
    name = "t" + secrets.token_hex(8)
    lst = ipckit.listen(f"shm://{name}", capacity=8192)
    try:
        c = ipckit.connect(f"shm://{name}", timeout=5)
        s = lst.accept(timeout=5)
        assert not [e for e in os.listdir("/dev/shm") if name in e]
        with c, s:
            c.send_bytes(b"hello")
            assert s.recv_bytes(timeout=5) == b"hello"
            s.send("world")
            assert c.recv(timeout=5) == "world"
        with pytest.raises(EndpointNotFound):
            ipckit.connect(f"shm://{name}", timeout=0.1)
    finally:
        lst.close()


@pytest.mark.security("S2", subject="shm")
def test_stale_name_of_crashed_creator_is_reclaimed() -> None:
    name = "t" + secrets.token_hex(8)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        lst = ipckit.listen(f"shm://{name}")
        os.kill(os.getpid(), signal.SIGKILL)
        print(lst)  # keeps the listener alive up to the kill
    os.waitpid(pid, 0)
    assert [e for e in os.listdir("/dev/shm") if name in e]  # leftovers of the crash
    lst = ipckit.listen(f"shm://{name}")
    lst.close()
    assert not [e for e in os.listdir("/dev/shm") if name in e]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.security("S2", "S5", subject="shm")
def test_squatted_name_of_other_user_is_refused() -> None:
    name = "t" + secrets.token_hex(8)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        posix_ipc.SharedMemory(f"/ipckit.{name}", posix_ipc.O_CREX, mode=0o666, size=8192)
        os.write(w, b"1")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    try:
        with pytest.raises(PermissionDenied):
            ipckit.connect(f"shm://{name}", timeout=1)
    finally:
        posix_ipc.unlink_shared_memory(f"/ipckit.{name}")


def test_timeouts_and_full_ring() -> None:
    a, b = ipckit.pair("shm", capacity=4096)
    with a, b:
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0.05)
        for _ in range(3):
            a.send_bytes(b"x" * 1000, timeout=1)
        with pytest.raises(SendTimeout):
            a.send_bytes(b"y" * 3000, timeout=0.1)
        with pytest.raises(SendTimeout):
            a.send_bytes(b"z" * 20_000, timeout=0.1)  # streamed, then aborted
        assert [b.recv_bytes(timeout=1) for _ in range(3)] == [b"x" * 1000] * 3
        a.send_bytes(b"after", timeout=1)
        assert b.recv_bytes(timeout=1) == b"after"


def test_close_from_other_thread_wakes_recv() -> None:
    a, b = ipckit.pair("shm")
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            b.recv_bytes(timeout=20)
        except ChannelClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    while not b._r._ctl[ring_mod._W_RSLEEP]:  # the reader is asleep on its semaphore
        time.sleep(0.001)
    t0 = time.monotonic()
    b.close()
    t.join(5)
    assert time.monotonic() - t0 < 1.0
    assert len(errors) == 1
    a.close()


# --------------------------------------------------------------------------- fault rows S-1…S-14
# Kill points are reached by driving the child's ring directly (no hooks in the library's hot path);
# the creator's "after create, before init" point is a kill point of ipckit.backends.common.faults
# (IPCKIT_FAULT, read once at import).
from ipckit.backends import shm as shm_mod  # noqa: E402
from ipckit.backends.common import posix as posix_kit  # noqa: E402
from ipckit.backends.common.ring import buffer as ring_mod  # noqa: E402
from ipckit.errors import (  # noqa: E402
    EndpointExists,
    IncompatibleEndpoint,
    ProtocolError,
)
from ipckit.testing import as_user, kill_self, ready, signal_storm, spawn_peer, timing_bounds  # noqa: E402

_RSLEEP = ring_mod._W_RSLEEP  # reader_sleeping word of a ring's control area


def _wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.0005)


def _commit_without_post_then_die(ch: Any, payload: bytes) -> None:
    """S-1/S-3: commit a message but skip the wake-up (the reader is asleep), then die."""
    ready()
    w = ch._w
    _wait_for(lambda: w._ctl[_RSLEEP] != 0)  # the parent's recv() sleeps on its semaphore
    w.wake_peer = None
    assert w.try_write(memoryview(payload))
    kill_self()


def _payload_without_commit_then_die(ch: Any, good: bytes, torn: bytes) -> None:
    """S-2: one whole message, then header + payload of the next written but never committed."""
    ch.send_bytes(good, timeout=10)
    w = ch._w
    base = w._data + w._wp % w._cap
    ring_mod._HDR.pack_into(w._mv, base, ring_mod._MSG, len(torn), len(torn))
    w._mv[base + 16 : base + 16 + len(torn)] = torn
    ready()
    kill_self()


def _half_streamed_then_die(ch: Any, big: bytes) -> None:
    """S-2 for a message larger than the ring: some chunks committed, the rest never."""
    w = ch._w
    assert not w.write([memoryview(big)], len(big))  # pending: the ring filled up
    ready()
    kill_self()


def _hold_unlink_lock_then_die(ch: Any) -> None:
    """S-1 'holding_lock': die while holding the only cross-process lock (the unlink mutex)."""
    posix_kit.lock_wait(ch._seg.shm_fd, shm_mod._UNLINK_BYTE)
    ready()
    kill_self()


def test_s1_s3_killed_after_commit_before_post() -> None:
    a, b = ipckit.pair("shm", capacity=64 * 1024)
    with spawn_peer(_commit_without_post_then_die, b, b"committed") as peer:
        b.close()
        peer.wait_ready()
        try:
            start = time.monotonic()
            assert a.recv_bytes(timeout=10) == b"committed"  # found by re-checking, not by a post
            assert time.monotonic() - start < 1.0 + 0.5  # (includes the child's wait for our sleep)
            assert peer.wait_exit() == -9
            start = time.monotonic()
            with pytest.raises(PeerDied):
                a.recv_bytes(timeout=10)
            assert time.monotonic() - start <= 1.5
        finally:
            a.close()


@pytest.mark.security("S18", subject="shm")
def test_s1_killed_holding_the_unlink_lock() -> None:
    a, b = ipckit.pair("shm")
    with spawn_peer(_hold_unlink_lock_then_die, b) as peer:
        b.close()
        peer.wait_ready()
        assert peer.wait_exit() == -9
        start = time.monotonic()
        with pytest.raises(PeerDied):
            a.recv_bytes(timeout=10)
        assert time.monotonic() - start <= 1.5
        a.close()  # takes the unlink lock the dead child held: released by the kernel
    # (the no_leaks fixture checks the names are gone)


def test_s2_killed_after_payload_before_commit() -> None:
    a, b = ipckit.pair("shm", capacity=64 * 1024)
    with spawn_peer(_payload_without_commit_then_die, b, b"whole", b"torn" * 100) as peer:
        b.close()
        peer.wait_ready()
        assert peer.wait_exit() == -9
        try:
            assert a.recv_bytes(timeout=10) == b"whole"
            start = time.monotonic()
            with pytest.raises(PeerDied):
                a.recv_bytes(timeout=10)  # the uncommitted message is never delivered
            assert time.monotonic() - start <= 1.5
            with pytest.raises(PeerDied):
                a.recv_bytes(timeout=0)
        finally:
            a.close()


def test_s2_killed_in_the_middle_of_a_streamed_message() -> None:
    a, b = ipckit.pair("shm", capacity=8192)
    big = os.urandom(100_000)
    with spawn_peer(_half_streamed_then_die, b, big) as peer:
        b.close()
        peer.wait_ready()
        assert peer.wait_exit() == -9
        try:
            with pytest.raises(PeerDied):
                a.recv_bytes(timeout=10)  # the committed chunks are discarded, never returned
        finally:
            a.close()


def _pair_then_die() -> None:
    a, b = ipckit.pair("shm")
    print(a, b, flush=True)  # both ends stay referenced until the kill
    ready()
    kill_self()


def _listen_then_die(url: str) -> None:
    lst = ipckit.listen(url)
    ready()
    kill_self()
    print(lst)


def test_s4_orphans_of_a_killed_process_are_cleaned() -> None:
    # Only the killed peer's names: another program's live channels may be in /dev/shm too (a
    # busy-machine soak run met one), and cleanup rightly keeps those.
    before = _ours()
    with spawn_peer(_pair_then_die) as peer:
        peer.wait_ready()
        assert peer.wait_exit() == -9
    left = _ours() - before
    assert left, "a pair inside one killed process leaves names behind (nothing attached elsewhere)"
    removed = shm_mod.cleanup_stale()
    assert removed
    assert not (_ours() & left)


def test_s4_stale_listener_is_reclaimed_on_reuse() -> None:
    url = f"shm://s4-{secrets.token_hex(6)}"
    with spawn_peer(_listen_then_die, url) as peer:
        peer.wait_ready()
        assert peer.wait_exit() == -9
    lst = ipckit.listen(url)  # the crashed creator's objects are replaced, not reused
    c = ipckit.connect(url, timeout=5)
    s = lst.accept(timeout=5)
    with c, s:
        c.send_bytes(b"fresh")
        assert s.recv_bytes(timeout=5) == b"fresh"
    lst.close()


@pytest.mark.security("S18", subject="shm")
def test_s5_double_close_never_removes_a_newer_object_of_the_same_name() -> None:
    url = f"shm://s5-{secrets.token_hex(6)}"
    old = ipckit.listen(url)
    name = f"/ipckit.{url[6:]}"
    # Someone removes the names behind the listener's back, and a new listener takes the name.
    shm_mod._names(name).unlink()
    new = ipckit.listen(url)
    old.close()  # would unlink the newer object if it unlinked by name
    old.close()
    assert os.path.exists(f"/dev/shm{name}")
    c = ipckit.connect(url, timeout=5)
    s = new.accept(timeout=5)
    with c, s:
        c.send_bytes(b"still here")
        assert s.recv_bytes(timeout=5) == b"still here"
    new.close()
    new.close()


def _attach_say_hello_and_exit(ch: Any) -> None:
    ready()
    ch.send_bytes(b"hello", timeout=10)
    # a normal exit: atexit closes the end; nothing may unlink or unmap the creator's segment


def test_s6_attacher_exits_normally_creator_is_fine() -> None:
    a, b = ipckit.pair("shm")
    with spawn_peer(_attach_say_hello_and_exit, b, method="spawn") as peer:
        b.close()
        peer.wait_ready()
        assert peer.join() is None
    try:
        assert a.recv_bytes(timeout=10) == b"hello"
        with pytest.raises(EndOfChannel):
            a.recv_bytes(timeout=10)
        with pytest.raises(EndOfChannel):
            a.send_bytes(b"x", timeout=1)
        assert a._seg.mm is not None and a._seg.mm[:8] != b"\0" * 8  # still mapped, still ours
    finally:
        a.close()


_S7_SCRIPT = r"""
import os, subprocess, sys
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", "/dev/shm"], check=True)
import ipckit
from ipckit.errors import ResourceExhausted
small = ipckit.pair("shm", capacity=4096)     # fits: the channel works
small[0].send_bytes(b"ok"); assert small[1].recv_bytes(timeout=5) == b"ok"
try:
    ipckit.pair("shm", capacity=1 << 20)      # does not fit: refused at create, not SIGBUS later
except ResourceExhausted as exc:
    print("RESOURCE", exc)
else:
    print("CREATED")
held = []
try:
    for _ in range(100):                       # fill the rest channel by channel
        held.append(ipckit.pair("shm", capacity=8192))
    print("NEVER FULL")
except ResourceExhausted:
    print("FULL", len(held))
for a, b in held + [small]:
    a.close(); b.close()
print("LEFT", sorted(os.listdir("/dev/shm")))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m and a private tmpfs on /dev/shm")
@pytest.mark.security("S17", subject="shm")
def test_s7_full_dev_shm_is_resource_exhausted_never_sigbus() -> None:
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["unshare", "-m", sys.executable, "-c", _S7_SCRIPT], capture_output=True, text=True,
                          timeout=50, env=env)
    assert proc.returncode == 0, proc.stderr  # a SIGBUS would be returncode -7
    out = proc.stdout.splitlines()
    assert out[0].startswith("RESOURCE") and "/dev/shm" in out[0]
    assert out[1].startswith("FULL")
    assert out[2] == "LEFT []"


@pytest.mark.security("S5", "S16", subject="shm")
def test_s8_foreign_segment_with_the_same_name() -> None:
    name = f"s8-{secrets.token_hex(6)}"
    seg = posix_ipc.SharedMemory(f"/ipckit.{name}", posix_ipc.O_CREX, mode=0o600, size=4096)  # all zero
    try:
        start = time.monotonic()
        with pytest.raises(IncompatibleEndpoint):
            ipckit.connect(f"shm://{name}", timeout=5)
        assert time.monotonic() - start < 1.0  # nobody holds it: no need to wait for the deadline
        os.pwrite(seg.fd, b"NOTOURS!", 0)  # a foreign magic
        with pytest.raises(IncompatibleEndpoint):
            ipckit.connect(f"shm://{name}", timeout=5)
        with pytest.raises(EndpointExists):
            ipckit.listen(f"shm://{name}")  # never removes an object that is not an ipckit segment
        assert os.path.exists(f"/dev/shm/ipckit.{name}")
    finally:
        seg.close_fd()
        posix_ipc.unlink_shared_memory(f"/ipckit.{name}")


def test_s8_other_version_or_layout() -> None:
    url = f"shm://s8v-{secrets.token_hex(6)}"
    lst = ipckit.listen(url, capacity=8192)
    try:
        hdr = lst._chan._hdr  # type: ignore[attr-defined]
        hdr[1] = shm_mod.SEG_VERSION + 1
        with pytest.raises(IncompatibleEndpoint):
            ipckit.connect(url, timeout=2)
        hdr[1] = shm_mod.SEG_VERSION
        hdr[2] = 1 << 30  # capacity that does not match the segment's size
        with pytest.raises(IncompatibleEndpoint):
            ipckit.connect(url, timeout=2)
    finally:
        lst.close()


@pytest.mark.parametrize("corrupt", ["write_pos_beyond", "write_pos_unaligned", "write_pos_backwards",
                                     "bad_kind", "chunk_over_total", "total_over_max", "random_header"])
@pytest.mark.security("S16", subject="shm")
def test_s9_corrupt_shared_header_is_protocol_error(corrupt: str) -> None:
    a, b = ipckit.pair("shm", capacity=8192, max_message_size=1 << 20)
    with a, b:
        a.send_bytes(b"first")
        assert b.recv_bytes(timeout=1) == b"first"
        a.send_bytes(b"second")
        w = a._w  # type: ignore[attr-defined]
        ctl = w._ctl
        base = w._data + (w._wp - 64) % w._cap  # the record of "second"
        if corrupt == "write_pos_beyond":
            ctl[8] = ctl[8] + 1 << 20
        elif corrupt == "write_pos_unaligned":
            ctl[8] = ctl[8] + 1
        elif corrupt == "write_pos_backwards":
            ctl[8] = 0
        elif corrupt == "bad_kind":
            ring_mod._HDR.pack_into(w._mv, base, 99, 6, 6)
        elif corrupt == "chunk_over_total":
            ring_mod._HDR.pack_into(w._mv, base, ring_mod._MSG, 40, 6)
        elif corrupt == "total_over_max":
            ring_mod._HDR.pack_into(w._mv, base, ring_mod._MSG, 6, 1 << 40)
        else:
            w._mv[base : base + 16] = os.urandom(16)
            ctl[8] = ctl[8] | 0  # keep the counter
        try:
            with pytest.raises(ProtocolError):
                b.recv_bytes(timeout=1)
        finally:
            if corrupt.startswith("write_pos"):
                ctl[8] = w._wp  # let a.close() publish sanely


@pytest.mark.security("S16", subject="shm")
def test_s9_garbage_in_the_segment_header_never_crashes() -> None:
    a, b = ipckit.pair("shm", capacity=8192)
    with a, b:
        hdr = b._hdr  # type: ignore[attr-defined]
        saved = hdr.tolist()
        for word in (5, 6, 7, 8):
            hdr[word] = 0xFFFFFFFFFFFFFFFF
        try:
            a.send_bytes(b"x")
            assert b.recv_bytes(timeout=1) == b"x"
            with pytest.raises(RecvTimeout):
                b.recv_bytes(timeout=0.05)
        finally:
            for i, v in enumerate(saved):
                hdr[i] = v


def _race_listen(url: str, go: int, hold: int, done: int) -> None:
    os.read(go, 1)
    try:
        lst = ipckit.listen(url)
    except EndpointExists:
        os.write(done, b"E")
        return
    except Exception as exc:  # anything else fails the test with its name
        os.write(done, f"X{type(exc).__name__}:{exc}|".encode()[:200])
        return
    os.write(done, b"C")
    os.read(hold, 1)  # hold the name until every racer answered
    lst.close()


@pytest.mark.security("S2", subject="shm")
def test_s10_create_races_have_exactly_one_creator() -> None:
    racers = 3
    for _ in range(50):
        url = f"shm://s10-{secrets.token_hex(6)}"
        go_r, go_w = os.pipe()
        hold_r, hold_w = os.pipe()
        done_r, done_w = os.pipe()
        pids = []
        for _ in range(racers):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                code = 0
                try:
                    for fd in (go_w, hold_w, done_r):
                        os.close(fd)
                    _race_listen(url, go_r, hold_r, done_w)
                except BaseException:
                    code = 1
                os._exit(code)
            pids.append(pid)
        for fd in (go_r, hold_r, done_w):
            os.close(fd)
        os.write(go_w, b"g" * racers)  # release all racers at once
        answers = b""
        while len(answers) < racers:
            chunk = os.read(done_r, 256)
            if not chunk:
                break
            answers += chunk
        os.write(hold_w, b"q" * racers)
        for fd in (go_w, hold_w, done_r):
            os.close(fd)
        codes = [os.waitpid(pid, 0)[1] for pid in pids]
        assert sorted(answers.decode()) == ["C"] + ["E"] * (racers - 1), answers
        assert codes == [0] * racers


_S11_SCRIPT = "import ipckit, sys; ipckit.listen(sys.argv[1]); print('not killed')"


def test_s11_creator_killed_after_create_before_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """The segment is built under a temporary name and published by link(2) only once initialised,
    so a creator killed half-way leaves no object under the channel's name (connect: not found, a
    new listen just works) and its temporary segment is reclaimed once it is older than a grace."""
    import subprocess
    import sys

    url = f"shm://s11-{secrets.token_hex(6)}"
    before = _ours()
    env = {**os.environ, "IPCKIT_FAULT": "shm.after_create_before_init"}
    proc = subprocess.run([sys.executable, "-c", _S11_SCRIPT, url], env=env, capture_output=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    temps = {e for e in _ours() - before if e.startswith("ipckit.tmp.")}
    assert len(temps) == 1 and not os.path.exists(f"/dev/shm/ipckit.{url[6:]}")
    start = time.monotonic()
    with pytest.raises(EndpointNotFound):
        ipckit.connect(url, timeout=0.2)
    assert time.monotonic() - start < 1.0
    lst = ipckit.listen(url)  # restart works (the half-made segment is still within its grace)
    c = ipckit.connect(url, timeout=5)
    s = lst.accept(timeout=5)
    with c, s:
        s.send_bytes(b"restarted")
        assert c.recv_bytes(timeout=5) == b"restarted"
    lst.close()
    assert temps <= _ours()
    monkeypatch.setattr(shm_mod, "_TMP_GRACE", 0.0)
    assert set(shm_mod.cleanup_stale()) >= temps
    assert not temps & _ours()


def test_s12_signal_storm_keeps_deadlines() -> None:
    a, b = ipckit.pair("shm", capacity=4096)
    with a, b:
        a.send_bytes(b"x" * 4000)  # the ring is full now
        for timeout in (0.05, 0.3):
            with signal_storm(hz=200) as storm:
                start = time.monotonic()
                with pytest.raises(SendTimeout):
                    a.send_bytes(b"y" * 1000, timeout=timeout)
                elapsed = time.monotonic() - start
            low, high = timing_bounds(timeout)
            assert low <= elapsed <= high and storm.count >= 3
        assert b.recv_bytes(timeout=1) == b"x" * 4000
        url = f"shm://s12-{secrets.token_hex(6)}"
        lst = ipckit.listen(url)
        try:
            with signal_storm(hz=200):
                start = time.monotonic()
                with pytest.raises(ipckit.errors.ChannelTimeout):
                    lst.accept(timeout=0.3)
                elapsed = time.monotonic() - start
            low, high = timing_bounds(0.3)
            assert low <= elapsed <= high
        finally:
            lst.close()


def _connect_as_other_user(url: str) -> str:
    try:
        ipckit.connect(url, timeout=1)
    except PermissionDenied as exc:
        return f"PermissionDenied: {exc}"
    return "attached"


@pytest.mark.security("S4", subject="shm")
def test_s13_other_user_cannot_open_by_name() -> None:
    url = f"shm://s13-{secrets.token_hex(6)}"
    lst = ipckit.listen(url)
    try:
        assert as_user(_connect_as_other_user, url).startswith("PermissionDenied")
        c = ipckit.connect(url, timeout=5)  # the listener is unaffected
        s = lst.accept(timeout=5)
        with c, s:
            c.send_bytes(b"mine")
            assert s.recv_bytes(timeout=5) == b"mine"
    finally:
        lst.close()


def _squat(name: str) -> None:
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o666, size=_SQUAT_SIZE).close_fd()


_SQUAT_SIZE = 1 << 16


@pytest.mark.security("S2", "S5", "S18", subject="shm")
def test_s14_name_squatted_by_another_user() -> None:
    name = f"s14-{secrets.token_hex(6)}"
    as_user(_squat, f"/ipckit.{name}")
    try:
        with pytest.raises(PermissionDenied):
            ipckit.listen(f"shm://{name}")  # never attaches to (or removes) the squatter's object
        with pytest.raises(PermissionDenied):
            ipckit.connect(f"shm://{name}", timeout=1)
        st = os.stat(f"/dev/shm/ipckit.{name}")
        assert st.st_uid == 65534 and st.st_size == _SQUAT_SIZE
    finally:
        posix_ipc.unlink_shared_memory(f"/ipckit.{name}")


# --------------------------------------------------------------------------- T6: copies of a large array
def _recv_array_measuring(ch: Any) -> tuple[int, int, int]:
    import tracemalloc
    import zlib

    ready()
    tracemalloc.start()
    arr = ch.recv(timeout=60)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    crc = zlib.crc32(memoryview(arr).cast("B"))
    ch.close()
    return peak, arr.nbytes, crc


def test_t6_64mib_numpy_array_crosses_with_one_copy_per_side() -> None:
    """Performance target T6: pickle protocol 5 sends the array's buffer out of band, straight from its
    memory into the ring (sender: no Python allocation of its size), and the receiver reassembles it
    once into the buffer the new array uses (receiver: one allocation of its size, no second copy)."""
    import tracemalloc
    import zlib

    np = pytest.importorskip("numpy")
    size = 64 << 20
    arr = np.random.default_rng(6).integers(0, 255, size, dtype=np.uint8).view(np.float64).reshape(1024, -1)
    crc = zlib.crc32(memoryview(arr).cast("B"))
    a, b = ipckit.pair("shm", max_message_size=size + (1 << 20))
    with spawn_peer(_recv_array_measuring, b) as peer:
        b.close()
        peer.wait_ready()
        try:
            tracemalloc.start()
            a.send(arr, timeout=60)
            send_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            recv_peak, nbytes, got_crc = peer.join(60)
        finally:
            a.close()
    assert (nbytes, got_crc) == (size, crc)
    assert send_peak < size // 16, f"the sender allocated {send_peak} bytes: the array was copied"
    assert recv_peak < size + size // 16, f"the receiver allocated {recv_peak} bytes: more than one copy"


@pytest.mark.parametrize("capacity", [1 << 40, (1 << 64) - 1], ids=["2**40", "2**64-1"])
@pytest.mark.security("S16", subject="shm")
def test_s8_forged_capacity_is_incompatible_not_a_raw_error(capacity: int) -> None:
    """Issue 10, B.12: a capacity the ring cannot have made connect() raise a raw ValueError."""
    url = f"shm://s8c-{secrets.token_hex(6)}"
    with ipckit.listen(url, capacity=8192) as lst:
        hdr = lst._chan._hdr  # type: ignore[attr-defined]
        good = hdr[2]
        hdr[2] = capacity
        with pytest.raises(IncompatibleEndpoint, match="another layout"):
            ipckit.connect(url, timeout=2)
        hdr[2] = good
        with ipckit.connect(url, timeout=2) as c, lst.accept(timeout=5) as s:  # nothing was left attached
            c.send_bytes(b"fine")
            assert s.recv_bytes(timeout=5) == b"fine"


_FULL_SHM_SCRIPT = r"""
import json, os, subprocess, sys
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", "/dev/shm"], check=True)
import ipckit
from ipckit.errors import ResourceExhausted
for end in ipckit.pair("shm", capacity=4096):  # the imports, with room to spare
    end.close()
out = []
for op in ("pair", "listen"):
    for free in range(12):  # pages left in /dev/shm: the segment (5 pages here) and each semaphore (1)
        st = os.statvfs("/dev/shm")
        fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_RDWR, 0o600)
        if st.f_bavail > free:
            os.posix_fallocate(fd, 0, (st.f_bavail - free) * st.f_frsize)
        os.close(fd)
        made = []
        try:
            if op == "pair":
                made = list(ipckit.pair("shm", capacity=4096))
            else:
                made = [ipckit.listen("shm://full", capacity=4096)]
            result = "ok"
        except ResourceExhausted as exc:
            result = "ResourceExhausted: " + str(exc)
        except BaseException as exc:
            result = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        left = sorted(n for n in os.listdir("/dev/shm") if n != "filler")
        for obj in made:
            obj.close()
        os.unlink("/dev/shm/filler")
        out.append([op, free, result, [] if made else left])
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -m and a private tmpfs on /dev/shm")
@pytest.mark.security("S17", subject="shm")
def test_full_dev_shm_at_every_step_is_resource_exhausted_and_leaves_nothing() -> None:
    """Issue 10, B.12: with /dev/shm full at each step of creating a channel (the segment's pages, then
    each semaphore), pair() and listen() work or raise ResourceExhausted naming /dev/shm, and leave no
    entry there (a full /dev/shm while creating the semaphores was a raw OSError)."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["unshare", "-m", sys.executable, "-c", _FULL_SHM_SCRIPT], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    for op, free, result, left in rows:
        assert result == "ok" or (result.startswith("ResourceExhausted: ") and "/dev/shm" in result), (op, free, result)
        assert left == [], (op, free, left)
    for op in ("pair", "listen"):
        outcomes = [r[2] for r in rows if r[0] == op]
        assert outcomes[0] != "ok" and outcomes[-1] == "ok"
        # Some level of free space lets the segment be made but not its semaphores.
        assert any("creating /ipckit." in r and "reserving" not in r for r in outcomes), outcomes


# --------------------------------------------------------------------------- cleanup vs. travelling ends
from ipckit import cleanup as cleanup_mod  # noqa: E402
from ipckit.backends.common.ring import channel as ring_channel  # noqa: E402
from ipckit.testing.contract.cross_process import _drain_after_gate, _Gate  # noqa: E402
from ipckit.testing.workers import make_payload  # noqa: E402

_TRAVEL_COUNT = 3


def _travelling_channel(ctx: Any) -> tuple[Any, Any, str]:
    """A pair whose end ``theirs`` is held at a gate in a spawned child's unpickling, the parent's
    copies of both ends closed after sending: nothing holds the channel.  ``(process, gate, name)``."""
    mine, theirs = ipckit.pair("shm://")
    name = theirs._seg.name  # type: ignore[attr-defined]
    gate_in, gate_out = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_drain_after_gate, args=(_Gate(gate_in), theirs, _TRAVEL_COUNT), daemon=True)
    try:
        proc.start()
    except BaseException:
        gate_out.close()
        raise
    finally:
        gate_in.close()
        theirs.close()
    for i in range(_TRAVEL_COUNT):
        mine.send_bytes(make_payload(i, 100 + i), timeout=10.0)
    mine.close()
    return proc, gate_out, name


def _channel_entries(name: str) -> set[str]:
    base = name.lstrip("/")
    return {f"/dev/shm/{base}", f"/dev/shm/sem.{base}.a", f"/dev/shm/sem.{base}.b"}


def _finish(proc: Any, gate: Any) -> int | None:
    try:
        gate.send(True)
        proc.join(60)
        code: int | None = proc.exitcode
        return code
    finally:
        gate.close()
        if proc.is_alive():
            proc.kill()
            proc.join(10)
        proc.close()


def test_s15_cleanup_keeps_a_channel_whose_end_travels_to_a_child() -> None:
    """Issue 10: an end pickled for a spawned child, the parent's copies closed, the child not yet
    attached -- no process holds the channel.  ``ipckit cleanup`` (dry run and real run) and
    cleanup_stale leave it alone, and the child then receives every message."""
    proc, gate, name = _travelling_channel(mp.get_context("spawn"))
    try:
        entries = _channel_entries(name)
        assert {p for p in entries if os.path.exists(p)} == entries
        sweep = cleanup_mod.Sweep(prefix=name.lstrip("/"))
        assert [o for o in shm_mod.ShmBackend.find_stale(sweep) if o.path in entries] == []
        assert cleanup_mod.find_stale(prefix=name.lstrip("/")) == []
        for path in sorted(entries):  # what a real run does with each, had the sweep listed it
            assert not shm_mod.ShmBackend.remove_stale(cleanup_mod.StaleObject(path, "file", "test", scheme="shm"))
        assert shm_mod.cleanup_stale(prefix=name.lstrip("/")) == []
        assert {p for p in entries if os.path.exists(p)} == entries
    finally:
        code = _finish(proc, gate)
    assert code == _TRAVEL_COUNT, f"the child exited with {code}; {_TRAVEL_COUNT} is success"


def test_s15_an_end_that_never_arrives_is_reclaimed_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The travel mark holds for TRAVEL_GRACE only: past it the sweep lists the channel (all three
    names, dry run = real run) and removes it; the late child finds it gone (EndpointNotFound)."""
    proc, gate, name = _travelling_channel(mp.get_context("spawn"))
    try:
        monkeypatch.setattr(ring_channel, "TRAVEL_GRACE", 0.0)
        entries = _channel_entries(name)
        listed = cleanup_mod.find_stale(prefix=name.lstrip("/"))
        assert {o.path for o in listed} == entries
        assert all(cleanup_mod.remove(o) or not os.path.exists(o.path) for o in listed)
        assert {p for p in entries if os.path.exists(p)} == set()
    finally:
        code = _finish(proc, gate)
    assert code == 1, f"the child exited with {code}; 1 is its EndpointNotFound while unpickling"


def test_s15_dry_run_lists_only_what_the_real_run_removes() -> None:
    """A file in /dev/shm with our prefix but a foreign magic is never removed by the real run (S-8),
    so the dry run does not list it either (it did: find_stale judged by holders alone)."""
    name = f"/ipckit.s15-{secrets.token_hex(6)}"
    seg = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    try:
        os.pwrite(seg.fd, b"NOTOURS!", 0)
        seg.close_fd()
        assert cleanup_mod.find_stale(prefix=name.lstrip("/")) == []
        assert shm_mod.cleanup_stale(prefix=name.lstrip("/")) == []
        assert os.path.exists(f"/dev/shm{name}")
    finally:
        posix_ipc.unlink_shared_memory(name)
