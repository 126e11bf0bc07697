"""sysv+mq:// runs the whole contract, plus the SysV message-queue rows Q-1…Q-7 of docs/design.md
(limits, timeouts and the CPU cost of waiting, signals, peer death, stale queues and ghosts, key
collisions and other users, message types) and msgmni exhaustion in a private IPC namespace.

Crash tests kill real processes (fork) at chosen points; the leak guard checks /proc/sysvipc and
the record directory after every test.
"""

from __future__ import annotations

import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import ipckit
from ipckit.backends import sysv_mq
from ipckit.backends.common import sysv as sysv_kit
from ipckit.errors import (
    EndpointNotFound,
    MessageTooLarge,
    PeerDied,
    PermissionDenied,
    ProtocolError,
    RecvTimeout,
    SendTimeout,
)
from ipckit.testing import (
    AioContract,
    ChannelContract,
    CrossProcessContract,
    DuplexContract,
    ForkContract,
    LargeMessageContract,
    ListenerContract,
    PeerCloseContract,
    PeerDeathContract,
    PeerExitContract,
    SecurityContract,
    SelectableContract,
    WaitContract,
    as_user,
    signal_storm,
    spawn_peer,
    timing_bounds,
)
from ipckit.testing.contract.helpers import ResultThread, wait_until_blocked
from ipckit.testing.peers import kill_self, ready

sysv_ipc = pytest.importorskip("sysv_ipc")

pytestmark = pytest.mark.timeout(60)


class TestSysvMq(ChannelContract, DuplexContract, PeerCloseContract, LargeMessageContract, CrossProcessContract,
                 PeerDeathContract, ListenerContract, SecurityContract, PeerExitContract, ForkContract,
                 WaitContract, AioContract, SelectableContract):
    scheme = "sysv+mq"

    def url_in(self, directory: str) -> str:
        return f"sysv+mq://{os.path.join(directory, 'ep')}"

    def raw_client(self, url: str) -> Callable[[bytes], None] | None:
        """A writer below ipckit: follows the listener's record to its next channel's queue and
        puts the bytes there as one kernel message (nothing for b""), without claiming it."""

        def write(data: bytes) -> None:
            mq = _next_queue(url)
            if data:
                mq.send(data, block=False, type=sysv_mq._TYPE[0])

        return write


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def name() -> str:
    return f"t{os.getpid()}-{secrets.token_hex(6)}"


def _record(path: str) -> dict[str, str]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sysv_mq._RECORD.read(fd, path)
    finally:
        os.close(fd)


def _next_queue(url: str) -> Any:
    """The queue of the channel a listener at *url* made ahead for its next client."""
    name = url.removeprefix("sysv+mq://")
    path = name if name.startswith("/") else sysv_kit.locate_record(f"ep.{name}")
    chan = _record(sysv_kit.locate_record(f"mq.{_record(path)['next']}"))
    return sysv_ipc.MessageQueue(int(chan["msgkey"]))


def _ends(ch: Any) -> Any:
    return ch._t  # the SysvQueueTransport


