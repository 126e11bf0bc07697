"""memory:// runs the whole contract (it is the reference backend: threads only, no OS objects)."""

from __future__ import annotations

from ipckit.testing import (
    AioContract,
    ChannelContract,
    DuplexContract,
    ForkContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    SecurityContract,
    WaitContract,
)


class TestMemory(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, ListenerContract,
                 SecurityContract, ForkContract, WaitContract, AioContract):
    scheme = "memory"
