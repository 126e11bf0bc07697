"""fifo:// runs the whole contract, plus rows F-1…F-9 of docs/design.md."""

from __future__ import annotations

import os
from collections.abc import Callable

from ipckit.testing import (
    AioContract,
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    ForkContract,
    FramedStreamContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    PeerDeathContract,
    PeerExitContract,
    SecurityContract,
    SelectableContract,
    WaitContract,
)


class TestFifo(ChannelContract, DuplexContract, PeerCloseContract, SelectableContract, LargeMessageContract,
               CrossProcessContract, PeerDeathContract, FramedStreamContract, ListenerContract, SecurityContract,
               PeerExitContract, ForkContract, WaitContract, AioContract):
    scheme = "fifo"

    def fresh_url(self) -> str:
        return f"fifo://{os.path.join(self.tmpdir, 'ep')}"

    def url_in(self, directory: str) -> str:
        return f"fifo://{os.path.join(directory, 'ep')}"

    def raw_client(self, url: str) -> Callable[[bytes], None]:
        """A writer below ipckit: opens the endpoint's ``c2s`` FIFO, writes the bytes, closes."""
        c2s = os.path.join(url[len("fifo://"):], "c2s")

        def send(data: bytes) -> None:
            fd = os.open(c2s, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if data:
                    assert os.write(fd, data) == len(data)
            finally:
                os.close(fd)

        return send


# --------------------------------------------------------------------------- F-1 … F-8
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

import ipckit  # noqa: E402
from ipckit.errors import (  # noqa: E402
    ChannelTimeout,
    EndpointExists,
    PeerDied,
    PermissionDenied,
    RecvTimeout,
)
from ipckit.framing import encode_hello  # noqa: E402
from ipckit.testing import as_user, kill_self, ready, spawn_peer, timing_bounds  # noqa: E402


def _listen_then_die(url: str) -> None:
    lst = ipckit.listen(url)
    ready()
    assert not lst.closed
    kill_self()


def test_f1_no_reader_connect_times_out_never_hangs(tmp: str) -> None:
    url = f"fifo://{tmp}/ep"
    with spawn_peer(_listen_then_die, url) as peer:
        peer.wait_ready()
        assert peer.wait_exit() == -9
    start = time.monotonic()
    with pytest.raises(ChannelTimeout):
        ipckit.connect(url, timeout=0.3)
    low, high = timing_bounds(0.3)
    assert low <= time.monotonic() - start <= high
    ipckit.listen(url).close()  # the stale endpoint is recreated and removed


def test_f2_reader_before_any_writer_is_not_end_of_channel(tmp: str) -> None:
    with ipckit.listen(f"fifo://{tmp}/ep") as lst:
        cl = ipckit.connect(lst.url, timeout=2.0)  # opens its read end before the server's write end exists
        try:
            assert not cl.poll(0.05)
            with pytest.raises(RecvTimeout):
                cl.recv(timeout=0.2)
            with lst.accept(timeout=2.0) as ch:
                with pytest.raises(RecvTimeout):  # the server's read end: writer not yet seen either
                    ch.recv(timeout=0)
                ch.send("late", timeout=2.0)
                assert cl.recv(timeout=2.0) == "late"
                cl.send("back", timeout=2.0)
                assert ch.recv(timeout=2.0) == "back"
        finally:
            cl.close()


def test_f2_raw_read_of_unconnected_fifo_is_not_eof(tmp: str) -> None:
    with ipckit.listen(f"fifo://{tmp}/ep") as lst:
        cl = ipckit.connect(lst.url, timeout=2.0)
        try:
            # Force the read path the poll normally guards: read() == 0 with no writer ever.
            with pytest.raises(BlockingIOError):
                cl._raw_readinto(memoryview(bytearray(16)))  # type: ignore[attr-defined]
        finally:
            cl.close()


# F-3 (a writer killed mid-frame) is FramedStreamContract's, in TestFifo.


def test_f4_second_writer_refused_never_interleaved(tmp: str) -> None:
    with ipckit.listen(f"fifo://{tmp}/ep") as lst:
        with ipckit.connect(lst.url, timeout=2.0) as first, lst.accept(timeout=2.0) as ch:
            with pytest.raises(EndpointExists, match="already has a peer"):
                ipckit.connect(lst.url, timeout=2.0)
            big = os.urandom(300_000)  # > PIPE_BUF: would interleave with a second writer
            sender = threading.Thread(target=first.send_bytes, args=(big,), kwargs={"timeout": 10.0})
            sender.start()
            assert ch.recv_bytes(timeout=10.0) == big
            sender.join()
        # After the first peer left, the next one is served.
        nxt: list[Any] = []
        t = threading.Thread(target=lambda: nxt.append(ipckit.connect(lst.url, timeout=5.0)))
        t.start()
        with lst.accept(timeout=5.0) as ch2:
            t.join()
            with nxt[0] as cl2:
                cl2.send(2, timeout=2.0)
                assert ch2.recv(timeout=2.0) == 2


def test_f4_accept_while_previous_peer_open_is_busy(tmp: str) -> None:
    with ipckit.listen(f"fifo://{tmp}/ep") as lst:
        cl = ipckit.connect(lst.url, timeout=2.0)
        ch = lst.accept(timeout=2.0)
        try:
            with pytest.raises(ipckit.ChannelBusy):
                lst.accept(timeout=0.1)
        finally:
            cl.close()
            ch.close()


@pytest.mark.security("S2", "S18", subject="fifo")
def test_f5_stale_fifos_of_killed_creator_are_recreated(tmp: str) -> None:
    url = f"fifo://{tmp}/ep"
    with spawn_peer(_listen_then_die, url) as peer:
        peer.wait_ready()
        assert peer.wait_exit() == -9
    assert sorted(os.listdir(f"{tmp}/ep")) == ["c2s", "lock", "peer.lock", "s2c"]
    with ipckit.listen(url) as lst:
        with pytest.raises(EndpointExists):
            ipckit.listen(url)  # a live creator is never replaced
        with ipckit.connect(url, timeout=2.0) as cl, lst.accept(timeout=2.0) as ch:
            cl.send("fresh", timeout=2.0)
            assert ch.recv(timeout=2.0) == "fresh"
    assert os.listdir(tmp) == []


def _plant(path: str, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path, 0o666)
    elif kind == "file":
        with open(path, "w") as f:
            f.write("x")
    elif kind == "symlink":
        os.symlink("/etc", path)
    else:
        os.mkdir(path, 0o777)


@pytest.mark.parametrize("kind", ["fifo", "file", "symlink", "dir"])
@pytest.mark.security("S2", "S6", subject="fifo")
def test_f6_planted_path_is_refused(shared_dir: str, kind: str) -> None:
    path = f"{shared_dir}/ep"
    as_user(_plant, path, kind)
    with pytest.raises(PermissionDenied):
        ipckit.listen(f"fifo://{path}")
    with pytest.raises(PermissionDenied):
        ipckit.connect(f"fifo://{path}", timeout=0.2)
    assert os.lstat(path).st_uid != 0  # untouched


@pytest.mark.security("S6", subject="fifo")
def test_f6_planted_symlink_inside_our_endpoint_is_not_followed(shared_dir: str, tmp: str) -> None:
    with ipckit.listen(f"fifo://{tmp}/ep"):
        pass
    os.mkdir(f"{tmp}/ep", 0o700)
    os.symlink("/etc/passwd", f"{tmp}/ep/lock")
    try:
        with pytest.raises(PermissionDenied):
            ipckit.listen(f"fifo://{tmp}/ep")
    finally:
        os.unlink(f"{tmp}/ep/lock")
        os.rmdir(f"{tmp}/ep")


def _connect(url: str) -> None:
    ipckit.connect(url, timeout=0.5, serializer="json").close()


@pytest.mark.security("S4", subject="fifo")
def test_f7_other_uid_cannot_open(shared_dir: str) -> None:
    os.chmod(shared_dir, 0o755)
    with ipckit.listen(f"fifo://{shared_dir}/ep") as lst:
        ep = f"{shared_dir}/ep"
        assert stat.S_IMODE(os.stat(ep).st_mode) == 0o700
        assert all(stat.S_IMODE(os.stat(f"{ep}/{n}").st_mode) == 0o600 for n in ("c2s", "s2c"))
        with pytest.raises(PermissionDenied):
            as_user(_connect, lst.url)
        with ipckit.connect(lst.url, timeout=2.0) as cl, lst.accept(timeout=2.0) as ch:  # unaffected
            cl.send(1, timeout=2.0)
            assert ch.recv(timeout=2.0) == 1


@pytest.mark.security("S4", subject="fifo")
def test_f7_modes_are_explicit_whatever_the_umask(tmp: str) -> None:
    old = os.umask(0)
    try:
        with ipckit.listen(f"fifo://{tmp}/ep"):
            assert stat.S_IMODE(os.stat(f"{tmp}/ep").st_mode) == 0o700
            for n in ("c2s", "s2c", "lock", "peer.lock"):
                assert stat.S_IMODE(os.stat(f"{tmp}/ep/{n}").st_mode) == 0o600
        with ipckit.listen("fifo://") as lst:
            assert os.path.basename(lst.url).startswith("ipckit-")
    finally:
        os.umask(old)


@pytest.mark.security("S19", subject="fifo")
def test_f8_descriptors_are_not_inherited_and_writer_sees_reader_death() -> None:
    a, b = ipckit.pair("fifo://")
    try:
        for ch in (a, b):
            for fd in (ch._rfd, ch._wfd):  # type: ignore[attr-defined]
                assert not os.get_inheritable(fd)
        # An unrelated child started now (fork + exec) must not keep the reader alive.
        bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE, close_fds=False)
        try:
            b._handed_off = True  # type: ignore[attr-defined]  # vanish without a goodbye
            b.close()
            with pytest.raises(PeerDied):
                for _ in range(1000):
                    a.send_bytes(b"x" * 4096, timeout=2.0)
        finally:
            assert bystander.stdin is not None
            bystander.stdin.close()
            bystander.wait(10)
    finally:
        a.close()
        b.close()


