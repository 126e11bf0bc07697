"""A send cut at any point where a signal handler can run leaves the stream whole (issue 10, A.3/B.6).

A Python signal handler runs, and so can raise (``KeyboardInterrupt``, an alarm's timeout), only
where CPython checks for pending signals: at a function's start (``RESUME``), at a loop's back
edge (``JUMP_BACKWARD``) and right after a call returns; and inside a C call that checks (a wait
that EINTR ended, before anything happened).  These tests raise an exception, deterministically,
at every such point of the stream kit's Python (``stream.py``) in turn, through a trace function,
while one end sends small, medium and large messages -- some with a zero timeout into a full
buffer, so the send is cut by its deadline first and the next one must finish the aborted frame --
and closes.  FramedStreamContract and InterruptContract do the same with real signals and timeouts.

What the peer must see: exactly the messages whose send returned, in order, plus the cut one only
if it arrived whole; then the end of the stream (EndOfChannel after a close that finished, or
PeerDied if the cut broke the send side, which then raises ChannelBroken on every send); never a
cut or shifted message, and never a reader left waiting in the middle of a frame.
"""

from __future__ import annotations

import pytest

import ipckit
from ipckit.backends.common import stream as kit
from ipckit.channel import Channel
from ipckit.errors import ChannelBroken, EndOfChannel, PeerDied, SendTimeout
from ipckit.testing import workers
from ipckit.testing.contract.helpers import KiB, MiB, ResultThread
from ipckit.testing.contract.interrupts import _drain
from ipckit.testing.cuts import Cut
from ipckit.testing.cuts import Cutter as _Cutter

pytestmark = pytest.mark.timeout(300)

#: Not cut: the release of the descriptors at the end of close().  No Python code is immune to an
#: exception at its first instruction; it closes them all in one call from C, as late as it can.
_NOT_CUT = frozenset({"_release_fds"})


def Cutter(at: int) -> _Cutter:
    """Cut at the *at*-th point of the stream kit where a signal handler can run."""
    return _Cutter(at, {kit.__file__}, handler_points_only=True, skip=_NOT_CUT)


#: (size, timeout) of each send: a zero timeout into a full buffer (no reader yet) times out.
_BEFORE_READER = [(100, 10.0), (300 * KiB, 0.0), (100, 0.0), (5000, 0.0)]
_WITH_READER = [(100, 10.0), (2 * MiB, 10.0), (0, 10.0), (70 * KiB, 10.0), (4076, 10.0), (4077, 10.0)]


def _make_pair(scheme: str) -> tuple[Channel, Channel]:
    if scheme in ("pipe", "fifo"):  # a small kernel buffer: more partial writes and waits
        return ipckit.pair(f"{scheme}://", pipe_size=64 * KiB, max_message_size=4 * MiB)
    return ipckit.pair(f"{scheme}://", max_message_size=4 * MiB)


def _run(scheme: str, at: int) -> bool:
    """One run cut at point *at*; False if the run ended before reaching it."""
    a, b = _make_pair(scheme)
    cutter = Cutter(at)
    reader = ResultThread(lambda: _drain(b, timeout=20.0), name="ipckit-drain")
    sent: list[int] = []  # the messages whose send returned
    cut: int | None = None  # the message whose send the cut came out of (may have left whole)
    broken = False
    try:
        plan = _BEFORE_READER + _WITH_READER
        for i, (size, timeout) in enumerate(plan):
            if i == len(_BEFORE_READER):
                reader.start()
            payload = workers.make_payload(i, size)

            def send(payload: bytes = payload, timeout: float = timeout) -> None:
                a.send_bytes(payload, timeout=timeout)

            try:
                cutter.run(send)
            except Cut:
                cut = i
            except SendTimeout:
                assert timeout == 0.0, f"send {i} timed out with a reader draining"
            except ChannelBroken:
                # Only a cut can break the send side (a write whose count it lost), and the next
                # send says so; a timeout never does.
                assert cut == i - 1, f"send {i} raised ChannelBroken; the cut was in send {cut}"
                broken = True
                with pytest.raises(ChannelBroken):  # and stays broken
                    a.send_bytes(b"again", timeout=1.0)
                break
            else:
                sent.append(i)
        try:
            cutter.run(a.close)
        except Cut:
            cut = -1 if cut is None else cut
            a.close()
    finally:
        if reader.ident is None:
            reader.start()
        a.close()
        reader.join(60.0)
        alive = reader.is_alive()
        b.close()  # wakes a reader left waiting, so nothing is leaked either way
    assert not alive, f"cut at point {at}: the reader is still waiting 60 s after the sender closed"
    got, end = reader.outcome(10.0)
    allowed = [sent]
    if cut is not None and cut >= 0:
        allowed.append(sorted([*sent, cut]))
    where = f"cut at point {at} (message {cut}; sender {'broken' if broken else 'usable'})"
    if broken:
        assert any(got == want[: len(got)] for want in allowed), f"{where}: the reader got {got}, sent {sent}"
        assert isinstance(end, PeerDied), f"{where}: the reader's stream ended with {end!r}"
    else:
        assert got in allowed, f"{where}: the reader got {got}, sent {sent}"
        if cut == -1:  # close() itself was cut: its goodbye may be missing
            assert isinstance(end, (EndOfChannel, PeerDied)), f"{where}: the reader's stream ended with {end!r}"
        else:
            assert isinstance(end, EndOfChannel), f"{where}: the reader's stream ended with {end!r}"
    return cutter.fired


@pytest.mark.parametrize("scheme", ["pipe", "fifo", "unix"])
def test_send_cut_at_every_handler_point(scheme: str) -> None:
    at = 1
    while _run(scheme, at):
        at += 1
    assert at > 50, f"only {at - 1} points were cut: the trace did not reach the stream kit"
