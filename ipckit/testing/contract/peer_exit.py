"""PeerExitContract: how a peer process ends is what the other side reads, under every start method
(``capabilities.inheritable`` and ``detects_peer_close``).

A peer that closes its end, or returns without closing it (its process's exit closes it), is
EndOfChannel; a SIGKILLed one is PeerDied -- for ``send`` as for ``recv``, and after every message
it sent (docs/contract.md P5).  The children are plain ``multiprocessing`` processes of the *fork*,
*spawn* and *forkserver* start methods: a fork or forkserver child ends with ``os._exit``, so no
``atexit`` hook runs there, and its ends must be closed by multiprocessing's own exit handling.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from collections.abc import Iterator
from typing import Any

import pytest

from ...channel import Channel
from ...errors import EndOfChannel, PeerDied
from .. import workers
from .cross_process import ChildEnds

__all__ = ["PeerExitContract"]

_METHODS = ["fork", "spawn", "forkserver"]


class PeerExitContract(ChildEnds):
    """A clean close (explicit, or by returning) reads EndOfChannel, a kill PeerDied, on send and recv."""

    @pytest.fixture(scope="class")
    def forkserver(self) -> Iterator[None]:
        """The fork server, started before the leak guard's first snapshot of the class's tests and
        stopped after them (it holds descriptors for the rest of the run otherwise)."""
        multiprocessing.forkserver.ensure_running()
        yield
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]

    def _child_sends(self, method: str, how: str, messages: list[bytes]) -> Channel:
        """Run :func:`~ipckit.testing.workers.send_then_exit` in a *method* child; return this side's
        end once the child is gone (its exit code checked)."""
        _, theirs, finish = self.child_end()
        ctx: Any = multiprocessing.get_context(method)
        proc = ctx.Process(target=workers.send_then_exit, args=(theirs, messages, how), daemon=True)
        try:
            proc.start()
            ch = finish()
            proc.join(60)
            expected = -9 if how == "kill" else 0
            assert proc.exitcode == expected, (
                f"{method} child ({how}) exited with {proc.exitcode}, not {expected} (1: it raised; its "
                "traceback is in the captured stderr)")
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
            proc.close()
        return ch

    @pytest.mark.parametrize("how", ["close", "return"])
    @pytest.mark.parametrize("method", _METHODS)
    def test_clean_exit_reads_end_of_channel_on_send_and_recv(self, method: str, how: str, forkserver: None) -> None:
        """The child sends three messages and closes (or returns without closing); this side's send
        raises EndOfChannel at once, and its recv gets the three messages, then EndOfChannel."""
        messages = [workers.make_payload(i, 300 * i) for i in range(3)]
        ch = self._child_sends(method, how, messages)
        with pytest.raises(EndOfChannel):
            ch.send_bytes(b"to a peer that closed", timeout=5.0)
        assert [ch.recv_bytes(timeout=10.0) for _ in messages] == messages
        with pytest.raises(EndOfChannel):
            ch.recv_bytes(timeout=10.0)
        with pytest.raises(EndOfChannel):  # and both directions stay at the end
            ch.send_bytes(b"again", timeout=5.0)
        with pytest.raises(EndOfChannel):
            ch.recv_bytes(timeout=0)

    @pytest.mark.parametrize("method", _METHODS)
    def test_killed_peer_reads_peer_died_on_send_and_recv(self, method: str, forkserver: None) -> None:
        """The child sends three messages and is SIGKILLed: sends raise PeerDied (a ring may take a
        few more messages before its liveness check), and recv gets the three, then PeerDied."""
        messages = [workers.make_payload(i, 300 * i) for i in range(3)]
        ch = self._child_sends(method, "kill", messages)
        with pytest.raises(PeerDied):
            for _ in range(1000):
                ch.send_bytes(b"x" * 4096, timeout=2.0)
        assert [ch.recv_bytes(timeout=10.0) for _ in messages] == messages
        with pytest.raises(PeerDied):
            ch.recv_bytes(timeout=10.0)
        with pytest.raises(PeerDied):  # and stays dead
            ch.recv_bytes(timeout=0)