def _fork(fn: Any, *args: Any) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def _status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# --------------------------------------------------------------------------- Q-1 limits
def test_q1_fragments_are_msgmax_and_a_message_over_msgmax_goes_whole() -> None:
    limits = sysv_kit.msg_limits()
    for name, value in limits.items():
        with open(f"/proc/sys/kernel/{name}") as f:
            assert value == int(f.read())  # read live
    a, b = ipckit.pair("sysv+mq")
    with a, b:
        t = _ends(a)
        assert t.fragment_size == min(limits["msgmax"], limits["msgmnb"] // 2)
        for size in (limits["msgmax"] - 20, limits["msgmax"] + 1, 5 * limits["msgmax"] + 3):
            data = secrets.token_bytes(size)
            sender = threading.Thread(target=a.send_bytes, args=(data,), kwargs={"timeout": 10})
            sender.start()
            assert b.recv_bytes(timeout=10) == data
            sender.join()
    rows = {row.name: row.value for row in sysv_mq.SysvMqBackend.kernel_limits()}
    assert rows == {f"kernel.{k}": str(v) for k, v in limits.items()}


def test_q1_max_message_size_is_enforced_before_any_fragment() -> None:
    a, b = ipckit.pair("sysv+mq", max_message_size=20000)
    with a, b:
        with pytest.raises(MessageTooLarge, match="max_message_size=20000"):
            a.send_bytes(bytes(20001), timeout=1)
        assert int(_ends(a).mq.current_messages) == 0  # nothing of it reached the queue
        a.send_bytes(b"next", timeout=1)
        assert b.recv_bytes(timeout=1) == b"next"


# --------------------------------------------------------------------------- Q-2 full queue
def test_q2_a_full_direction_times_out_determinately_and_never_blocks_the_other() -> None:
    a, b = ipckit.pair("sysv+mq")
    with a, b:
        sent = 0
        with pytest.raises(SendTimeout):
            for _ in range(100):
                a.send_bytes(b"x" * 1000, timeout=0)
                sent += 1
        assert 0 < sent < 100
        # The other direction keeps its own half of the queue.
        for i in range(sent):
            b.send_bytes(b"%d" % i, timeout=0)
        low, high = timing_bounds(0.2)
        t0 = time.monotonic()
        with pytest.raises(SendTimeout):
            a.send_bytes(b"y" * 3000, timeout=0.2)
        assert low <= time.monotonic() - t0 <= high
        # Determinate: the timed-out messages were not sent; everything before them arrives whole.
        assert [b.recv_bytes(timeout=1) for _ in range(sent)] == [b"x" * 1000] * sent
        assert [a.recv_bytes(timeout=1) for _ in range(sent)] == [b"%d" % i for i in range(sent)]
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0)
        a.send_bytes(b"after", timeout=1)
        assert b.recv_bytes(timeout=1) == b"after"


# --------------------------------------------------------------------------- Q-3 timeouts and CPU
def _blocked_recv_cpu(ch: Any, seconds: float) -> tuple[float, float]:
    ready()
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        ch.recv_bytes(timeout=seconds)
    except RecvTimeout:
        pass
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    ch.close()
    # Every thread of the process (the peer helper's too): an upper bound.
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def test_q3_a_blocked_recv_costs_little_cpu_and_keeps_its_deadline() -> None:
    """sysv_ipc has no timeouts: waits are IPC_NOWAIT retries with a bounded back-off.  A process
    blocked in recv for 2 s must use well under 5 % of a core (asserted: < 15 %, for a loaded
    machine); the figure is printed for the docs."""
    a, b = ipckit.pair("sysv+mq")
    with a, spawn_peer(_blocked_recv_cpu, b, 2.0) as peer:
        b.close()
        peer.wait_ready()
        cpu, wall = peer.join()
    share = cpu / wall
    print(f"\nsysv+mq: a recv blocked for {wall:.2f} s used {cpu * 1000:.1f} ms of CPU ({share:.2%} of a core)")
    assert 2.0 - 0.02 <= wall <= 2.0 + 0.2
    assert share < 0.15


@pytest.mark.parametrize("timeout", [0.05, 0.5])
def test_q4_signals_never_extend_a_wait(timeout: float) -> None:
    a, b = ipckit.pair("sysv+mq")
    with a, b:
        low, high = timing_bounds(timeout)
        with signal_storm(200.0) as storm:
            t0 = time.monotonic()
            with pytest.raises(RecvTimeout):
                b.recv_bytes(timeout=timeout)
            elapsed = time.monotonic() - t0
            for _ in range(20):  # fill a's direction, then a send that times out under the storm
                try:
                    a.send_bytes(b"z" * 2000, timeout=0)
                except SendTimeout:
                    break
            t1 = time.monotonic()
            with pytest.raises(SendTimeout):
                a.send_bytes(b"z" * 2000, timeout=timeout)
            elapsed_send = time.monotonic() - t1
        assert storm.count > 0
        assert low <= elapsed <= high and low <= elapsed_send <= high


# --------------------------------------------------------------------------- Q-5 peer death
def _client_sends_then_stalls(url: str, big: int) -> None:
    ch = ipckit.connect(url, timeout=10)
    ch.send_bytes(b"first", timeout=10)
    ready()
    ch.send_bytes(bytes(big), timeout=60)  # stalls part-way: the server reads nothing more
    time.sleep(60)


