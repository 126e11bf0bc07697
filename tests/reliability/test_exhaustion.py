"""Resource exhaustion on every backend (issue 14, docs/reliability.md "Resource exhaustion and orphans").

Every case runs in a child interpreter of its own, under ``unshare --ipc --mount`` (root): a private
IPC namespace (its own SysV objects, POSIX queues and ``kernel.*`` / ``fs.mqueue.*`` limits, which
can be lowered there without touching the machine) and a private mount namespace with a tmpfs of
its own on ``/dev/shm`` and an mqueue file system mounted where the child can list it.  So the
child's view of every kernel object is exactly what it made itself, and "nothing half-made is
left" is an exact comparison, not a guess on a machine where other programs use ipckit too.  The
limits are lowered only in that child, never in the pytest process.

One sweep shape for every limit: the limit is set to *what is in use + k* for k = 0, 1, 2, ...
and one operation (``pair()``, ``listen()``, the client side of ``connect()``) is tried at each step
until it succeeds, so the limit is met at every point inside the operation (first descriptor,
second, the segment, its semaphores, ...).  At every failing step the operation must raise
exactly :class:`ipckit.errors.ResourceExhausted` whose message names the limit, and afterwards
the descriptors, kernel objects and files must be exactly those from before the attempt.  With
the limit at its tightest, channels made before it still carry a round trip.  The limits:

* ``RLIMIT_NOFILE`` (every backend that uses descriptors; memory:// and sysv+shm:// need none, so
  the limit cannot be met there and the row says so);
* a full ``/dev/shm`` (every backend that puts something there: shm:// segments and semaphores,
  sysv+mq:// doorbells, which died of SIGBUS here before ring/doorbell.py reserved their page; the
  others are shown not to need it), plus an shm:// ring larger than the whole file system, which
  must be refused at creation (ipckit reserves the segment's pages with ``posix_fallocate``: no
  SIGBUS on first touch);
* ``kernel.shmmni`` and the set count of ``kernel.sem`` (sysv+shm://), ``kernel.msgmni`` and
  ``kernel.sem`` (sysv+mq://), ``fs.mqueue.queues_max`` (mq://; CAP_SYS_RESOURCE would let root
  past that one, so the mq child drops it if it holds it).

The client side of ``connect()`` is swept against a listener in another process (the limit is
this process's); ``listen()`` and ``pair()`` in this one.  The accept side: a listener here with
RLIMIT_NOFILE at in use + 0 while a client in another process dials; this process must survive
(ResourceExhausted naming the limit, or a timeout), and serve a later client.

Already covered per backend elsewhere, and kept: tests/backends/test_shm.py (full /dev/shm at
every step for shm://, the S7 big ring), test_sysv_mq.py (msgmni for sysv+mq:// pairs), test_mq.py
(RLIMIT_MSGQUEUE and queues_max for mq://), test_pipe.py (RLIMIT_NOFILE during the backend's
import), test_unix.py (EMFILE between eventfd and epoll, monkeypatched).  This file is the
cross-backend sweep with the figures for the report.

**Cycles.**  ``scaled(20, 2000)`` create/use/close cycles per backend (``scaled(3, 100)`` for zmq,
where a client's close after its peer's takes 2 s): ``pair()`` + a round trip, and for the named
backends ``listen()`` + ``connect()`` + ``accept()`` + a round trip, after warm-up cycles that let
one-time state (imports, zmq's context) settle.  After the cycles the descriptors, threads, child
processes and kernel objects must be the same as before them, and memory must not grow with the
cycle count: Python allocations (tracemalloc, over a second, traced run, proof stage only) by at
most ``_PY_BYTES_PER_CYCLE`` per cycle, RSS by at most ``_RSS_BYTES_PER_CYCLE`` per cycle plus
allocator slack (see their comments for why those numbers).

Section ``exhaustion`` of the reliability report: one row per backend and limit, one per backend
for the cycles.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_report import Recorder, proof_only, scaled

#: The proof stage's cycles take minutes per backend (sysv+shm: about 5 cycles/s; zmq: 2 s a cycle).
pytestmark = [pytest.mark.timeout(scaled(120, 1500)), proof_only]

TESTS_DIR = str(Path(__file__).resolve().parent.parent)
REPO = str(Path(TESTS_DIR).parent)

CYCLES = scaled(20, 2000)
#: zmq: the client's close() after the accepted end closed takes 2.0 s (measured, zmq+ipc and
#: zmq+tcp alike; docs/reliability.md), so a listen/connect/accept cycle takes about 2 s.
ZMQ_CYCLES = scaled(3, 100)
ZMQ_WARMUP = 2
WARMUP = 10
#: The traced (tracemalloc) run, proof stage only: it needs its own long warm-up (below), too slow
#: for the ordinary suite, which still checks descriptors, threads, children, objects and RSS.
TRACED = scaled(0, 500)
TRACED_WARMUP = 200

#: Python memory a cycle may leave behind on average (tracemalloc, after warm-up): less than one
#: small object per cycle (an empty dict is 64 B, a 1-byte bytes 34 B, a bound method 64 B), so a
#: leak of one small object per cycle fails, while what is left after the traced warm-up (free-list
#: sizes, a few cached entries: measured 0-11 B a cycle on shm, mq, sysv+mq) stays below it.
_PY_BYTES_PER_CYCLE = 32
#: RSS per cycle: a leaked mapping of the smallest ring or queue is at least one page (4096 B) per
#: cycle, a leaked descriptor's kernel memory is not in RSS at all (the descriptor check catches
#: it); the allocator keeps freed arenas mapped and grows them in 256 KiB steps, hence the slack.
_RSS_BYTES_PER_CYCLE = 1024
_RSS_SLACK = 4 << 20

SUBJECTS: dict[str, tuple[str, dict[str, Any]]] = {
    "memory": ("memory", {}), "pipe": ("pipe", {}), "fifo": ("fifo", {}), "unix": ("unix", {}),
    "unix-seqpacket": ("unix", {"type": "seqpacket"}), "shm": ("shm", {"capacity": 65536}),
    "sysv+shm": ("sysv+shm", {}), "mq": ("mq", {"depth": 4, "fragment_size": 256}), "sysv+mq": ("sysv+mq", {}),
    "zmq+ipc": ("zmq+ipc", {}), "zmq+tcp": ("zmq+tcp", {}),
}
NAMED = [s for s in SUBJECTS if s != "pipe"]
DIALED = [s for s in NAMED if s != "memory"]  # connect() from another process

#: (subject, limit) pairs of the kernel-object limits (the only backends that make such objects).
SYSCTL_CASES = [("sysv+shm", "kernel.shmmni"), ("sysv+shm", "kernel.sem"), ("sysv+mq", "kernel.msgmni"),
                ("sysv+mq", "kernel.sem"), ("mq", "fs.mqueue.queues_max")]

#: What the ResourceExhausted message must name, per limit.
NAMES = {"RLIMIT_NOFILE": ("RLIMIT_NOFILE", "open files"), "/dev/shm": ("/dev/shm",),
         "kernel.shmmni": ("kernel.shmmni",), "kernel.sem": ("kernel.sem",), "kernel.msgmni": ("kernel.msgmni",),
         "fs.mqueue.queues_max": ("queues_max",)}

# --------------------------------------------------------------------------- the child side
_MAX_STEPS = 64


def _url(scheme: str, root: str, label: str) -> str:
    if scheme == "fifo":
        return f"fifo://{root}/ep/{label}"
    if scheme == "unix":
        return f"unix://{root}/ep/{label}.sock"
    if scheme == "zmq+ipc":
        return f"zmq+ipc://{root}/ep/{label}.ipc"
    if scheme == "zmq+tcp":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"zmq+tcp://127.0.0.1:{s.getsockname()[1]}"
    return f"{scheme}://ex-{label}"


class _Child:
    """The child's view of what exists: descriptors, threads, children, kernel objects, files."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.mq_dir = os.path.join(root, "mq")
        self.n = 0

    def fds(self) -> list[str]:
        out = []
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue  # the listing's own descriptor, closed by now
            if not target.startswith(("/proc/", "/proc/self")):
                out.append(target)
        return sorted(out)

    def top_fd(self) -> int:
        return max(int(n) for n in os.listdir("/proc/self/fd"))

    def threads(self) -> int:
        return len(os.listdir("/proc/self/task"))

    def children(self) -> int:
        n = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as f:
                    n += len(f.read().split())
            except FileNotFoundError:
                continue  # a thread that ended meanwhile has no children left
        return n

    def objects(self) -> list[str]:
        out = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n != "filler"]
        for kind in ("msg", "sem", "shm"):
            with open(f"/proc/sysvipc/{kind}") as f:
                out += [f"sysv-{kind} " + " ".join(r.split()[:2]) for r in f.read().splitlines()[1:]]
        out += [f"mqueue {n}" for n in os.listdir(self.mq_dir)]
        for sub in ("run", "tmp", "ep"):
            for dirpath, dirnames, filenames in os.walk(os.path.join(self.root, sub)):
                out += [os.path.join(dirpath, n) for n in dirnames + filenames]
        return sorted(out)

    def count(self, kind: str) -> int:
        """Objects of one kind in use (what a kernel limit counts)."""
        if kind == "fs.mqueue.queues_max":
            return len(os.listdir(self.mq_dir))
        table = {"kernel.shmmni": "shm", "kernel.msgmni": "msg", "kernel.sem": "sem"}[kind]
        with open(f"/proc/sysvipc/{table}") as f:
            return len(f.read().splitlines()) - 1

    def state(self) -> dict[str, Any]:
        return {"fds": self.fds(), "objects": self.objects(), "threads": self.threads(),
                "children": self.children()}

    def label(self) -> str:
        self.n += 1
        return f"c{self.n}"


