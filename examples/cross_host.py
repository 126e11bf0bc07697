#!/usr/bin/env python3
"""A worker on "another machine": ZeroMQ over tcp, encrypted and authenticated with CURVE.

The worker squares numbers for its clients.  It binds a non-loopback address, which ipckit only
allows with CURVE: the worker has a key pair and an allow-list of client public keys; a client
needs its own key pair (on the list) and the worker's public key.  Anyone else — no keys, other
keys, a NULL or PLAIN ZeroMQ client — is refused during the handshake and can neither send nor
receive a message.

Three ways to run it:

    # one machine, as root: the worker runs in a network namespace of its own ("the other
    # machine"), the client in a second one, joined by a veth pair; keys in a temporary
    # directory; namespaces, veth and keys are removed at the end
    sudo python examples/cross_host.py --netns

    # two machines: make the keys once, copy each *public* file (.key) to the other side
    ipckit keygen worker            # on the worker: worker.key_secret (stays), worker.key (copy)
    ipckit keygen client            # on the client: client.key_secret (stays), client.key (copy)
    python examples/cross_host.py --serve tcp://0.0.0.0:5555 --key worker.key_secret --allow client.key
    python examples/cross_host.py --connect tcp://WORKER-HOST:5555 --key client.key_secret \\
        --server-key worker.key -n 10

The worker runs until Ctrl-C (or SIGTERM) and then prints what it served.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import zmq

from ipckit.backends.common.zmq_security import (
    CurveServer,
    apply_curve_client,
    check_bind_address,
    generate_keypair,
    load_keypair,
    load_public_keys,
    save_keypair,
)
from ipckit.errors import IPCError

TIMEOUT = 30.0  # seconds: how long a client waits for a reply, and --netns for each step


def _host_of(endpoint: str) -> str:
    if not endpoint.startswith("tcp://") or ":" not in endpoint[6:]:
        raise SystemExit(f"expected tcp://HOST:PORT, got {endpoint!r}")
    return endpoint[6:].rsplit(":", 1)[0]


def serve(endpoint: str, key: str, allow: str) -> int:
    """Square the numbers clients send until Ctrl-C / SIGTERM; print a line per client and a summary."""
    host = _host_of(endpoint)
    check_bind_address(host, curve=True, insecure=False)
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    keypair, allowed = load_keypair(key), load_public_keys(allow)  # bad key files fail before any socket
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        curve = CurveServer(ctx, keypair, allowed)
    except BaseException:
        ctx.destroy(linger=0)
        raise
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    served: dict[str, int] = {}
    try:
        curve.apply(sock)
        if endpoint.endswith(":0"):
            port = sock.bind_to_random_port(f"tcp://{host}")
        else:
            sock.bind(endpoint)
            port = int(endpoint.rsplit(":", 1)[1])
        print(f"worker: listening on tcp://{host}:{port} with CURVE, {len(curve.allowed)} client key(s) allowed",
              flush=True)
        while not stop:
            if not sock.poll(200):
                continue
            ident, frame = sock.recv_multipart(copy=False)
            client = str(frame.get("User-Id"))  # the client's public key, proven by the handshake
            n = json.loads(frame.bytes)
            sock.send_multipart([ident.bytes, json.dumps({"n": n, "square": n * n}).encode()])
            if client not in served:
                print(f"worker: serving client {client}", flush=True)
            served[client] = served.get(client, 0) + 1
        print(f"worker: served {sum(served.values())} request(s) from {len(served)} client(s); "
              f"refused {curve.rejected} handshake(s) of keys not on the list", flush=True)
        return 0
    finally:
        sock.close(linger=0)
        curve.close()
        ctx.destroy(linger=0)


def connect(endpoint: str, key: str, server_key: str, count: int) -> int:
    """Send 0..count-1 to the worker and check the squares."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        kp = load_keypair(key)
        apply_curve_client(sock, kp, next(iter(load_public_keys(server_key))))
        sock.connect(endpoint)
        print(f"client: connecting to {endpoint} as {kp.public.decode()}", flush=True)
        start = time.monotonic()
        for n in range(count):
            sock.send(json.dumps(n).encode())
            if not sock.poll(int(TIMEOUT * 1000)):
                print(f"client: no reply within {TIMEOUT} s (is the worker running, and does it allow "
                      "this client's key?)", file=sys.stderr)
                return 1
            reply = json.loads(sock.recv())
            if reply != {"n": n, "square": n * n}:
                print(f"client: wrong reply {reply!r}", file=sys.stderr)
                return 1
        print(f"client: {count} squares from the worker in {time.monotonic() - start:.3f} s", flush=True)
        return 0
    finally:
        sock.close(linger=0)
        ctx.destroy(linger=0)


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], TIMEOUT)[0]:
        raise SystemExit(f"the worker said nothing within {TIMEOUT} s")
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"the worker ended early (exit status {proc.wait()})")
    return line.rstrip("\n")


