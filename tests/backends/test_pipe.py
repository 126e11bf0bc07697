"""pipe:// runs the whole contract, plus the anonymous-pipe fault rows A-1…A-9 of docs/design.md."""

from __future__ import annotations

from ipckit.testing import (
    AioContract,
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    ForkContract,
    FramedStreamContract,
    LargeMessageContract,
    PeerCloseContract,
    PeerDeathContract,
    PeerExitContract,
    SelectableContract,
    WaitContract,
)


class TestPipe(ChannelContract, DuplexContract, PeerCloseContract, SelectableContract, LargeMessageContract,
               CrossProcessContract, PeerDeathContract, FramedStreamContract, PeerExitContract, ForkContract,
               WaitContract, AioContract):
    scheme = "pipe"


# --------------------------------------------------------------------------- pipe-specific rows
import fcntl  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import pytest  # noqa: E402

import ipckit  # noqa: E402
from ipckit.errors import (  # noqa: E402
    ChannelBroken,
    EndOfChannel,
    MessageTooLarge,
    PeerDied,
    ProtocolError,
    SendTimeout,
)
from ipckit.framing import encode_header  # noqa: E402
from ipckit.testing import spawn_peer, workers  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pipe_pair() -> tuple[ipckit.Channel, ipckit.Channel]:
    a, b = ipckit.pair("pipe://")
    yield a, b
    a.close()
    b.close()


def _fds_of(ch: ipckit.Channel) -> list[int]:
    return [fd for fd in (ch._rfd, ch._wfd, ch._wake) if fd >= 0]  # type: ignore[attr-defined]


def test_descriptors_are_close_on_exec(pipe_pair: tuple[ipckit.Channel, ipckit.Channel]) -> None:
    a, b = pipe_pair
    a.fileno()  # the readiness descriptors too
    b.fileno()
    for ch in (a, b):
        for fd in [*_fds_of(ch), ch._ready_fd, ch.fileno()]:  # type: ignore[attr-defined]
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd


@pytest.mark.security("S19", subject="pipe")
def test_a1_a2_reader_killed_while_unrelated_child_runs() -> None:
    """A-1 with A-2's trap set: an unrelated exec'd child must not keep the reader's end open."""
    a, b = ipckit.pair("pipe://")
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        inodes = {os.readlink(f"/proc/self/fd/{fd}") for ch in (a, b) for fd in _fds_of(ch)}
        theirs = set()
        for fd in os.listdir(f"/proc/{bystander.pid}/fd"):
            try:
                theirs.add(os.readlink(f"/proc/{bystander.pid}/fd/{fd}"))
            except OSError:
                pass
        assert not (inodes & theirs), "an exec'd child inherited ipckit descriptors"
        with spawn_peer(workers.recv_then_kill, b, 1) as peer:
            b.close()
            peer.wait_ready()
            a.send_bytes(b"one", timeout=5.0)
            assert peer.wait_exit() == -9
            start = time.monotonic()
            with pytest.raises(PeerDied):
                a.send_bytes(b"two", timeout=5.0)
            assert time.monotonic() - start < 1.0
    finally:
        assert bystander.stdin is not None
        bystander.stdin.close()
        bystander.wait(10)
        a.close()
        b.close()


# A-3 (a writer killed mid-frame, small and large frames) is FramedStreamContract's, in TestPipe.


def test_a5_stopped_reader_send_timeout_aborts_the_message() -> None:
    """A-5: a partly written frame times out (SendTimeout): the message is not sent.  While the
    reader stays stopped the next send cannot finish the aborted frame either (SendTimeout, nothing
    of it sent); once it resumes, sends work again and the reader gets the earlier messages, then
    the later ones, never the cut one, and the close."""
    a, b = ipckit.pair("pipe://", pipe_size=1024 * 1024)
    try:
        with spawn_peer(workers.drain, b) as peer:
            b.close()
            peer.wait_ready()
            for i in range(3):
                a.send_bytes(workers.make_payload(i, 1000), timeout=5.0)
            peer.stop()
            with pytest.raises(SendTimeout):
                a.send_bytes(workers.make_payload(3, 4 * 1024 * 1024), timeout=0.2)
            with pytest.raises(SendTimeout, match="nothing of this message was sent"):
                a.send_bytes(workers.make_payload(4, 100), timeout=0.2)
            peer.cont()
            a.send_bytes(workers.make_payload(5, 100), timeout=5.0)
            a.close()
            seqs, error = peer.join()
            assert seqs == [0, 1, 2, 5]
            assert error == "EndOfChannel"
    finally:
        a.close()
        b.close()


def test_a5_nothing_sent_keeps_channel_usable() -> None:
    """A send that times out leaves the stream intact, whether nothing or part of its frame left
    (then the next send finishes the frame as aborted first)."""
    a, b = ipckit.pair("pipe://", pipe_size=64 * 1024)
    try:
        chunk = b"x" * 60_000
        n = 0
        with pytest.raises(SendTimeout):
            while True:
                a.send_bytes(chunk, timeout=0.05)
                n += 1
        for _ in range(n):
            assert b.recv_bytes(timeout=5.0) == chunk
        a.send_bytes(b"ok", timeout=5.0)
        assert b.recv_bytes(timeout=5.0) == b"ok"
    finally:
        a.close()
        b.close()