def _client_sends_whole(url: str, data: bytes) -> None:
    ch = ipckit.connect(url, timeout=10)
    ch.send_bytes(data, timeout=20)
    ready()
    assert ch.recv_bytes(timeout=20) == b"got it"
    ch.close()


def test_q5_sender_killed_mid_message_then_the_next_message_arrives_whole(name: str) -> None:
    url = f"sysv+mq://{name}"
    big = 200 * 1024
    with ipckit.listen(url) as lst:
        with spawn_peer(_client_sends_then_stalls, url, big) as peer:
            peer.wait_ready()
            ch = lst.accept(timeout=10)
            with ch:
                assert ch.recv_bytes(timeout=10) == b"first"
                t = _ends(ch)
                deadline = time.monotonic() + 10
                while not t.waiting():  # the big message's first fragments are queued
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
                peer.kill()
                peer.wait_exit()
                t0 = time.monotonic()
                with pytest.raises(PeerDied):  # never the partial message
                    ch.recv_bytes(timeout=10)
                assert time.monotonic() - t0 < 1.5
                with pytest.raises(PeerDied):
                    ch.send_bytes(b"to the dead", timeout=1)
        data = secrets.token_bytes(big)
        with spawn_peer(_client_sends_whole, url, data, method="spawn") as peer2:
            ch2 = lst.accept(timeout=20)
            with ch2:
                assert ch2.recv_bytes(timeout=20) == data
                ch2.send_bytes(b"got it", timeout=5)
                peer2.join()


# --------------------------------------------------------------------------- Q-6 orphans, ghosts, keys
def _listen_serve_and_die(url: str) -> None:
    lst = ipckit.listen(url)
    ch = lst.accept(timeout=20)
    assert ch.recv_bytes(timeout=10) == b"ghost 0"
    ready()
    kill_self()


# These rows judge only the SysV objects this test made (known by id and key from its ends and
# the records): other test runs on the machine create and remove queues meanwhile.
Obj = tuple[str, int, int]  # (kind, id, key)


def _objects(fields: dict[str, str]) -> set[Obj]:
    """The queue and semaphore set of the channel whose record holds *fields*."""
    return {("msg", int(fields["msgid"]), int(fields["msgkey"])), ("sem", int(fields["semid"]), int(fields["semkey"]))}


def _ref_objects(ch: Any) -> set[Obj]:
    ref = _ends(ch).ref
    return {("msg", ref.msgid, ref.msgkey), ("sem", ref.semid, ref.semkey)}


def _next_objects(name: str) -> set[Obj]:
    """The objects of the channel the listener of *name* made ahead for its next client."""
    nonce = _record(sysv_kit.locate_record(f"ep.{name}"))["next"]
    return _objects(_record(sysv_kit.locate_record(f"mq.{nonce}")))


def _existing(objs: set[Obj]) -> set[Obj]:
    """Those of *objs* that exist (same id at the same key, ours)."""
    return {o for o in objs if sysv_kit.owned_row(o[0], o[1], o[2]) is not None}  # type: ignore[arg-type]


def test_q6_stale_endpoint_is_recreated_never_reused_no_ghost_messages(name: str) -> None:
    url = f"sysv+mq://{name}"
    with spawn_peer(_listen_serve_and_die, url) as peer:
        c = ipckit.connect(url, timeout=10)
        for i in range(3):
            c.send_bytes(b"ghost %d" % i, timeout=5)
        peer.wait_ready()
        peer.wait_exit()
        old = _ref_objects(c)
        stale = _next_objects(name)  # the dead listener's next channel (made ahead at its accept)
        assert not stale & old
        with pytest.raises(PeerDied):
            c.recv_bytes(timeout=5)
        c.close()  # the last end: removes what it shared with the dead listener
    assert _existing(old) == set()
    assert _existing(stale) == stale  # SIGKILL left the next channel
    made = old | stale
    with ipckit.listen(url) as lst:  # reclaims the dead listener's record and next channel
        assert _existing(stale) == set()
        fresh = _next_objects(name)
        assert not fresh & made and _existing(fresh) == fresh
        made |= fresh
        with ipckit.connect(url, timeout=5) as c2, lst.accept(timeout=5) as s2:
            made |= _ref_objects(c2) | _next_objects(name)
            with pytest.raises(RecvTimeout):  # no ghost of the crashed run
                s2.recv_bytes(timeout=0.1)
            c2.send_bytes(b"new run", timeout=5)
            assert s2.recv_bytes(timeout=5) == b"new run"
    assert len(made) == 8 and _existing(made) == set()  # four channels, nothing of them left


