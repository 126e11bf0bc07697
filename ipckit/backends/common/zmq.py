"""The ZeroMQ kit: what every ``zmq+*://`` scheme shares (pyzmq, libzmq 4.3).

* **Contexts.**  Every channel and listener owns its own ``zmq.Context`` (one I/O thread), made
  for the process that uses it: :func:`new_context` records the pid, :func:`check_pid` refuses a
  context (or a socket of one) used after a fork with ``UnsupportedOperation``.  A context of its
  own lets ``close()`` wait for the channel's last messages (its goodbye) to leave: ``term()``
  returns once they are sent or the finite ``linger`` passed -- with one shared context, a process
  ending with ``os._exit`` (every fork-started multiprocessing child) would lose them.
* **Socket options** from ipckit options (:func:`configure`): a finite ``LINGER``, ``SNDHWM`` /
  ``RCVHWM`` from a byte budget, ``MAXMSGSIZE`` = ``max_message_size`` + this kit's header,
  ``HEARTBEAT_IVL`` / ``TIMEOUT`` / ``TTL``.
* **Waits.**  No zmq call here blocks: every one is ``NOBLOCK`` (or a ``zmq_poll`` with no
  timeout, which tells both sockets' state level-triggered) under the channel's socket lock (a
  zmq socket is not thread-safe, and ipckit lets one thread send while another receives), and
  every wait is ipckit's own: ``poll(2)`` on the socket's ``ZMQ_FD`` in slices against one
  deadline.  pyzmq's ``RCVTIMEO`` restarts after every signal, so it may never fire (Z-5, V13),
  and pyzmq's ``zmq_poll`` with a timeout counts the time of an interrupted poll in whole seconds
  only, so under a signal storm it too may wait up to a second past its timeout.
* **The error map** (:func:`zmq_error`): ``ZMQError`` → ipckit errors.
* **Endpoints**: ``ipc://`` paths (private directories, lock + probe-connect before bind so a
  second binder gets ``EndpointExists`` and never steals a live endpoint, stale sweep, the 107-byte
  limit) and ``tcp://`` host/port parsing.
* **The channel** (:class:`ZmqChannel`, one ``PAIR`` socket per channel) and the **listener**
  (:class:`ZmqListener`, a ``ROUTER`` rendezvous served by a thread that hands each client a
  ``PAIR`` socket bound on a fresh endpoint), with acknowledged delivery (``ack=True``) and
  peer-death detection from the socket monitor.

Wire format (one zmq message per ipckit message; the first frame's first byte is its kind):

``D`` + payload                      a message in one frame (small messages)
``L``, payload parts...              a message in several frames (large: sent without a copy)
``d`` + seq(8) + payload / ``l`` + seq(8), parts...   the same with a sequence number (ack mode)
``A`` + seq(8)                       cumulative acknowledgement: every message up to seq was received
``G`` + seq(8)                       goodbye: a clean close; seq = the last message this end received
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import select
import socket
import stat
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import zmq
from zmq import zmq_poll

from ...channel import USE_DEFAULT, Channel, Listener
from ...deadline import MAX_WAIT, Deadline, deadline_from, poll_ms, remaining
from ...errors import (
    ChannelBroken,
    ChannelClosed,
    ChannelTimeout,
    ConnectFailed,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    InvalidAddress,
    IPCError,
    PeerDied,
    PermissionDenied,
    ProtocolError,
    RecvTimeout,
    ResourceExhausted,
    SendTimeout,
    UnsupportedOperation,
)
from ...options import Options, option
from ...serializers import Buffer
from . import paths as _paths

__all__ = ["ZmqOptions", "ZmqChannel", "ZmqListener", "new_context", "check_pid", "configure", "zmq_error",
           "ipc_path_of", "IPC_PATH_MAX", "HEADER", "PROTOCOL"]

#: Bytes of this kit's header in front of a payload (kind + sequence number), added to MAXMSGSIZE.
HEADER = 9
#: The rendezvous protocol's name and version, in the first frame of a hello.
PROTOCOL = b"IPCKIT-ZMQ/1"
#: ``sun_path`` is 108 bytes with its NUL: the longest ``ipc://`` path libzmq can bind.
IPC_PATH_MAX = 107
#: Messages from this size on are sent as their own frame without a copy (``copy=False``), when
#: the buffer is immutable (bytes): libzmq reads it after send() returned.
COPY_THRESHOLD = 64 * 1024


def zero_copy_ok() -> bool:
    """Whether a ``copy=False`` send is safe in this process now.

    pyzmq keeps the buffers of zero-copy frames alive through one process-wide collector thread
    (``zmq.utils.garbage.gc``) that binds ``inproc://pyzmq.gc.01`` in its own context.  If that
    thread ever ends in this process, pyzmq restarts it on the next zero-copy send, in the same
    context, where the dead thread's socket still holds the address: every restart fails to bind,
    raises in a new thread and leaks a socket, on every later send.  ipckit copies instead once the
    collector has died here (the first zero-copy send of a process, or of a forked child, starts it
    cleanly and is allowed).
    """
    from zmq.utils.garbage import gc  # what pyzmq's first zero-copy frame imports (large sends only)

    thread = getattr(gc, "thread", None)
    if thread is None or getattr(gc, "pid", None) != os.getpid():
        return True
    return bool(thread.is_alive())
#: Longest slice of one wait: the socket's FD is edge-triggered and another thread's zmq call may
#: consume the edge meant for this one, so a waiter looks again at least this often.
_SLICE = 0.02
#: Seconds a channel gives its peer to connect to the endpoint it was handed.
_CONNECT_GRACE = 5.0

_D, _L, _DS, _LS, _ACK, _BYE = b"D"[0], b"L"[0], b"d"[0], b"l"[0], b"A"[0], b"G"[0]
_SEQ = struct.Struct("<Q")
_NOBLOCK = (zmq.NOBLOCK,)
# Plain ints: pyzmq's flags are enums, whose arithmetic costs on every message.
_NB = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_NOWAIT = (False,)
_WOKE_DATA = 2  # (ZmqChannel._wait: the socket's FD woke the wait)
_NOCOPY = (False,)
#: Descriptors a new context and socket need (libzmq aborts the process when it cannot make its
#: internal signaler at the descriptor limit, so ipckit checks first and raises ResourceExhausted).
_FDS_NEEDED = 16


@dataclass
class ZmqOptions(Options):
    """Options every ``zmq+*://`` scheme takes (the scheme modules add their own)."""

    #: seconds close() lets undelivered messages (and the goodbye) leave before dropping them
    linger: float = option(2.0, minimum=0, maximum=MAX_WAIT)
    #: bytes each direction should queue in libzmq: SNDHWM/RCVHWM = budget // 64 KiB messages, from 8
    #: to 1000 (libzmq counts messages, not bytes: large messages can exceed the budget)
    buffer_bytes: int = option(16 * 1024 * 1024, minimum=1)
    #: acknowledged delivery: sequence numbers, a credit window, PeerDied says what was not received
    ack: bool = False
    #: messages sent and not yet acknowledged before send() waits (ack mode)
    ack_window: int = option(256, minimum=1, maximum=1 << 30)
    #: seconds between ZMTP heartbeats (0: none)
    heartbeat: float = option(1.0, minimum=0, maximum=3600)
    #: seconds without any traffic from the peer before its connection is dropped (PeerDied)
    heartbeat_timeout: float = option(3.0, above=0, maximum=3600)
    #: seconds a connect() waits for the listener's answer at most (within its own timeout)
    handshake_timeout: float = option(5.0, above=0, maximum=MAX_WAIT)


