"""Pub/sub fan-out throughput: ``python -m ipckit.bench fanout`` (or ``python -m ipckit.bench.fanout``).

One publisher in this process publishes *size*-byte messages as fast as it can for *duration*
seconds, then closes; 1, 2 and 4 subscriber processes receive until the end.  Each cell
reports the publisher's rate (messages published per second, from the first send to the last
subscriber's end), what each subscriber received, and what it dropped, for
``ipckit.publish``/``subscribe`` under both policies and for raw pyzmq PUB/SUB on the same
transport in the same run.

Raw PUB/SUB gets the same fairness: its subscribers are waited for (the publisher sends probes
until each saw one, the slow-joiner workaround every PUB/SUB user writes), its messages carry an
8-byte sequence number so drops are counted from gaps as ipckit counts them, and since PUB drops
silently (an end marker can be dropped too) its subscribers stop after 0.5 s without a message.

The subscriber processes are forked and not pinned: on a 2-core machine four subscribers and the
publisher share the cores, which is part of what a fan-out costs.  Keep runs short and quote
ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import sys
import time
from typing import Any

__all__ = ["main", "run_cell"]

_SEQ = struct.Struct("<Q")
_IDLE_END = 0.5  # raw SUB: seconds without a message that end a subscriber (PUB never says it is done)


# --------------------------------------------------------------------------- subscriber processes
def _ipckit_subscriber(url: str, window: int, conn: Any) -> None:
    import ipckit

    sub = ipckit.subscribe(url, timeout=10.0, window=window)
    conn.send("ready")
    first = last = 0.0
    try:
        while True:
            sub.recv_bytes(timeout=30.0)
            last = time.monotonic()
            if not first:
                first = last
    except ipckit.EndOfChannel:
        pass
    end = time.monotonic()
    st = sub.stats()
    sub.close()
    conn.send({"sent": st.sent, "delivered": st.delivered, "dropped": st.dropped, "first": first, "last": last,
               "end": end})


def _raw_subscriber(endpoint: str, conn: Any) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    conn.send("ready")
    while not sock.poll(10_000):
        pass
    if sock.recv() == b"probe":  # the publisher probes until every subscriber saw one
        conn.send("joined")
    delivered = 0
    expected = 0
    dropped = 0
    first = last = 0.0
    while sock.poll(int(_IDLE_END * 1000)):
        msg = sock.recv()
        if msg == b"probe":
            continue
        seq = _SEQ.unpack_from(msg)[0]
        dropped += seq - expected
        expected = seq + 1
        delivered += 1
        last = time.monotonic()
        if not first:
            first = last
    sock.close(linger=0)
    ctx.term()
    conn.send({"sent": expected, "delivered": delivered, "dropped": dropped, "first": first, "last": last,
               "end": last})


# --------------------------------------------------------------------------- one cell
def _start(target: Any, args: tuple[Any, ...], n: int) -> tuple[list[Any], list[Any]]:
    ctx = multiprocessing.get_context("fork")
    procs, conns = [], []
    for _ in range(n):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=target, args=(*args, theirs), daemon=True)
        p.start()
        theirs.close()
        procs.append(p)
        conns.append(mine)
    for c in conns:
        if not c.poll(20.0) or c.recv() != "ready":
            raise RuntimeError("a subscriber did not start")
    return procs, conns


def _finish(procs: list[Any], conns: list[Any]) -> list[dict[str, Any]]:
    results = []
    for p, c in zip(procs, conns, strict=True):
        if not c.poll(60.0):
            p.kill()
            raise RuntimeError("a subscriber did not report")
        results.append(c.recv())
        c.close()
        p.join(10.0)
    return results


def run_cell(kind: str, transport: str, subscribers: int, size: int, duration: float,
             window: int = 1000) -> dict[str, Any]:
    """One measurement: *kind* is ``drop-new``, ``block`` or ``raw``."""
    payload = os.urandom(max(size, _SEQ.size))
    if kind == "raw":
        return _raw_cell(transport, subscribers, payload, duration)
    import ipckit

    url = "zmq+tcp://127.0.0.1:0" if transport == "tcp" else "zmq+ipc://"
    with ipckit.publish(url, policy=kind) as pub:
        procs, conns = _start(_ipckit_subscriber, (pub.url, window), subscribers)
        send = pub.send_bytes
        start = time.monotonic()
        stop = start + duration
        n = 0
        while True:
            for _ in range(100):
                send(payload, timeout=30.0)
            n += 100
            if time.monotonic() >= stop:
                break
        published = pub.published
    results = _finish(procs, conns)
    end = max(r["end"] for r in results)
    for r in results:
        assert r["sent"] == published == n and r["sent"] == r["delivered"] + r["dropped"], (r, published)
    return _row(kind, transport, subscribers, size, n, start, end, results)


def _raw_cell(transport: str, subscribers: int, payload: bytes, duration: float) -> dict[str, Any]:
    import tempfile

    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    tmp = None
    if transport == "tcp":
        pub.bind("tcp://127.0.0.1:*")
    else:
        tmp = tempfile.mkdtemp(prefix="ipckit-bench-fanout-")
        pub.bind(f"ipc://{tmp}/pub.ipc")
    last_ep = pub.getsockopt(zmq.LAST_ENDPOINT)
    endpoint = last_ep.decode() if isinstance(last_ep, bytes) else str(last_ep)
    try:
        procs, conns = _start(_raw_subscriber, (endpoint,), subscribers)
        joined = 0
        while joined < subscribers:  # the slow joiner: probe until each subscriber saw a probe
            pub.send(b"probe")
            for c in conns:
                if c.poll(0.01) and c.recv() == "joined":
                    joined += 1
        body = bytearray(payload)
        send = pub.send
        start = time.monotonic()
        stop = start + duration
        n = 0
        while True:
            for _ in range(100):
                _SEQ.pack_into(body, 0, n)
                send(body)
                n += 1
            if time.monotonic() >= stop:
                break
        results = _finish(procs, conns)
    finally:
        pub.close(linger=0)
        ctx.term()
        if tmp is not None:
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            os.rmdir(tmp)
    for r in results:  # what PUB dropped after a subscriber's last message is no gap: count it here
        r["dropped"] += n - r["sent"]
        r["sent"] = n
    end = max([r["end"] for r in results] + [start])
    return _row("raw", transport, subscribers, len(payload), n, start, end, results)


def _row(kind: str, transport: str, subscribers: int, size: int, n: int, start: float, end: float,
         results: list[dict[str, Any]]) -> dict[str, Any]:
    elapsed = max(end - start, 1e-9)
    return {"kind": kind, "transport": transport, "subscribers": subscribers, "size": size, "published": n,
            "seconds": elapsed, "published_per_s": n / elapsed,
            "delivered": [r["delivered"] for r in results], "dropped": [r["dropped"] for r in results],
            "delivered_per_s": sum(r["delivered"] for r in results) / elapsed}


# --------------------------------------------------------------------------- the command
def _table(rows: list[dict[str, Any]]) -> str:
    out = ["| transport | subs | kind | published msg/s | delivered msg/s (all subs) | delivered / dropped per sub "
           "| vs raw (delivered) |",
           "|---|---|---|---|---|---|---|"]
    raw = {(r["transport"], r["subscribers"]): r for r in rows if r["kind"] == "raw"}
    for r in rows:
        base = raw.get((r["transport"], r["subscribers"]))
        ratio = f"{r['delivered_per_s'] / base['delivered_per_s']:.2f}x" if base and base["delivered_per_s"] else "-"
        per = ", ".join(f"{d}/{x}" for d, x in zip(r["delivered"], r["dropped"], strict=True))
        out.append(f"| {r['transport']} | {r['subscribers']} | {r['kind']} | {r['published_per_s']:,.0f} | "
                   f"{r['delivered_per_s']:,.0f} | {per} | {ratio} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ipckit.bench fanout", description=__doc__.split("\n\n")[0])
    p.add_argument("--transports", default="ipc,tcp")
    p.add_argument("--subscribers", default="1,2,4")
    p.add_argument("--kinds", default="drop-new,block,raw", help="drop-new, block (ipckit policies), raw (pyzmq)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", type=float, default=0.5, help="seconds of publishing per cell")
    p.add_argument("--window", type=int, default=1000, help="each ipckit subscriber's window")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for transport in args.transports.split(","):
        for n in (int(x) for x in args.subscribers.split(",")):
            for kind in args.kinds.split(","):
                rows.append(run_cell(kind, transport, n, args.size, args.duration, args.window))
                print(f"{transport} {n} {kind}: {rows[-1]['published_per_s']:,.0f} published/s, "
                      f"{rows[-1]['delivered_per_s']:,.0f} delivered/s, dropped {rows[-1]['dropped']}",
                      file=sys.stderr, flush=True)
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