def _close_all(made: list[Any]) -> None:
    for obj in reversed(made):
        obj.close()


def _round_trip(a: Any, b: Any, payload: bytes = b"still works") -> bool:
    a.send_bytes(payload, timeout=5)
    ok = bool(b.recv_bytes(timeout=5) == payload)
    b.send_bytes(payload[::-1], timeout=5)
    return ok and bool(a.recv_bytes(timeout=5) == payload[::-1])


class _Limit:
    """One limit the child can set to *in use + k* and put back."""

    def __init__(self, name: str, child: _Child) -> None:
        self.name = name
        self.child = child
        if name == "RLIMIT_NOFILE":
            self.saved: Any = resource.getrlimit(resource.RLIMIT_NOFILE)
        elif name == "/dev/shm":
            self.saved = None
        else:
            self.path = "/proc/sys/" + name.replace(".", "/")
            with open(self.path) as f:
                self.saved = f.read().split()

    def lower(self, k: int) -> None:
        if self.name == "RLIMIT_NOFILE":
            # A new descriptor gets the lowest free number; at "highest open + 1 + k" at most k more
            # fit (fewer holes below, as many as there are).
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.child.top_fd() + 1 + k, self.saved[1]))
        elif self.name == "/dev/shm":
            st = os.statvfs("/dev/shm")
            fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                if st.f_bavail > k:
                    os.posix_fallocate(fd, 0, (st.f_bavail - k) * st.f_frsize)
            finally:
                os.close(fd)
        else:
            used = self.child.count(self.name)
            values = list(self.saved)
            if self.name == "kernel.sem":
                values[3] = str(used + k)  # SEMMNI: the number of semaphore sets
            else:
                values = [str(used + k)]
            with open(self.path, "w") as f:
                f.write(" ".join(values))

    def restore(self) -> None:
        if self.name == "RLIMIT_NOFILE":
            resource.setrlimit(resource.RLIMIT_NOFILE, self.saved)
        elif self.name == "/dev/shm":
            try:
                os.unlink("/dev/shm/filler")
            except FileNotFoundError:
                pass
        else:
            with open(self.path, "w") as f:
                f.write(" ".join(self.saved))