# --------------------------------------------------------------------------- contexts
class _Context(zmq.Context):  # type: ignore[type-arg]
    """A context that knows the process it was made in (a class attribute: pyzmq takes unknown
    attribute names for socket options)."""

    ipckit_pid: int = 0

    def __del__(self) -> None:
        # Found by the garbage collector (a channel in a reference cycle): pyzmq's own finalizer
        # may term() while the channel's socket is still open, which waits for it forever.  The
        # channel's finalizer closes cleanly when it runs first; otherwise drop everything now.
        if self.ipckit_pid == os.getpid() and not self.closed:
            try:
                self.destroy(linger=0)
            except Exception:
                pass


def _check_descriptors() -> None:
    """Raise ResourceExhausted unless a few descriptors are free: libzmq 4.3 aborts the whole
    process (``Too many open files (signaler.cpp)``) where Python would get EMFILE."""
    taken: list[int] = []
    try:
        for _ in range(_FDS_NEEDED):
            taken.append(os.dup(2))
    except OSError as exc:
        raise ResourceExhausted(
            f"too few free descriptors for a ZeroMQ channel (it needs about {_FDS_NEEDED}; libzmq would abort "
            "the process at the limit): raise RLIMIT_NOFILE (ulimit -n) or close channels") from exc
    finally:
        for fd in taken:
            os.close(fd)


def new_context() -> zmq.Context[Any]:
    """A context of its own for one channel or listener, marked with this process's pid."""
    _check_descriptors()
    try:
        ctx: zmq.Context[Any] = _Context(io_threads=1)
    except zmq.ZMQError as exc:
        raise zmq_error(exc, "creating a ZeroMQ context") from exc
    ctx.ipckit_pid = os.getpid()
    return ctx


#: This process's pid, kept up to date across forks: the per-message check of a channel's context
#: compares with it instead of making a getpid() system call.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def check_pid(ctx: zmq.Context[Any], what: str) -> None:
    """Raise UnsupportedOperation if *ctx* was made in another process (we are a forked child):
    libzmq contexts are not fork-safe (Z-13), so nothing of the parent's may be touched."""
    owner = getattr(ctx, "ipckit_pid", _pid[0])
    if owner != _pid[0]:
        raise UnsupportedOperation(
            f"{what} in process {os.getpid()}: its ZeroMQ context belongs to process {owner} "
            "(libzmq is not fork-safe); open a new channel or listener in this process (ipckit.connect)")


def configure(sock: zmq.Socket[Any], opts: ZmqOptions, *, channel: bool) -> None:
    """Apply ipckit's options to *sock* (before bind/connect)."""
    sock.setsockopt(zmq.LINGER, int(opts.linger * 1000) if opts.linger < 2**31 / 1000 else 2**31 - 1)
    if not channel:
        sock.setsockopt(zmq.MAXMSGSIZE, 4096)  # a rendezvous socket carries hellos only
        return
    hwm = max(8, min(1000, opts.buffer_bytes // (64 * 1024)))
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, opts.max_message_size + HEADER)
    # No RECONNECT_IVL = -1 (it would end a dropped connection for good): with it, libzmq 4.3.5
    # discards the messages that arrived and were not yet read when the connection drops (measured:
    # a bound end's last message before its close was lost).  A reconnect is never silent anyway:
    # the first drop without a goodbye ends the channel (PeerDied).
    if opts.heartbeat > 0:
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(opts.heartbeat * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, int(opts.heartbeat_timeout * 1000)))
        sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, int(opts.heartbeat_timeout * 1000)))


def zmq_error(exc: zmq.ZMQError, what: str) -> IPCError:
    """The ipckit error for a libzmq error."""
    code = exc.errno
    msg = f"{what}: {exc.strerror} (libzmq {zmq.zmq_version()})"
    if code == errno.EADDRINUSE:
        return EndpointExists(code, f"{msg}; another process is bound there")
    if code in (errno.ENOENT, errno.ECONNREFUSED):
        return EndpointNotFound(code, msg)
    if code in (errno.EACCES, errno.EPERM):
        return PermissionDenied(code, msg)
    if code in (errno.EINVAL, errno.ENAMETOOLONG, errno.EPROTONOSUPPORT) or code == zmq.EPROTONOSUPPORT:
        return InvalidAddress(msg)
    if code in (errno.EMFILE, errno.ENFILE):
        return ResourceExhausted(f"{msg}; raise RLIMIT_NOFILE (ulimit -n) or close channels")
    if code == zmq.ETERM:
        return ChannelClosed(msg)
    if code == errno.EAGAIN:
        return ChannelTimeout(msg)
    return ConnectFailed(code, msg)


