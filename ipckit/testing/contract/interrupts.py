"""InterruptContract: an exception a signal handler raises part-way through a call leaves the
channel usable or broken, never corrupt (part of :class:`ChannelContract`: every backend).

A Python signal handler runs in the main thread between two bytecodes of whatever that thread is
doing, or inside a system call the signal interrupted; what it raises (``KeyboardInterrupt`` from
Ctrl-C, a timeout exception from a ``SIGALRM`` handler) leaves the ipckit call half-way.  The
promise (docs/contract.md, "Interrupted calls"):

* the handler's exception propagates at once (not a timeout at the deadline, not swallowed);
* afterwards the sending end is usable (nothing of the message left: the peer gets it whole or not
  at all) or raises ``ChannelBroken`` on every later send; the peer gets whole messages, then
  ``EndOfChannel``/``PeerDied`` — never a cut, merged or shifted one;
* a receive interrupted in the middle of a message resumes it on the next call, or the receiving
  end raises ``ChannelBroken`` from then on; it never returns the rest of a message as a message.
  (An exception that lands after the message was taken, on its way to the caller, loses that one
  message, as with any Python call; the next receive still returns the next whole message.)

The tests interrupt with a one-shot ``setitimer`` ``SIGALRM`` whose handler raises, at many
points of a large send (peer idle, so the send blocks on a full buffer; and peer draining, so the
interrupt lands anywhere in the transfer) and of a large receive, with a plain exception and with
``KeyboardInterrupt``.  They run in the main thread (signals are delivered there).
"""

from __future__ import annotations

import functools
import gc
import signal
import struct
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from ...channel import Channel
from ...errors import ChannelBroken, EndOfChannel, IPCError, PeerDied, RecvTimeout, SendTimeout
from ...options import Capabilities
from .. import workers
from .helpers import KiB, MiB, ResultThread

__all__ = ["InterruptContract", "HandlerInterrupt", "interrupted"]

#: Where the interrupt lands, in seconds after the call started: spread over a transfer of a few MiB.
_DELAYS = [0.0001 * 2.0**k for k in range(8)]  # 0.1 ms ... 12.8 ms

#: Exceptions the interrupt raises: any exception a handler raises, and Ctrl-C's.
_KINDS = ["exception", "keyboard-interrupt"]


class HandlerInterrupt(Exception):
    """What the test's signal handler raises (standing for any exception a handler may raise)."""


@functools.lru_cache(maxsize=16)
def _payload(seq: int, size: int) -> bytes:
    """:func:`~ipckit.testing.workers.make_payload`, made once per test run (the large ones take a while)."""
    return workers.make_payload(seq, size)


def _kind(name: str) -> type[BaseException]:
    return KeyboardInterrupt if name == "keyboard-interrupt" else HandlerInterrupt


def interrupted(call: Callable[[], Any], delay: float, kind: type[BaseException]) -> BaseException | None:
    """Run *call* with a ``SIGALRM`` due after *delay* s whose handler raises *kind* (once).

    The timer repeats every 50 ms (the handler raises only the first time it runs): a signal that
    lands just before a blocking system call starts is only handled when that call returns (a
    race in CPython itself), and the next one interrupts the call.

    Returns the handler's exception if it came out of *call* (or right after it returned), None if
    *call* returned first and the timer was cancelled.  Main thread only.

    The garbage collector is kept out of the call: a handler that happens to run inside a
    finalizer or weakref callback the collector called (of anything in the process, e.g. channels
    of earlier iterations) has its exception swallowed by CPython ("Exception ignored in ..."),
    which no library can prevent.
    """
    assert threading.current_thread() is threading.main_thread(), "signals are delivered to the main thread"
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise kind(f"raised by a SIGALRM handler {delay * 1000:.2f} ms into the call")

    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, delay, 0.05)
            call()
            signal.setitimer(signal.ITIMER_REAL, 0.0)
        except kind as exc:
            return exc
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
        if collecting:
            gc.enable()


def _label(data: bytes) -> int | str:
    """A received message as its :func:`~ipckit.testing.workers.make_payload` number, or ``"corrupt"``."""
    try:
        return workers.check_payload(data)
    except (AssertionError, struct.error):
        return f"corrupt ({len(data)} bytes)"


