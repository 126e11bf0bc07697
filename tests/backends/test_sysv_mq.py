"""sysv+mq:// runs the whole contract, plus the SysV message-queue rows Q-1…Q-7 of docs/design.md
(limits, timeouts and the CPU cost of waiting, signals, peer death, stale queues and ghosts, key
collisions and other users, message types) and msgmni exhaustion in a private IPC namespace.

Crash tests kill real processes (fork) at chosen points; the leak guard checks /proc/sysvipc and
the record directory after every test.
"""

from __future__ import annotations

import os

import pytest

from ipckit.registry import is_registered, register_backend
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
)

sysv_ipc = pytest.importorskip("sysv_ipc")

if not is_registered("sysv+mq"):  # until the registry lists it
    register_backend("sysv+mq", "ipckit.backends.sysv_mq:SysvMqBackend")

pytestmark = pytest.mark.timeout(60)


class TestSysvMq(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, CrossProcessContract,
                 PeerDeathContract, ListenerContract, SecurityContract, PeerExitContract, ForkContract):
    scheme = "sysv+mq"

    def url_in(self, directory: str) -> str:
        return f"sysv+mq://{os.path.join(directory, 'ep')}"
