"""The channel contract as pytest classes: one base class plus capability mixins.

A backend's test module is a few lines::

    from ipckit.testing import (ChannelContract, CrossProcessContract, DuplexContract, FramedStreamContract,
                                LargeMessageContract, PeerCloseContract, PeerDeathContract, SelectableContract)

    class TestPipe(ChannelContract, DuplexContract, PeerCloseContract, SelectableContract, LargeMessageContract,
                   CrossProcessContract, PeerDeathContract, FramedStreamContract):
        scheme = "pipe"

:func:`required_contracts` says which mixins a backend's capabilities call for; the meta-test
checks every registered scheme against it, so nothing is skipped silently.  Backends that only have
named endpoints override :meth:`ChannelContract.fresh_url` (e.g. a path inside ``self.tmpdir``);
the contract then connects pairs with ``listen``/``connect``.

The classes carry no ``Test`` prefix, so pytest collects only the subclasses.  One module per class:

``channel``        :class:`ChannelContract` — always; with its parts ``option_rules``
                   (``OptionRules``: every option's type and bounds) and ``boundaries``
                   (``ErrorBoundaries``: huge timeouts, the descriptor limit, plain pickling)
``duplex``         :class:`DuplexContract` — ``duplex``
``peer_close``     :class:`PeerCloseContract` — ``detects_peer_close``
``selectable``     :class:`SelectableContract` — ``selectable``
``large_message``  :class:`LargeMessageContract` — no transport limit below 8 MiB
``cross_process``  :class:`CrossProcessContract` — ``inheritable`` (and :class:`ChildEnds`, the
                   helper of every mixin that runs a peer process)
``peer_death``     :class:`PeerDeathContract` — ``inheritable`` and ``detects_peer_close``
``peer_exit``      :class:`PeerExitContract` — ``inheritable`` and ``detects_peer_close`` (a clean
                   close or return vs a kill, under fork, spawn and forkserver)
``fork``           :class:`ForkContract` — always (forked processes use only the ends handed to them)
``framed_stream``  :class:`FramedStreamContract` — not ``message_oriented``, ``cross_process``
``listener``       :class:`ListenerContract` — ``named``
``security``       :class:`SecurityContract` — ``named`` (the trust rule under a widened mode, the
                   opener's mode check, safe parent directories)
``one_way``        :class:`OneWayContract` — the one-way form (a sending end, receiving ends:
                   pub/sub fan-out); not a ChannelContract mixin, so not in ``required``
``waiting``        :class:`WaitContract` — always (``ipckit.wait``: channels, listeners, a peer process)
``aio``            :class:`AioContract` — always (``ipckit.aio`` on asyncio and uvloop, cancellation)
``required``       :func:`required_contracts`, the rule above
``helpers``        :func:`timing_bounds`, :func:`takes_timeout`, :func:`wait_until_blocked` and what the mixins share
"""

from __future__ import annotations

from .aio import AioContract
from .channel import ChannelContract
from .cross_process import ChildEnds, CrossProcessContract
from .duplex import DuplexContract
from .fork import ForkContract
from .framed_stream import FramedStreamContract
from .helpers import takes_timeout, timing_bounds, wait_until_blocked
from .large_message import LargeMessageContract
from .listener import ListenerContract
from .one_way import OneWayContract
from .peer_close import PeerCloseContract
from .peer_death import PeerDeathContract
from .peer_exit import PeerExitContract
from .required import ALL_CONTRACTS, required_contracts
from .security import SecurityContract
from .selectable import SelectableContract
from .waiting import WaitContract

__all__ = [
    "ChannelContract",
    "DuplexContract",
    "PeerCloseContract",
    "SelectableContract",
    "WaitContract",
    "AioContract",
    "LargeMessageContract",
    "CrossProcessContract",
    "PeerDeathContract",
    "PeerExitContract",
    "ForkContract",
    "FramedStreamContract",
    "ListenerContract",
    "SecurityContract",
    "OneWayContract",
    "ChildEnds",
    "ALL_CONTRACTS",
    "required_contracts",
    "takes_timeout",
    "timing_bounds",
    "wait_until_blocked",
]