def test_pair_is_cleaned_up_at_once() -> None:
    a, b = ipckit.pair("fifo://")
    try:
        for fd in (a._rfd, a._wfd, b._rfd, b._wfd):  # type: ignore[attr-defined]
            assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")  # the directory is gone already
        a.send([1, 2], timeout=2.0)
        assert b.recv(timeout=2.0) == [1, 2]
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- the hello (issue 10, A.3/A.4)
def test_a_silent_writer_does_not_block_the_next_client(tmp: str) -> None:
    """A process below ipckit that opens both FIFOs and writes nothing is never handed out, and
    holds nothing up: the next real client's hello comes through and it is served."""
    url = f"fifo://{tmp}/ep"
    with ipckit.listen(url) as lst:
        s2c = os.open(f"{tmp}/ep/s2c", os.O_RDONLY | os.O_NONBLOCK)
        c2s = os.open(f"{tmp}/ep/c2s", os.O_WRONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(ChannelTimeout):
                lst.accept(timeout=0.3)
            with ipckit.connect(url, timeout=5.0) as cl, lst.accept(timeout=5.0) as ch:
                cl.send("real", timeout=5.0)
                assert ch.recv(timeout=5.0) == "real"
                ch.send("and back", timeout=5.0)
                assert cl.recv(timeout=5.0) == "and back"
        finally:
            os.close(c2s)
            os.close(s2c)


def test_a_partial_hello_is_dropped_after_the_handshake_timeout(tmp: str) -> None:
    """A writer that starts a hello and stalls is dropped after handshake_timeout (what it wrote
    is discarded), so a real client writing into the same FIFO afterwards is served."""
    url = f"fifo://{tmp}/ep"
    with ipckit.listen(url, handshake_timeout=0.2) as lst:
        c2s = os.open(f"{tmp}/ep/c2s", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(c2s, encode_hello(1 << 20)[:10])
            with pytest.raises(ChannelTimeout):
                lst.accept(timeout=0.6)
            with ipckit.connect(url, timeout=5.0) as cl, lst.accept(timeout=5.0) as ch:
                cl.send("real", timeout=5.0)
                assert ch.recv(timeout=5.0) == "real"
        finally:
            os.close(c2s)


def test_sends_to_a_client_that_left_before_accept_report_its_close(tmp: str) -> None:
    url = f"fifo://{tmp}/ep"
    with ipckit.listen(url) as lst:
        with ipckit.connect(url, timeout=5.0) as cl:
            cl.send("bye", timeout=5.0)
        with lst.accept(timeout=5.0) as ch:
            with pytest.raises(ipckit.EndOfChannel):
                ch.send("anyone?", timeout=5.0)
            assert ch.recv(timeout=5.0) == "bye"
            with pytest.raises(ipckit.EndOfChannel):
                ch.recv(timeout=5.0)