def _sweep(child: _Child, scheme: str, opts: dict[str, Any], limit: _Limit, op: str,
           earlier: list[tuple[Any, Any]], server: str | None = None) -> dict[str, Any]:
    """Try *op* at in-use + k for k = 0, 1, ... until it succeeds; what happened at each step."""
    import ipckit
    from ipckit.errors import ResourceExhausted

    steps: list[dict[str, Any]] = []
    tight_works: bool | None = None
    for k in range(_MAX_STEPS):
        before = child.state()
        made: list[Any] = []
        outcome = "ok"
        message = ""
        # Where it was, should the child die (libzmq aborts, SIGBUS): the parent shows stderr.
        sys.stderr.write(f"trying {op} at {limit.name} in use + {k}\n")
        sys.stderr.flush()
        limit.lower(k)
        try:
            if k == 0 and earlier:
                tight_works = all(_round_trip(a, b) for a, b in earlier)
            if op == "pair":
                made.extend(ipckit.pair(scheme, **opts))
            elif op == "listen":
                made.append(ipckit.listen(_url(scheme, child.root, child.label()), **opts))
            elif op == "big":  # a ring larger than the whole of /dev/shm
                made.extend(ipckit.pair("shm", capacity=4 << 20))
            else:  # the client side at the limit; the listener is another process's, not limited
                assert server is not None
                made.append(ipckit.connect(server, timeout=5, **opts))
        except ResourceExhausted as exc:
            outcome, message = "ResourceExhausted", str(exc)
        except BaseException as exc:  # recorded, and the parent fails the test with it
            outcome, message = f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)
        finally:
            limit.restore()
        if outcome == "ok" and len(made) == 2:
            _round_trip(made[0], made[1])
        elif outcome == "ok" and op == "connect":
            made[0].send_bytes(b"echo", timeout=5)
            assert made[0].recv_bytes(timeout=5) == b"echo"
        _close_all(made)
        # Threads and descriptors of ours that a closed channel hands to its finalizers: a moment.
        settle = time.monotonic() + (1.0 if op == "connect" else 0.0)
        while True:
            after = child.state()
            left = {key: (sorted(set(after[key]) - set(before[key])) if isinstance(after[key], list)
                          else after[key] - before[key])
                    for key in ("fds", "objects", "threads", "children")
                    if not (key == "objects" and op == "connect")}
            if not any(left.values()) or time.monotonic() > settle:
                break
            time.sleep(0.01)
        steps.append({"k": k, "outcome": outcome, "message": message,
                      "left": {key: v for key, v in left.items() if v}})
        if outcome == "ok" or op == "big":
            break
    return {"op": op, "steps": steps, "tight_works": tight_works}


