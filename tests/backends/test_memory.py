"""memory:// runs the whole contract (it is the reference backend: threads only, no OS objects)."""

from __future__ import annotations

from ipckit.testing import (
    ChannelContract,
    DuplexContract,
    ForkContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    SecurityContract,
)


class TestMemory(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, ListenerContract,
                 SecurityContract, ForkContract):
    scheme = "memory"
