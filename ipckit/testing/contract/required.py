"""Which contract classes a backend's capabilities call for: the rule the meta-test enforces."""

from __future__ import annotations

from ...options import Capabilities
from .aio import AioContract
from .channel import ChannelContract
from .cross_process import CrossProcessContract
from .duplex import DuplexContract
from .fork import ForkContract
from .framed_stream import FramedStreamContract
from .helpers import MiB
from .large_message import LargeMessageContract
from .listener import ListenerContract
from .peer_close import PeerCloseContract
from .peer_death import PeerDeathContract
from .peer_exit import PeerExitContract
from .security import SecurityContract
from .selectable import SelectableContract
from .waiting import WaitContract

__all__ = ["required_contracts", "ALL_CONTRACTS"]

#: Every contract class, the base first: what :func:`required_contracts` chooses from.
ALL_CONTRACTS: tuple[type, ...] = (ChannelContract, DuplexContract, PeerCloseContract, SelectableContract,
                                   LargeMessageContract, CrossProcessContract, PeerDeathContract,
                                   FramedStreamContract, ListenerContract, SecurityContract, PeerExitContract,
                                   ForkContract, WaitContract, AioContract)


def required_contracts(caps: Capabilities) -> set[type]:
    """The contract classes a backend with capabilities *caps* must run (the meta-test checks them).

    ChannelContract, ForkContract, WaitContract and AioContract always;
    DuplexContract if ``duplex``; PeerCloseContract if ``detects_peer_close``;
    SelectableContract if ``selectable``; LargeMessageContract unless the transport caps messages
    below 8 MiB; CrossProcessContract if ``inheritable``; PeerDeathContract and PeerExitContract if
    ``inheritable`` and ``detects_peer_close``; FramedStreamContract if not ``message_oriented`` and ``cross_process``
    (a byte stream whose frames a dying peer can cut); ListenerContract and SecurityContract if
    ``named``.
    """
    needed: set[type] = {ChannelContract, ForkContract, WaitContract, AioContract}
    if caps.duplex:
        needed.add(DuplexContract)
    if caps.detects_peer_close:
        needed.add(PeerCloseContract)
    if caps.selectable:
        needed.add(SelectableContract)
    if caps.max_message_size is None or caps.max_message_size >= 8 * MiB:
        needed.add(LargeMessageContract)
    if caps.inheritable:
        needed.add(CrossProcessContract)
        if caps.detects_peer_close:
            needed.add(PeerDeathContract)
            needed.add(PeerExitContract)
    if not caps.message_oriented and caps.cross_process:
        needed.add(FramedStreamContract)
    if caps.named:
        needed.add(ListenerContract)
        needed.add(SecurityContract)
    return needed
