#!/usr/bin/env python3
"""An asyncio echo server over ipckit: one event loop serves many client processes, no threads.

The server listens with ``ipckit.aio.listen`` and serves every accepted client in a task of its
own (``async for message in channel: await channel.send(message)``).  The clients are separate
processes using the plain sync API.  On shm:// -- shared memory, which has no file descriptor
of its own -- the loop still sleeps in the kernel: each channel has a doorbell the clients ring
only while the server sleeps (docs/aio.md), so no thread polls anything.

The server also shows cancellation: a receive wrapped in ``asyncio.wait_for`` that times out is
cancelled, and the message that arrives later is not lost.

Examples::

    python examples/async_echo.py                       # shm://, 4 clients x 200 messages
    python examples/async_echo.py --backend unix --clients 8
    python examples/async_echo.py --uvloop              # the same on uvloop, if installed
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time

import ipckit
import ipckit.aio
import ipckit.registry

#: Schemes whose address is a path (made in a private temporary directory); the others take a name.
PATH_SCHEMES = {"unix", "fifo", "zmq+ipc"}


def make_url(scheme: str, directory: str) -> str:
    if scheme in PATH_SCHEMES:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return f"{scheme}://{directory}/echo"
    return f"{scheme}://echo-{secrets.token_hex(4)}"


def client(url: str, index: int, count: int) -> None:
    """A client process: send *count* messages, check every echo, close."""
    with ipckit.connect(url, timeout=30.0) as ch:
        for i in range(count):
            msg = {"client": index, "seq": i, "pad": "x" * (i % 100)}
            ch.send(msg, timeout=30.0)
            if ch.recv(timeout=30.0) != msg:
                sys.exit(f"client {index}: echo {i} differs")


async def serve_one(ch: ipckit.aio.AsyncChannel) -> int:
    """Echo every message until the client closes; return how many."""
    count = 0
    async with ch:
        async for message in ch:
            await ch.send(message, timeout=30.0)
            count += 1
    return count


async def cancellation_demo(scheme: str) -> None:
    """A receive cancelled by a timeout loses nothing: the late message is the next one received."""
    caps = ipckit.registry.get_backend(scheme).capabilities
    a, b = ipckit.aio.pair(f"{scheme}://" if caps.anonymous_pair else "pipe://")
    async with a, b:
        try:
            await asyncio.wait_for(b.recv(), timeout=0.01)  # nothing sent yet: cancelled
        except asyncio.TimeoutError:
            pass
        await a.send("late")
        got = await b.recv(timeout=5.0)
        assert got == "late", got
    print(f"cancellation: a timed-out (cancelled) recv lost nothing; the late message arrived ({got!r})")


async def main(scheme: str, clients: int, count: int) -> None:
    tmpdir = tempfile.mkdtemp(prefix="ipckit-async-echo-")
    procs: list[multiprocessing.Process] = []
    listeners: list[ipckit.aio.AsyncListener] = []
    try:
        # A multi-client scheme (unix://) has one listener for everyone; a one-peer scheme
        # (shm://, mq://: one segment or queue pair per channel) gets one listener per client.
        multi = ipckit.registry.get_backend(scheme).capabilities.multi_client
        listeners = [ipckit.aio.listen(make_url(scheme, os.path.join(tmpdir, str(i)) if not multi else tmpdir))
                     for i in range(1 if multi else clients)]
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=client, args=(listeners[0 if multi else i].url, i, count))
                 for i in range(clients)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        channels = [await listeners[0 if multi else i].accept(timeout=60.0) for i in range(clients)]
        served = await asyncio.gather(*(serve_one(ch) for ch in channels))
        elapsed = time.perf_counter() - start
        loop = asyncio.get_running_loop()
        print(f"{type(loop).__module__}.{type(loop).__name__} on {scheme}://: served {clients} client processes x "
              f"{count} messages ({sum(served)} echoes) in {elapsed:.2f} s with {threading.active_count()} "
              f"thread(s) in this process")
        await cancellation_demo(scheme)
    finally:
        for lst in listeners:
            await lst.close()
        for p in procs:
            p.join(30.0)
            if p.exitcode is None:
                p.kill()
                p.join()
        shutil.rmtree(tmpdir, ignore_errors=True)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        sys.exit(f"{len(bad)} client(s) failed: exit codes {bad}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--backend", default="shm", help="a named scheme: shm, unix, sysv+shm, mq, ... (default shm)")
    ap.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--messages", type=int, default=200, help="messages per client (default 200)")
    ap.add_argument("--uvloop", action="store_true", help="run the server on uvloop")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if not ipckit.available_backends().get(args.backend, False):
        sys.exit(f"{args.backend}:// is not available here")
    coro = main(args.backend, args.clients, args.messages)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            sys.exit("uvloop is not installed (pip install uvloop)")
        uvloop.run(coro)
    else:
        asyncio.run(coro)
