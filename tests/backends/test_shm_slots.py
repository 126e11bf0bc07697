"""shm:// large-message slots (ring/side.py, issue 11 item 4): a large message reaches the receiver
without a copy on its side whatever the ring's capacity, slots are reused, kept messages are never
overwritten, memory stays bounded, hostile records are refused, and crashes leave nothing behind
(the leak guard checks /dev/shm and descriptors after every test)."""

from __future__ import annotations

import ctypes
import gc
import mmap
import struct
import time
import zlib
from typing import Any

import pytest

import ipckit
from ipckit.backends.common.ring import protocol, side
from ipckit.errors import PeerDied, ProtocolError
from ipckit.testing.contract.helpers import ResultThread
from ipckit.testing.peers import kill_self, ready, spawn_peer

np = pytest.importorskip("numpy")
pytest.importorskip("posix_ipc")

pytestmark = pytest.mark.timeout(60)

FRAME = (1080, 1920, 3)  # a 1080p RGB frame: 6,220,800 bytes, larger than the default 4 MiB ring


def _frame(seed: int) -> Any:
    return np.full(FRAME, seed % 251, dtype=np.uint8)


def _in_slot(ch: Any, addr: int, n: int) -> bool:
    """True when [addr, addr + n) lies inside one of the reader's slot mappings."""
    for mm in ch._side_r._maps.values():
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        if base <= addr and addr + n <= base + len(mm):
            return True
    return False


def _view_addr(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) if not view.readonly else _ro_addr(view)


def _ro_addr(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def test_recv_of_a_frame_larger_than_the_ring_is_copy_free() -> None:
    a, b = ipckit.pair("shm://")
    try:
        frame = _frame(7)
        assert frame.nbytes > a._w.capacity
        a.send(frame)
        got = b.recv(timeout=10)
        assert got.shape == FRAME and (got == frame).all()
        assert _in_slot(b, got.ctypes.data, got.nbytes), "recv() copied the frame out of its slot"
        assert got.flags.writeable  # the slot is the receiver's until the array dies
    finally:
        a.close()
        b.close()


def test_recv_view_is_copy_free_at_a_tiny_capacity() -> None:
    a, b = ipckit.pair("shm://?capacity=65536")
    try:
        data = bytes(range(256)) * (24 * 1024)  # 6 MiB through a 64 KiB ring
        a.send_bytes(data)
        view = b.recv_view(timeout=10)
        assert view == data
        assert _in_slot(b, _ro_addr(view), len(view))
    finally:
        a.close()
        b.close()


def test_recv_bytes_into_and_buffer_too_small() -> None:
    a, b = ipckit.pair("shm://")
    try:
        data = bytes(range(256)) * 8192  # 2 MiB
        a.send_bytes(data)
        buf = bytearray(3 << 20)
        assert b.recv_bytes_into(buf, timeout=10) == len(data)
        assert buf[: len(data)] == data
        a.send_bytes(data)
        with pytest.raises(ipckit.BufferTooSmall) as info:
            b.recv_bytes_into(bytearray(100), timeout=10)
        assert info.value.message == data
        a.send_bytes(b"next")
        assert b.recv_bytes(timeout=10) == b"next"
    finally:
        a.close()
        b.close()


def test_slots_are_reused_once_the_receiver_drops_the_message() -> None:
    a, b = ipckit.pair("shm://")
    try:
        for i in range(40):
            a.send(_frame(i))
            got = b.recv(timeout=10)
            assert got[0, 0, 0] == i % 251
            del got
            b.send_bytes(b"ack")  # the receiver's next call hands the slot back
            assert a.recv_bytes(timeout=10) == b"ack"
        assert len(a._side_w._pool) == 1
        assert a._hdr[side_next(a)] == a._side_w._pool[0].cap  # one slot's offsets ever taken
    finally:
        a.close()
        b.close()


def side_next(ch: Any) -> int:
    from ipckit.backends import shm

    return int(shm._H_SIDE_NEXT + ch._role)


@pytest.mark.security("S15", subject="shm")
def test_kept_messages_are_never_overwritten_and_memory_stays_bounded() -> None:
    a, b = ipckit.pair("shm://")
    try:
        # (A sender thread: with the pool full of kept slots a frame goes through the ring, which
        # is smaller than the frame, so it needs a reader at the same time.)
        sender = ResultThread(lambda: [a.send(_frame(i), timeout=20) for i in range(30)])
        sender.start()
        kept = [b.recv(timeout=20) for _ in range(30)]
        sender.outcome()
        for i, arr in enumerate(kept):  # every kept frame still holds what was sent
            assert (arr == i % 251).all()
        assert len(a._side_w._pool) <= side.POOL_SLOTS
        del kept, arr
        gc.collect()
        # The channel goes on using slots once they come back (the receiver's next call returns
        # them; until then a frame may go through the ring, so the sender has a thread again).
        sender = ResultThread(lambda: [a.send(_frame(100 + i), timeout=20) for i in range(10)])
        sender.start()
        for i in range(10):
            assert (b.recv(timeout=20) == (100 + i) % 251).all()
        sender.outcome()
        assert len(a._side_w._pool) <= side.POOL_SLOTS
        assert any(s.words[2] for s in a._side_w._pool)  # returned slots, ready for the next frame
    finally:
        a.close()
        b.close()


def test_large_message_zero_keeps_everything_in_the_ring() -> None:
    a, b = ipckit.pair("shm://?large_message=0&capacity=16MiB")  # (the frame fits: one thread)
    try:
        a.send(_frame(3))
        got = b.recv(timeout=10)
        assert (got == 3).all()
        assert a._side_w is None and b._side_r is None
    finally:
        a.close()
        b.close()


def test_no_room_for_a_slot_falls_back_to_the_ring() -> None:
    a, b = ipckit.pair("shm://?capacity=16MiB")  # (the frame fits the ring: one thread)
    try:
        a._hdr[side_next(a)] = side.WINDOW - mmap.PAGESIZE  # the window is spent
        a.send(_frame(9))
        assert (b.recv(timeout=10) == 9).all()
        assert a._side_w._pool == []
    finally:
        a.close()
        b.close()


def _forge_ref(ring: Any, offset: int, cap: int, total: int) -> None:
    """Commit a REF record by hand into the ring *ring* writes (what a hostile peer could do)."""
    w = ring
    assert w.write_ref(struct.pack("<QQ", offset, cap), total)


@pytest.mark.parametrize(
    ("offset", "cap", "total"),
    [
        (1 << 40, 1 << 20, 100),  # beyond the file
        (123, 1 << 20, 100),  # not page aligned
        (0, 4096, 8192),  # the message does not fit the slot
        (side.WINDOW, 4096, 10),  # outside the window
    ],
)
@pytest.mark.security("S16", subject="shm")
def test_a_forged_slot_record_is_a_protocol_error(offset: int, cap: int, total: int) -> None:
    a, b = ipckit.pair("shm://")
    try:
        _forge_ref(a._w, offset, cap, total)
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=5)
    finally:
        a.close()
        b.close()


