"""unix:// runs the whole contract (stream and seqpacket), plus rows U-1…U-10 of reliability.md."""

from __future__ import annotations

import os
from typing import Any, ClassVar

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


class _UnixUrls:
    tmpdir: str

    def fresh_url(self) -> str:
        return f"unix://{os.path.join(self.tmpdir, 's.sock')}"


class TestUnix(_UnixUrls, ChannelContract, DuplexContract, PeerCloseContract, SelectableContract,
               LargeMessageContract, CrossProcessContract, PeerDeathContract, ListenerContract):
    scheme = "unix"


class TestUnixSeqpacket(_UnixUrls, ChannelContract, DuplexContract, PeerCloseContract, SelectableContract,
                        CrossProcessContract, PeerDeathContract, ListenerContract):
    """Message-oriented: one packet per message (up to about 4 MiB, so no LargeMessageContract)."""

    scheme = "unix"
    options: ClassVar[dict[str, Any]] = {"type": "seqpacket"}