def _pair_and_die(report: int) -> None:
    a, _b = ipckit.pair("sysv+mq")
    a.send_bytes(b"never read", timeout=1)
    ref = _ends(a).ref
    os.write(report, f"{ref.msgid} {ref.msgkey} {ref.semid} {ref.semkey}".encode())
    kill_self()


def test_q6_cleanup_dry_run_lists_exactly_what_it_removes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ipckit.cleanup import Sweep
    from ipckit.cli import main

    r, w = os.pipe()
    try:
        pid = _fork(_pair_and_die, w)
        os.close(w)
        w = -1
        report = b""
        while chunk := os.read(r, 256):
            report += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert _status(pid) == -signal.SIGKILL
    msgid, msgkey, semid, semkey = (int(x) for x in report.split())
    dead = {("msg", msgid, msgkey), ("sem", semid, semkey)}
    assert _existing(dead) == dead  # SysV objects persist after kill -9
    live = ipckit.pair("sysv+mq")
    with ipckit.listen(f"sysv+mq://{name}") as lst, live[0], live[1]:  # live ones stay
        mine = [o for o in sysv_mq.SysvMqBackend.find_stale(Sweep()) if int(_record(o.path).get("msgid", -1)) == msgid]
        assert len(mine) == 1
        assert main(["cleanup", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"sysv+mq:// object {os.path.basename(mine[0].path)}" in out
        assert _existing(dead) == dead  # a dry run removes nothing
        assert sysv_mq.SysvMqBackend.remove_stale(mine[0]) is True
        assert _existing(dead) == set()
        assert not os.path.exists(mine[0].path)
        # What is alive was judged alive (its ends hold their locks), and works.
        alive = {o[1] for o in _ref_objects(live[0]) | _next_objects(name) if o[0] == "msg"}
        assert not [o for o in sysv_mq.SysvMqBackend.find_stale(Sweep())
                    if int(_record(o.path).get("msgid", -1)) in alive]
        live[0].send_bytes(b"alive", timeout=1)
        assert live[1].recv_bytes(timeout=1) == b"alive"
        with ipckit.connect(lst.url, timeout=5) as c, lst.accept(timeout=5) as s:
            c.send_bytes(b"still", timeout=1)
            assert s.recv_bytes(timeout=1) == b"still"


def test_q6_taken_key_is_never_used_and_a_new_one_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    taken_q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600)
    taken_s = sysv_ipc.Semaphore(None, sysv_ipc.IPC_CREX, mode=0o600)
    try:
        taken_q.send(b"another application's", type=1)
        keys = iter([taken_s.key, 0x5A5B0001 + secrets.randbelow(1 << 20), taken_q.key,
                     0x6B6C0001 + secrets.randbelow(1 << 20)])
        monkeypatch.setattr(sysv_kit, "random_key", lambda: next(keys))
        a, b = ipckit.pair("sysv+mq")
        with a, b:
            ref = _ends(a).ref
            assert ref.msgkey != taken_q.key and ref.semkey != taken_s.key
            a.send_bytes(b"fine", timeout=1)
            assert b.recv_bytes(timeout=1) == b"fine"
        assert taken_q.receive(block=False) == (b"another application's", 1)  # untouched
        assert sysv_kit.proc_row("sem", taken_s.id) is not None
    finally:
        taken_q.remove()
        taken_s.remove()


def _open_as_other(msgkey: int) -> str:
    try:
        sysv_ipc.MessageQueue(msgkey)
    except sysv_ipc.PermissionsError:
        return "PermissionsError"
    return "opened"


def test_q6_queue_and_semaphores_are_owner_only_0600() -> None:
    a, b = ipckit.pair("sysv+mq")
    with a, b:
        ref = _ends(a).ref
        for kind, ident in (("msg", ref.msgid), ("sem", ref.semid)):
            row = sysv_kit.proc_row(kind, ident)  # type: ignore[arg-type]
            assert row is not None and row["perms"] & 0o777 == 0o600 and row["uid"] == row["cuid"] == os.geteuid()
        assert oct(os.stat(ref.path).st_mode & 0o777) == "0o600"
        assert as_user(_open_as_other, ref.msgkey) == "PermissionsError"


def _squat_queue(mode: int) -> tuple[int, int]:
    mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=mode)
    return int(mq.key), int(mq.id)


