"""The baselines: what an ipckit channel is compared against, each behind the :class:`Link` shape.

``mp.Pipe`` and ``mp.Queue`` (``multiprocessing``), ``os.pipe`` with a 4-byte length prefix and
with ipckit's own 20-byte header (``os.pipe+hdr20``), an AF_UNIX ``socketpair`` (``unix.socket``),
and, when installed, ``faster-fifo``, ``pyzmq``, ``iceoryx2`` and the raw kernel message queues with
the queue kit's fragment framing (``sysv_ipc.mq``, ``posix_ipc.mq``: what sysv+mq:// and mq:// are
compared against).  ``memcpy`` is a baseline name too, but the runner measures it in one process.
Nothing here imports an ipckit channel: a baseline measures the primitive alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from .subject import SPAWN, Buffer, ConnLink, Link, Prepared, SkippedSubject, Subject

__all__ = [
    "BASELINES",
    "KNOWN_BASELINES",
    "baseline_subjects",
    "select_baselines",
    "InheritedFd",
    "RawPipeSubject",
    "RawUnixSubject",
    "MpPipeSubject",
    "MpQueueSubject",
    "FasterFifoSubject",
    "IceoryxSubject",
    "PyzmqSubject",
    "SysvQueueSubject",
    "PosixQueueSubject",
]

#: Baseline names, in report order.
BASELINES = ["mp.Pipe", "mp.Queue", "os.pipe", "os.pipe+hdr20", "unix.socket", "faster-fifo", "pyzmq", "pyzmq.tcp",
             "iceoryx2", "sysv_ipc.mq", "posix_ipc.mq"]
#: What ``--baselines`` accepts: the cross-process baselines and the in-process ``memcpy``.
KNOWN_BASELINES = [*BASELINES, "memcpy"]


# ---------------------------------------------------------------------------------------- fds
class InheritedFd:
    """A descriptor that travels to a spawned child as a ``multiprocessing.Process`` argument."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Callable[[Any], InheritedFd], tuple[Any]]:
        from multiprocessing import reduction

        return _rebuild_fd, (reduction.DupFd(self.fd),)


def _rebuild_fd(dup: Any) -> InheritedFd:
    return InheritedFd(int(dup.detach()))


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_U32 = struct.Struct("<I")
# The same 20-byte layout as ipckit's stream framing: magic, version, flags, sequence, length, crc32.
_HDR20 = struct.Struct("<2sBBIQI")
_MAGIC = b"\xa9K"
_SMALL = 64 * 1024


class _FdFraming:
    """Length-prefixed messages over a pair of blocking descriptors (``os.read``/``os.write``)."""

    def __init__(self, rfd: int, wfd: int, header20: bool) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._sseq = 0
        self._rseq = 0
        if header20:
            self.send = self._send20  # type: ignore[method-assign]
            self.recv = self._recv20  # type: ignore[method-assign]

    def _read_exact(self, n: int) -> Buffer:
        rfd = self.rfd
        if n <= _SMALL:
            data = os.read(rfd, n)
            if len(data) == n:
                return data
            if not data:
                raise EOFError("peer closed")
            buf = bytearray(n)
            buf[: len(data)] = data
            pos = len(data)
        else:
            buf = bytearray(n)
            pos = 0
        view = memoryview(buf)
        readv = os.readv
        while pos < n:
            k = readv(rfd, [view[pos:]])
            if k == 0:
                raise EOFError("peer closed")
            pos += k
        return buf

    def _write_all(self, head: bytes, data: Buffer) -> None:
        n = len(data)
        if n <= _SMALL:
            out = head + data
            k = os.write(self.wfd, out)
            if k == len(out):
                return
            rest = memoryview(out)[k:]
        else:
            k = os.writev(self.wfd, [head, data])
            if k == len(head) + n:
                return
            rest = memoryview(head + bytes(data))[k:]
        while rest:
            k = os.write(self.wfd, rest)
            rest = rest[k:]

    def send(self, data: Buffer) -> None:
        self._write_all(_U32.pack(len(data)), data)

    def recv(self) -> Buffer:
        (n,) = _U32.unpack(self._read_exact(4))
        return self._read_exact(n) if n else b""

    def _send20(self, data: Buffer) -> None:
        self._write_all(_HDR20.pack(_MAGIC, 1, 0, self._sseq, len(data), 0), data)
        self._sseq = (self._sseq + 1) & 0xFFFFFFFF

    def _recv20(self) -> Buffer:
        magic, version, _flags, seq, n, _crc = _HDR20.unpack(self._read_exact(20))
        if magic != _MAGIC or version != 1 or seq != self._rseq:
            raise ValueError("bad frame header")
        self._rseq = (self._rseq + 1) & 0xFFFFFFFF
        return self._read_exact(n) if n else b""

    def close(self) -> None:
        _close_fds(self.rfd, self.wfd)
        self.rfd = self.wfd = -1

    def abort(self) -> None:
        self.close()


