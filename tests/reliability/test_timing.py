"""Timeout accuracy and peer-death detection latency on every backend (issue 14, docs/reliability.md).

**Timeout accuracy.**  Every call kind that can time out on a backend is made with a short
timeout that runs out, and the overshoot (returned after minus requested) is measured, under three
conditions: *idle*; a 200 Hz *storm* of SIGALRM with a real (counting) handler in this process, so
each call is interrupted about six times and must retry against its original deadline; and *busy*,
one CPU-bound process per core (real, unpinned processes that this test starts and kills).  The
call kinds:

* ``recv`` on an empty channel (``RecvTimeout``);
* ``send`` on a full channel (``SendTimeout``; the channel is filled first, and a backend that
  cannot be filled is skipped with the reason recorded);
* ``poll(timeout)`` on an empty channel (returns False);
* ``accept`` on a listener no client dials (``ChannelTimeout``);
* ``connect`` to an absent endpoint: the contract (docs/contract.md) has ``connect`` wait up to its
  timeout for the listener to appear, then raise ``EndpointNotFound``.  ``connect`` to a listener
  that never accepts is no timeout case: a client may send before ``accept()`` (the contract
  again), so that ``connect`` returns a channel at once on every backend.

The gate is P4's (:func:`ipckit.testing.timing_bounds`): every trial returns no earlier than
20 ms before its deadline and no later than ``max(100 ms, 10 %)`` after it, that lateness counted
without the time the calling thread sat runnable on a run queue while other processes had the CPUs
(the kernel's own count, ``/proc/thread-self/schedstat``).  That time is the machine's, not the
call's: on the shared 2-core machine a ring ``recv`` under the storm once came back after 134 ms,
105 ms of them waiting for a CPU.  Both figures go to the report (raw and net), and a bare
``select()`` timeout is measured between the calls as the machine's own floor (not gated).
Python's cyclic garbage collector is off inside each timed call, as in ``takes_timeout``: a full
collection of a long session's heap takes about 250 ms here and is not ipckit's deadline logic.

**Detection latency.**  A peer process blocks in ``recv`` (it signals READY just before), this
process blocks in ``recv`` on the other end, the peer is SIGKILLed, and the time from the kill to
``PeerDied`` (the contract's exception for a killed peer, PeerDeathContract) is measured.  Gates
from the design: 1 s for the descriptor-based transports (pipe, fifo, unix, zmq), 1.5 s for the
shared-memory rings and message queues, which find a dead peer by a liveness check.

Sizes: ``scaled(5, 30)`` trials per call kind, condition and backend, ``scaled(3, 10)`` kills per
backend; figures go to the ``timeouts`` and ``detection`` sections of the reliability report.

Found on the way, each a strict xfail that fails once fixed: ``connect`` to an absent endpoint does
not wait on memory://, zmq+ipc:// and zmq+tcp://; a zmq pipe full for ``heartbeat_timeout`` is
dropped as PeerDied with both ends alive.  Closing a full zmq+ipc:// pair sender-first aborted the
process in libzmq (heartbeats are off by default on zmq+ipc:// since).  docs/reliability.md
("Timeout accuracy", "Detection latency") has the figures.
"""

from __future__ import annotations

import gc
import math
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytest
from reliability_report import Recorder, proof_only, scaled

import ipckit
from ipckit.channel import Channel, Listener
from ipckit.errors import ChannelTimeout, EndpointNotFound, PeerDied, RecvTimeout, SendTimeout
from ipckit.testing import signal_storm, spawn_peer, timing_bounds, wait_until_blocked, workers
from ipckit.testing.contract.helpers import ResultThread

#: The timeout every timed call is given.  Short, so the proof size (about 4 700 calls) stays
#: within its time budget; P4's bound is max(100 ms, 10 %), so any timeout below 1 s is held to
#: the same absolute 100 ms.
TIMEOUT = 0.03
TRIALS = scaled(5, 30)
KILLS = scaled(3, 10)
STORM_HZ = 200.0