def test_q6_squatted_queue_of_another_uid_is_refused(name: str) -> None:
    """Root passes the kernel's permission check on a 0666 queue of uid 65534: the owner check
    is ipckit's own (msqid_ds uid/cuid)."""
    key, msgid = as_user(_squat_queue, 0o666)
    try:
        with ipckit.listen(f"sysv+mq://{name}") as lst:
            t = lst._next  # type: ignore[attr-defined]
            fields = _record(t.ref.path)
            forged = {k: v for k, v in fields.items() if k != "end"}
            forged.update(msgkey=str(key), msgid=str(msgid))
            sysv_mq._RECORD.write(t.fd, forged, True)
            with pytest.raises(PermissionDenied, match="belongs to uid 65534"):
                ipckit.connect(lst.url, timeout=1)
            assert sysv_kit.proc_row("msg", msgid) is not None  # never removed
            sysv_mq._RECORD.write(t.fd, {k: v for k, v in fields.items() if k != "end"}, True)
    finally:
        sysv_ipc.remove_message_queue(msgid)


def _connect_as_other(url: str) -> str:
    try:
        ipckit.connect(url, timeout=1)
    except PermissionDenied:
        return "PermissionDenied"
    except EndpointNotFound:
        return "EndpointNotFound"
    return "connected"


def test_q6_other_uid_cannot_connect(tmp_path: Any) -> None:
    os.chmod(tmp_path, 0o700)
    url = f"sysv+mq://{tmp_path}/ep"
    with ipckit.listen(url):
        assert as_user(_connect_as_other, url) == "PermissionDenied"
        assert oct(os.stat(f"{tmp_path}/ep").st_mode & 0o777) == "0o600"


# --------------------------------------------------------------------------- Q-7 message types
def test_q7_forged_fragment_of_our_type_is_a_protocol_error_then_the_channel_works() -> None:
    a, b = ipckit.pair("sysv+mq")
    with a, b:
        raw = sysv_ipc.MessageQueue(_ends(b).ref.msgkey)
        raw.send(b"not an ipckit fragment at all", type=sysv_mq._TYPE[1])
        with pytest.raises(ProtocolError):
            b.recv_bytes(timeout=1)
        a.send_bytes(b"valid", timeout=1)
        assert b.recv_bytes(timeout=1) == b"valid"


def test_q7_each_end_receives_only_its_type() -> None:
    a, b = ipckit.pair("sysv+mq")
    with a, b:
        a.send_bytes(b"to b", timeout=1)
        with pytest.raises(RecvTimeout):
            a.recv_bytes(timeout=0.05)  # its own message is not its type
        assert b.recv_bytes(timeout=1) == b"to b"


# --------------------------------------------------------------------------- msgmni in a private IPC namespace
_EXHAUST = r"""
import os, sys
open("/proc/sys/kernel/msgmni", "w").write("3")
import ipckit
from ipckit.errors import ResourceExhausted
made = []
try:
    for _ in range(10):
        made.append(ipckit.pair("sysv+mq"))
except ResourceExhausted as exc:
    print("EXHAUSTED", len(made), exc)
left = sorted(os.listdir(sys.argv[1] + "/ipckit-sysv-" + str(os.geteuid())))
print("RECORDS", len(left))
for a, b in made:
    a.close(); b.close()
with open("/proc/sysvipc/msg") as f:
    print("QUEUES", len(f.read().splitlines()) - 1)
with open("/proc/sysvipc/sem") as f:
    print("SEMS", len(f.read().splitlines()) - 1)
"""


