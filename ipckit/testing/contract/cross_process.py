"""CrossProcessContract: an end works in a child process, under fork and spawn (``capabilities.inheritable``).

:class:`ChildEnds` is the helper the mixins that need a peer process share: it hands an end
(or, for named-only backends, an address to dial) to a child.
"""

from __future__ import annotations

import ast
import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

import ipckit

from ...channel import Channel, Listener
from ...errors import EndOfChannel
from ...options import Capabilities
from .. import workers
from ..peers import spawn_peer
from .helpers import ResultThread, send_each

__all__ = ["ChildEnds", "CrossProcessContract"]

#: Messages each child of :meth:`CrossProcessContract.test_both_ends_handed_to_children_parent_closes_at_once`
#: sends; also the exit code that says it all went well (an exit code is all a forkserver child can
#: tell us: it is not our child, so no spawn_peer status pipe).
_RELAY_COUNT = 60


def _relay_sender(end: Channel) -> None:
    """Send ``_RELAY_COUNT`` self-checking messages and close at once (the receiver may not even
    have taken its end yet)."""
    for i in range(_RELAY_COUNT):
        end.send_bytes(workers.make_payload(i, (i * 997) % 5000), timeout=30.0)
    end.close()
    sys.exit(_RELAY_COUNT)


def _relay_receiver(end: Channel) -> None:
    """Receive and check ``_RELAY_COUNT`` messages in order, then the sender's close."""
    for i in range(_RELAY_COUNT):
        if workers.check_payload(end.recv_bytes(timeout=30.0)) != i:
            sys.exit(3)
    try:
        end.recv_bytes(timeout=30.0)
    except EndOfChannel:
        pass
    else:
        sys.exit(4)
    end.close()
    sys.exit(_RELAY_COUNT)


class _Gate:
    """Goes into a spawned child's arguments ahead of an end: the child's unpickling of its
    arguments stops here until the test opens the gate, so the end is still travelling meanwhile."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __reduce__(self) -> tuple[Callable[[Any], None], tuple[Any]]:
        return _wait_at_gate, (self.conn,)


def _wait_at_gate(conn: Any) -> None:
    if not conn.poll(30.0):
        raise RuntimeError("the test never opened the gate")
    conn.close()


def _drain_after_gate(_gate: None, end: Channel, count: int) -> None:
    """Receive *count* ``make_payload`` messages in order, then the peer's close."""
    for i in range(count):
        if workers.check_payload(end.recv_bytes(timeout=30.0)) != i:
            sys.exit(3)
    try:
        end.recv_bytes(timeout=30.0)
    except EndOfChannel:
        pass
    else:
        sys.exit(4)
    end.close()
    sys.exit(count)


# Run by a fresh interpreter: open ends (and unread messages) left to the garbage collector and
# to the interpreter's exit.
_EXIT_WITH_OPEN_ENDS = """
import ast, gc, sys
import ipckit
url, options = sys.argv[1], ast.literal_eval(sys.argv[2])
c, d = ipckit.pair(url, **options)
c.send_bytes(b"never read")
cycle = [c, d]
cycle.append(cycle)
del c, d, cycle
gc.collect()  # the cycle's ends are closed by their __del__
a, b = ipckit.pair(url, **options)
a.send_bytes(b"never read")
b.send_bytes(b"never read either")
"""


class ChildEnds:
    """Gives a child process an end: the mixins that run a real peer process build on this.

    Not a contract itself (the meta-test does not count it); :class:`ChannelContract` supplies
    the attributes declared here.
    """

    scheme: ClassVar[str]
    make_pair: Callable[..., tuple[Channel, Channel]]
    own: Callable[[Any], Any]
    caps: Capabilities
    options: ClassVar[dict[str, Any]]
    fresh_url: Callable[[], str]

    def child_end(self, **options: Any) -> tuple[Channel | Listener, Channel | workers.Dial, Callable[[], Channel]]:
        """``(mine, theirs, finish)``: *theirs* goes to the child; call *finish()* after starting it.

        For a pair of inheritable ends, *finish* closes this process's copy of the child's end and
        returns *mine*; otherwise the child dials a fresh listener's URL and *finish* accepts it.
        """
        if self.caps.anonymous_pair and self.caps.inheritable:
            mine, theirs = self.make_pair(**options)

            def finish() -> Channel:
                theirs.close()  # the child has its own copy now
                return mine

            return mine, theirs, finish
        if not self.caps.named:
            pytest.fail(f"{self.caps} reach another process neither by inheritance nor by name: "
                        "a contract that needs a peer process cannot run")
        opts = {**self.options, **options}
        lst = self.own(ipckit.listen(self.fresh_url(), **opts))
        dial = workers.Dial(lst.url, opts)

        def accept() -> Channel:
            ch: Channel = self.own(lst.accept(timeout=20.0))
            return ch

        return lst, dial, accept


