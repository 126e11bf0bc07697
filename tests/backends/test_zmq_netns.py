"""Two hosts on one machine (issue 13): zmq over tcp with CURVE between two network namespaces.

``ipckit.testing.netns`` makes two namespaces joined by a veth pair (10.213.X.Y/30, nothing else
routed); a worker runs in namespace ``a`` bound to its veth address (a non-loopback bind, so CURVE
is required), the clients run in namespace ``b``.  Both sides are processes started with
``ip netns exec``: this module is also their program (``python test_zmq_netns.py serve|client``).
Needs root and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

THIS = Path(__file__).resolve()
PEER_TIMEOUT = 30.0  # seconds any peer program may run
REJECT_WITHIN = 1.0


# --------------------------------------------------------------------------- the peer programs
def _serve(args: argparse.Namespace) -> int:
    """A CURVE ROUTER on --bind that echoes every message with its sender's key, until b"stop"."""
    import zmq

    from ipckit.backends.common import zmq_security as zs

    host = args.bind.split("://", 1)[1].rsplit(":", 1)[0]
    zs.check_bind_address(host, curve=True, insecure=False)
    ctx: zmq.Context[Any] = zmq.Context()
    curve = zs.CurveServer(ctx, zs.load_keypair(args.key), zs.load_public_keys(args.allow))
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    messages = 0
    try:
        curve.apply(sock)
        port = sock.bind_to_random_port(f"tcp://{host}")
        print(f"READY {port}", flush=True)
        deadline = time.monotonic() + PEER_TIMEOUT
        while time.monotonic() < deadline:
            if not sock.poll(100):
                continue
            ident, frame = sock.recv_multipart(copy=False)
            messages += 1
            user = frame.get("User-Id")
            sock.send_multipart([ident.bytes, json.dumps({"echo": frame.bytes.decode(), "user": user}).encode()])
            if frame.bytes == b"stop":
                break
        print(json.dumps({"messages": messages, "accepted": curve.accepted, "rejected": curve.rejected}),
              flush=True)
        return 0
    finally:
        sock.close(linger=0)
        curve.close()
        ctx.destroy(linger=0)


