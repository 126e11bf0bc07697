"""An exception at any step of a ring write or read leaves both ends whole (issue 10, B.6).

A signal handler's exception (``KeyboardInterrupt``, an alarm's timeout) comes out of whatever
Python code runs when the signal is handled.  These tests raise one, deterministically, at every
bytecode instruction of the ring kit (``buffer.py``, ``protocol.py``) in turn, through a trace
function, while a small ring carries a whole message, a streamed one, padding and more whole
ones: where the interpreter really handles signals (calls, returns, loops) is a subset of these
points.  The cursors' own Python (``cursor.py``) is not cut: like the C fast path, it publishes
right after its private store, with no call between the two where a handler could run.

After the cut the test goes on as the channel does (the writer's ``recover`` after an exception
in a send, nothing after one in a receive) and checks what the reader gets: every message whole
and in order -- the interrupted one whole or not at all, and one message taken by a receive cut
on its way out may be missing -- never a ProtocolError, a stuck writer or a cut message.
InterruptContract (ipckit.testing.contract.interrupts) does the same with real signals on every
backend.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import pytest

from ipckit.backends.common.ring import buffer as R
from ipckit.backends.common.ring import cursor as RC
from ipckit.backends.common.ring import protocol as P
from ipckit.testing.cuts import Cut
from ipckit.testing.cuts import Cutter as _Cutter

pytestmark = pytest.mark.timeout(120)

CAP = 256
MAXMSG = 1 << 16
_CUT_FILES = frozenset({R.__file__, P.__file__})


def Cutter(at: int) -> _Cutter:
    """Cut at the *at*-th instruction run in the ring kit (every instruction, not only the
    points where a handler runs: the ring's steps must hold wherever they are cut)."""
    return _Cutter(at, _CUT_FILES)


@pytest.fixture(params=["c", "python"])
def cursors(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The cursor implementation (the fast paths the transfer takes when they can)."""
    if request.param == "python":
        writer, reader = RC.PyWriter, RC.PyReader
    else:
        fast = pytest.importorskip("ipckit.backends.common.ring._ringfast", reason="C cursor extension not built")
        writer, reader = fast.Writer, fast.Reader
    monkeypatch.setattr(R.RingWriter, "_cursor_type", writer)
    monkeypatch.setattr(R.RingReader, "_cursor_type", reader)
    return str(request.param)


def _ring() -> Iterator[tuple[R.RingWriter, R.RingReader]]:
    m = mmap.mmap(-1, R.region_size(CAP) + 64)
    R.initialize(memoryview(m), 64, CAP, MAXMSG)
    w, r = R.RingWriter(m, 64, len(m) - 64, MAXMSG), R.RingReader(m, 64, len(m) - 64, MAXMSG)
    try:
        yield w, r
    finally:
        w.close()
        r.close()
        m.close()


def _messages() -> list[bytes]:
    # A whole one, one streamed through several chunks (with padding where a chunk would not fit
    # the ring's end), a whole one that pads the end, an empty one, one more whole one.
    sizes = [40, 500, 150, 0, 60]
    return [bytes([i + 1]) * 4 + os.urandom(max(0, n - 4)) if n else b"" for i, n in enumerate(sizes)]


class Transfer:
    """Moves the messages through one ring in small steps (the writer as ``_send_message`` /
    ``_finish_send`` drive it, the reader as ``_next`` / ``_recv_message`` do), every step through
    :meth:`step`, which records a cut and reacts as the channel does."""

    def __init__(self, w: R.RingWriter, r: R.RingReader, messages: list[bytes], *, into: bool) -> None:
        self.w, self.r, self.messages, self.into = w, r, messages, into
        self.got: list[bytes] = []
        self.cut: tuple[str, int] | None = None  # (who, message being sent / received)
        self.buffers: list[bytearray] = []

    def _read_one(self) -> bytes | None:
        r = self.r
        if not self.into:
            data = r.try_read_bytes()
            return data if data is not None else r.try_read()
        buf = bytearray(1024)
        self.buffers = [*self.buffers[-1:], buf]
        n = r.try_read_into(memoryview(buf))
        return None if n is None else bytes(buf[:n])

    def read(self) -> None:
        while True:
            try:
                data = self._read_one()
            except Cut:
                self.cut = self.cut or ("reader", len(self.got))
                for buf in self.buffers:  # the caller reuses its buffers after the exception
                    buf[:] = b"\xee" * len(buf)
                continue
            if data is None:
                return
            self.got.append(data)

    def send(self, i: int) -> None:
        w, data = self.w, self.messages[i]
        try:
            done = w.try_send(data) or w.try_write(data)
            while not done:
                self.read()
                done = w.pump()
        except Cut:
            self.cut = self.cut or ("writer", i)
            w.recover()  # _finish_send's except clause

    def run(self) -> None:
        for i in range(len(self.messages)):
            self.send(i)
        self.read()


def _check(t: Transfer) -> None:
    want = t.messages
    if t.cut is None:
        assert t.got == want
        return
    who, i = t.cut
    # The interrupted message arrives whole or not at all; one taken by a cut receive may be lost.
    allowed = [want, want[:i] + want[i + 1 :]]
    assert t.got in allowed, f"cut in the {who} at message {i}: got {[len(m) for m in t.got]}"


def _every_cut(into: bool) -> int:
    """Run the transfer once per instruction of the ring kit it runs; the number of cut points."""
    messages = _messages()
    at = 1
    while True:
        for w, r in _ring():
            t = Transfer(w, r, messages, into=into)
            cutter = Cutter(at)
            try:
                cutter.run(t.run)
            except Cut as exc:  # a cut outside the steps the transfer catches would be a test bug
                raise AssertionError(f"uncaught {exc}") from exc
            if not cutter.fired:
                _check(t)
                return at - 1
            # The trace is off once it raised: the transfer went on, and everything must have arrived.
            _check(t)
            assert not w.busy or w.pump(), "the writer is still busy with an abandoned message"
            assert w.try_write(b"after") or w.pump()
            t.read()
            assert t.got[-1] == b"after", f"cut at instruction {at}: the ring does not carry a message after it"
        at += 1


def test_a_cut_at_any_instruction_leaves_the_ring_whole(cursors: str) -> None:
    assert _every_cut(into=False) > 1000  # the transfer really ran through the kit's steps


def test_a_cut_reading_into_a_buffer_never_writes_to_it_later() -> None:
    """A cut receive into the caller's buffer moves the half-reassembled message out of it (the
    caller scribbles over its buffers after each cut); only the general path reads into buffers."""
    assert _every_cut(into=True) > 1000
