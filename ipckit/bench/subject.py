"""The shape of everything the harness measures: a subject, its two ends, and one tiny link.

A *subject* is something with a parent end and a child end.  :meth:`Subject.prepare` runs in the
parent before the peer is spawned and returns a :class:`Prepared`: ``child_arg`` is pickled into
the spawned peer (``multiprocessing`` spawn context), which calls ``child_arg.open()`` to get its
:class:`Link`; the parent calls :meth:`Prepared.complete` after the peer started.

A :class:`Link` has ``send(buffer)`` and ``recv() -> buffer`` (one whole message each), ``close()``
and, on the parent side, ``abort()`` which wakes a receive blocked on a peer that hung.  A link
that carries Python objects as well also has ``send_obj(obj)`` / ``recv_obj() -> obj`` (the
object workloads skip a subject without them).  The
measurement loops bind ``link.send`` / ``link.recv`` once, so a link that stores bound methods
(:class:`ConnLink`) adds nothing per message.

The ipckit channels (:mod:`.links`) and the baselines (:mod:`.baselines`) both build on this
module and never on each other.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Buffer",
    "Link",
    "ChildArg",
    "Prepared",
    "Subject",
    "SkippedSubject",
    "ConnLink",
    "CrossProcessUnsupported",
    "SPAWN",
]


class CrossProcessUnsupported(Exception):
    """The peer process could not reach the endpoint: the scheme does not cross processes."""


SPAWN = multiprocessing.get_context("spawn")

Buffer = bytes | bytearray | memoryview


class Link(Protocol):
    """One end of a measured transport: whole messages in, whole messages out."""

    def send(self, data: Buffer) -> None: ...

    def recv(self) -> Buffer: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ChildArg(Protocol):
    """Pickled into the peer; builds the peer's end there."""

    def open(self) -> Link: ...


class Prepared:
    """The parent's half of a subject, between ``prepare()`` and the peer being started."""

    def __init__(self, child_arg: ChildArg, complete: Callable[[float, Callable[[], str | None]], Link],
                 after_start: Callable[[], None] | None = None,
                 cleanup: Callable[[], None] | None = None) -> None:
        self.child_arg = child_arg
        self._complete = complete
        self._after_start = after_start
        self._cleanup = cleanup

    def after_start(self) -> None:
        """Drop the parent's copy of the child's end (called right after ``Process.start``)."""
        if self._after_start is not None:
            self._after_start()
            self._after_start = None

    def complete(self, timeout: float, peer_gone: Callable[[], str | None]) -> Link:
        """The parent's link, once the peer is there (accepts named connections).

        *peer_gone* returns the peer's error (it could not connect) or None while it is still trying.
        """
        return self._complete(timeout, peer_gone)

    def cleanup(self) -> None:
        """Release what ``prepare`` created beyond the links (listeners, temp dirs)."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


@dataclass
class Subject:
    """A named transport to measure."""

    name: str
    kind: str  # "ipckit" or "baseline"
    note: str = ""

    def prepare(self) -> Prepared:
        raise NotImplementedError


@dataclass
class SkippedSubject:
    name: str
    reason: str


class ConnLink:
    """A Link over anything with ``send_bytes``/``recv_bytes``/``close`` (Connection, ipckit Channel)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.send = conn.send_bytes  # type: ignore[method-assign]
        self.recv = conn.recv_bytes  # type: ignore[method-assign]
        # The object path users call: Connection.send/recv, Channel.send/recv (default serializer).
        self.send_obj = conn.send
        self.recv_obj = conn.recv
        # A channel with the raw serializer carries bytes objects only: the object workloads then
        # send bytes of the cell's size (measuring the object path with no serializer cost).
        self.bytes_objects = getattr(getattr(conn, "serializer", None), "name", "") == "raw"

    def send(self, data: Buffer) -> None:  # replaced per instance by the bound method
        self.conn.send_bytes(data)

    def recv(self) -> Buffer:
        data: Buffer = self.conn.recv_bytes()
        return data

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        self.conn.close()