def _client(args: argparse.Namespace) -> int:
    """Send -n messages (or b"stop") to --connect and print what came back, as JSON."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from ipckit.backends.common import zmq_security as zs

    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    failed = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    mon = sock.get_monitor_socket(failed | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        if args.key:
            server_key = next(iter(zs.load_public_keys(args.server_key)))
            zs.apply_curve_client(sock, zs.load_keypair(args.key), server_key)
        start = time.monotonic()
        sock.connect(args.connect)
        payloads = ["stop"] if args.stop else [f"m{i}" for i in range(args.n)]
        for p in payloads:
            sock.send(p.encode())
        if args.expect_refused:
            event = recv_monitor_message(mon) if mon.poll(int(REJECT_WITHIN * 1000)) else None
            refused_in = time.monotonic() - start
            got_reply = bool(sock.poll(int(REJECT_WITHIN * 1000)))
            print(json.dumps({"event": event and event["event"], "refused": bool(event and event["event"] & failed),
                              "refused_in": refused_in, "got_reply": got_reply}), flush=True)
            return 0
        replies = []
        for _ in payloads:
            if not sock.poll(int(PEER_TIMEOUT * 1000)):
                break
            replies.append(json.loads(sock.recv()))
        print(json.dumps({"replies": replies}), flush=True)
        return 0
    finally:
        mon.close(linger=0)
        sock.close(linger=0)
        ctx.destroy(linger=0)


def _peer_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--allow", required=True)
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--key")
    c.add_argument("--server-key")
    c.add_argument("-n", type=int, default=10)
    c.add_argument("--stop", action="store_true")
    c.add_argument("--expect-refused", action="store_true")
    args = parser.parse_args(argv)
    return _serve(args) if args.cmd == "serve" else _client(args)


if __name__ == "__main__":
    sys.exit(_peer_main(sys.argv[1:]))


# --------------------------------------------------------------------------- the tests
from ipckit.backends.common import zmq_security as zs  # noqa: E402  (the peer programs import it late)
from ipckit.testing import netns  # noqa: E402

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.root,
    pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable())),
]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of *proc*, within *timeout* (the peer signals readiness with it)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no line from the worker within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"the worker ended early ({proc.wait()}): {err}")
    return line.strip()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, zs.KeyPair]:
    pairs = {name: zs.generate_keypair() for name in ("server", "client", "intruder")}
    for name, kp in pairs.items():
        zs.save_keypair(kp, tmp_path / name)
    return pairs


@pytest.fixture
def net() -> Iterator[netns.NetnsPair]:
    with netns.netns_pair() as pair:
        yield pair


def _peer(*args: str) -> list[str]:
    return [sys.executable, "-W", "error", str(THIS), *args]


def test_curve_between_two_namespaces_raw_pyzmq(net: netns.NetnsPair, keys: dict[str, zs.KeyPair],
                                                tmp_path: Path) -> None:
    worker = net.spawn(net.a, _peer("serve", "--bind", f"tcp://{net.a.address}:0",
                                    "--key", str(tmp_path / "server.key_secret"),
                                    "--allow", str(tmp_path / "client.key")),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = _read_line(worker, PEER_TIMEOUT)
    assert ready.startswith("READY "), ready
    endpoint = f"tcp://{net.a.address}:{ready.split()[1]}"
    server_key = str(tmp_path / "server.key")

    # Only the veth /30 is routed in each namespace: nothing leaves them.
    for host in (net.a, net.b):
        routes = subprocess.run(["ip", "-n", host.netns, "route"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip().splitlines()
        assert len(routes) == 1 and routes[0].startswith(f"{host.address.rsplit('.', 1)[0]}."), routes

    # An allow-listed client in the other namespace: every message goes there and back, sender known.
    ok = net.run(net.b, _peer("client", "--connect", endpoint, "--key", str(tmp_path / "client.key_secret"),
                              "--server-key", server_key, "-n", "20"), timeout=PEER_TIMEOUT)
    assert ok.returncode == 0, ok.stderr
    replies = json.loads(ok.stdout)["replies"]
    assert [r["echo"] for r in replies] == [f"m{i}" for i in range(20)]
    assert {r["user"] for r in replies} == {keys["client"].public.decode()}

    # A key not on the allow-list, and a NULL client: refused within 1 s, nothing comes back.
    for label, extra in (("intruder", ["--key", str(tmp_path / "intruder.key_secret"), "--server-key", server_key]),
                         ("null", [])):
        bad = net.run(net.b, _peer("client", "--connect", endpoint, "--expect-refused", "-n", "3", *extra),
                      timeout=PEER_TIMEOUT)
        assert bad.returncode == 0, bad.stderr
        verdict = json.loads(bad.stdout)
        assert verdict["refused"], f"{label}: {verdict}"
        assert verdict["refused_in"] < REJECT_WITHIN, f"{label}: {verdict}"
        assert not verdict["got_reply"], f"{label}: {verdict}"

    stop = net.run(net.b, _peer("client", "--connect", endpoint, "--key", str(tmp_path / "client.key_secret"),
                                "--server-key", server_key, "--stop"), timeout=PEER_TIMEOUT)
    assert stop.returncode == 0, stop.stderr
    stats = json.loads(_read_line(worker, PEER_TIMEOUT))
    # The server saw the allowed client's 20 messages and the stop, nothing of the refused clients.
    assert stats["messages"] == 21, stats
    assert stats["rejected"] >= 1 and stats["accepted"] >= 2, stats
    assert worker.wait(PEER_TIMEOUT) == 0


def _exists(host: netns.Host) -> tuple[bool, bool]:
    listed = host.netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10,
                                          check=True).stdout
    link = subprocess.run(["ip", "link", "show", host.iface], capture_output=True, timeout=10,
                          check=False).returncode == 0
    return listed, link


def test_everything_is_removed_also_when_the_test_fails() -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), netns.netns_pair() as pair:
        hosts = (pair.a, pair.b)
        assert all(_exists(h) == (True, False) for h in hosts)  # the veth ends live inside the namespaces
        # A worker that would outlive the test (it waits for input that never comes) is killed.
        proc = pair.spawn(pair.a, [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        raise Boom
    assert proc.poll() is not None
    assert proc.stdin is not None and proc.stdin.closed
    for h in hosts:
        assert _exists(h) == (False, False), h


def test_namespaces_of_a_dead_run_are_removed() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    name = f"{netns.PREFIX}{dead.pid}-abcdef-a"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        assert name in netns.remove_stale()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)
    # A live run's namespaces are not touched.
    mine = f"{netns.PREFIX}{os.getpid()}-abcdef-a"
    subprocess.run(["ip", "netns", "add", mine], check=True, timeout=10)
    try:
        assert mine not in netns.remove_stale()
    finally:
        subprocess.run(["ip", "netns", "del", mine], check=True, timeout=10)


# --------------------------------------------------------------------------- examples/cross_host.py
EXAMPLE = THIS.parents[2] / "examples" / "cross_host.py"


def _ours() -> set[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout
    return {line.split()[0] for line in names.splitlines() if line.startswith(netns.PREFIX)}


def test_cross_host_example_in_netns_mode_runs_and_leaves_nothing() -> None:
    import tempfile

    before_ns = _ours()
    before_tmp = {e for e in os.listdir(tempfile.gettempdir()) if e.startswith("ipckit-cross-host-")}
    proc = subprocess.run([sys.executable, "-W", "error", str(EXAMPLE), "--netns", "-n", "7"], capture_output=True,
                          text=True, timeout=PEER_TIMEOUT * 3, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == ""
    out = proc.stdout
    assert "with CURVE, 1 client key(s) allowed" in out
    assert "client: 7 squares from the worker" in out
    assert "worker: served 7 request(s) from 1 client(s)" in out
    assert "<-veth->" in out and "cleanup: namespaces, veth pair and keys removed" in out
    assert _ours() == before_ns
    assert {e for e in os.listdir(tempfile.gettempdir()) if e.startswith("ipckit-cross-host-")} == before_tmp