# --------------------------------------------------------------------------- ipc endpoints
def ipc_path_of(address: str) -> str:
    """The file of an ``ipc`` address: an absolute path, or a name placed in the runtime directory.

    Raises:
        InvalidAddress: an empty or unusable name, or a path longer than 107 bytes (Z-7).
    """
    if address.startswith("/"):
        path = os.path.normpath(address)
    else:
        if not _paths.NAME_RE.match(address):
            raise InvalidAddress(f"zmq+ipc name {address!r} must be 1-200 of [A-Za-z0-9._-], or an absolute path")
        path = os.path.join(_paths.runtime_dir(), f"ipckit-zmq-{address}.ipc")
    check_ipc_length(path)
    return path


def check_ipc_length(path: str) -> None:
    if len(os.fsencode(path)) > IPC_PATH_MAX:
        raise InvalidAddress(f"ipc path {path!r} is {len(os.fsencode(path))} bytes; libzmq (sun_path) allows at "
                             f"most {IPC_PATH_MAX}: choose a shorter path or a name")


def probe_live(path: str) -> bool:
    """True if something accepts connections on the Unix socket *path* (a live binder)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.ETIMEDOUT):
            return True  # backlog full: very much alive
        raise
    finally:
        probe.close()
    return True


def clear_stale_ipc(path: str) -> None:
    """Remove a socket file a dead binder left at *path* (Z-8); refuse a live or foreign one (Z-6).

    Call under the path's lock: nobody else can bind there meanwhile."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise EndpointExists(errno.EEXIST, f"{path!r} exists and is not a socket; refusing to replace it")
    _paths.check_owned(path, st, "socket")
    if probe_live(path):
        raise EndpointExists(errno.EEXIST, f"a live process is bound at {path!r}; ipckit never steals an endpoint "
                                           "(libzmq would): close it first or choose another address")
    os.unlink(path)


def bind_ipc(sock: zmq.Socket[Any], path: str, mode: int) -> tuple[int, int]:
    """Bind *sock* at *path* (which must not exist, checked under its lock), with *mode*.

    The socket is bound at a fresh unguessable name in the same directory, its mode set there,
    and only then renamed into place: no one can connect through a wider mode in between, and a
    chmod never follows a path someone else could have swapped.  Returns (dev, inode)."""
    tmp = os.path.join(os.path.dirname(path), _paths.generated_name(".ipc"))
    check_ipc_length(tmp)
    try:
        sock.bind("ipc://" + tmp)
    except zmq.ZMQError as exc:
        raise zmq_error(exc, f"bind ipc://{path}") from exc
    try:
        os.chmod(tmp, mode, follow_symlinks=False)
        st = os.lstat(tmp)
        if tmp != path:
            os.rename(tmp, path)
    except BaseException:
        _paths.unlink_quiet(tmp)
        raise
    return st.st_dev, st.st_ino


def unlink_if_ours(path: str, ident: tuple[int, int] | None) -> None:
    """Unlink *path* only while it is still the socket file we bound (P12)."""
    if ident is None:
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == ident:
        _paths.unlink_quiet(path)


def check_ipc_mode(path: str, mode: int) -> None:
    """S5: refuse an endpoint open to more users than this end's *mode* allows."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise EndpointNotFound(errno.ENOENT, f"no zmq+ipc endpoint at {path!r}: is the listener running?") from exc
    except OSError as exc:
        raise EndpointNotFound(exc.errno or errno.ENOENT, f"cannot stat {path!r}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise EndpointNotFound(errno.ENOTSOCK, f"{path!r} is not a zmq+ipc endpoint (not a socket)")
    _paths.check_owned(path, st, "socket")
    wider = stat.S_IMODE(st.st_mode) & 0o077 & ~mode
    if wider:
        raise PermissionDenied(errno.EACCES, f"{path!r} (mode {stat.S_IMODE(st.st_mode):#o}) is open to more users "
                                             f"than this end's mode={mode:#o}; connect with a matching mode")


# --------------------------------------------------------------------------- the monitor
_CONNECTED = zmq.EVENT_HANDSHAKE_SUCCEEDED
_GONE = zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPTED
                   | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_EVENT = struct.Struct("=HI")


@dataclass
class Link:
    """What one channel is made of: its context, its PAIR socket and the socket's monitor."""

    ctx: zmq.Context[Any]
    sock: zmq.Socket[Any]
    monitor: zmq.Socket[Any]
    #: a bound ipc socket file to unlink once the peer connected (or at close), with its identity
    ipc_path: str | None = None
    ipc_ident: tuple[int, int] | None = None

    def destroy(self, linger: float) -> None:
        """Close everything; returns within about *linger* seconds (term waits for unsent messages)."""
        unlink_if_ours(self.ipc_path or "", self.ipc_ident)
        self.ipc_path = None
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=int(linger * 1000) if linger < 2**31 / 1000 else None)
        self.ctx.term()


def make_link(opts: ZmqOptions, curve: Callable[[zmq.Socket[Any]], None] | None = None) -> Link:
    """A context, a configured PAIR socket and its monitor (attached before any connection)."""
    ctx = new_context()
    try:
        sock = ctx.socket(zmq.PAIR)
        configure(sock, opts, channel=True)
        if curve is not None:
            curve(sock)
        monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
    except BaseException as exc:
        ctx.destroy(linger=0)
        if isinstance(exc, zmq.ZMQError):
            raise zmq_error(exc, "creating a ZeroMQ socket") from exc
        raise
    return Link(ctx, sock, monitor)