def test_msgmni_exhaustion_is_resource_exhausted_naming_the_limit(tmp_path: Any) -> None:
    """In a private IPC namespace (``unshare -i``), so no other process's queues are touched."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private IPC namespace")
    os.chmod(tmp_path, 0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    out = subprocess.run(["unshare", "-i", sys.executable, "-c", _EXHAUST, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    count, message = lines["EXHAUSTED"].split(" ", 1)
    assert int(count) == 3  # one queue per channel
    assert "kernel.msgmni" in message and "sysctl -w kernel.msgmni" in message
    assert lines["RECORDS"] == "3"  # the failed pair() left no record ...
    assert lines["QUEUES"] == "0" and lines["SEMS"] == "0"  # ... and closing removed everything


# --------------------------------------------------------------------------- the doorbell (fileno)
def _bell_files_exist(nonce: str) -> list[bool]:
    return [os.path.lexists(p) for p in sysv_mq._bell_files(nonce)]


def _peer_holds_then_dies(end: Any) -> None:
    ch = end
    ch.fileno()  # armed: this end's word is BELL in the shared flags page
    ready()
    kill_self()


def test_doorbell_files_go_with_the_last_end_after_a_peer_was_killed() -> None:
    a, b = ipckit.pair("sysv+mq://")
    nonce = _ends(a).ref.nonce
    assert _bell_files_exist(nonce) == [True, True, True]
    with a, spawn_peer(_peer_holds_then_dies, b) as peer:
        b.close()  # the child has its own copy
        peer.wait_ready()
        assert peer.wait_exit() == -9
        with pytest.raises(PeerDied):
            a.recv(timeout=5.0)
    # The last end removed all three (at the latest at close; the kit releases a drained end early).
    assert _bell_files_exist(nonce) == [False, False, False]


_BOTH_ENDS_DIE = r"""
import os, signal, sys
import ipckit
a, b = ipckit.pair("sysv+mq://")
a.fileno(); b.fileno()
a.send(1, timeout=5.0)
print(a._t.ref.nonce, a._t.ref.path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_doorbell_files_of_a_killed_process_are_removed_by_cleanup() -> None:
    proc = subprocess.run([sys.executable, "-c", _BOTH_ENDS_DIE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    nonce, path = proc.stdout.split()
    assert _bell_files_exist(nonce) == [True, True, True]
    assert os.path.basename(path) in sysv_mq.cleanup_stale(os.path.dirname(path))
    assert _bell_files_exist(nonce) == [False, False, False]
    assert not os.path.exists(path)


def test_unwatched_send_rings_nothing() -> None:
    """Without fileno() the peer's word stays 0: sends never write the FIFO (the fast path)."""
    a, b = ipckit.pair("sysv+mq://")
    with a, b:
        for i in range(20):
            a.send(i, timeout=5.0)
            assert b.recv(timeout=5.0) == i
        r = _ends(b)._bell_r
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # nothing was rung
        b.fileno()
        a.send(-1, timeout=5.0)
        assert os.read(r, 16)  # watched: the send rang


def test_fileno_while_a_receive_blocks_in_another_thread() -> None:
    """fileno() never waits for a receive blocked in another thread (it holds the receive lock):
    it arms at once; the receive then gets the message and leaves the descriptor drained."""
    a, b = ipckit.pair("sysv+mq://")
    with a, b:
        receiver = ResultThread(lambda: b.recv(timeout=10.0), name="ipckit-recv")
        receiver.start()
        wait_until_blocked(receiver)
        started = time.monotonic()
        fd = b.fileno()
        assert time.monotonic() - started < 1.0
        a.send("x", timeout=5.0)
        assert receiver.outcome(10.0) == "x"
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            assert b.poll(0) is False
            assert sel.select(0) == []  # settled by the receive (or by the poll above)
            a.send("y", timeout=5.0)
            assert len(sel.select(5.0)) == 1
            assert b.recv(timeout=0) == "y"
            assert sel.select(0) == []