#: Detection gates (docs/reliability.md): the kernel reports a dead peer's descriptors at once;
#: rings and queues have no descriptor and find out by a liveness check.
DETECTION_GATE = {"pipe": 1.0, "fifo": 1.0, "unix": 1.0, "unix-seqpacket": 1.0, "zmq+ipc": 1.0, "zmq+tcp": 1.0,
                  "shm": 1.5, "sysv+shm": 1.5, "mq": 1.5, "sysv+mq": 1.5}

#: Backends whose connect() to an absent endpoint raises EndpointNotFound at once instead of waiting
#: up to its timeout for a listener to appear, as docs/contract.md says: no timeout to measure.
_CONNECT_AT_ONCE = {
    "memory": "memory:// connect() raises EndpointNotFound at once when nothing listens (ipckit/backends/memory.py)",
    "zmq+ipc": "zmq+ipc:// connect() raises EndpointNotFound at once when the endpoint file is absent "
               "(check_ipc_mode in ipckit/backends/common/zmq.py)",
    "zmq+tcp": "zmq+tcp:// connect() raises EndpointNotFound at once on a refused TCP probe, on purpose "
               "(ipckit/backends/zmq_tcp.py: 'not a wait for the whole deadline')",
}
_CONNECT_GAP = ("docs/contract.md: connect() waits up to its timeout for the listener to appear; this backend "
                "raises EndpointNotFound at once")


@dataclass(frozen=True)
class Subject:
    """One backend (or backend variant) under test."""

    name: str  # the report's subject and the test id
    scheme: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


SUBJECTS = [Subject("memory", "memory"), Subject("pipe", "pipe"), Subject("fifo", "fifo"), Subject("unix", "unix"),
            Subject("unix-seqpacket", "unix", {"type": "seqpacket"}), Subject("shm", "shm"),
            Subject("sysv+shm", "sysv+shm"), Subject("mq", "mq"), Subject("sysv+mq", "sysv+mq"),
            Subject("zmq+ipc", "zmq+ipc"), Subject("zmq+tcp", "zmq+tcp")]


def _require(subject: Subject) -> None:
    if not ipckit.available_backends().get(subject.scheme, False):
        pytest.skip(f"{subject.scheme}:// does not work here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(subject: Subject, directory: str, label: str) -> str:
    """A new address nothing listens at (path-based schemes put it in *directory*)."""
    if subject.scheme in ("fifo", "unix"):
        return f"{subject.scheme}://{os.path.join(directory, label + ('.sock' if subject.scheme == 'unix' else ''))}"
    if subject.scheme == "zmq+ipc":
        return f"zmq+ipc://{os.path.join(directory, label + '.ipc')}"
    if subject.scheme == "zmq+tcp":
        return f"zmq+tcp://127.0.0.1:{_free_port()}"
    return f"{subject.scheme}://ikt-timing-{os.getpid()}-{label}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- conditions
@contextmanager
def _cpu_hogs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """One CPU-bound process per core while the block runs (not pinned: the scheduler places them,
    as it would a user's workers).  Each says it started before it spins, so the block runs loaded."""
    spin = "import sys; sys.stdout.write('r'); sys.stdout.flush()\nwhile True: pass"
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(os.cpu_count() or 1):
            hogs.append(subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL))
        for hog in hogs:
            assert hog.stdout is not None and hog.stdout.read(1) == b"r", "a CPU hog did not start"
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(10)
            if hog.stdout is not None:
                hog.stdout.close()


def _condition(name: str) -> AbstractContextManager[Any]:
    if name == "storm":
        return signal_storm(hz=STORM_HZ)
    if name == "busy":
        return _cpu_hogs()
    return nullcontext()


CONDITIONS = ("idle", "storm", "busy")


