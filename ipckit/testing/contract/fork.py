"""ForkContract: a forked process uses only the ends it was handed, and leaves the others alone (always).

An end reaches a forked child only as an argument of the ``multiprocessing.Process`` being started
(docs/contract.md P5).  Every other open end a child inherits -- through a bare ``os.fork()``, a
multiprocessing child that was not given it, or a helper a child forks itself -- raises
UnsupportedOperation on use, with the advice to hand it over or connect instead, and the
parent's channel is untouched: nothing is written to it, nothing read from it, and closing the
copy (explicitly or at the child's exit) says no goodbye.  An end handed over while a parent
thread is inside ``send()`` works in the child: no lock is left held by a thread the child does
not have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ... import channel as _channel
from ...channel import Channel
from ...errors import EndOfChannel, SendTimeout
from .. import workers
from ..peers import ready, run_forked, spawn_peer
from .cross_process import ChildEnds
from .helpers import ResultThread, wait_until_blocked

__all__ = ["ForkContract"]

#: The ends a multiprocessing child was not given: it finds them here, a module global it inherits.
_NOT_GIVEN: dict[str, Channel] = {}


def in_bare_fork(fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``fn()`` in a child made by a bare ``os.fork()`` (no multiprocessing); return its result.

    The child ends with ``os._exit`` and never returns into the caller; an exception in *fn* is
    re-raised here (PeerFailed with the child's traceback when it does not pickle).
    """
    return run_forked(fn, timeout=timeout, what="the bare-forked child")


def try_every_call(ends: tuple[Channel, ...]) -> dict[str, tuple[str, str]]:
    """Call each public method of each of *ends*, then close them and run ipckit's exit hook (what
    the interpreter's exit would do); return ``{call: (exception type, message)}`` ("returned" for
    a call that did not raise)."""
    calls: dict[str, Callable[[Channel], Any]] = {
        "send": lambda ch: ch.send("x", timeout=0),
        "send_bytes": lambda ch: ch.send_bytes(b"x", timeout=0),
        "recv": lambda ch: ch.recv(timeout=0),
        "recv_bytes": lambda ch: ch.recv_bytes(timeout=0),
        "recv_bytes_into": lambda ch: ch.recv_bytes_into(bytearray(64), timeout=0),
        "recv_view": lambda ch: ch.recv_view(timeout=0),
        "poll": lambda ch: ch.poll(0),
        "fileno": lambda ch: ch.fileno(),
    }
    out: dict[str, tuple[str, str]] = {}
    for i, ch in enumerate(ends):
        for name, call in calls.items():
            try:
                call(ch)
                out[f"end {i}: {name}"] = ("returned", "")
            except Exception as exc:
                out[f"end {i}: {name}"] = (type(exc).__name__, str(exc))
    for ch in ends:
        ch.close()
    _channel._close_all_at_exit()
    return out


def _try_the_ends_not_given() -> dict[str, tuple[str, str]]:
    ends = (_NOT_GIVEN["mine"], _NOT_GIVEN["theirs"])
    ready()
    return try_every_call(ends)


def _assert_refused(results: dict[str, tuple[str, str]]) -> None:
    wrong = {call: got for call, got in results.items()
             if got[0] != "UnsupportedOperation" or "multiprocessing.Process" not in got[1]}
    assert not wrong, f"calls on an end inherited without a hand-off did not raise UnsupportedOperation: {wrong}"


def _assert_untouched(a: Channel, b: Channel) -> None:
    """*a* sent ``b"before"`` to *b* before the fork: still there, nothing else came, both directions work."""
    assert b.recv_bytes(timeout=5.0) == b"before"
    assert not b.poll(0) and not a.poll(0), "the child's copy wrote something (a goodbye?) into the channel"
    a.send_bytes(b"after", timeout=5.0)
    assert b.recv_bytes(timeout=5.0) == b"after"
    b.send_bytes(b"back", timeout=5.0)
    assert a.recv_bytes(timeout=5.0) == b"back"


class ForkContract(ChildEnds):
    """Forked processes use only what they were handed (docs/contract.md P5)."""

    def test_bare_fork_child_cannot_use_inherited_ends(self) -> None:
        """A child of a bare ``os.fork()`` gets UnsupportedOperation from every call on both ends;
        its closes and its exit hook say nothing; the parent's channel goes on as if no fork happened."""
        a, b = self.make_pair()
        a.send_bytes(b"before", timeout=5.0)  # unread at the fork: the child must not take it
        _assert_refused(in_bare_fork(lambda: try_every_call((a, b))))
        _assert_untouched(a, b)

    def test_multiprocessing_child_cannot_use_ends_it_was_not_given(self) -> None:
        """A fork-started multiprocessing child that was not given the ends (it finds them in a
        module global) is refused as a bare fork child is; the parent's channel is untouched."""
        a, b = self.make_pair()
        a.send_bytes(b"before", timeout=5.0)
        _NOT_GIVEN.update(mine=a, theirs=b)
        try:
            with spawn_peer(_try_the_ends_not_given, method="fork") as peer:
                peer.wait_ready()
                results = peer.join()
        finally:
            _NOT_GIVEN.clear()
        _assert_refused(results)
        _assert_untouched(a, b)

    def test_forked_helper_of_a_child_does_not_take_its_end(self) -> None:
        """A fork-started child forks a helper of its own (bare ``os.fork()``): the helper cannot
        use the child's end, and the child's close is a clean close at once -- not PeerDied once the
        helper exits."""
        if not self.caps.inheritable:
            pytest.skip("the backend's ends do not pass to child processes")
        _, theirs, finish = self.child_end()
        messages = [workers.make_payload(i, 100 * i) for i in range(3)]
        with spawn_peer(workers.fork_helper_then_send, theirs, messages, method="fork") as peer:
            ch = finish()
            peer.wait_ready()
            assert [ch.recv_bytes(timeout=10.0) for _ in messages] == messages
            with pytest.raises(EndOfChannel):
                ch.recv_bytes(timeout=10.0)
            assert peer.join() == "UnsupportedOperation", "the child's helper could use the child's end"

    def test_end_handed_while_a_parent_thread_is_inside_send(self) -> None:
        """A parent thread is inside ``send()`` (waiting for room) when the end goes to a fork child:
        the child's send does not wait on the lock that thread held at the fork, nor carry on with
        that thread's message, and its own message arrives after everything sent before."""
        if not self.caps.inheritable:
            pytest.skip("the backend's ends do not pass to child processes")
        a, b = self.make_pair()
        filled = 0
        with pytest.raises(SendTimeout):  # small messages: each goes in whole or not at all
            while True:
                a.send_bytes(workers.make_payload(filled, 1000), timeout=0)
                filled += 1
        last = workers.make_payload(filled, 1000)  # as large as those that no longer fit
        inside = ResultThread(lambda: a.send_bytes(last, timeout=0.5), name="ipckit-inside-send")
        inside.start()
        wait_until_blocked(inside, ("_locked_send",))
        with spawn_peer(workers.send_messages, a, [b"from the child"], method="fork") as peer:
            with pytest.raises(SendTimeout):
                inside.outcome()
            a.close()  # the child's now
            peer.wait_ready()
            for i in range(filled):
                assert workers.check_payload(b.recv_bytes(timeout=10.0)) == i
            assert b.recv(timeout=20.0) == b"from the child"
            with pytest.raises(EndOfChannel):
                b.recv(timeout=10.0)
            assert peer.join() == 1