def test_a6_two_writers_small_frames_protocol_error() -> None:
    """A-6: two processes writing into one end: the sequence numbers expose it (ProtocolError)."""
    a, b = ipckit.pair("pipe://")
    try:
        # Killed after sending: a child's normal exit would close its end, and the first goodbye
        # in the stream would end it before the duplicate frame shows.
        with spawn_peer(workers.send_then_kill, b, [b"first"]) as p1, \
                spawn_peer(workers.send_then_kill, b, [b"second"]) as p2:
            b.close()
            p1.wait_ready()
            p2.wait_ready()
            p1.wait_exit()
            p2.wait_exit()
            assert a.recv_bytes(timeout=5.0) in (b"first", b"second")
            with pytest.raises(ProtocolError):
                a.recv(timeout=5.0)
            with pytest.raises(ChannelBroken):
                a.recv(timeout=0)
    finally:
        a.close()
        b.close()


def test_a6_two_writers_large_frames_never_wrong_message() -> None:
    """A-6 with frames > PIPE_BUF and checksums: ProtocolError, never a wrong message."""
    a, b = ipckit.pair("pipe://", checksum=True, pipe_size=64 * 1024)
    msgs1 = [workers.make_payload(i, 256 * 1024) for i in range(3)]
    msgs2 = [workers.make_payload(100 + i, 256 * 1024) for i in range(3)]
    try:
        with spawn_peer(workers.send_then_kill, b, msgs1) as p1, \
                spawn_peer(workers.send_then_kill, b, msgs2) as p2:  # killed: no goodbye (see above)
            b.close()
            p1.wait_ready()
            p2.wait_ready()
            a.max_message_size  # noqa: B018
            with pytest.raises(ProtocolError):
                for _ in range(6):
                    data = a.recv_bytes(timeout=10.0)
                    workers.check_payload(data)  # any message returned is a whole, correct one
            p1.kill()
            p2.kill()
    finally:
        a.close()
        b.close()


@pytest.mark.security("S14", subject="pipe")
def test_a7_forged_huge_header() -> None:
    """A-7: a header announcing 1 TiB → MessageTooLarge with no big allocation; then broken."""
    a, b = ipckit.pair("pipe://")
    try:
        workers.write_frames(a._wfd, encode_header(0, 1 << 40))  # type: ignore[attr-defined]
        tracemalloc.start()
        try:
            with pytest.raises(MessageTooLarge):
                b.recv_bytes(timeout=5.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024, f"allocated {peak} bytes for a forged header"
        with pytest.raises(ChannelBroken):
            b.recv_bytes(timeout=0)
    finally:
        a.close()
        b.close()


def test_bad_magic_is_protocol_error(pipe_pair: tuple[ipckit.Channel, ipckit.Channel]) -> None:
    a, b = pipe_pair
    workers.write_frames(a._wfd, b"GARBAGE!" * 4)  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError):
        b.recv_bytes(timeout=5.0)


def test_checksum_mismatch_is_protocol_error() -> None:
    a, b = ipckit.pair("pipe://", checksum=True)
    try:
        frame = bytearray(workers.frame_bytes(0, b"payload", checksum=True))
        frame[-1] ^= 0xFF
        workers.write_frames(a._wfd, bytes(frame))  # type: ignore[attr-defined]
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=5.0)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parent_closing_handed_off_end_is_not_a_goodbye(method: str) -> None:
    """Closing the parent's copy of an end given to a child must not end the channel."""
    a, b = ipckit.pair("pipe://")
    try:
        with spawn_peer(workers.send_messages, b, [1, 2, 3], method=method) as peer:
            b.close()
            peer.wait_ready()
            assert [a.recv(timeout=10.0) for _ in range(3)] == [1, 2, 3]
            with pytest.raises(EndOfChannel):
                a.recv(timeout=10.0)
            peer.join()
    finally:
        a.close()
        b.close()


def test_peer_killed_without_messages_gives_peer_died_not_end(pipe_pair: tuple[ipckit.Channel, ipckit.Channel]) -> None:
    a, b = pipe_pair
    with spawn_peer(workers.send_then_kill, b, []) as peer:
        b.close()
        peer.wait_ready()
        peer.wait_exit()
        with pytest.raises(PeerDied):
            a.recv(timeout=5.0)


def test_pipe_options() -> None:
    a, b = ipckit.pair("pipe://?pipe_size=64KiB&checksum=true")
    try:
        assert a._checksum is True  # type: ignore[attr-defined]
        assert fcntl.fcntl(a._wfd, 1032) >= 64 * 1024  # type: ignore[attr-defined]  # F_GETPIPE_SZ
        a.send(b"x", timeout=5.0)
        assert b.recv(timeout=5.0) == b"x"
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- issue 10, B.12
def _first_use_with_no_descriptor_left() -> str:
    import resource

    from ipckit import registry

    # As in a fresh process: the backend's module is imported by the first pair().
    sys.modules.pop("ipckit.backends.pipe", None)
    registry._LOADED.pop("pipe", None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = [int(n) for n in os.listdir("/proc/self/fd")]
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds) + 8, hard))
    fill = []
    try:
        while True:
            fill.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        ipckit.pair("pipe://")
        outcome = "made"
    except ipckit.ResourceExhausted as exc:
        outcome = f"ResourceExhausted: {exc}"
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        for fd in fill:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    a, b = ipckit.pair("pipe://")  # the import is retried once descriptors are free
    a.close()
    b.close()
    return outcome


def test_first_use_with_no_descriptor_left_is_resource_exhausted() -> None:
    """The import of a backend's module on first use met the descriptor limit as a raw OSError."""
    from ipckit.testing.contract.boundaries import in_forked_child

    outcome = in_forked_child(_first_use_with_no_descriptor_left)
    assert outcome.startswith("ResourceExhausted: loading the pipe:// backend") and "RLIMIT_NOFILE" in outcome
