#!/usr/bin/env python3
"""A request/reply server over ``unix://`` serving several client processes at once.

The server listens on a socket in a private temporary directory and multiplexes the listener
and every client channel with ``selectors`` (``fileno()`` works on both), so it needs no
threads.  Each client process sends requests (``{"op": "add", "args": [...]}``) and checks the
replies.  One extra client starts a request far larger than the socket buffer, gives up on it at
once (``timeout=0``, so only part of it left) and is then killed with SIGKILL: the server sees
``PeerDied`` on that channel only, drops it, and keeps serving everybody else.  A large request
arrives in pieces; the server goes on with the other clients in between.

Every client says it is ready with its first request (no sleeps).  At the end the server checks
each well-behaved client finished all its requests, closes everything, removes the socket
directory and exits 0.

    python examples/client_server.py                 # 4 clients x 200 requests
    python examples/client_server.py --clients 8 -n 1000 --authkey secret
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import selectors
import shutil
import signal
import sys
import tempfile
from typing import Any

import ipckit


def client(url: str, ident: int, requests: int, options: dict[str, Any]) -> None:
    """A well-behaved client: *requests* additions, each reply checked, then a clean close."""
    with ipckit.connect(url, timeout=10.0, **options) as ch:
        for i in range(requests):
            ch.send({"op": "add", "args": [ident, i]}, timeout=10.0)
            reply = ch.recv(timeout=10.0)
            if reply != {"ok": ident + i}:
                raise SystemExit(f"client {ident}: wrong reply {reply!r} to request {i}")
        ch.send({"op": "bye", "count": requests}, timeout=10.0)
        if ch.recv(timeout=10.0) != {"ok": "bye"}:
            raise SystemExit(f"client {ident}: no goodbye")


#: Far more than a Unix socket buffers (a few hundred KiB), so a send with ``timeout=0`` cannot
#: finish: it writes what fits and gives up, leaving the server part of a request.
CRASH_REQUEST_BYTES = 16 * 1024 * 1024


def crasher(url: str, options: dict[str, Any]) -> None:
    """Sends one good request, then starts a huge one, gives up on it at once, and dies by SIGKILL."""
    ch = ipckit.connect(url, timeout=10.0, **options)
    ch.send({"op": "add", "args": [1, 2]}, timeout=10.0)
    ch.recv(timeout=10.0)
    try:
        ch.send({"op": "upload", "data": bytes(CRASH_REQUEST_BYTES)}, timeout=0)
    except ipckit.SendTimeout:
        pass  # part of the request is on its way; this end's stream is broken now (P3, docs/contract.md)
    # Whether the request was cut off (almost always) or, rarely, got out whole, the server
    # sees the same thing next: the connection ends without a goodbye, which is PeerDied.
    os.kill(os.getpid(), signal.SIGKILL)


def answer(req: Any, stats: dict[str, int]) -> dict[str, Any]:
    """The reply to one request."""
    op = req.get("op") if isinstance(req, dict) else None
    if op == "add":
        return {"ok": sum(req["args"])}
    if op == "bye":
        stats["finished"] += 1
        return {"ok": "bye"}
    return {"error": f"unknown op {op!r}"}


def serve(lst: ipckit.Listener, expected_clients: int) -> dict[str, int]:
    """Serve until *expected_clients* clients have gone (closed or died); return counters."""
    stats = {"requests": 0, "finished": 0, "died": 0, "closed": 0}
    sel = selectors.DefaultSelector()
    sel.register(lst, selectors.EVENT_READ, data=None)
    channels: list[ipckit.Channel] = []
    try:
        while stats["closed"] + stats["died"] < expected_clients:
            events = sel.select(timeout=30.0)
            if not events:
                raise SystemExit("server: no activity for 30 s")
            for key, _ in events:
                if key.data is None:
                    try:
                        ch = lst.accept(timeout=0)
                    except ipckit.ChannelTimeout:
                        continue  # an authentication handshake progressed but is not complete yet
                    except ipckit.PeerRejected as exc:
                        print(f"server: refused a client: {exc}", file=sys.stderr)
                        continue
                    channels.append(ch)
                    sel.register(ch, selectors.EVENT_READ, data=ch)
                    continue
                ch = key.data
                while ch.poll(0):  # drain what this client sent (read-ahead may hold several)
                    try:
                        req = ch.recv(timeout=0)
                        stats["requests"] += 1
                        ch.send(answer(req, stats), timeout=10.0)
                    except ipckit.RecvTimeout:
                        break  # a large request is still arriving; what came so far is kept
                    except ipckit.PeerDied:
                        stats["died"] += 1  # a crashed client: drop it, nobody else notices
                        sel.unregister(ch)
                        ch.close()
                        break
                    except ipckit.EndOfChannel:
                        stats["closed"] += 1
                        sel.unregister(ch)
                        ch.close()
                        break
    finally:
        sel.close()
        for ch in channels:
            ch.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("-n", "--requests", type=int, default=200)
    parser.add_argument("--authkey", default=None, help="require mutual HMAC authentication with this key")
    parser.add_argument("--type", default="stream", choices=["stream", "seqpacket"])
    args = parser.parse_args(argv)

    options: dict[str, Any] = {"type": args.type}
    if args.authkey:
        options["authkey"] = args.authkey
    ctx = multiprocessing.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="ipckit-example-")
    procs: list[Any] = []
    try:
        with ipckit.listen(f"unix://{workdir}/server.sock", **options) as lst:
            print(f"server listening on {lst.url}")
            bad = ctx.Process(target=crasher, args=(lst.url, options)) if args.type == "stream" else None
            if bad is not None:
                procs.append(bad)
                bad.start()
            for i in range(args.clients):
                p = ctx.Process(target=client, args=(lst.url, i, args.requests, options))
                procs.append(p)
                p.start()
            stats = serve(lst, len(procs))
        for p in procs:
            p.join(30.0)
        failed = [p for p in procs if p is not bad and p.exitcode != 0]
        print(f"served {stats['requests']} requests from {args.clients} clients; "
              f"{stats['died']} client(s) died mid-request, {stats['closed']} closed cleanly")
        if failed or stats["finished"] != args.clients:
            print(f"{len(failed)} client(s) failed; {stats['finished']} of {args.clients} said bye", file=sys.stderr)
            return 1
        if bad is not None and bad.exitcode != -signal.SIGKILL:
            print("the crashing client did not crash", file=sys.stderr)
            return 1
        return 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5.0)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
