"""shm:// backend: the whole conformance contract, plus lifecycle, cross-process use, peer death
and the POSIX shared-memory fault rows S-1…S-14 of reliability.md §2.6.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
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
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    PeerDeathContract,
)

posix_ipc = pytest.importorskip("posix_ipc")

pytestmark = pytest.mark.timeout(60)

if not is_registered("shm"):  # until the registry lists it
    register_backend("shm", "ipckit.backends.shm:ShmBackend")


class TestShm(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, CrossProcessContract,
              PeerDeathContract, ListenerContract):
    scheme = "shm"


def _ours() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith(("ipckit.", "sem.ipckit."))}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = _ours()
    yield
    assert _ours() - before == set()


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
    while not b._r._ctl[17]:  # the reader is asleep on its semaphore
        time.sleep(0.001)
    t0 = time.monotonic()
    b.close()
    t.join(5)
    assert time.monotonic() - t0 < 1.0
    assert len(errors) == 1
    a.close()