# --------------------------------------------------------------------------- measuring
def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but not running) of this thread so far, the kernel's
    schedstat.  The second is what a busy machine, not the code, adds to a call."""
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, waiting, _ = f.read().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


@dataclass
class _Trial:
    elapsed: float
    on_cpu: float  # includes time a hypervisor stole from the vCPU
    waited: float  # on a run queue
    result: object
    error: BaseException | None


def _timed(call: Callable[[], object]) -> _Trial:
    """One call, timed, with the cyclic collector off inside it."""
    enabled = gc.isenabled()
    gc.disable()
    result: object = None
    error: BaseException | None = None
    cpu0, wait0 = _schedstat()
    start = time.monotonic()
    try:
        result = call()
    except Exception as exc:
        error = exc
    finally:
        elapsed = time.monotonic() - start
        cpu1, wait1 = _schedstat()
        if enabled:
            gc.enable()
    return _Trial(elapsed, cpu1 - cpu0, wait1 - wait0, result, error)


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 30 trials is the largest; of 90 pooled, the 90th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


#: Every overshoot measured in this run (seconds), for the summary across backends.
_all_overshoots: list[float] = []
_baseline_overshoots: list[float] = []
#: The same less each call's run-queue wait: the part the calls themselves are answerable for.
_net_overshoots: list[float] = []
_detections: dict[str, list[float]] = {}


@dataclass
class _Kind:
    """One call kind: *call* makes the call with :data:`TIMEOUT`; it must raise *expect* (or,
    with *expect* None, return False)."""

    name: str
    call: Callable[[], object]
    expect: type[BaseException] | None
    #: False for the baseline, which is the machine's timer, not ipckit: recorded, not checked
    gated: bool = True


#: Unread bytes after which a channel counts as one that cannot be filled.
_FILL_LIMIT = 512 * 1024 * 1024


def _fill(ch: Channel) -> tuple[bytes, int] | None:
    """Send into *ch* until a send times out (nobody receives); return the chunk that no longer
    fits and how many were accepted, or None if :data:`_FILL_LIMIT` bytes went in without a refusal.

    Each send gets 0.2 s, not 0: zmq's I/O thread keeps moving queued messages into the kernel
    and the peer's queue for a moment after the first refusal, so the channel is full only once a
    send has waited and still found no room.
    """
    buffered = ch.capabilities.buffered_bytes
    chunk = bytes(min(64 * 1024, max(256, buffered // 4)) if buffered else 64 * 1024)
    count = 0
    while count * len(chunk) < _FILL_LIMIT:
        try:
            ch.send_bytes(chunk, timeout=0.2)
        except SendTimeout:
            return chunk, count
        count += 1
    return None


@proof_only
@pytest.mark.timeout(180)
@pytest.mark.parametrize("subject", SUBJECTS, ids=str)
def test_timeout_accuracy(subject: Subject, tmp: str, reliability: Recorder) -> None:
    """Every call kind that can time out returns within P4's bounds of its deadline, idle, under a
    200 Hz signal storm and with every core busy."""
    _require(subject)
    opts = subject.options
    closing: list[Channel | Listener] = []
    try:
        quiet, quiet_peer = ipckit.pair(f"{subject.scheme}://", **opts)
        closing += [quiet_peer, quiet]
        # A zmq pipe kept full longer than heartbeat_timeout is dropped as PeerDied though both ends
        # live (test_zmq_full_pipe_outlives_heartbeat_timeout); this one stays full for a whole
        # run, so its heartbeat bound is raised past that.
        full_opts = {**opts, "heartbeat_timeout": 600.0} if subject.scheme.startswith("zmq+") else opts
        full, full_peer = ipckit.pair(f"{subject.scheme}://", **full_opts)
        # The receiver closes first: with heartbeats on (zmq+tcp://, or zmq+ipc:// when asked for),
        # libzmq aborts a full pair closed sender-first.
        closing += [full_peer, full]
        filled = _fill(full)
        kinds = [_Kind("recv", lambda: quiet.recv_bytes(timeout=TIMEOUT), RecvTimeout),
                 _Kind("poll", lambda: quiet.poll(TIMEOUT), None)]
        if filled is None:
            reliability.add("timeouts", subject.name, call="send", condition="all",
                            skipped=f"cannot be filled: {_FILL_LIMIT} bytes unread and every send accepted")
        else:
            chunk = filled[0]
            kinds.insert(1, _Kind("send", lambda: full.send_bytes(chunk, timeout=TIMEOUT), SendTimeout))
        if quiet.capabilities.named:
            lst = ipckit.listen(_url(subject, tmp, "listener"), **opts)
            closing.append(lst)
            kinds.append(_Kind("accept", lambda: lst.accept(timeout=TIMEOUT), ChannelTimeout))
            if subject.name in _CONNECT_AT_ONCE:
                reliability.add("timeouts", subject.name, call="connect", condition="all",
                                skipped=_CONNECT_AT_ONCE[subject.name])
            else:
                absent = _url(subject, tmp, "absent")
                kinds.append(_Kind("connect", lambda: ipckit.connect(absent, timeout=TIMEOUT, **opts),
                                   EndpointNotFound))
        # The machine's own floor, interleaved with the calls: a bare select() timeout, no ipckit.
        kinds.append(_Kind("baseline", lambda: bool(select.select([], [], [], TIMEOUT)[0]), None, gated=False))
        low, high = timing_bounds(TIMEOUT)
        problems: list[str] = []
        for condition in CONDITIONS:
            overs: dict[str, list[_Trial]] = {k.name: [] for k in kinds}
            with _condition(condition) as state:
                for trial in range(TRIALS):
                    for kind in kinds:
                        t = _timed(kind.call)
                        elapsed, waited, result, error = t.elapsed, t.waited, t.result, t.error
                        overs[kind.name].append(t)
                        own = elapsed - waited
                        if not kind.gated:
                            continue
                        if kind.expect is None:
                            if error is not None or result is not False:
                                problems.append(f"{kind.name}/{condition}#{trial}: returned {result!r}, "
                                                f"raised {error!r}")
                        elif type(error) is not kind.expect:
                            problems.append(f"{kind.name}/{condition}#{trial}: raised {error!r}, "
                                            f"not {kind.expect.__name__}")
                        # Early is judged on the clock; late on the time that was not spent waiting
                        # for a CPU (a loaded machine's share, measured by the kernel; see above).
                        if not (low <= elapsed and own <= high):
                            problems.append(f"{kind.name}/{condition}#{trial}: returned after {elapsed * 1000:.1f} ms "
                                            f"for {TIMEOUT * 1000:.0f} ms: {waited * 1000:.1f} ms of it runnable "
                                            f"but not running, {t.on_cpu * 1000:.1f} ms on a CPU, the rest asleep")
                signals = state.count if condition == "storm" else None
            if signals is not None:
                # Each call is ~6 periods long: a storm that barely fired proves nothing.
                expected = TRIALS * len(kinds) * TIMEOUT * STORM_HZ
                if signals < expected / 2:
                    problems.append(f"storm delivered {signals} signals, expected about {expected:.0f}")
            for kind in kinds:
                trials = overs[kind.name]
                values = [t.elapsed - TIMEOUT for t in trials]
                net = [t.elapsed - TIMEOUT - t.waited for t in trials]
                worst_net = max(trials, key=lambda t: t.elapsed - t.waited)
                reliability.add("timeouts", subject.name, call=kind.name, condition=condition, trials=len(values),
                                timeout_ms=_ms(TIMEOUT), p50_ms=_ms(_quantile(values, 0.5)),
                                p99_ms=_ms(_quantile(values, 0.99)), max_ms=_ms(max(values)),
                                net_p99_ms=_ms(_quantile(net, 0.99)), net_max_ms=_ms(max(net)),
                                max_runqueue_ms=_ms(max(t.waited for t in trials)),
                                # how the worst net trial spent its time: on a CPU, the rest asleep
                                net_max_on_cpu_ms=_ms(worst_net.on_cpu),
                                undershoot_ms=_ms(max(0.0, -min(values))),
                                **({"signals": signals} if signals is not None else {}))
                if kind.gated:
                    _all_overshoots.extend(values)
                    _net_overshoots.extend(net)
                else:
                    _baseline_overshoots.extend(values)
        _timeouts_summary(reliability)
        assert not problems, f"{subject}: " + "; ".join(problems[:20])
    finally:
        for obj in closing:
            obj.close()


def _timeouts_summary(reliability: Recorder) -> None:
    under = max(0.0, -min(_all_overshoots))
    reliability.summary("timeouts", f"timeout overshoot max {max(_net_overshoots) * 1000:.0f} ms "
                                    f"(p99 {_quantile(_net_overshoots, 0.99) * 1000:.0f} ms) idle/storm/busy "
                                    f"net of run-queue wait (raw max {max(_all_overshoots) * 1000:.0f} ms, "
                                    f"p99 {_quantile(_all_overshoots, 0.99) * 1000:.0f} ms), "
                                    f"undershoot {under * 1000:.0f} ms")


@pytest.mark.timeout(30)
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=_CONNECT_GAP)
@pytest.mark.parametrize("subject", [s for s in SUBJECTS if s.name in _CONNECT_AT_ONCE], ids=str)
def test_connect_waits_for_a_listener(subject: Subject, tmp: str) -> None:
    """The contract's connect() waits up to its timeout for the endpoint to appear; these backends
    do not (when one does, move it out of _CONNECT_AT_ONCE: test_timeout_accuracy then times it)."""
    _require(subject)
    absent = _url(subject, tmp, "absent")
    with pytest.raises(EndpointNotFound):  # untimed: the first call imports the backend (pyzmq: ~0.25 s)
        ipckit.connect(absent, timeout=TIMEOUT, **subject.options)
    t = _timed(lambda: ipckit.connect(absent, timeout=TIMEOUT, **subject.options))
    elapsed, error = t.elapsed, t.error
    assert type(error) is EndpointNotFound, f"{error!r}"
    low, high = timing_bounds(TIMEOUT)
    assert low <= elapsed <= high, f"EndpointNotFound after {elapsed * 1000:.1f} ms for {TIMEOUT * 1000:.0f} ms"


_ZMQ_STALL_GAP = ("a zmq pipe that stays full (the receiver reads nothing) for heartbeat_timeout is dropped by libzmq "
                  "as PeerDied at both ends though both live, and what was queued but not yet in the receiver's "
                  "queue is lost (the ZMTP heartbeats queue behind the unread data, so no PONG arrives in time)")


@pytest.mark.timeout(30)
@pytest.mark.xfail(strict=True, raises=PeerDied, reason=_ZMQ_STALL_GAP)
@pytest.mark.parametrize("subject", [s for s in SUBJECTS if s.scheme.startswith("zmq+")], ids=str)
def test_zmq_full_pipe_outlives_heartbeat_timeout(subject: Subject) -> None:
    """A receiver that stalls is not a dead peer (docs/contract.md P2: nothing is lost while both
    live): a send into a pipe full for longer than heartbeat_timeout is still a SendTimeout, and
    the receiver then gets every message that was accepted."""
    _require(subject)
    hb = {"heartbeat": 0.1, "heartbeat_timeout": 0.5}
    a, b = ipckit.pair(f"{subject.scheme}://", **hb)
    try:
        filled = _fill(a)
        assert filled is not None
        chunk, accepted = filled
        received = 0
        stall_until = time.monotonic() + 3 * hb["heartbeat_timeout"]
        while time.monotonic() < stall_until:
            with pytest.raises(SendTimeout):
                a.send_bytes(chunk, timeout=0.2)
        while True:
            try:
                b.recv_bytes(timeout=1.0)
            except RecvTimeout:
                break
            received += 1
        assert received == accepted
    finally:
        b.close()  # the receiver first (see test_timeout_accuracy)
        a.close()


#: Run in a child: libzmq 4.3.5 aborted the process here (Assertion failed: !_io_error,
#: src/stream_engine_base.cpp:310) while ZMTP heartbeats were on by default for zmq+ipc://: the
#: receiving engine, its input stopped by a full pipe, sees the hang-up, and the next heartbeat's
#: out_event() asserts.  The pause is longer than a heartbeat interval (1 s) so the timer falls due.
_CLOSE_FULL_PAIR = """
import time
import ipckit
from ipckit.errors import SendTimeout
a, b = ipckit.pair("zmq+ipc://")
try:
    while True:
        a.send_bytes(bytes(65536), timeout=0.2)