@dataclass
class _FdChild:
    rfd: InheritedFd
    wfd: InheritedFd
    header20: bool

    def open(self) -> Link:
        return _FdFraming(self.rfd.fd, self.wfd.fd, self.header20)


@dataclass
class RawPipeSubject(Subject):
    header20: bool = False
    pipe_size: int | None = None

    def prepare(self) -> Prepared:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        if self.pipe_size:
            import fcntl

            for fd in (w1, w2):
                try:
                    fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), self.pipe_size)
                except OSError:
                    pass
        parent = _FdFraming(r1, w2, self.header20)
        child = _FdChild(InheritedFd(r2), InheritedFd(w1), self.header20)
        pending = [r2, w1]

        def close_child_ends() -> None:  # once: a second close could hit a reused descriptor number
            fds = list(pending)
            pending.clear()
            _close_fds(*fds)

        return Prepared(child, lambda _t, _g: parent, after_start=close_child_ends, cleanup=close_child_ends)


class _SockFraming:
    """4-byte length prefix over a blocking AF_UNIX stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _read_exact(self, n: int) -> Buffer:
        sock = self.sock
        if n <= _SMALL:
            data = sock.recv(n)
            if len(data) == n:
                return data
            if not data:
                raise EOFError("peer closed")
            buf = bytearray(n)
            buf[: len(data)] = data
            pos = len(data)
        else:
            buf = bytearray(n)
            pos = 0
        view = memoryview(buf)
        while pos < n:
            k = sock.recv_into(view[pos:])
            if k == 0:
                raise EOFError("peer closed")
            pos += k
        return buf

    def send(self, data: Buffer) -> None:
        head = _U32.pack(len(data))
        if len(data) <= _SMALL:
            self.sock.sendall(head + data)
            return
        k = self.sock.sendmsg([head, data])
        if k < 4 + len(data):
            self.sock.sendall(memoryview(head + bytes(data))[k:])

    def recv(self) -> Buffer:
        (n,) = _U32.unpack(self._read_exact(4))
        return self._read_exact(n) if n else b""

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@dataclass
class _SockChild:
    fd: InheritedFd

    def open(self) -> Link:
        return _SockFraming(socket.socket(fileno=self.fd.fd))


@dataclass
class RawUnixSubject(Subject):
    def prepare(self) -> Prepared:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = _SockFraming(a)
        return Prepared(_SockChild(InheritedFd(b.fileno())), lambda _t, _g: parent, after_start=b.close,
                        cleanup=b.close)



# ------------------------------------------------------------------------- multiprocessing
@dataclass
class _ConnChild:
    conn: Connection

    def open(self) -> Link:
        return ConnLink(self.conn)


@dataclass
class MpPipeSubject(Subject):
    def prepare(self) -> Prepared:
        a, b = SPAWN.Pipe(duplex=True)
        parent = ConnLink(a)
        return Prepared(_ConnChild(b), lambda _t, _g: parent, after_start=b.close, cleanup=b.close)



class _QueueLink:
    """Two queues (``multiprocessing.Queue`` or faster-fifo): ``put`` one way, ``get`` the other."""

    def __init__(self, qout: Any, qin: Any, get_kwargs: dict[str, Any]) -> None:
        self.qout = qout
        self.qin = qin
        self.send = qout.put  # type: ignore[method-assign]
        if get_kwargs:
            get = qin.get

            def recv() -> Any:
                return get(**get_kwargs)

            self.recv = recv  # type: ignore[method-assign]
        else:
            self.recv = qin.get  # type: ignore[method-assign]
        # A queue carries objects anyway (put pickles): the object path is the same call.
        self.send_obj = self.send
        self.recv_obj = self.recv

    def send(self, data: Buffer) -> None:
        self.qout.put(data)

    def recv(self) -> Buffer:
        return self.qin.get()  # type: ignore[no-any-return]

    def close(self) -> None:
        for q in (self.qout, self.qin):
            close = getattr(q, "close", None)
            if close is not None:
                close()
            join = getattr(q, "join_thread", None)
            if join is not None:
                q.cancel_join_thread()

    def abort(self) -> None:
        # Wake our own blocked get(): queues are multi-producer, so the parent can post to itself.
        self.qin.put(None)


@dataclass
class _QueueChild:
    qin: Any
    qout: Any
    get_kwargs: dict[str, Any]

    def open(self) -> Link:
        return _QueueLink(self.qout, self.qin, self.get_kwargs)


@dataclass
class MpQueueSubject(Subject):
    def prepare(self) -> Prepared:
        # Bounded, or a streaming cell would queue millions of 1 MiB puts in its first 0.1 s.
        to_child = SPAWN.Queue(maxsize=256)
        to_parent = SPAWN.Queue(maxsize=256)
        parent = _QueueLink(to_child, to_parent, {})
        return Prepared(_QueueChild(to_child, to_parent, {}), lambda _t, _g: parent)


@dataclass
class FasterFifoSubject(Subject):
    max_message: int = 1 << 20

    def prepare(self) -> Prepared:
        from faster_fifo import Queue

        cap = 4 * self.max_message + (1 << 20)
        to_child = Queue(max_size_bytes=cap)
        to_parent = Queue(max_size_bytes=cap)
        kw = {"timeout": 3600.0}
        parent = _QueueLink(to_child, to_parent, kw)
        return Prepared(_QueueChild(to_child, to_parent, kw), lambda _t, _g: parent)


# ---------------------------------------------------------------------------------- pyzmq
class _ZmqLink:
    """A zmq PAIR socket: ``send``/``recv`` for bytes, ``send_pyobj``/``recv_pyobj`` for objects."""

    def __init__(self, url: str, bind: bool) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 0)
        if bind:
            self.sock.bind(url)
        else:
            self.sock.connect(url)
        self.send = self.sock.send  # type: ignore[method-assign]
        self.recv = self.sock.recv  # type: ignore[method-assign]
        self.send_obj = self.sock.send_pyobj
        self.recv_obj = self.sock.recv_pyobj

    def send(self, data: Buffer) -> None:
        self.sock.send(data)

    def recv(self) -> Buffer:
        return self.sock.recv()

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def abort(self) -> None:
        # A receive blocked in the measuring thread ends with ContextTerminated.
        self.ctx.destroy(linger=0)


@dataclass
class _ZmqChild:
    url: str

    def open(self) -> Link:
        return _ZmqLink(self.url, bind=False)


@dataclass
@dataclass
class PyzmqSubject(Subject):
    """Raw pyzmq PAIR sockets: over ``ipc://`` in a private directory, or (``transport="tcp"``)
    over ``tcp://127.0.0.1`` on an ephemeral port -- the raw primitives of zmq+ipc:// and
    zmq+tcp:// for target T5."""

    transport: str = "ipc"

    def prepare(self) -> Prepared:
        if self.transport == "tcp":
            parent = _ZmqLink("tcp://127.0.0.1:*", bind=True)
            url = parent.sock.getsockopt_string(_zmq_last_endpoint())
            return Prepared(_ZmqChild(url), lambda _t, _g: parent)
        directory = tempfile.mkdtemp(prefix="ipckit-bench-zmq-")
        url = f"ipc://{directory}/pair"
        parent = _ZmqLink(url, bind=True)

        def cleanup() -> None:
            shutil.rmtree(directory, ignore_errors=True)

        return Prepared(_ZmqChild(url), lambda _t, _g: parent, cleanup=cleanup)


