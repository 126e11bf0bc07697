"""pipe:// runs the whole contract, plus the anonymous-pipe fault rows A-1…A-9 of reliability.md."""

from __future__ import annotations

from ipckit.testing import (
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    LargeMessageContract,
    PeerCloseContract,
    PeerDeathContract,
    SelectableContract,
)


class TestPipe(ChannelContract, DuplexContract, PeerCloseContract, SelectableContract, LargeMessageContract,
               CrossProcessContract, PeerDeathContract):
    scheme = "pipe"