# --------------------------------------------------------------------------- the channel
def _fit(value: float) -> int:
    return int(value * 1000) if value < 2**31 / 1000 else 2**31 - 1


class ZmqChannel(Channel):
    """One end of a ``zmq+*://`` channel: a PAIR socket of its own context.

    State a user can read: :attr:`state` (``"connecting"``, ``"connected"``, ``"closed by peer"``,
    ``"disconnected"``), :attr:`disconnects` (connections that dropped: a ZeroMQ reconnect is never
    silent here -- a dropped connection ends the channel with PeerDied), and in ack mode
    :attr:`unacknowledged` / :attr:`acknowledged`.
    """

    def __init__(self, url: str, options: ZmqOptions, link: Link, *, peer_trusted: bool, peer_max: int | None,
                 connected: bool = False) -> None:
        self._link: Link | None = None
        super().__init__(url, options, peer_trusted=peer_trusted)
        self._link = link
        self._opts = options
        self._zlock = threading.Lock()  # every zmq call on the socket (not thread-safe) is made under it
        self._fd = int(link.sock.getsockopt(zmq.FD))
        self._mfd = int(link.monitor.getsockopt(zmq.FD))
        self._connected = connected
        self._ever_connected = connected
        self._born = time.monotonic()
        self._disconnected = False
        self._disconnects = 0
        self._bye: int | None = None  # the peer's goodbye arrived: the last seq it received
        self._sent_bye = False
        self._inbox: deque[Buffer] = deque()
        self._probe = [(link.sock, _POLLIN), (link.monitor, _POLLIN)]  # (zmq_poll items, made once)
        # A socket is armed once a look found nothing on it: libzmq then signals its FD for the
        # next message (see _send_one).
        self._armed_data = False
        self._armed_mon = False
        self._data = self._probe[:1]
        # The receiver's wait and the sender's look (one thread of each at a time: the base
        # class's locks), made once.
        self._rpoll = select.poll()
        self._spoll = select.poll()
        for fd in (self._fd, self._mfd):
            self._rpoll.register(fd, select.POLLIN)
            self._spoll.register(fd, select.POLLIN)
        self._rx_parts: list[zmq.Frame] = []  # a multipart message being taken (survives an interrupt)
        self._tx_partial = False  # a multipart send was cut between two frames: the send side is broken
        self._ack = options.ack
        self._tx_seq = 0  # the last sequence number sent
        self._acked = 0  # the peer received every message up to this one
        self._rx_seq = 0  # the last sequence number received
        self._ack_sent = 0  # the last acknowledgement sent
        if peer_max is not None:
            self._learn_peer_limit(peer_max)

    # ------------------------------------------------------------------ state for users
    @property
    def state(self) -> str:
        """``connecting``, ``connected``, ``closed by peer`` or ``disconnected`` (peer died or unreachable)."""
        if self._bye is not None:
            return "closed by peer"
        if self._disconnected:
            return "disconnected"
        return "connected" if self._connected else "connecting"

    @property
    def disconnects(self) -> int:
        """Connections of this channel that dropped without a goodbye (0 or 1: the channel then ends)."""
        return self._disconnects

    @property
    def acknowledged(self) -> int:
        """ack mode: the peer process received every message up to this sequence number (1-based)."""
        return self._acked

    @property
    def unacknowledged(self) -> int:
        """ack mode: messages sent that the peer has not (yet) confirmed receiving."""
        return self._tx_seq - self._acked

    def wait_acknowledged(self, timeout: float | None = None) -> bool:
        """ack mode: wait until the peer received everything sent so far; False at the deadline.

        Raises PeerDied / EndOfChannel if the peer went away with messages unacknowledged."""
        if not self._ack:
            raise UnsupportedOperation("wait_acknowledged needs ack=True on both ends")
        deadline = deadline_from(timeout)
        while True:
            with self._zlock:
                self._pump()
            if self._acked >= self._tx_seq:
                return True
            self._raise_if_gone(sending=True)
            if not self._wait(deadline):
                return False

    # ------------------------------------------------------------------ the pump (under _zlock)
    def _pump(self, *, one: bool = False) -> None:
        """Take monitor events and the waiting messages (control frames acted on, data to the
        inbox): every one, or (*one*) up to the first data message.

        One ``zmq_poll`` with no timeout tells both sockets' state (level-triggered, so no edge
        is lost; about 2 us, where a ``NOBLOCK`` receive that finds nothing raises ``zmq.Again``
        for about 7 us and each ``getsockopt(EVENTS)`` costs about 3 us).
        """
        link = self._link
        if link is None:
            raise ChannelClosed(f"{self._url} is closed")
        if link.ctx.ipckit_pid != _pid[0]:
            check_pid(link.ctx, f"using {self._url}")
        got = zmq_poll(self._probe, 0)
        if not got:
            self._armed_data = self._armed_mon = True
            return
        if got[-1][0] is link.monitor:
            self._pump_monitor(link)
        else:
            self._armed_mon = True
        if got[0][0] is not link.sock:
            self._armed_data = True
            return
        sock, inbox, data = link.sock, self._inbox, self._data
        while True:
            msg = self._take(sock)
            if msg is not None:
                inbox.append(msg)
                if one:
                    return
            if not zmq_poll(data, 0):
                self._armed_data = True
                return

    def _pump_monitor(self, link: Link) -> None:
        mon = link.monitor
        while True:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self._armed_mon = True
                return
            event = _EVENT.unpack_from(frames[0])[0] if frames and len(frames[0]) >= 6 else 0
            if event & _CONNECTED:
                self._connected = self._ever_connected = True
                if link.ipc_path is not None:  # the peer is in: the file is no longer needed (Z-8)
                    unlink_if_ours(link.ipc_path, link.ipc_ident)
                    link.ipc_path = None
            elif (event & (_GONE | _FAILED) and self._ever_connected) or event & _FAILED:
                if not self._disconnected:
                    self._disconnects += 1
                self._disconnected = True
                self._connected = False

    def _take(self, sock: zmq.Socket[Any]) -> Buffer | None:
        """Receive one zmq message (NOBLOCK, POLLIN known); return its payload if it is data."""
        self._armed_data = False  # (more may wait behind it, announced by no wake-up)
        parts = self._rx_parts
        recv = sock.recv
        while not parts or parts[-1].more:
            # Stored from C (list.extend over a map): kept as soon as pyzmq returns it.
            parts.extend(map(recv, _NOBLOCK, _NOCOPY))  # type: ignore[arg-type]  # (recv's overloads)
        self._rx_parts = []
        head = parts[0].buffer
        if len(head) == 0:
            raise self._broken("an empty frame")
        kind = head[0]
        if kind == _D:
            return bytes(head[1:]) if len(head) <= COPY_THRESHOLD else head[1:]
        if kind == _L:
            return self._join(parts[1:])
        if kind in (_DS, _LS):
            if len(head) < HEADER:
                raise self._broken("a short header")
            seq = _SEQ.unpack_from(head, 1)[0]
            if seq != self._rx_seq + 1:
                raise self._broken(f"message {seq} after {self._rx_seq}")
            self._rx_seq = seq
            if kind == _DS:
                return bytes(head[HEADER:]) if len(head) <= COPY_THRESHOLD else head[HEADER:]
            return self._join(parts[1:])
        if kind == _ACK and len(head) >= HEADER:
            seq = _SEQ.unpack_from(head, 1)[0]
            if self._acked < seq <= self._tx_seq:
                self._acked = seq
            return None
        if kind == _BYE and len(head) >= HEADER:
            self._bye = _SEQ.unpack_from(head, 1)[0]
            if self._ack and self._acked < self._bye <= self._tx_seq:
                self._acked = self._bye
            return None
        raise self._broken(f"an unknown frame kind {kind!r}")

    @staticmethod
    def _join(frames: list[zmq.Frame]) -> Buffer:
        if len(frames) == 1:
            return frames[0].buffer
        return b"".join(f.buffer for f in frames)

    def _broken(self, what: str) -> ProtocolError:
        self._disconnected = True
        return ProtocolError(f"{self._url}: the peer sent {what}; this is no ipckit peer of the same version")

    # ------------------------------------------------------------------ waiting
    def _wait(self, deadline: Deadline, poller: Any = None) -> int:
        """Wait for the socket's or the monitor's FD (a slice at most): 0 once *deadline* passed,
        :data:`_WOKE_DATA` when the socket's FD woke the wait, 1 otherwise.

        *poller*: a ``select.poll`` of both descriptors made once, for a caller that is alone in
        its wait (the receiver, under the base class's receive lock); else one is made per wait,
        since a sender and a receiver may wait at once.
        """
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed while waiting")
        left = remaining(deadline)
        if left is not None and left <= 0.0:
            return 0
        if poller is None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._mfd, select.POLLIN)
        got = poller.poll(poll_ms(deadline, _SLICE))
        if self._closed:
            raise ChannelClosed(f"{self._url} was closed while waiting")
        fd = self._fd
        for ready, _ in got:
            if ready == fd:
                return _WOKE_DATA
        return 1

    def _raise_if_gone(self, *, sending: bool) -> None:
        """Raise EndOfChannel / PeerDied once the peer is gone (receivers: after the inbox is empty)."""
        if self._bye is not None:
            err: IPCError = EndOfChannel(f"the peer closed {self._url}")
        elif self._disconnected or (not self._ever_connected and time.monotonic() - self._born > _CONNECT_GRACE):
            self._disconnected = True
            err = PeerDied(
                f"the connection of {self._url} dropped without the peer's goodbye: the peer died, was unreachable "
                f"for heartbeat_timeout={self._opts.heartbeat_timeout} s, or sent a message above "
                f"max_message_size (libzmq drops such a connection)"
                + (f"; {self.unacknowledged} message(s) from #{self._acked + 1} on were not received"
                   if self._ack and self.unacknowledged else ""))
        else:
            return
        if self._ack:
            err.unacknowledged = self.unacknowledged  # type: ignore[attr-defined]
            err.first_unacknowledged = self._acked + 1  # type: ignore[attr-defined]
        raise err

    # ------------------------------------------------------------------ fast paths
    # send()/send_bytes() and recv()/recv_bytes() of a small message skip the general path's
    # layers (deadline objects, the pump of every waiting message) when the call completes at
    # once, or after one wait of the socket for a receive: about 50 Python calls per round trip
    # made a 64-byte round trip 2x raw pyzmq.  Anything else -- ack mode, a large message, a
    # message already in the inbox, an end known gone, another thread in the call, anything
    # waiting on the socket or its monitor when sending -- takes the general path, within the
    # same deadline.  The object path is the bytes path: Channel.send/recv call these hooks.
    def _send_one(self, data: Any, timeout: float | None) -> None:
        if (type(data) is bytes and len(data) <= COPY_THRESHOLD and len(data) <= self._send_max and not self._ack
                and not self._closed and not self._tx_partial and self._bye is None and not self._disconnected):
            lock = self._send_lock
            held: list[bool] = []
            try:
                held.extend(map(lock.acquire, _NOWAIT))  # (stored from C: see Channel._locked_send)
                if held[0]:
                    with self._zlock:
                        link = self._link
                        # Nothing waits on either socket: no goodbye or drop to act on first.
                        # Told by a poll(2) of the two FDs (0.6 us; zmq_poll costs about 5) when
                        # both are armed: libzmq signals a socket's FD for a message only when
                        # the socket last found its pipe empty (the look that armed it); after
                        # a receive, more messages may wait unannounced, so the data socket is
                        # looked at with zmq_poll once.  A goodbye whose wake-up one of our own
                        # sends consumed is missed here as if it had come a moment later; the
                        # drop of the connection that follows it shows on the monitor's FD.
                        if (link is not None and link.ctx.ipckit_pid == _pid[0] and self._connected
                                and self._armed_mon and not self._spoll.poll(0)
                                and (self._armed_data or not zmq_poll(self._data, 0))):
                            self._armed_data = True
                            try:
                                link.sock.send(b"D" + data, _NB, copy=True)
                                return
                            except zmq.Again:
                                pass  # the high-water mark: the general path waits
            except zmq.ZMQError as exc:
                raise zmq_error(exc, f"send on {self._url}") from exc
            finally:
                if held and held[0]:
                    lock.release()
        Channel._send_one(self, data, timeout)

    def _recv_payload(self, timeout: float | None) -> Any:
        if timeout is USE_DEFAULT:
            timeout = self._default_timeout
        if (self._ack or self._closed or self._inbox or self._bye is not None or self._disconnected
                or not (timeout is None or (type(timeout) in (float, int) and timeout >= 0.0))):
            return Channel._recv_payload(self, timeout)
        start = 0.0 if timeout is None else time.monotonic()
        lock = self._recv_lock
        held: list[bool] = []
        try:
            held.extend(map(lock.acquire, _NOWAIT))
            if held[0]:
                for attempt in (0, 1):
                    with self._zlock:
                        link = self._link
                        if link is None or link.ctx.ipckit_pid != _pid[0] or self._inbox:
                            break  # (a sender's pump may have taken messages in: they come first)
                        if not self._armed_data:
                            # Just after a receive, the next message is likely there already (a
                            # stream): a receive that finds it costs less than the look; one
                            # that does not costs zmq.Again once, and the look follows.
                            try:
                                msg = self._take(link.sock)
                            except zmq.Again:
                                msg = None
                            else:
                                if msg is not None:
                                    return msg
                                break  # a control frame: the general path acts on what follows
                        if zmq_poll(self._data, 0):
                            msg = self._take(link.sock)
                            if msg is not None:
                                return msg
                            break
                        self._armed_data = True
                    if attempt or timeout == 0 or self._inbox:
                        break
                    # One wait of the socket's and the monitor's FDs, within a slice; whatever
                    # woke it (a message, or a monitor event the general path then reads) is
                    # looked at once more above.  Not under the socket lock: a sender may go on.
                    self._rpoll.poll(int((_SLICE if timeout is None else min(timeout, _SLICE)) * 1000.0 + 0.999))
        except zmq.ZMQError as exc:
            raise zmq_error(exc, f"recv on {self._url}") from exc
        finally:
            if held and held[0]:
                lock.release()
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - start))
        return Channel._recv_payload(self, timeout)

    # ------------------------------------------------------------------ hooks
    def _frames(self, views: list[memoryview], total: int) -> tuple[list[Any], bool]:
        """The frames of one message: header and payload in one frame when small, else each part its own."""
        seq = b""
        if self._ack:
            seq = _SEQ.pack(self._tx_seq + 1)
        if total <= COPY_THRESHOLD and len(views) <= 1:
            kind = b"d" if self._ack else b"D"
            return [kind + seq + (views[0] if views else b"")], False
        kind = b"l" if self._ack else b"L"
        return [kind + seq, *views], True

    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        self._send_frames([view], view.nbytes, deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        self._send_frames(views, total, deadline)

    def _send_frames(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        if self._tx_partial:
            raise ChannelBroken(f"a send on {self._url} was interrupted between the frames of a message; "
                                "the sending side is broken: open a new channel")
        frames, multi = self._frames(views, total)
        while True:
            with self._zlock:
                self._pump()
                self._raise_if_gone(sending=True)
                credit = not self._ack or self._tx_seq - self._acked < self._opts.ack_window
                if credit and self._try_send(frames, multi):
                    if self._ack:
                        self._tx_seq += 1
                    return
            if not self._wait(deadline):
                why = "the peer's unacknowledged window is full" if not credit else "the peer is not reading"
                raise SendTimeout(f"send on {self._url} timed out ({why}); the message was not sent")

    def _try_send(self, frames: list[Any], multi: bool) -> bool:
        sock = self._link.sock  # type: ignore[union-attr]
        if not multi:
            try:
                sock.send(frames[0], zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return False
            return True
        # Marked before the first frame goes: a signal handler's exception between two frames (or
        # just after the first) leaves a half message in libzmq, which the next message would
        # complete; with the mark the send side is broken instead (ChannelBroken), never corrupt.
        self._tx_partial = True
        try:
            sock.send(frames[0], zmq.NOBLOCK | zmq.SNDMORE)
        except zmq.Again:
            self._tx_partial = False
            return False
        # The first frame is in: libzmq takes the rest of this message whatever the HWM.
        last = len(frames) - 1
        for i in range(1, last + 1):
            part = frames[i]
            immutable = isinstance(part, memoryview) and isinstance(part.obj, bytes) and zero_copy_ok()
            sock.send(part, zmq.SNDMORE if i < last else 0, copy=not immutable)
        self._tx_partial = False
        return True

    def _recv_message(self, deadline: Deadline) -> Buffer:
        woke = 0
        while True:
            with self._zlock:
                if not self._inbox:
                    if woke == _WOKE_DATA:
                        self._take_woken()
                    else:
                        self._pump(one=True)
                if self._inbox:
                    msg = self._inbox.popleft()
                    if self._ack:
                        self._acknowledge()
                    return msg
                self._raise_if_gone(sending=False)
            woke = self._wait(deadline, self._rpoll)
            if not woke:
                raise RecvTimeout(f"recv on {self._url} timed out; nothing was consumed")

    def _take_woken(self) -> None:
        """The socket's FD woke the receiver: nearly always a message came, so it is received
        straight away (a receive that finds one costs less than the look of :meth:`_pump`); a
        miss -- the FD also signals other events -- costs one ``zmq.Again``, then the full look."""
        link = self._link
        if link is None:
            raise ChannelClosed(f"{self._url} is closed")
        if link.ctx.ipckit_pid != _pid[0]:
            check_pid(link.ctx, f"using {self._url}")
        try:
            msg = self._take(link.sock)
        except zmq.Again:
            msg = None
        if msg is not None:
            self._inbox.append(msg)
        else:
            self._pump(one=True)

    def _acknowledge(self) -> None:
        """Tell the sender what this process received, after every message taken: the sender's
        count of what was not received is then exact, not an upper bound (batching the
        acknowledgements would be faster and is left for later)."""
        unacked = self._rx_seq - len(self._inbox) - self._ack_sent
        if unacked <= 0:
            return
        seq = self._rx_seq - len(self._inbox)
        try:
            self._link.sock.send(b"A" + _SEQ.pack(seq), zmq.NOBLOCK)  # type: ignore[union-attr]
            self._ack_sent = seq
        except zmq.Again:
            pass  # the reverse direction is full: the next receive (or send) tries again

    def _poll(self, deadline: Deadline) -> bool:
        while True:
            with self._zlock:
                self._pump()
                if self._inbox or self._bye is not None or self._disconnected:
                    return True
                if not self._ever_connected and time.monotonic() - self._born > _CONNECT_GRACE:
                    return True
            if not self._wait(deadline):
                return False

    def _close(self) -> None:
        # Under the socket lock: poll() runs outside the base class's locks, so a poll in another
        # thread may be inside a zmq call right now; once the link is gone it raises ChannelClosed.
        with self._zlock:
            link, self._link = self._link, None
        if link is None:
            return
        if os.getpid() != getattr(link.ctx, "ipckit_pid", os.getpid()):
            return  # a forked copy: the parent's sockets are not ours to touch
        linger = self._opts.linger
        try:
            if self._handed_off or self._disconnected:
                linger = 0.0  # nobody to deliver to
            elif not self._tx_partial:
                rx = self._rx_seq - len(self._inbox)
                try:
                    link.sock.send(b"G" + _SEQ.pack(max(0, rx)), zmq.NOBLOCK)
                except zmq.Again:
                    pass  # the direction is full: the peer will see the drop (PeerDied)
            # else: a half message is pending (an interrupted send): no goodbye, which would complete
            # it; libzmq drops the half at close and still delivers the whole messages before it.
        finally:
            link.destroy(linger)

    def _fileno(self) -> int:
        # No level-triggered descriptor can be given without a thread per channel: a message
        # arrives by libzmq's I/O thread, which runs no ipckit code, so nothing of ours could set a
        # doorbell when it comes; and ZMQ_FD itself is edge-triggered (readable means "read
        # ZMQ_EVENTS", which also resets it), so a level-triggered selector would either miss a
        # message or (after the edge was consumed by a send or an EVENTS read) never wake again.
        raise UnsupportedOperation(
            f"{self._url} has no selectable descriptor: ZeroMQ's ZMQ_FD is edge-triggered (readable only means "
            "'the socket's state changed', and any zmq call may consume that edge), so a selector or "
            "loop.add_reader would miss messages; wait with ipckit.wait([channels...]) or use ipckit.aio, which "
            "re-check poll(0) after every wake-up")

    def _fork_handed(self) -> None:
        # A zmq end cannot work in another process (libzmq is not fork-safe): the parent keeps it.
        pass

    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        self._disown_after_fork(True)

    def __del__(self) -> None:
        link = getattr(self, "_link", None)
        if link is not None and getattr(link.ctx, "ipckit_pid", None) != os.getpid():
            return
        super().__del__()


# --------------------------------------------------------------------------- the listener
def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (a hello nested past the recursion limit)
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class Pending:
    link: Link
    peer_max: int
    ack: bool


#: Listener threads still running, stopped at the interpreter's exit.
_live_listeners: weakref.WeakSet[ZmqListener] = weakref.WeakSet()


class ZmqListener(Listener):
    """A ROUTER rendezvous: each client's hello gets a PAIR socket bound on a fresh endpoint.

    A thread of the listener answers hellos at once (the client knows the server's limit from
    connect() on, and may send and even close before accept()); accept() takes the next prepared
    socket.  Subclasses say where the per-client sockets are bound (:meth:`bind_client`) and what
    to release at close (:meth:`release`).
    """

    #: the channel class accept() makes
    channel_class: ClassVar[type[ZmqChannel]]
    #: pending clients (prepared, not yet accepted) kept at most; the oldest is dropped beyond it
    max_pending: ClassVar[int] = 128

    def __init__(self, url: str, options: ZmqOptions, ctx: zmq.Context[Any], router: zmq.Socket[Any],
                 *, peer_trusted: bool) -> None:
        super().__init__(url, options)
        self._zopts = options
        self._ctx = ctx
        self._router = router
        self._peer_trusted = peer_trusted
        self._ready: deque[Pending] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name=f"ipckit-zmq-listener {url}", daemon=True)
        self._thread.start()
        _live_listeners.add(self)

    # subclass hooks
    def bind_client(self, link: Link) -> str:
        """Bind *link*'s socket on a fresh endpoint; return the address the client connects to."""
        raise NotImplementedError

    def release(self) -> None:
        """Release the rendezvous endpoint (files, locks)."""

    def curve_server(self) -> Callable[[zmq.Socket[Any]], None] | None:
        """A function making a per-client socket a CURVE server, or None."""
        return None

    def _serve(self) -> None:
        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not self._stop:
            try:
                if not poller.poll(50):
                    continue
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError:
                return  # the context went away: the listener is closing
            self._hello(router, frames)

    def _hello(self, router: zmq.Socket[Any], frames: list[bytes]) -> None:
        if len(frames) != 3 or frames[1] != PROTOCOL:
            return  # not an ipckit client: dropped, accept() goes on waiting
        hello = decode_json(frames[2])
        if hello is None or not isinstance(hello.get("max"), int) or hello["max"] < 0:
            return
        ack = bool(hello.get("ack", False))
        if ack != self._zopts.ack:
            self._reply(router, frames[0], {"error": f"ack={self._zopts.ack} on the listener, ack={ack} on the client: "
                                                     "both ends need the same ack option"})
            return
        try:
            link = make_link(self._zopts, self.curve_server())
            try:
                address = self.bind_client(link)
            except BaseException:
                link.destroy(0)
                raise
        except Exception as exc:  # the listener goes on; this client is told why
            self._reply(router, frames[0], {"error": f"the listener could not prepare a channel: {exc}"})
            return
        with self._cond:
            self._ready.append(Pending(link, hello["max"], ack))
            while len(self._ready) > self.max_pending:
                self._ready.popleft().link.destroy(0)
            self._cond.notify_all()
        self._reply(router, frames[0], {"endpoint": address, "max": self._zopts.max_message_size,
                                        "mode": self._zopts.mode})

    @staticmethod
    def _reply(router: zmq.Socket[Any], ident: bytes, body: dict[str, Any]) -> None:
        try:
            router.send_multipart([ident, PROTOCOL, encode_json(body)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone or slow: it times out

    def _accept(self, deadline: Deadline) -> Channel:
        check_pid(self._ctx, f"accept on {self._url}")
        with self._cond:
            while not self._ready:
                if self._closed:
                    raise ChannelClosed(f"accept on closed listener {self._url}")
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise ChannelTimeout(f"accept on {self._url} timed out: no client connected")
                self._cond.wait(_SLICE * 5 if left is None else min(left, _SLICE * 5))
            pending = self._ready.popleft()
        try:
            return self.channel_class(self._url, self._zopts, pending.link, peer_trusted=self._peer_trusted,
                                      peer_max=pending.peer_max)
        except BaseException:
            pending.link.destroy(0)
            raise

    def _wakeup(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _close(self) -> None:
        _live_listeners.discard(self)
        if getattr(self._ctx, "ipckit_pid", None) != os.getpid():
            return  # a forked copy: nothing here is ours
        self._stop = True
        self._thread.join(5.0)
        with self._cond:
            pending, self._ready = list(self._ready), deque()
        for p in pending:
            p.link.destroy(0)  # clients never accepted: they see the drop (PeerDied)
        try:
            self._router.close(linger=0)
            self._ctx.term()
        finally:
            self.release()


def rendezvous(url: str, address: str, opts: ZmqOptions, deadline: Deadline,
               curve: Callable[[zmq.Socket[Any]], None] | None = None) -> dict[str, Any]:
    """Say hello to the listener at *address* (a zmq endpoint) and return its answer.

    Raises:
        EndpointNotFound: no answer before the deadline (nobody listens there).
        ConnectFailed: the listener refused (its reason in the message).
    """
    ctx = new_context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.MAXMSGSIZE, 4096)
        if curve is not None:
            curve(dealer)
        try:
            dealer.connect(address)
        except zmq.ZMQError as exc:
            raise zmq_error(exc, f"connect to {url}") from exc
        dealer.send_multipart([PROTOCOL, encode_json({"max": opts.max_message_size, "ack": opts.ack,
                                                      "pid": os.getpid()})], zmq.NOBLOCK)
        fd = int(dealer.getsockopt(zmq.FD))
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        limit = deadline_from(opts.handshake_timeout)
        end = limit if deadline is None else (deadline if limit is None else min(deadline, limit))
        while True:
            if int(dealer.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                frames = dealer.recv_multipart(zmq.NOBLOCK)
                if len(frames) == 2 and frames[0] == PROTOCOL:
                    answer = decode_json(frames[1])
                    if answer is not None:
                        if "error" in answer:
                            raise ConnectFailed(errno.ECONNREFUSED, f"{url} refused the connection: {answer['error']}")
                        return answer
                raise ConnectFailed(errno.EPROTO, f"{url} answered, but not as an ipckit zmq listener")
            left = remaining(end)
            if left is not None and left <= 0:
                raise EndpointNotFound(errno.ETIMEDOUT, f"no ipckit listener answered at {url} in time: is it running?")
            poller.poll(poll_ms(end, _SLICE))
    finally:
        ctx.destroy(linger=0)


def await_handshake(links: list[Link], what: str, timeout: float = 5.0) -> None:
    """Wait until every one of *links* finished its ZMTP handshake (pair(): both ends in-process).

    Raises ConnectFailed after *timeout* seconds."""
    deadline = deadline_from(timeout)
    waiting = list(links)
    poller = select.poll()
    for link in waiting:
        poller.register(int(link.monitor.getsockopt(zmq.FD)), select.POLLIN)
    while waiting:
        for link in list(waiting):
            while True:
                try:
                    frames = link.monitor.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                event = _EVENT.unpack_from(frames[0])[0] if frames and len(frames[0]) >= 6 else 0
                if event & _CONNECTED:
                    waiting.remove(link)
                    break
                if event & _FAILED:
                    raise ConnectFailed(errno.ECONNREFUSED, f"{what}: the ZeroMQ handshake failed")
        if not waiting:
            return
        left = remaining(deadline)
        if left is not None and left <= 0:
            raise ConnectFailed(errno.ETIMEDOUT, f"{what}: the two ends did not connect within {timeout} s")
        poller.poll(poll_ms(deadline, _SLICE))


def handshake_left(opts: ZmqOptions, deadline: Deadline) -> float:
    """Seconds a connect() may still wait for its handshake: its deadline, at most ``handshake_timeout``."""
    left = remaining(deadline)
    return opts.handshake_timeout if left is None else min(left, opts.handshake_timeout)


def connect_link(link: Link, endpoint: str, url: str) -> None:
    try:
        link.sock.connect(endpoint)
    except zmq.ZMQError as exc:
        link.destroy(0)
        raise zmq_error(exc, f"connect to {url}") from exc


def _close_listeners_at_exit() -> None:
    for lst in list(_live_listeners):
        try:
            lst.close()
        except Exception:
            pass


atexit.register(_close_listeners_at_exit)

_ = (ChannelTimeout, MAX_WAIT)