@pytest.mark.security("S16", subject="shm")
def test_a_slot_with_a_scribbled_header_is_a_protocol_error() -> None:
    a, b = ipckit.pair("shm://")
    try:
        a.send_bytes(b"x" * (2 << 20))
        slot = a._side_w._pool[0]
        slot.words[0] = 0xDEAD  # the magic
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=5)
    finally:
        a.close()
        b.close()


def _stream_frames_then_die(url: str, n: int) -> None:
    with ipckit.connect(url, timeout=10) as ch:
        for i in range(n):
            ch.send(_frame(i))
        ch.send_bytes(b"sent")
        ready()
        kill_self()


def test_frames_committed_before_the_sender_died_all_arrive_then_peer_died() -> None:
    url = "shm://slots-" + struct.pack("<Q", id(object())).hex()
    with ipckit.listen(url) as lst, spawn_peer(_stream_frames_then_die, url, 3, method="spawn") as peer:
        ch = lst.accept(timeout=30)
        try:
            peer.wait_ready()
            assert peer.wait_exit() == -9
            for i in range(3):
                got = ch.recv(timeout=10)
                assert zlib.crc32(got) == zlib.crc32(_frame(i))
            assert ch.recv_bytes(timeout=10) == b"sent"
            with pytest.raises(PeerDied):
                ch.recv(timeout=10)
        finally:
            ch.close()


def _echo_frames(ch: Any, n: int) -> None:
    for _ in range(n):
        arr = ch.recv(timeout=20)
        ch.send(int(arr.sum(dtype=np.uint64)))
        del arr


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_frames_to_a_child_and_back(method: str) -> None:
    a, b = ipckit.pair("shm://")
    with spawn_peer(_echo_frames, b, 12, method=method) as peer:
        b.close()
        try:
            for i in range(12):
                frame = _frame(i)
                a.send(frame, timeout=20)
                assert a.recv(timeout=20) == int(frame.sum(dtype=np.uint64))
            peer.join()
            assert len(a._side_w._pool) <= 2  # the child handed its slots back as it went
        finally:
            a.close()


def test_ref_kind_is_unknown_to_the_c_fast_path() -> None:
    # The C cursor declines every record but MSG; REF must stay out of the layout it checks.
    assert "REF" not in protocol.LAYOUT
    assert protocol.REF not in (protocol.MSG, protocol.CONT, protocol.PAD, protocol.ABORT)


def test_a_sender_ahead_of_the_receiver_waits_for_a_slot() -> None:
    # The receiver starts only once the sender has every pooled slot on its way: the next frame
    # waits for a slot to come back (the receiver's return wakes it) rather than taking new
    # memory or going through the ring; the offsets taken stay at the pool's size.
    a, b = ipckit.pair("shm://")
    try:
        n = side.POOL_SLOTS + 4
        sender = ResultThread(lambda: [a.send(_frame(i), timeout=20) for i in range(n)])
        sender.start()
        deadline = time.monotonic() + 20
        # Until the sender sleeps (its flag in the ring it writes): every slot on its way, the next
        # frame waiting.
        while len(a._side_w._pool) < side.POOL_SLOTS or not a._w._ctl[protocol.W_WSLEEP]:
            assert time.monotonic() < deadline, "the sender did not fill its pool and wait"
            time.sleep(0.001)  # (polling the sender's state, not a synchronisation by time)
        for i in range(n):
            got = b.recv(timeout=20)
            assert got[0, 0, 0] == i % 251 and got[-1, -1, -1] == i % 251
            del got
        sender.outcome()
        assert len(a._side_w._pool) == side.POOL_SLOTS
        assert a._hdr[side_next(a)] == sum(s.cap for s in a._side_w._pool)  # never a slot beyond the pool
        assert a._w._wp == n * 64  # and nothing through the ring but the 64-byte slot records
    finally:
        a.close()
        b.close()
