#!/usr/bin/env python3
"""Large numpy arrays between two processes over shm://, without copies on the receiving side.

The parent streams 1080p RGB frames (1080 x 1920 x 3 uint8, 6.2 MB: larger than the default 4 MiB
ring) to a spawned child, two ways, and compares each with a copy of the same frame inside one
process (``numpy.copyto``), measured in the same run:

* ``send(frame)`` / ``recv()``: pickle protocol 5; the child gets a numpy array whose memory is the
  shared slot the frame was written into (no copy on its side);
* ``send_bytes(frame)`` / ``recv_view()``: a read-only view of the same slot.

The child also counts what a receive allocates (``tracemalloc``): a copy-free receive allocates
almost nothing, a copying one a whole frame.  See docs/shm.md for when each call copies.

    python examples/numpy_zero_copy.py                 # 200 frames each way
    python examples/numpy_zero_copy.py --frames 1000 --url 'shm://?capacity=64KiB'
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

import ipckit

SHAPE = (1080, 1920, 3)


def child(ch: Any) -> None:
    """Receive frames until None; answer each batch with (frames, checksum, bytes allocated by one receive)."""
    with ch:
        while (mode := ch.recv(timeout=60)) is not None:
            n = 0
            check = 0
            tracemalloc.start()
            first_alloc = -1
            while True:
                if mode == "recv":
                    before = tracemalloc.get_traced_memory()[0]
                    frame = ch.recv(timeout=60)
                    if frame is None:
                        break
                    alloc = tracemalloc.get_traced_memory()[0] - before
                    check += int(frame[540, 960, 0]) + int(frame[-1, -1, -1])
                    del frame
                else:
                    before = tracemalloc.get_traced_memory()[0]
                    view = ch.recv_view(timeout=60)
                    if len(view) == 0:
                        break
                    alloc = tracemalloc.get_traced_memory()[0] - before
                    check += view[540 * 1920 * 3 + 960 * 3] + view[-1]
                    del view
                if first_alloc < 0:
                    first_alloc = alloc
                n += 1
            tracemalloc.stop()
            ch.send((n, check, first_alloc), timeout=60)


def stream(ch: Any, mode: str, frames: list[Any]) -> tuple[float, int, int]:
    """Send every frame the *mode* way; (seconds, checksum the child computed, bytes one receive allocated)."""
    ch.send(mode, timeout=60)
    start = time.perf_counter()
    for f in frames:
        if mode == "recv":
            ch.send(f, timeout=60)
        else:
            ch.send_bytes(f, timeout=60)
    if mode == "recv":
        ch.send(None, timeout=60)
    else:
        ch.send_bytes(b"", timeout=60)
    n, check, alloc = ch.recv(timeout=60)
    elapsed = time.perf_counter() - start
    if n != len(frames):
        raise SystemExit(f"the child received {n} of {len(frames)} frames")
    expected = sum(int(f[540, 960, 0]) + int(f[-1, -1, -1]) for f in frames)
    if check != expected:
        raise SystemExit("the child's checksum does not match what was sent")
    return elapsed, check, alloc


def copy_rate(frames: list[Any], seconds: float = 0.5) -> float:
    """Frames per second of numpy.copyto of one frame into another, in this process."""
    dst = np.empty_like(frames[0])
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.copyto(dst, frames[n % len(frames)])
        n += 1
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200, help="frames per way (default 200)")
    ap.add_argument("--url", default="shm://", help="an anonymous pair URL (default shm://)")
    args = ap.parse_args(argv)
    # A few distinct frames, so a stale slot could not pass the checksum.
    frames = [np.full(SHAPE, i * 37 % 251, dtype=np.uint8) for i in range(4)]
    frames = [frames[i % 4] for i in range(args.frames)]
    a, b = ipckit.pair(args.url)
    p = multiprocessing.get_context("spawn").Process(target=child, args=(b,))
    p.start()
    try:
        b.close()
        nbytes = frames[0].nbytes
        ref = copy_rate(frames)
        print(f"{args.frames} frames of {nbytes:,} bytes ({SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} uint8) over {args.url}")
        print(f"  one-process copy (numpy.copyto): {ref:8.0f} frames/s  {ref * nbytes / 1e9:5.1f} GB/s")
        for mode, label in (("recv", "send / recv (pickle 5)"), ("view", "send_bytes / recv_view")):
            stream(a, mode, frames[:5])  # warm-up: slots mapped on both sides
            elapsed, _check, alloc = stream(a, mode, frames)
            rate = args.frames / elapsed
            print(f"  {label:30s}: {rate:8.0f} frames/s  {rate * nbytes / 1e9:5.1f} GB/s  "
                  f"{rate / ref:4.2f}x the copy; one receive allocated {alloc:,} bytes")
        a.send(None, timeout=60)
    finally:
        a.close()
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join()
    return 0 if p.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