def _drain(ch: Channel, timeout: float = 10.0) -> tuple[list[int | str], IPCError]:
    """Receive until an error; the messages (as labels) and the error that ended it."""
    got: list[int | str] = []
    while True:
        try:
            got.append(_label(ch.recv_bytes(timeout=timeout)))
        except IPCError as exc:
            return got, exc


class InterruptContract:
    """A signal handler's exception part-way through send, recv or poll: usable or broken, never corrupt."""

    make_pair: Callable[..., tuple[Channel, Channel]]
    limit: Callable[[int], int]

    if TYPE_CHECKING:
        @property
        def caps(self) -> Capabilities: ...  # ChannelContract's

    # ------------------------------------------------------------------ helpers
    def _big(self) -> int:
        """A message larger than any transport buffer (so a send to an idle peer blocks part-way)."""
        return self.limit(8 * MiB)

    def _fill_whole(self, a: Channel) -> list[bytes]:
        """Fill a message-oriented transport with whole messages until a send would block.

        Streams are left empty: a timed-out send there may cut a frame (and break the stream).
        """
        if not self.caps.message_oriented:
            return []
        sent: list[bytes] = []
        m = _payload(1000, self.limit(1 * MiB) - 16)
        for _ in range(100_000):
            try:
                a.send_bytes(m, timeout=0)
            except SendTimeout:
                return sent
            sent.append(m)
        raise AssertionError("a send to an idle peer never blocked")

    def _end_ok(self, end: IPCError, broken: bool) -> None:
        """How the peer's receiving ends after the sender closed."""
        if not self.caps.detects_peer_close:
            assert isinstance(end, RecvTimeout), f"the peer's receive ended with {end!r}"
        elif broken:
            assert isinstance(end, (PeerDied, EndOfChannel)), f"the peer's receive ended with {end!r}"
        else:
            assert isinstance(end, EndOfChannel), f"the peer's receive ended with {end!r} after a clean close"

    def _check_sender(self, a: Channel, after: list[bytes]) -> bool:
        """Send *after* on the interrupted end: all succeed, or ChannelBroken from some point on, every time."""
        for m in after:
            try:
                a.send_bytes(m, timeout=10.0)
            except ChannelBroken:
                for _ in range(2):
                    with pytest.raises(ChannelBroken):
                        a.send_bytes(b"again", timeout=1.0)
                assert after.index(m) == 0, "a send succeeded after an interrupt, then a later one was broken"
                return True
        return False

    def _send_interrupted(self, kind: type[BaseException], delay: float, *, draining: bool) -> None:
        a, b = self.make_pair(max_message_size=16 * MiB)
        big = _payload(1, self._big() - 16)
        after = [_payload(2, 300), _payload(3, 70 * KiB), _payload(4, 0)]
        before: list[bytes] = [] if draining else self._fill_whole(a)
        reader = ResultThread(lambda: _drain(b), name="ipckit-drain")
        if draining:
            reader.start()
        start = time.monotonic()
        exc = interrupted(lambda: a.send_bytes(big, timeout=10.0), delay, kind)
        elapsed = time.monotonic() - start
        if exc is not None:
            assert elapsed < delay + 2.0, f"the handler's exception came out of send after {elapsed:.2f} s"
        if not draining:
            reader.start()
        broken = self._check_sender(a, after)
        a.close()
        got, end = reader.outcome(30.0)
        want = [workers.check_payload(m) for m in before]
        assert got[: len(want)] == want, f"the messages sent before the interrupt: {got[: len(want)]}"
        rest = got[len(want) :]
        if rest[:1] == [1]:  # the interrupted message left whole (the interrupt came as it finished)
            rest = rest[1:]
        elif exc is None:
            raise AssertionError(f"send returned, but its message did not arrive: {rest}")
        expected = [] if broken else [workers.check_payload(m) for m in after]
        assert rest == expected, (f"after an interrupt {delay * 1000:.2f} ms into a send (sender "
                                  f"{'broken' if broken else 'usable'}), the peer received {rest}")
        self._end_ok(end, broken)

    # ------------------------------------------------------------------ sending
    @pytest.mark.parametrize("kind", _KINDS)
    def test_send_to_idle_peer_interrupted(self, kind: str) -> None:
        """The send blocks on a full buffer (the peer is not reading) and is interrupted there."""
        for delay in _DELAYS:
            self._send_interrupted(_kind(kind), delay, draining=False)

    @pytest.mark.parametrize("kind", _KINDS)
    def test_send_to_draining_peer_interrupted(self, kind: str) -> None:
        """The peer reads all along, so the interrupt lands anywhere in the transfer (or after it)."""
        for delay in _DELAYS:
            self._send_interrupted(_kind(kind), delay, draining=True)

    # ------------------------------------------------------------------ receiving
    @pytest.mark.parametrize("timeout", [10.0, None], ids=["deadline", "forever"])
    @pytest.mark.parametrize("kind", _KINDS)
    def test_recv_interrupted_mid_message(self, kind: str, timeout: float | None) -> None:
        """A receive interrupted while a large message streams in resumes it, or breaks; never a tail."""
        for delay in _DELAYS:
            a, b = self.make_pair(max_message_size=16 * MiB)
            sizes = [self._big() - 16, 200 * KiB, 100, 300 * KiB]
            messages = [_payload(i, n) for i, n in enumerate(sizes)]
            got: list[int | str] = []

            def send_all(a: Channel = a, messages: list[bytes] = messages) -> None:
                for m in messages:
                    a.send_bytes(m, timeout=20.0)
                a.close()

            def first(b: Channel = b, got: list[int | str] = got) -> None:
                got.append(_label(b.recv_bytes(timeout=timeout)))

            sender = ResultThread(send_all, name="ipckit-send")
            sender.start()
            exc = interrupted(first, delay, _kind(kind))
            broken = False
            while True:
                try:
                    got.append(_label(b.recv_bytes(timeout=10.0)))
                except ChannelBroken:
                    broken = True
                    with pytest.raises(ChannelBroken):
                        b.recv_bytes(timeout=0)
                    break
                except EndOfChannel:
                    break
            b.close()  # unblocks a sender stuck on a broken receiver
            sender.join(30.0)
            assert not sender.is_alive(), "the sender is still blocked after the receiver closed"
            if not broken or not isinstance(sender.error, IPCError):  # a broken receiver may fail the sender
                sender.outcome()
            everything = list(range(len(messages)))
            # Message 0 may be missing only if the interrupt came as the receive returned it (lost on
            # its way to the caller); a broken receiver stops early, but what it gave was whole.
            allowed = [everything] + ([everything[1:]] if exc is not None else [])
            ok = any(got == want[: len(got)] if broken else got == want for want in allowed)
            assert ok, (f"after an interrupt {delay * 1000:.2f} ms into a receive (receiver "
                        f"{'broken' if broken else 'usable'}) the messages were {got}")

    # ------------------------------------------------------------------ waiting
    @pytest.mark.parametrize("timeout", [5.0, None], ids=["deadline", "forever"])
    @pytest.mark.parametrize("call", ["recv", "poll"])
    def test_handler_exception_ends_a_wait_at_once(self, call: str, timeout: float | None) -> None:
        """A handler's exception raised while recv or poll waits propagates at once; the channel works on."""
        a, b = self.make_pair()
        # Without the fix a "forever" wait would never end: a message after 3 s ends it (and the test fails).
        rescue = threading.Timer(3.0, lambda: a.send_bytes(b"rescue", timeout=5.0))
        op: Callable[[], Any] = (lambda: b.recv_bytes(timeout=timeout)) if call == "recv" else (lambda: b.poll(timeout))
        start = time.monotonic()
        rescue.start()
        try:
            exc = interrupted(op, 0.05, HandlerInterrupt)
        finally:
            rescue.cancel()
            rescue.join()
        elapsed = time.monotonic() - start
        assert isinstance(exc, HandlerInterrupt), f"{call}(timeout={timeout}) did not raise the handler's exception"
        assert elapsed < 1.0, f"the handler's exception came out of {call} after {elapsed:.2f} s, not at once"
        a.send_bytes(b"after", timeout=5.0)
        assert b.poll(5.0)
        assert b.recv_bytes(timeout=5.0) == b"after"