def _earlier(scheme: str, opts: dict[str, Any], child: _Child) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Channels made before any limit is lowered: a pair, and a connected pair for named backends."""
    import ipckit

    a, b = ipckit.pair(scheme, **opts)
    pairs = [(a, b)]
    held: list[Any] = [a, b]
    if scheme != "pipe":
        lst = ipckit.listen(_url(scheme, child.root, "early-l"), **opts)
        c = ipckit.connect(lst.url, timeout=5, **opts)
        s = lst.accept(timeout=5)
        pairs.append((c, s))
        held += [lst, c, s]
    return pairs, held


def _warm(scheme: str, opts: dict[str, Any], child: _Child) -> None:
    """One of each operation first: imports and one-time state are not charged to the sweep."""
    pairs, held = _earlier(scheme, opts, child)
    for a, b in pairs:
        _round_trip(a, b)
    _close_all(held)


def _cycle(scheme: str, opts: dict[str, Any], child: _Child, named: bool) -> None:
    import ipckit

    a, b = ipckit.pair(scheme, **opts)
    with a, b:
        _round_trip(a, b, b"cycle")
    if named:
        lst = ipckit.listen(_url(scheme, child.root, child.label()), **opts)
        with lst, ipckit.connect(lst.url, timeout=5, **opts) as c, lst.accept(timeout=5) as s:
            _round_trip(c, s, b"cycle")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cycles(scheme: str, opts: dict[str, Any], child: _Child, n: int, traced: int) -> dict[str, Any]:
    import gc
    import tracemalloc

    named = scheme != "pipe"
    for _ in range(ZMQ_WARMUP if scheme.startswith("zmq") else WARMUP):
        _cycle(scheme, opts, child, named)
    gc.collect()
    before, rss0 = child.state(), _rss()
    start = time.perf_counter()
    for _ in range(n):
        _cycle(scheme, opts, child, named)
    elapsed = time.perf_counter() - start
    gc.collect()
    after, rss1 = child.state(), _rss()
    if not traced:  # the ordinary suite, and zmq (too slow for a traced run to mean anything per cycle)
        return {"cycles": n, "seconds": elapsed, "named": named,
                "fds": [sorted(set(before["fds"]) - set(after["fds"])), sorted(set(after["fds"]) - set(before["fds"]))],
                "fd_growth": len(after["fds"]) - len(before["fds"]),
                "objects_growth": sorted(set(after["objects"]) - set(before["objects"])),
                "threads_growth": after["threads"] - before["threads"],
                "children_growth": after["children"] - before["children"],
                "rss_growth": rss1 - rss0, "traced_cycles": 0, "py_growth": 0}
    tracemalloc.start()
    # Traced from here: the caches and free lists that fill in the first couple of hundred cycles
    # (measured: 80 B a cycle over the first 200, then under 5) fill before the measurement.
    for _ in range(TRACED_WARMUP):
        _cycle(scheme, opts, child, named)
    gc.collect()
    py0 = tracemalloc.get_traced_memory()[0]
    for _ in range(traced):
        _cycle(scheme, opts, child, named)
    gc.collect()
    py1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"cycles": n, "seconds": elapsed, "named": named,
            "fds": [sorted(set(before["fds"]) - set(after["fds"])), sorted(set(after["fds"]) - set(before["fds"]))],
            "fd_growth": len(after["fds"]) - len(before["fds"]),
            "objects_growth": sorted(set(after["objects"]) - set(before["objects"])),
            "threads_growth": after["threads"] - before["threads"],
            "children_growth": after["children"] - before["children"],
            "rss_growth": rss1 - rss0, "traced_cycles": traced, "py_growth": py1 - py0}


def _drop_cap_sys_resource() -> None:
    """Without CAP_SYS_RESOURCE, root meets fs.mqueue.queues_max like any user (ipc/mqueue.c)."""
    import ctypes

    cap_sys_resource = 24
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    if not eff & (1 << cap_sys_resource):
        return  # not held here (a container may have dropped it already)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, cap_sys_resource, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    hdr = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    data = (Data * 2)()
    if libc.capget(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0].effective &= ~(1 << cap_sys_resource)
    data[0].permitted &= ~(1 << cap_sys_resource)
    if libc.capset(ctypes.byref(hdr), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


#: The listener the client-side sweep dials: another process (the limit is lowered only in the
#: sweeping one), serving one connection at a time with an echo, until its stdin closes.  Its own
#: objects change as it serves (a sysv+mq:// listener makes the next connection's queue and
#: doorbells ahead of time), so a connect step compares this process's descriptors only and the
#: objects are compared once the server has closed its listener: whatever a failed connect left
#: is still there then.
_ECHO = r"""
import json, sys, threading
import ipckit
from ipckit.errors import ChannelTimeout, IPCError
lst = ipckit.listen(sys.argv[1], **json.loads(sys.argv[2]))
print("READY", lst.url, flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    try:
        ch = lst.accept(timeout=0.1)
    except IPCError:  # a timeout, or the limit the other process is sweeping (the same /dev/shm)
        continue
    with ch:
        while not stop.is_set():
            try:
                ch.send_bytes(ch.recv_bytes(timeout=0.1), timeout=10)
            except ChannelTimeout:
                continue
            except IPCError:
                break
lst.close()  # cleanly: what the listener had prepared goes with it
"""


#: A client in another process: connects when told (a line on stdin), sends one message and
#: waits for its echo; prints what happened.
_DIAL = r"""
import json, sys
import ipckit
sys.stdin.readline()
try:
    with ipckit.connect(sys.argv[1], timeout=5, **json.loads(sys.argv[2])) as c:
        c.send_bytes(b"one", timeout=5)
        print("echoed" if c.recv_bytes(timeout=8) == b"one" else "wrong", flush=True)
except ipckit.IPCError as exc:
    print(type(exc).__name__, flush=True)
"""


#: Listeners that accept a single peer (UnsupportedOperation / ChannelBusy after it).
_SINGLE_PEER = {"shm", "sysv+shm", "mq"}


def _accept_at_limit(scheme: str, opts: dict[str, Any], child: _Child) -> dict[str, Any]:
    """A listener in this process, RLIMIT_NOFILE at in use + 0, a client in another process dials:
    this process must survive the accept (ResourceExhausted naming the limit, or a timeout), and
    once the limit is back a later client is served."""
    import ipckit
    from ipckit.errors import ChannelTimeout, IPCError, ResourceExhausted

    base = child.objects()
    lst = ipckit.listen(_url(scheme, child.root, "acc"), **opts)

    def dial() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", _DIAL, lst.url, json.dumps(opts)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    first = dial()  # started (its interpreter and ipckit loaded) before the limit is lowered
    limit = _Limit("RLIMIT_NOFILE", child)
    limit.lower(0)
    # The holes below the highest descriptor too: not one descriptor free, whatever the layout.
    fill: list[int] = []
    try:
        while True:
            fill.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    sys.stderr.write(f"accept at RLIMIT_NOFILE in use + 0 ({len(fill)} holes filled)\n")
    sys.stderr.flush()
    outcome, message = "accepted", ""
    got = None
    try:
        assert first.stdin is not None
        first.stdin.write("go\n")
        first.stdin.flush()
        got = lst.accept(timeout=3)
    except ResourceExhausted as exc:
        outcome, message = "ResourceExhausted", str(exc)
    except ChannelTimeout as exc:
        outcome, message = "timeout", str(exc)
    except BaseException as exc:
        outcome, message = f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)
    finally:
        for fd in fill:
            os.close(fd)
        limit.restore()
    def serve(client: subprocess.Popen[str], ch: Any) -> bool:
        """Echo for whoever comes until *client* is done (the backends with one client at a time
        take the next only after this one); whether anyone was accepted."""
        served = ch is not None
        deadline = time.monotonic() + 20
        while client.poll() is None and time.monotonic() < deadline:
            try:
                ch = ch if ch is not None else lst.accept(timeout=0.5)
            except IPCError:
                continue
            served = True
            with ch:
                try:
                    ch.send_bytes(ch.recv_bytes(timeout=5), timeout=5)
                except IPCError:
                    pass
            ch = None
        return served

    if serve(first, got) and scheme in _SINGLE_PEER:  # its one peer came: a new listener for the next
        lst.close()
        lst = ipckit.listen(_url(scheme, child.root, "acc2"), **opts)
    second = dial()
    assert second.stdin is not None
    second.stdin.write("go\n")
    second.stdin.flush()
    serve(second, None)
    results = []
    for proc in (first, second):
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=10)
        results.append(out.strip())
    lst.close()
    time.sleep(0.2)
    return {"outcome": outcome, "message": message, "first": results[0], "second": results[1],
            "left_at_end": sorted(set(child.objects()) - set(base))}


def child_main(spec_json: str) -> None:
    """Run in the namespaced child: *spec* says which case; prints one JSON result line."""
    spec = json.loads(spec_json)
    root, scheme, opts = spec["root"], spec["scheme"], spec["opts"]
    # The host's mq budget of this uid (RLIMIT_MSGQUEUE is per user, other runs share it) stays
    # out of the way: up to the hard limit.
    hard = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1]
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (hard, hard))
    if spec.get("drop_cap"):
        _drop_cap_sys_resource()
    child = _Child(root)
    _warm(scheme, opts, child)
    result: dict[str, Any] = {}
    if spec["kind"] == "cycles":
        result = _cycles(scheme, opts, child, spec["cycles"], spec["traced"])
    elif spec["kind"] == "accept":
        result = _accept_at_limit(scheme, opts, child)
    else:
        limit = _Limit(spec["limit"], child)
        server = None
        base = child.objects()
        if "connect" in spec["ops"]:
            url = _url(scheme, root, "echo")
            server = subprocess.Popen([sys.executable, "-c", _ECHO, url, json.dumps(opts)], stdout=subprocess.PIPE,
                                      stdin=subprocess.PIPE, text=True)
            assert server.stdout is not None and server.stdout.readline().split() == ["READY", url]
        earlier, held = _earlier(scheme, opts, child)
        try:
            sweeps = [_sweep(child, scheme, opts, limit, op, earlier, url if server else None) for op in spec["ops"]]
            works = all(_round_trip(a, b) for a, b in earlier)
        finally:
            _close_all(held)
            if server is not None:
                assert server.stdin is not None and server.stdout is not None
                server.stdin.close()  # it ends on EOF
                server.wait(10)
                server.stdout.close()
        left = sorted(set(child.objects()) - set(base))
        result = {"sweeps": sweeps, "works_after": works, "left_at_end": left,
                  "server_rc": None if server is None else server.returncode}
    print("RESULT " + json.dumps(result), flush=True)


_BOOT = r"""
set -e
mount -t tmpfs -o size={size} tmpfs /dev/shm
mount -t mqueue none {root}/mq
exec {python} -c '{main}' {tests} '{spec}'
"""
_MAIN = ("import sys; sys.path[:0] = [sys.argv[1]]; from reliability import test_exhaustion as m; "
         "m.child_main(sys.argv[2])")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: zmq+ipc:// endpoints (and its pair() under XDG_RUNTIME_DIR)
    must fit in sun_path's 108 bytes, which pytest's tmp_path does not leave room for."""
    d = tempfile.mkdtemp(prefix="ikx-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d)


def _run_child(tmp_path: Path, spec: dict[str, Any], shm_size: str = "64m", timeout: float = 100,
               case: tuple[str, str, Recorder] | None = None) -> dict[str, Any]:
    """Run one case in the namespaced child; *case* (limit, subject, recorder): a child that dies
    counts as a failed case of that limit in the summary."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for private IPC and mount namespaces")
    root = str(tmp_path)
    for sub in ("mq", "run", "tmp", "ep"):
        os.mkdir(os.path.join(root, sub), 0o700)
    spec = {**spec, "root": root}
    script = _BOOT.format(size=shm_size, root=root, python=sys.executable, tests=TESTS_DIR, main=_MAIN,
                          spec=json.dumps(spec).replace("'", "'\\''"))
    env = {**os.environ, "XDG_RUNTIME_DIR": os.path.join(root, "run"), "TMPDIR": os.path.join(root, "tmp"),
           "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(["unshare", "--ipc", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if case is not None and (proc.returncode != 0 or not lines):
        _named.setdefault(case[0], {})[case[1]] = (True, False)
        _summarize(case[2])
    assert proc.returncode == 0 and lines, (
        f"child exited with {proc.returncode} (negative: killed by that signal, -7 is SIGBUS, -6 SIGABRT)\n"
        f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


# --------------------------------------------------------------------------- the parent side
def _require(subject: str) -> tuple[str, dict[str, Any]]:
    scheme, opts = SUBJECTS[subject]
    if not ipckit_available(scheme):
        pytest.skip(f"{scheme}:// does not work here")
    return scheme, opts


def ipckit_available(scheme: str) -> bool:
    import ipckit

    return bool(ipckit.available_backends().get(scheme, False))


#: limit -> subject -> (the limit was met, every check held), for the summary.
_named: dict[str, dict[str, tuple[bool, bool]]] = {}


def _check(subject: str, limit: str, result: dict[str, Any], reliability: Recorder,
           must_meet: bool) -> dict[str, Any]:
    """The sweeps' verdicts, recorded (row and summary) before the test fails on any of them."""
    row: dict[str, Any] = {"limit": limit}
    problems: list[str] = []
    met_any = False
    for sweep in result["sweeps"]:
        op, steps = sweep["op"], sweep["steps"]
        failures = [s for s in steps if s["outcome"] != "ok"]
        for s in steps:
            if s["outcome"] not in ("ok", "ResourceExhausted"):
                problems.append(f"{op} at in use + {s['k']}: {s['outcome']}: {s['message']}")
            if s["left"]:
                problems.append(f"{op} at in use + {s['k']} ({s['outcome']}) left {s['left']}")
        for s in failures:
            if s["outcome"] == "ResourceExhausted" and not any(n in s["message"] for n in NAMES[limit]):
                problems.append(f"{op}: the message does not name {limit}: {s['message']}")
        if op == "big" and not failures:
            problems.append("a ring larger than /dev/shm was made")
        if op != "big" and steps[-1]["outcome"] != "ok":
            problems.append(f"{op} never succeeded ({len(steps)} steps): {steps[-1]}")
        if failures:
            met_any = True
            if sweep["tight_works"] is not True:
                problems.append(f"earlier channels failed with {limit} at its tightest")
        row[op] = {"failed_steps": len(failures), "needed": steps[-1]["k"] if op != "big" else None,
                   "message": failures[0]["message"] if failures else None}
    if result["works_after"] is not True:
        problems.append("earlier channels failed after the sweeps")
    if result["left_at_end"]:
        problems.append(f"left after everything closed: {result['left_at_end']}")
    if result["server_rc"] not in (None, 0):
        problems.append(f"the echo server exited with {result['server_rc']}")
    if must_meet and not met_any:
        problems.append(f"{limit} was never met")
    row["met"] = met_any
    row["problems"] = problems
    _named.setdefault(limit, {})[subject] = (met_any, not problems)
    reliability.add("exhaustion", subject, **row)
    _summarize(reliability)
    assert not problems, f"{subject} at {limit}: " + "; ".join(problems)
    return row


_cycle_rows: dict[str, dict[str, Any]] = {}


def _summarize(reliability: Recorder) -> None:
    cases = [v for by in _named.values() for v in by.values() if v[0]]
    per_limit = ", ".join(f"{lim} x{sum(1 for met, _ in by.values() if met)}" for lim, by in sorted(_named.items()))
    parts = [f"ResourceExhausted named the limit, nothing left {sum(1 for _, ok in cases if ok)}/{len(cases)} "
             f"({per_limit})"]
    if _cycle_rows:
        n = max(r["cycles"] for r in _cycle_rows.values())
        fd = sum(abs(r["fd_growth"]) for r in _cycle_rows.values())
        obj = sum(len(r["objects_growth"]) for r in _cycle_rows.values())
        th = sum(abs(r["threads_growth"]) + abs(r["children_growth"]) for r in _cycle_rows.values())
        parts.append(f"{n} cycles x {len(_cycle_rows)} backends: {fd} fd/{th} thread+process/{obj} object growth")
    reliability.summary("exhaustion", "exhaustion: " + ", ".join(parts))


#: Known failures, each a bug in a backend this file does not own (docs/reliability.md lists them):
#: strict xfails, so the marker must go the day it is fixed.
KNOWN: dict[tuple[str, str], str] = {
    ("accept", "zmq+ipc"): "zmq+ipc: a listener whose process has no descriptor free is aborted (SIGABRT) by libzmq "
                           "when a client dials: 'Too many open files (src/ipc_listener.cpp:297)', libzmq 4.3's ipc "
                           "listener asserts on EMFILE from accept(2) in its io thread (its tcp listener does not)",
}


def _known(kind: str, backend: str) -> list[pytest.MarkDecorator]:
    reason = KNOWN.get((kind, backend))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.fs("FS16")
@pytest.mark.parametrize("backend", [pytest.param(b, marks=_known("rlimit", b)) for b in SUBJECTS])
def test_rlimit_nofile(backend: str, short_dir: Path, reliability: Recorder) -> None:
    """RLIMIT_NOFILE at in-use + k for each operation: ResourceExhausted naming it, nothing left,
    earlier channels still work.  memory:// and sysv+shm:// use no descriptor per channel."""
    scheme, opts = _require(backend)
    # memory:// connects within one process only: no other process to dial.
    ops = ["pair"] + (["listen"] if backend in NAMED else []) + (["connect"] if backend in DIALED else [])
    result = _run_child(short_dir, {"kind": "limit", "scheme": scheme, "opts": opts, "limit": "RLIMIT_NOFILE",
                                   "ops": ops}, case=("RLIMIT_NOFILE", backend, reliability))
    row = _check(backend, "RLIMIT_NOFILE", result, reliability, must_meet=backend not in ("memory", "sysv+shm"))
    if backend == "memory":
        assert not row["met"]  # no descriptor at all: if it starts needing some, look again


@pytest.mark.fs("FS16")
@pytest.mark.parametrize("backend", [pytest.param(b, marks=_known("shm", b)) for b in SUBJECTS])
def test_full_dev_shm(backend: str, short_dir: Path, reliability: Recorder) -> None:
    """/dev/shm full up to k pages free: ResourceExhausted naming /dev/shm (backends that put
    something there), nothing left; an shm:// ring larger than /dev/shm is refused at creation."""
    scheme, opts = _require(backend)
    ops = ["pair"] + (["listen"] if backend in NAMED else []) + (["connect"] if backend in DIALED else []) + \
        (["big"] if backend == "shm" else [])
    result = _run_child(short_dir, {"kind": "limit", "scheme": scheme, "opts": opts, "limit": "/dev/shm",
                                   "ops": ops}, shm_size="2m", case=("/dev/shm", backend, reliability))
    _check(backend, "/dev/shm", result, reliability, must_meet=backend in ("shm", "sysv+mq"))


@pytest.mark.fs("FS16")
@pytest.mark.parametrize(("backend", "limit"), [pytest.param(b, lim, marks=_known("sysctl", b), id=f"{b}-{lim}")
                                               for b, lim in SYSCTL_CASES])
def test_ipc_namespace_limit(backend: str, limit: str, short_dir: Path, reliability: Recorder) -> None:
    """A kernel object limit lowered in the child's private IPC namespace to in-use + k."""
    scheme, opts = _require(backend)
    result = _run_child(short_dir, {"kind": "limit", "scheme": scheme, "opts": opts, "limit": limit,
                                   "ops": ["pair", "listen", "connect"], "drop_cap": backend == "mq"},
                        case=(limit, backend, reliability))
    _check(backend, limit, result, reliability, must_meet=True)


@pytest.mark.fs("FS16")
@pytest.mark.parametrize("backend", list(SUBJECTS))
def test_cycles_do_not_grow(backend: str, short_dir: Path, reliability: Recorder) -> None:
    scheme, opts = _require(backend)
    zmq = scheme.startswith("zmq")
    r = _run_child(short_dir, {"kind": "cycles", "scheme": scheme, "opts": opts,
                               "cycles": ZMQ_CYCLES if zmq else CYCLES, "traced": 0 if zmq else TRACED},
                   timeout=110 if not reliability.proof else 1400)
    rate = r["cycles"] / r["seconds"]
    row = {"cycles": r["cycles"], "named": r["named"], "cycles_per_s": round(rate, 1),
           "fd_growth": r["fd_growth"], "threads_growth": r["threads_growth"],
           "children_growth": r["children_growth"], "objects_growth": r["objects_growth"],
           "rss_growth_kib": round(r["rss_growth"] / 1024, 1),
           "py_bytes_per_cycle": round(r["py_growth"] / r["traced_cycles"], 2) if r["traced_cycles"] else None,
           "traced_cycles": r["traced_cycles"]}
    _cycle_rows[backend] = row
    reliability.add("exhaustion", backend, kind="cycles", **row)
    _summarize(reliability)
    assert r["fds"] == [[], []], f"descriptors before/after differ: {r['fds']}"
    assert r["threads_growth"] == 0 and r["children_growth"] == 0, row
    assert r["objects_growth"] == [], row
    if r["traced_cycles"]:
        assert r["py_growth"] <= _PY_BYTES_PER_CYCLE * r["traced_cycles"], row
    assert r["rss_growth"] <= _RSS_BYTES_PER_CYCLE * r["cycles"] + _RSS_SLACK, row


@pytest.mark.fs("FS16")
@pytest.mark.parametrize("backend", [pytest.param(b, marks=_known("accept", b)) for b in DIALED])
def test_accept_at_rlimit_nofile(backend: str, short_dir: Path, reliability: Recorder) -> None:
    """The listener's process at its descriptor limit while a client from another process dials:
    the process survives (a crash is a negative exit status), accept raises ResourceExhausted naming
    the limit or times out, a client after the limit is lifted is served, and nothing is left."""
    scheme, opts = _require(backend)
    r = _run_child(short_dir, {"kind": "accept", "scheme": scheme, "opts": opts},
                   case=("RLIMIT_NOFILE (accept)", backend, reliability))
    reliability.add("exhaustion", backend, kind="accept at RLIMIT_NOFILE", outcome=r["outcome"],
                    message=r["message"] or None, first_client=r["first"], later_client=r["second"])
    ok = (r["outcome"] in ("accepted", "ResourceExhausted", "timeout") and r["second"] == "echoed"
          and r["left_at_end"] == []
          and (r["outcome"] != "ResourceExhausted" or any(n in r["message"] for n in NAMES["RLIMIT_NOFILE"])))
    if r["outcome"] != "accepted":  # the limit was met
        _named.setdefault("RLIMIT_NOFILE (accept)", {})[backend] = (True, ok)
        _summarize(reliability)
    assert r["outcome"] in ("accepted", "ResourceExhausted", "timeout"), r
    if r["outcome"] == "ResourceExhausted":
        assert any(n in r["message"] for n in NAMES["RLIMIT_NOFILE"]), r["message"]
    assert r["second"] == "echoed", r
    assert r["left_at_end"] == [], r
