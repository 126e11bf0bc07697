"""The ipckit conformance contract and the helpers its tests use.

* :mod:`ipckit.testing.contract` — :class:`ChannelContract` plus capability mixins, one module
  each; a backend's test module subclasses them (see :func:`required_contracts`).
* :mod:`ipckit.testing.workers` — the peer functions the contract runs in other processes.
* :mod:`ipckit.testing.peers` — real peer processes with a READY handshake, SIGKILL at chosen
  points, ``as_user`` (run as another uid).
* :mod:`ipckit.testing.signals` — ``signal_storm``.
* :mod:`ipckit.testing.load` — a load checker for any backend: sender ids, sequence numbers and
  checksums; counts lost, duplicated, reordered, corrupt and unexpected messages.
* :mod:`ipckit.testing.snapshots` and :mod:`ipckit.testing.plugin` — the leak guard
  (``pytest_plugins = ["ipckit.testing.plugin"]``).

Importing this package needs pytest (and Hypothesis for the model test); ``import ipckit`` never
imports it.
"""

from __future__ import annotations

from . import load
from .contract import (
    AioContract,
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    ForkContract,
    FramedStreamContract,
    LargeMessageContract,
    ListenerContract,
    OneWayContract,
    PeerCloseContract,
    PeerDeathContract,
    PeerExitContract,
    SecurityContract,
    SelectableContract,
    WaitContract,
    required_contracts,
    takes_timeout,
    timing_bounds,
    wait_until_blocked,
)
from .peers import NOBODY, Peer, PeerFailed, as_user, kill_self, ready, set_pdeathsig, spawn_peer
from .signals import signal_storm
from .snapshots import Snapshot, leaks, take_snapshot

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
    "OneWayContract",
    "FramedStreamContract",
    "ListenerContract",
    "SecurityContract",
    "required_contracts",
    "takes_timeout",
    "timing_bounds",
    "wait_until_blocked",
    "Peer",
    "PeerFailed",
    "spawn_peer",
    "ready",
    "kill_self",
    "set_pdeathsig",
    "as_user",
    "NOBODY",
    "signal_storm",
    "Snapshot",
    "take_snapshot",
    "leaks",
    "load",
]