except SendTimeout:
    pass
a.close()
time.sleep(1.5)
b.close()
"""


@pytest.mark.timeout(60)
def test_zmq_ipc_full_pair_closes_sender_first(tmp: str) -> None:
    """close() always releases (docs/contract.md): also the sender of a full pair, closed first."""
    _require(Subject("zmq+ipc", "zmq+ipc"))
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = tmp  # an aborted child leaves its private endpoint directory here, not in /tmp
    try:
        proc = subprocess.run([sys.executable, "-c", _CLOSE_FULL_PAIR], capture_output=True, text=True,
                              timeout=50, env=env, stdin=subprocess.DEVNULL)
    finally:
        for name in os.listdir(tmp):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    assert proc.returncode == 0, f"the child exited with {proc.returncode}: {proc.stderr.strip()[-200:]}"


# --------------------------------------------------------------------------- detection
def _kill_blocked_peer(subject: Subject, lst: Listener | None) -> float:
    """One trial: a peer blocked in recv is SIGKILLed while this process is blocked in recv on
    the other end; seconds from the kill to PeerDied."""
    opts = subject.options
    mine: Channel | None = None
    theirs: Channel | None = None
    if lst is None:
        mine, theirs = ipckit.pair(f"{subject.scheme}://", **opts)
        end: Channel | workers.Dial = theirs
    else:
        end = workers.Dial(lst.url, opts)
    try:
        with spawn_peer(workers.recv_messages, end, 1) as peer:
            if theirs is not None:
                theirs.close()  # the peer holds its own copy now
            if mine is None:
                assert lst is not None
                mine = lst.accept(timeout=20.0)
            ch = mine
            peer.wait_ready()  # the peer is about to block in recv (ready() comes right before)
            waiter = ResultThread(lambda: ch.recv(timeout=10.0), name="ipckit-blocked-recv")
            enabled = gc.isenabled()
            gc.disable()  # as for the timeouts: a full collection is not detection latency
            try:
                waiter.start()
                wait_until_blocked(waiter)
                killed_at = time.monotonic()
                os.kill(peer.pid, signal.SIGKILL)
                waiter.join(10.0)
            finally:
                if enabled:
                    gc.enable()
            assert not waiter.is_alive(), f"{subject}: recv still blocked 10 s after the peer was killed"
            assert type(waiter.error) is PeerDied, (f"{subject}: recv gave {waiter.result!r} / {waiter.error!r}, "
                                                    "not PeerDied")
            assert peer.wait_exit() == -signal.SIGKILL
            return waiter.finished_at - killed_at
    finally:
        for obj in (mine, theirs):
            if obj is not None:
                obj.close()


@proof_only
@pytest.mark.timeout(120)
@pytest.mark.parametrize("subject", SUBJECTS, ids=str)
def test_detection_latency(subject: Subject, tmp: str, reliability: Recorder) -> None:
    """A SIGKILLed peer surfaces as PeerDied in a blocked recv within the design's bound."""
    _require(subject)
    probe_a, probe_b = ipckit.pair(f"{subject.scheme}://", **subject.options)
    caps = probe_a.capabilities
    probe_a.close()
    probe_b.close()
    if not (caps.detects_peer_close and caps.cross_process):
        reason = f"{subject.scheme}:// ends live in one process (capabilities.cross_process is False): no peer to kill"
        reliability.add("detection", subject.name, skipped=reason)
        pytest.skip(reason)
    lst = None if caps.inheritable else ipckit.listen(_url(subject, tmp, "listener"), **subject.options)
    try:
        latencies = [_kill_blocked_peer(subject, lst) for _ in range(KILLS)]
    finally:
        if lst is not None:
            lst.close()
    gate = DETECTION_GATE[subject.name]
    reliability.add("detection", subject.name, trials=len(latencies), gate_s=gate,
                    p50_s=round(_quantile(latencies, 0.5), 3), max_s=round(max(latencies), 3))
    _detections[subject.name] = latencies
    streams = [v for name, vals in _detections.items() if DETECTION_GATE[name] <= 1.0 for v in vals]
    rings = [v for name, vals in _detections.items() if DETECTION_GATE[name] > 1.0 for v in vals]
    shown = [f"{max(vals):.2f} s" if vals else "-" for vals in (streams, rings)]
    reliability.summary("detection", f"PeerDied ≤ {shown[0]} (streams) / {shown[1]} (shm/mq)")
    assert max(latencies) <= gate, f"{subject}: PeerDied after {max(latencies):.3f} s (gate {gate} s): {latencies}"