class CrossProcessContract(ChildEnds):
    """An end works in a child process, under *fork* and *spawn* (``capabilities.inheritable``)."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_echo_in_child(self, method: str) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.echo, theirs, method=method) as peer:
            ch = finish()
            peer.wait_ready()
            n = 2000 if method == "fork" else 500
            sizes = [0, 1, 100, 4095, 4096, 70_000] + [i % 1500 for i in range(n - 6)]
            sender = ResultThread(lambda: send_each(ch, (workers.make_payload(i, s) for i, s in enumerate(sizes))))
            sender.start()
            for i in range(n):
                assert workers.check_payload(ch.recv_bytes(timeout=20.0)) == i
            sender.outcome()
            ch.close()
            assert peer.join() == n

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_child_closes_with_three_in_flight(self, method: str) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.send_messages, theirs, [1, "two", {"three": 3}], method=method) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.join() == 3
            assert [ch.recv(timeout=10.0) for _ in range(3)] == [1, "two", {"three": 3}]
            with pytest.raises(EndOfChannel):
                ch.recv(timeout=10.0)

    def test_child_receives(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 50, method="fork") as peer:
            ch = finish()
            peer.wait_ready()
            for i in range(50):
                ch.send({"i": i}, timeout=10.0)
            assert peer.join() == [{"i": i} for i in range(50)]

    def test_plain_pickle_is_refused_with_advice(self) -> None:
        a, _b = self.make_pair()
        import pickle

        with pytest.raises(TypeError):
            pickle.dumps(a)

    # -- hand-offs where the parent lets go at once (docs/contract.md P5) ---------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def forkserver(cls) -> Iterator[None]:
        """The forkserver process, started before the leak guard's first snapshot of the class's
        tests and stopped after them (it holds descriptors for the rest of the run otherwise)."""
        multiprocessing.forkserver.ensure_running()
        yield
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]

    @pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
    def test_both_ends_handed_to_children_parent_closes_at_once(self, method: str, forkserver: None) -> None:
        """Both ends of one channel go to two children and the parent closes each copy right after
        ``start()`` (docs/contract.md §1): the children talk as if the parent had never held them.
        Neither end may vanish while it travels, and neither child may take the other for dead
        while the other is still taking its end over."""
        a, b = self.make_pair()
        ctx: Any = multiprocessing.get_context(method)
        procs = [ctx.Process(target=_relay_sender, args=(a,), daemon=True),
                 ctx.Process(target=_relay_receiver, args=(b,), daemon=True)]
        try:
            for proc, end in zip(procs, (a, b), strict=True):
                with warnings.catch_warnings():
                    # Python >= 3.12 warns about fork() in a process with threads (as spawn_peer says)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    proc.start()
                end.close()  # at once: the child may not have taken the end over yet
            for proc in procs:
                proc.join(60)
            codes = [proc.exitcode for proc in procs]
            assert codes == [_RELAY_COUNT, _RELAY_COUNT], (
                f"{method}: children exited with {codes} (sender, receiver); {_RELAY_COUNT} is success, "
                "1 an exception (its traceback is in the captured stderr)")
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join(10)
                proc.close()

    @pytest.mark.parametrize("method", ["spawn", "forkserver"])
    def test_peer_sends_and_closes_before_the_child_took_its_end(self, method: str, forkserver: None) -> None:
        """The parent hands one end to a child, closes its copy, then sends on the other end and
        closes that too -- all before the child has taken its end over (held at a gate in its
        unpickling): the child still receives every message, then EndOfChannel.  Closing a
        channel whose other end is travelling must leave the end something to arrive at."""
        mine, theirs = self.make_pair()
        ctx: Any = multiprocessing.get_context(method)
        gate_in, gate_out = ctx.Pipe(duplex=False)
        count = 5
        proc = ctx.Process(target=_drain_after_gate, args=(_Gate(gate_in), theirs, count), daemon=True)
        try:
            proc.start()
            gate_in.close()
            theirs.close()
            for i in range(count):
                mine.send_bytes(workers.make_payload(i, 100 + i), timeout=10.0)
            mine.close()
            gate_out.send(True)
            proc.join(60)
            assert proc.exitcode == count, (
                f"{method}: the child exited with {proc.exitcode}; {count} is success, 1 an exception "
                "(its traceback is in the captured stderr)")
        finally:
            gate_out.close()
            if proc.is_alive():
                proc.kill()
                proc.join(10)
            proc.close()

    def test_spawned_child_returning_without_close_exits_cleanly(self) -> None:
        """A spawned child (its interpreter exits normally, running ipckit's exit hook) returns
        without closing its end: it exits with status 0, never a crash, and everything it sent
        arrives (a fork/forkserver child ends with ``os._exit``: not this test's subject)."""
        _, theirs, finish = self.child_end()
        messages = [workers.make_payload(i, 100 * i) for i in range(5)]
        with spawn_peer(workers.send_messages, theirs, messages, False, method="spawn") as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.join() == len(messages)  # PeerFailed if the child's exit crashed
            assert peer.exitcode == 0
            assert [ch.recv(timeout=10.0) for _ in messages] == messages
            with pytest.raises(EndOfChannel):
                ch.recv(timeout=10.0)

    def test_interpreter_exit_with_open_ends_does_not_crash(self) -> None:
        """``a, b = ipckit.pair(url)`` and exit: the interpreter's exit closes both ends before
        anything they use is released, so the process exits with 0 and leaves nothing behind
        (the leak guard checks).  Likewise for ends the garbage collector finds unclosed in a
        reference cycle (their ResourceWarning aside)."""
        if not self.caps.anonymous_pair:
            pytest.skip("the backend has no anonymous pair to leave open")
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(ipckit.__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                          os.environ.get("PYTHONPATH")]))}
        opts = repr(dict(self.options))
        assert ast.literal_eval(opts) == self.options, "the contract's options must be literals to reach a subprocess"
        warn = ["-W", "error", "-W", "ignore::ResourceWarning"]
        proc = subprocess.run([sys.executable, *warn, "-c", _EXIT_WITH_OPEN_ENDS, f"{self.scheme}://", opts],
                              env=env, capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stderr) == (0, ""), f"exit status {proc.returncode}: {proc.stderr}"