def netns_demo(count: int) -> int:
    """The worker in one network namespace, the client in another, keys in a temporary directory."""
    try:
        from ipckit.testing.netns import netns_pair, unavailable  # needs the dev extra (pytest)
    except ImportError as exc:
        print(f"--netns needs ipckit's testing helpers: {exc} (pip install 'ipckit[dev]')", file=sys.stderr)
        return 2
    why = unavailable()
    if why:
        print(f"--netns: {why}; run the worker elsewhere with --serve and connect to it with --connect",
              file=sys.stderr)
        return 2
    keys = tempfile.mkdtemp(prefix="ipckit-cross-host-")
    try:
        for name in ("worker", "client"):
            save_keypair(generate_keypair(), os.path.join(keys, name))
        print(f"keys: worker and client key pairs in {keys}", flush=True)
        me = [sys.executable, os.path.abspath(__file__)]
        with netns_pair() as net:
            print(f"network: namespace {net.a.netns} ({net.a.address}) <-veth-> {net.b.netns} ({net.b.address})",
                  flush=True)
            worker = net.spawn(net.a, [*me, "--serve", f"tcp://{net.a.address}:0",
                                       "--key", os.path.join(keys, "worker.key_secret"),
                                       "--allow", os.path.join(keys, "client.key")],
                               stdout=subprocess.PIPE, text=True)
            listening = _read_line(worker)
            print(listening, flush=True)
            endpoint = listening.split(" on ", 1)[1].split()[0]
            client = net.run(net.b, [*me, "--connect", endpoint, "--key", os.path.join(keys, "client.key_secret"),
                                     "--server-key", os.path.join(keys, "worker.key"), "-n", str(count)],
                             timeout=TIMEOUT)
            sys.stdout.write(client.stdout)
            sys.stderr.write(client.stderr)
            worker.send_signal(signal.SIGTERM)
            while (line := _read_line(worker)) and not line.startswith("worker: served"):
                print(line, flush=True)
            print(line, flush=True)
            worker.wait(TIMEOUT)
            if client.returncode != 0 or worker.returncode != 0:
                return 1
        print("cleanup: namespaces, veth pair and keys removed", flush=True)
        return 0
    finally:
        shutil.rmtree(keys, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--netns", action="store_true", help="worker and client in two network namespaces (root)")
    mode.add_argument("--serve", metavar="tcp://HOST:PORT", help="run the worker bound to HOST:PORT (PORT 0: any)")
    mode.add_argument("--connect", metavar="tcp://HOST:PORT", help="run a client of the worker at HOST:PORT")
    parser.add_argument("--key", help="this side's secret key file (from `ipckit keygen NAME`: NAME.key_secret)")
    parser.add_argument("--allow", help="worker: the clients' public keys (a .key file, a directory of them)")
    parser.add_argument("--server-key", help="client: the worker's public key file (.key)")
    parser.add_argument("-n", "--count", type=int, default=10, help="client: how many numbers to send")
    args = parser.parse_args()
    try:
        if args.netns:
            return netns_demo(args.count)
        if args.serve:
            if not (args.key and args.allow):
                parser.error("--serve needs --key and --allow (make them with `ipckit keygen`)")
            return serve(args.serve, args.key, args.allow)
        if not (args.key and args.server_key):
            parser.error("--connect needs --key and --server-key (make them with `ipckit keygen`)")
        return connect(args.connect, args.key, args.server_key, args.count)
    except IPCError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
