#!/usr/bin/env python3
"""Ping-pong between two processes over any ipckit backend.

The parent sends N pings, the peer echoes each one back, the parent checks every pong and
prints the round-trip latency (p50/p99) and the message rate.  It works unchanged for every
backend, because it only reads the backend's capabilities:

* ``anonymous_pair`` + ``inheritable``  -> ``ipckit.pair(url)``; one end goes to the child process;
* ``named``                             -> ``ipckit.listen()`` on a generated address (in a private
                                           temporary directory where the scheme takes a path), the
                                           child process ``ipckit.connect()``s to ``listener.url``;
* in-process only (a pair that cannot be inherited, such as ``memory://``) -> the peer runs in a
  thread, and the output says so.

The peer signals readiness with a first message (no sleeps).  Everything is closed and the child
joined on exit, on errors and on Ctrl-C.

Examples::

    python examples/ping_pong.py                      # fastest backend available here
    python examples/ping_pong.py --backend pipe -n 100000
    python examples/ping_pong.py --url 'unix:///tmp/pp.sock' --size 4096 --serializer msgpack
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import ipckit
from ipckit.registry import get_backend
from ipckit.url import parse_url

#: Preferred order for the default backend: fastest local mechanism first.
PREFERRED = ("shm", "unix", "pipe")
READY = "READY"
CONNECT_TIMEOUT = 30.0  # seconds to start the peer (spawn imports a fresh interpreter)
REPLY_TIMEOUT = 30.0  # seconds for one pong; a dead or stuck peer fails the run instead of hanging it


# ----------------------------------------------------------------------------- messages
def make_ping(seq: int, size: int, serializer: str) -> Any:
    """One ping: bytes for ``raw``, ``[seq, text]`` for ``json``, else ``[seq, bytes]``."""
    if serializer == "raw":
        return seq.to_bytes(8, "little") + b"p" * max(size - 8, 0)
    if serializer == "json":
        return [seq, "p" * size]
    return [seq, b"p" * size]


def ready_message(serializer: str) -> Any:
    return READY.encode() if serializer == "raw" else READY


def stop_message(serializer: str) -> Any:
    # Pings are never empty (raw) and never None (others), so these cannot be confused with one.
    return b"" if serializer == "raw" else None


def is_stop(msg: Any) -> bool:
    return msg is None or msg == b""


# ----------------------------------------------------------------------------- the peer
def serve(ch: ipckit.Channel) -> None:
    """Echo every message until the stop message (or the parent closes the channel)."""
    with ch:
        ch.send(ready_message(ch.serializer.name))
        for msg in ch:
            if is_stop(msg):
                return
            ch.send(msg)


def child_with_channel(ch: ipckit.Channel) -> None:
    try:
        serve(ch)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        ch.close()
    except ipckit.IPCError as exc:
        ch.close()
        print(f"ping_pong peer: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def child_connect(url: str, options: dict[str, Any]) -> None:
    try:
        ch = ipckit.connect(url, timeout=CONNECT_TIMEOUT, **options)
    except KeyboardInterrupt:
        return
    except ipckit.IPCError as exc:
        print(f"ping_pong peer: cannot connect to {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    child_with_channel(ch)


# ----------------------------------------------------------------------------- choosing a backend
def default_scheme() -> str:
    works = ipckit.available_backends()
    for scheme in PREFERRED:
        if works.get(scheme):
            return scheme
    raise SystemExit("ping_pong: none of shm, unix, pipe works here (see `ipckit backends`)")


def in_process_only(caps: ipckit.Capabilities) -> bool:
    """True for backends whose channels cannot leave the process (such as memory://)."""
    explicit = getattr(caps, "cross_process", None)
    if explicit is not None:
        return not bool(explicit)
    # A pair that cannot be handed to a child only makes sense inside one process.
    return caps.anonymous_pair and not caps.inheritable


def candidate_addresses(scheme: str, private_dir: str) -> list[str]:
    """Addresses to try for ``listen``, in order: a path, a plain name, a loopback port."""
    token = secrets.token_hex(6)
    return [
        f"{scheme}://{os.path.join(private_dir, 'ping_pong')}",
        f"{scheme}://ipckit-pingpong-{token}",
        f"{scheme}://127.0.0.1:0",
    ]


# ----------------------------------------------------------------------------- the run
class Run:
    """Owns everything the run creates, so ``close()`` releases it on any exit path."""

    def __init__(self) -> None:
        self.channel: ipckit.Channel | None = None
        self.peer_end: ipckit.Channel | None = None
        self.listener: ipckit.Listener | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self.thread: threading.Thread | None = None
        self.private_dir: str | None = None
        self.peer_exitcode: int | None = None

    @staticmethod
    def _close(*objs: ipckit.Channel | ipckit.Listener | None) -> None:
        for obj in objs:
            if obj is not None:
                try:
                    obj.close()
                except ipckit.IPCError as exc:
                    print(f"ping_pong: closing {obj!r}: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._close(self.channel, self.listener)
        if self.process is not None:
            self.process.join(10.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.peer_exitcode = self.process.exitcode
            self.process.close()
        if self.thread is not None:
            self.thread.join(10.0)
        self._close(self.peer_end)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def start_peer(run: Run, scheme: str, address: str, options: dict[str, Any], mode: str) -> str:
    """Connect a peer and return a sentence describing how it runs."""
    caps = get_backend(scheme).capabilities
    url = f"{scheme}://{address}"
    if mode == "auto":
        # An address the user gave is one to listen on; otherwise a pair is the simplest.
        can_pair = caps.anonymous_pair and (caps.inheritable or in_process_only(caps))
        mode = "listen" if caps.named and (address or not can_pair) else "pair"
    if mode == "listen":
        if not caps.named:
            raise ipckit.UnsupportedOperation(f"{scheme}:// has no named endpoints (listen/connect); try --mode pair")
        listener = run.listener = listen_somewhere(run, scheme, address, options)
        target = listener.url
        if in_process_only(caps):
            run.thread = threading.Thread(target=thread_connect, args=(target, options), name="ping_pong-peer",
                                          daemon=True)
            run.thread.start()
            run.channel = listener.accept(timeout=CONNECT_TIMEOUT)
            return f"peer: a thread that connected to {target} ({scheme}:// channels cannot leave the process)"
        run.process = _spawn().Process(target=child_connect, args=(target, options), name="ping_pong-peer")
        run.process.start()
        run.channel = listener.accept(timeout=CONNECT_TIMEOUT)
        return f"peer: a spawned child process that connected to {target}"
    if not caps.anonymous_pair:
        raise ipckit.UnsupportedOperation(f"{scheme}:// has no anonymous pair(); try --mode listen")
    a, b = ipckit.pair(url, **options)
    run.channel, run.peer_end = a, b
    if in_process_only(caps):
        run.thread = threading.Thread(target=serve, args=(b,), name="ping_pong-peer", daemon=True)
        run.thread.start()
        run.peer_end = None  # the thread owns it now
        return f"peer: a thread ({scheme}:// channels cannot leave the process)"
    if not caps.inheritable:
        raise ipckit.UnsupportedOperation(f"{scheme}:// pair() ends cannot be handed to a child; try --mode listen")
    run.process = _spawn().Process(target=child_with_channel, args=(b,), name="ping_pong-peer")
    run.process.start()
    # The child has its own copy now.  Closing ours releases it without telling the peer
    # "closed", and lets a crash of the child surface here as PeerDied.
    b.close()
    run.peer_end = None
    return f"peer: a spawned child process, given one end of {scheme}:// pair()"


def _spawn() -> Any:
    return multiprocessing.get_context("spawn")


def listen_somewhere(run: Run, scheme: str, address: str, options: dict[str, Any]) -> ipckit.Listener:
    """Listen on *address*, or on the first generated address the scheme accepts."""
    if address:
        return ipckit.listen(f"{scheme}://{address}", **options)
    run.private_dir = tempfile.mkdtemp(prefix="ipckit-pingpong-")
    errors = []
    for candidate in candidate_addresses(scheme, run.private_dir):
        try:
            return ipckit.listen(candidate, **options)
        except ipckit.InvalidAddress as exc:
            errors.append(f"{candidate}: {exc}")
    raise ipckit.InvalidAddress(f"no generated address suits {scheme}://: " + "; ".join(errors))


def thread_connect(url: str, options: dict[str, Any]) -> None:
    try:
        serve(ipckit.connect(url, timeout=CONNECT_TIMEOUT, **options))
    except ipckit.IPCError as exc:
        print(f"ping_pong peer: {type(exc).__name__}: {exc}", file=sys.stderr)


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[index]


def ping_pong(ch: ipckit.Channel, count: int, size: int) -> list[int]:
    """Send *count* pings, check every pong, return the round-trip times in nanoseconds."""
    serializer = ch.serializer.name
    first = ch.recv(timeout=CONNECT_TIMEOUT)
    if first != ready_message(serializer):
        raise RuntimeError(f"expected the peer's READY, got {first!r}")
    rtts = []
    clock = time.perf_counter_ns
    for seq in range(count):
        ping = make_ping(seq, size, serializer)
        t0 = clock()
        ch.send(ping, timeout=REPLY_TIMEOUT)
        pong = ch.recv(timeout=REPLY_TIMEOUT)
        rtts.append(clock() - t0)
        if pong != ping:
            raise RuntimeError(f"pong {seq} differs from its ping: {pong!r:.80} != {ping!r:.80}")
    ch.send(stop_message(serializer), timeout=REPLY_TIMEOUT)
    return rtts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Two processes exchange N ping/pong messages over an ipckit backend; every pong is checked. "
            "Prints round-trip latency (p50/p99) and messages per second. "
            f"Default backend: the first of {', '.join(PREFERRED)} that works here (see `ipckit backends`)."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--backend", metavar="SCHEME", help="backend scheme, e.g. pipe, unix, shm, memory")
    where.add_argument("--url", help="full URL with options, e.g. 'shm://demo?capacity=8MiB' or 'unix:///tmp/a.sock'")
    parser.add_argument("-n", "--count", type=int, default=10000, help="round trips (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes per ping (default: %(default)s)")
    parser.add_argument("--serializer", help="pickle, msgpack, json or raw (default: the backend's default)")
    parser.add_argument("--mode", choices=["auto", "pair", "listen"], default="auto",
                        help="how the peer gets its end: 'pair' hands it one end of pair(), 'listen' makes it "
                             "connect() to a listener; 'auto' (default) listens when the URL names an address, "
                             "else uses pair() where the backend can hand an end to a child")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.size < 0:
        parser.error("--size must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        endpoint = parse_url(args.url or args.backend or default_scheme())
    except ipckit.IPCError as exc:
        print(f"ping_pong: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    scheme, address = endpoint.scheme, endpoint.address
    # Query options become keywords, so they also apply to generated addresses and to the peer.
    options: dict[str, Any] = dict(endpoint.options)
    if args.serializer:
        options["serializer"] = args.serializer
    if args.size > 16 * 1024 * 1024:
        options.setdefault("max_message_size", 2 * args.size + 65536)
    run = Run()
    try:
        how = start_peer(run, scheme, address, options, args.mode)
        assert run.channel is not None
        print(f"ping_pong over {scheme}:// ({run.channel.url}), serializer {run.channel.serializer.name}; {how}")
        start = time.perf_counter()
        rtts = ping_pong(run.channel, args.count, args.size)
        elapsed = time.perf_counter() - start
    except KeyboardInterrupt:
        print("\nping_pong: interrupted; cleaning up", file=sys.stderr)
        return 130
    except (ipckit.IPCError, RuntimeError) as exc:
        print(f"ping_pong: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        run.close()
    if run.peer_exitcode not in (0, None):
        print(f"ping_pong: the peer process exited with status {run.peer_exitcode}", file=sys.stderr)
        return 1
    rtts.sort()
    p50, p99 = percentile(rtts, 50), percentile(rtts, 99)
    print(f"{args.count} round trips of {args.size}-byte payloads in {elapsed:.3f} s")
    print(f"round trip: p50 {p50 / 1000:.1f} us, p99 {p99 / 1000:.1f} us")
    print(f"throughput: {args.count / elapsed:,.0f} round trips/s, {2 * args.count / elapsed:,.0f} messages/s")
    print(placement_note())
    return 0


def placement_note() -> str:
    """Where the two processes ran: this example never pins them, as users do not (the harness's
    ``none`` placement; ``ipckit bench`` also measures them pinned, and beside CPU hogs)."""
    cpus = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    return (f"placement: unpinned (both processes free to run on any of {cpus} CPUs; load average {load:.2f}); "
            "compare with `ipckit bench --placement none`")


if __name__ == "__main__":
    sys.exit(main())