def _zmq_last_endpoint() -> int:
    import zmq

    return int(zmq.LAST_ENDPOINT)


# --------------------------------------------------------------------------------- iceoryx2
class _IceoryxLink:
    """iceoryx2 Python bindings: two publish-subscribe services of ``Slice[c_uint8]``.

    The receive side busy-polls ``Subscriber.receive()`` (no event service: the fastest way
    across cores, which is what target T1 compares against); a full subscriber buffer makes the
    publisher retry (``RetryUntilDelivered``), so streaming loses nothing.
    """

    def __init__(self, out_name: str, in_name: str, max_message: int) -> None:
        import ctypes

        import iceoryx2 as iox2  # type: ignore[import-not-found,import-untyped,unused-ignore]

        iox2.set_log_level(iox2.LogLevel.Error)
        self._memmove = ctypes.memmove
        self._node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        services = []
        for name in (out_name, in_name):
            builder = self._node.service_builder(iox2.ServiceName.new(name)).publish_subscribe(
                iox2.Slice[ctypes.c_uint8])
            services.append(builder.subscriber_max_buffer_size(16).enable_safe_overflow(False).open_or_create())
        self._services = services
        self._pub = (services[0].publisher_builder().initial_max_slice_len(max(1, max_message))
                     .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                     .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
        self._sub = services[1].subscriber_builder().create()
        self._aborted = False

    def send(self, data: Buffer) -> None:
        n = len(data)
        sample = self._pub.loan_slice_uninit(n)
        if n:
            self._memmove(sample.payload_ptr, bytes(data) if not isinstance(data, bytes) else data, n)
        sample.assume_init().send()

    def recv(self) -> Buffer:
        receive = self._sub.receive
        while True:
            sample = receive()
            if sample is not None:
                payload = sample.payload()
                return bytes(payload.as_memory_view()) if payload.len() else b""
            if self._aborted:
                raise EOFError("aborted")

    def close(self) -> None:
        self._sub = self._pub = None
        self._services = []
        self._node = None

    def abort(self) -> None:
        self._aborted = True


@dataclass
class _IceoryxChild:
    in_name: str
    out_name: str
    max_message: int

    def open(self) -> Link:
        return _IceoryxLink(self.out_name, self.in_name, self.max_message)


@dataclass
class IceoryxSubject(Subject):
    max_message: int = 1 << 20

    def prepare(self) -> Prepared:
        tag = f"ipckit-bench/{os.getpid()}-{secrets.token_hex(4)}"
        a2b, b2a = f"{tag}/a2b", f"{tag}/b2a"
        parent = _IceoryxLink(a2b, b2a, self.max_message)
        return Prepared(_IceoryxChild(a2b, b2a, self.max_message), lambda _t, _g: parent)




# --------------------------------------------------------------------- kernel message queues
# The queue kit's 20-byte fragment header (ipckit.backends.common.queue.HEADER): magic, kind,
# flags (FIRST 1, LAST 2), message id, fragment index, message length.  Repeated here, as
# _HDR20 repeats the stream header: a baseline imports no ipckit channel code.
_FRAG = struct.Struct("<HBBIIQ")
_FRAG_MAGIC = 0x4B51
_FRAG_DATA, _FRAG_ABORT = 1, 9
_FRAG_ABORT_MSG = _FRAG.pack(_FRAG_MAGIC, _FRAG_ABORT, 3, 0, 0, 0)


def _sysctl(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def _msgmax() -> int:
    return _sysctl("/proc/sys/kernel/msgmax", 8192)


class _FragmentLink:
    """Whole messages over a kernel message queue, framed as the queue kit frames them: cut into
    kernel messages of at most *room* payload bytes, each behind the 20-byte fragment header, so a
    baseline's bandwidth cells pay the same per-fragment cost as the channel compared with it.

    *put(frame)* sends one kernel message, blocking while the queue is full; *get()* blocks for
    one and returns a tuple whose first item is its bytes (what both sysv_ipc's and posix_ipc's
    ``receive`` return, so neither needs a wrapper on the measured path).  Subclasses close and
    provide ``_wake`` (post the abort fragment to our own incoming queue).
    """

    def __init__(self, put: Callable[[Buffer], object], get: Callable[[], tuple[bytes, int]], room: int) -> None:
        self._put = put
        self._get = get
        self.room = room
        self._sid = 0
        self._rid = 0

    def send(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        n, room, put, sid = view.nbytes, self.room, self._put, self._sid
        count = max(1, -(-n // room))
        for i in range(count):
            flags = (1 if i == 0 else 0) | (2 if i == count - 1 else 0)
            put(_FRAG.pack(_FRAG_MAGIC, _FRAG_DATA, flags, sid, i, n) + view[i * room : (i + 1) * room])
        self._sid = (sid + 1) & 0xFFFFFFFF

    def recv(self) -> Buffer:
        get, rid = self._get, self._rid
        frag = get()[0]
        magic, kind, flags, msg_id, index, total = _FRAG.unpack_from(frag)
        if kind == _FRAG_ABORT:
            raise EOFError("aborted")
        if magic != _FRAG_MAGIC or kind != _FRAG_DATA or msg_id != rid or index or not flags & 1:
            raise ValueError("bad fragment")
        self._rid = (rid + 1) & 0xFFFFFFFF
        if flags & 2:
            return memoryview(frag)[_FRAG.size :]
        buf = bytearray(total)
        pos = len(frag) - _FRAG.size
        buf[:pos] = memoryview(frag)[_FRAG.size :]
        expect = 1
        while pos < total:
            frag = get()[0]
            magic, kind, flags, msg_id, index, length = _FRAG.unpack_from(frag)
            size = len(frag) - _FRAG.size
            if kind != _FRAG_DATA or msg_id != rid or index != expect or length != total or pos + size > total:
                raise ValueError("bad fragment")
            buf[pos : pos + size] = memoryview(frag)[_FRAG.size :]
            pos += size
            expect += 1
        return buf

    def close(self) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        # Wake our own blocked receive: any process that has the queue open may post to it, and a
        # receive is blocked only on an empty queue, so the non-blocking post finds room.
        try:
            self._wake()
        except Exception:
            pass


# ------------------------------------------------------------------------ SysV message queue
class _SysvQueueLink(_FragmentLink):
    """One SysV message queue (sysv_ipc), the message type giving the direction, as sysv+mq://
    uses it: fragments of at most ``kernel.msgmax`` bytes.  Unlike sysv+mq://, waits block in the
    kernel (``msgsnd``/``msgrcv`` without IPC_NOWAIT: sysv_ipc has no timeouts) and the two
    directions share the queue unchecked."""

    def __init__(self, mq: Any, rtype: int, stype: int, owner: bool) -> None:
        super().__init__(partial(mq.send, block=True, type=stype), partial(mq.receive, True, rtype),
                         _msgmax() - _FRAG.size)
        self.mq = mq
        self.rtype = rtype
        self.owner = owner

    def close(self) -> None:
        if self.owner:
            self.owner = False
            try:
                self.mq.remove()
            except Exception:  # gone already
                pass

    def _wake(self) -> None:
        self.mq.send(_FRAG_ABORT_MSG, False, self.rtype)


@dataclass
class _SysvQueueChild:
    key: int

    def open(self) -> Link:
        import sysv_ipc

        return _SysvQueueLink(sysv_ipc.MessageQueue(self.key, max_message_size=_msgmax()), 1, 2, owner=False)


@dataclass
class SysvQueueSubject(Subject):
    def prepare(self) -> Prepared:
        import sysv_ipc

        mq = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600, max_message_size=_msgmax())
        parent = _SysvQueueLink(mq, 2, 1, owner=True)
        return Prepared(_SysvQueueChild(int(mq.key)), lambda _t, _g: parent, cleanup=parent.close)


# ----------------------------------------------------------------------- POSIX message queues
_MQUEUE = "/proc/sys/fs/mqueue"


class _PosixQueueLink(_FragmentLink):
    """Two POSIX message queues (posix_ipc), one per direction, as mq:// uses them: fragments of
    at most the queue's message size (``fs.mqueue.msgsize_max`` when created here).  Unlike mq://,
    waits block in the kernel (``mq_send``/``mq_receive`` with no timeout) and nothing checks that
    the peer is alive: the watchdog's ``abort`` ends a receive a dead peer left blocked.

    The parent created the queues and owns their names: its ``close`` unlinks them, whatever
    became of the child.
    """

    def __init__(self, qout: Any, qin: Any, owner: bool) -> None:
        super().__init__(qout.send, qin.receive, int(qout.max_message_size) - _FRAG.size)
        self.qout = qout
        self.qin = qin
        self.owner = owner

    def close(self) -> None:
        for q in (self.qout, self.qin):
            if self.owner:
                try:
                    q.unlink()
                except Exception:  # gone already
                    pass
            try:
                q.close()
            except Exception:  # closed already
                pass
        self.owner = False

    def _wake(self) -> None:
        self.qin.send(_FRAG_ABORT_MSG, 0)


@dataclass
class _PosixQueueChild:
    inbox: str
    outbox: str

    def open(self) -> Link:
        import posix_ipc

        qin = posix_ipc.MessageQueue(self.inbox)
        try:
            qout = posix_ipc.MessageQueue(self.outbox)
        except BaseException:
            qin.close()
            raise
        return _PosixQueueLink(qout, qin, owner=False)


@dataclass
class PosixQueueSubject(Subject):
    def prepare(self) -> Prepared:
        import posix_ipc

        # Named like the queues ``mqls -r`` removes, but not ones ipckit's cleanup would take for mq://'s.
        tag = f"/ipckit.bench-{os.getpid()}-{secrets.token_hex(4)}"
        depth = _sysctl(f"{_MQUEUE}/msg_max", posix_ipc.QUEUE_MESSAGES_MAX_DEFAULT)
        size = _sysctl(f"{_MQUEUE}/msgsize_max", posix_ipc.QUEUE_MESSAGE_SIZE_MAX_DEFAULT)
        made: list[Any] = []
        try:
            for direction in ("a2b", "b2a"):
                made.append(posix_ipc.MessageQueue(f"{tag}.{direction}", posix_ipc.O_CREX, mode=0o600,
                                                   max_messages=depth, max_message_size=size))
        except BaseException as exc:
            for q in made:  # the first queue, when the second could not be made (RLIMIT_MSGQUEUE)
                q.unlink()
                q.close()
            if isinstance(exc, OSError):
                # mq_open's EMFILE reads "maximum number of files open" but is mostly the byte limit.
                raise OSError(f"posix_ipc.mq: cannot create two queues of {depth} x {size} bytes ({exc}): they "
                              "count against RLIMIT_MSGQUEUE (`ulimit -q`) and RLIMIT_NOFILE; close other POSIX "
                              "queues or raise the limit") from exc
            raise
        to_child, to_parent = made
        parent = _PosixQueueLink(to_child, to_parent, owner=True)
        return Prepared(_PosixQueueChild(to_child.name, to_parent.name), lambda _t, _g: parent,
                        cleanup=parent.close)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def baseline_subjects(max_message: int) -> tuple[list[Subject], list[SkippedSubject]]:
    """The cross-process baselines (``memcpy`` is measured in-process by the runner)."""
    subjects: list[Subject] = [
        MpPipeSubject("mp.Pipe", "baseline", "multiprocessing.Pipe send_bytes/recv_bytes"),
        MpQueueSubject("mp.Queue", "baseline", "multiprocessing.Queue(maxsize=256) put/get (two queues)"),
        RawPipeSubject("os.pipe", "baseline", "os.pipe, 4-byte length prefix, default 64 KiB buffer"),
        RawPipeSubject("os.pipe+hdr20", "baseline",
                       "os.pipe, ipckit's 20-byte header (checked), F_SETPIPE_SZ 1 MiB like pipe://",
                       header20=True, pipe_size=1 << 20),
        RawUnixSubject("unix.socket", "baseline", "AF_UNIX SOCK_STREAM socketpair, 4-byte length prefix"),
    ]
    skipped: list[SkippedSubject] = []
    if _importable("faster_fifo"):
        subjects.append(FasterFifoSubject("faster-fifo", "baseline", "faster_fifo.Queue put/get (two queues)",
                                          max_message=max_message))
    else:
        skipped.append(SkippedSubject("faster-fifo", "not installed (pip install faster-fifo)"))
    if _importable("zmq"):
        subjects.append(PyzmqSubject("pyzmq", "baseline", "pyzmq PAIR over ipc://, send/recv (objects: send_pyobj)"))
        subjects.append(PyzmqSubject("pyzmq.tcp", "baseline", "pyzmq PAIR over tcp://127.0.0.1, send/recv "
                                     "(objects: send_pyobj)", transport="tcp"))
    else:
        skipped.append(SkippedSubject("pyzmq", "not installed (pip install pyzmq)"))
        skipped.append(SkippedSubject("pyzmq.tcp", "not installed (pip install pyzmq)"))
    if _importable("iceoryx2"):
        subjects.append(IceoryxSubject("iceoryx2", "baseline", "iceoryx2 pub/sub Slice[u8], busy-poll receive",
                                       max_message=max_message))
    else:
        skipped.append(SkippedSubject("iceoryx2", "not installed (pip install iceoryx2)"))
    if _importable("sysv_ipc"):
        subjects.append(SysvQueueSubject("sysv_ipc.mq", "baseline", "one SysV queue (sysv_ipc), type = direction, "
                                         "blocking msgsnd/msgrcv, the queue kit's 20-byte fragment header"))
    else:
        skipped.append(SkippedSubject("sysv_ipc.mq", "not installed (pip install sysv_ipc)"))
    if _importable("posix_ipc"):
        subjects.append(PosixQueueSubject("posix_ipc.mq", "baseline", "two POSIX queues (posix_ipc), one per "
                                          "direction, blocking mq_send/mq_receive, the queue kit's 20-byte "
                                          "fragment header"))
    else:
        skipped.append(SkippedSubject("posix_ipc.mq", "not installed (pip install posix_ipc)"))
    return subjects, skipped


def select_baselines(names: list[str] | None, max_message: int) -> tuple[list[Subject], list[SkippedSubject]]:
    """The baselines *names* selects (None: all), and the selected ones skipped here with reasons.

    Raises:
        ValueError: a name is not a baseline (the message lists the known ones).
    """
    subjects, skipped = baseline_subjects(max_message)
    if names is not None:
        unknown = [b for b in names if b not in KNOWN_BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(KNOWN_BASELINES)}")
        subjects = [s for s in subjects if s.name in names]
        skipped = [s for s in skipped if s.name in names]
    return subjects, skipped
