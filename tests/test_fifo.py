"""fifo:// runs the whole contract, plus rows F-1…F-8 of reliability.md."""

from __future__ import annotations

import os

from ipckit.testing import (
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    PeerDeathContract,
    SelectableContract,
)


class TestFifo(ChannelContract, DuplexContract, PeerCloseContract, SelectableContract, LargeMessageContract,
               CrossProcessContract, PeerDeathContract, ListenerContract):
    scheme = "fifo"

    def fresh_url(self) -> str:
        return f"fifo://{os.path.join(self.tmpdir, 'ep')}"
