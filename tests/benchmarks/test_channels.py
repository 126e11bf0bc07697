"""Round trip and one-way streaming of every channel and baseline (pytest-benchmark).

Groups: ``rtt <size>``, ``stream <size>`` and ``obj-rtt <size>`` (objects through send/recv) —
compare rows within a group.  The last reply of
every round trip run and the count/CRC of every streamed batch are checked, so a broken channel
fails instead of looking fast.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

import numpy as np
import pytest

from ipckit.bench.model import FRAME_1080P, fmt_size
from ipckit.bench.peer import ACK
from ipckit.bench.runner import sample_object

from .conftest import PLACEMENT, SIZES, SUBJECTS, Peers

IDS = [s.name for s in SUBJECTS]

# The peers are shared by the whole session on purpose (spawning one per test would dominate);
# the per-test leak guard would count them, the session-end sweep still checks that all is gone.
pytestmark = [
    pytest.mark.leaks_ok,
    # a subject that skips (in-process only) never uses the fixture; that is not an error
    pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning"),
]


def _size_id(size: int) -> str:
    return fmt_size(size).replace(" ", "")


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("subject", SUBJECTS, ids=IDS)
def test_rtt(benchmark: Any, peers: Peers, subject: Any, size: int) -> None:
    peer = peers.get(subject)
    benchmark.group = f"rtt {fmt_size(size)} ({PLACEMENT})"
    benchmark.extra_info.update(kind=subject.kind, placement=PLACEMENT, size=size)
    payload = random.Random(size).randbytes(size)
    assert peer.link is not None
    send, recv = peer.link.send, peer.link.recv
    peer.command("echo")
    last: list[Any] = [b""]

    def roundtrip() -> None:
        send(payload)
        last[0] = recv()

    try:
        benchmark.pedantic(roundtrip, rounds=_rounds(size), iterations=1, warmup_rounds=20)
    finally:
        send(b"")
        peer.control(peers.cfg.cell_timeout)
    assert bytes(last[0]) == payload


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("subject", SUBJECTS, ids=IDS)
def test_stream(benchmark: Any, peers: Peers, subject: Any, size: int) -> None:
    peer = peers.get(subject)
    batch = max(4, min(1000, (4 << 20) // size))
    benchmark.group = f"stream {fmt_size(size)} x{batch} ({PLACEMENT})"
    benchmark.extra_info.update(kind=subject.kind, placement=PLACEMENT, size=size, batch=batch)
    rng = random.Random(size)
    payload = rng.randbytes(size)
    final = rng.randbytes(size)
    assert peer.link is not None
    send, recv = peer.link.send, peer.link.recv
    acks: list[bytes] = []

    def setup() -> None:
        peer.command("sink")  # not timed

    def one_batch() -> None:
        for _ in range(batch - 1):
            send(payload)
        send(final)
        send(b"")
        acks.append(bytes(recv()))
        peer.control(peers.cfg.cell_timeout)

    benchmark.pedantic(one_batch, setup=setup, rounds=max(3, _rounds(size) // 20), iterations=1)
    assert all(ACK.unpack(a) == (batch, zlib.crc32(final)) for a in acks)


def _rounds(size: int) -> int:
    return 2000 if size <= 4096 else 500 if size <= 65536 else 100


OBJ_SIZES = [64, 1 << 20, FRAME_1080P]


def _object_path(peer: Any) -> tuple[Any, Any]:
    send = getattr(peer.link, "send_obj", None)
    recv = getattr(peer.link, "recv_obj", None)
    if send is None or recv is None:
        pytest.skip(f"{peer.subject.name} carries bytes only")
    return send, recv


@pytest.mark.parametrize("size", OBJ_SIZES, ids=_size_id)
@pytest.mark.parametrize("subject", SUBJECTS, ids=IDS)
def test_obj_rtt(benchmark: Any, peers: Peers, subject: Any, size: int) -> None:
    """What users do: send()/recv() of a small dict (64 B blob) or a numpy array (1 MiB, a 1080p
    frame), default serializer; grouped ``obj-rtt <size>``."""
    peer = peers.get(subject)
    send, recv = _object_path(peer)
    benchmark.group = f"obj-rtt {fmt_size(size)} ({PLACEMENT})"
    benchmark.extra_info.update(kind=subject.kind, placement=PLACEMENT, size=size)
    obj = sample_object(size)
    peer.command("echo-obj")
    last: list[Any] = [None]

    def roundtrip() -> None:
        send(obj)
        last[0] = recv()

    try:
        benchmark.pedantic(roundtrip, rounds=_rounds(size), iterations=1, warmup_rounds=5)
    finally:
        send(None)
        peer.control(peers.cfg.cell_timeout)
    if isinstance(obj, np.ndarray):
        assert np.array_equal(last[0], obj)
    else:
        assert last[0] == obj
