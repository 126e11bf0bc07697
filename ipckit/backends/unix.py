"""``unix://`` — Unix domain sockets: framed ``SOCK_STREAM`` or message-oriented ``SOCK_SEQPACKET``.

Features:
    A listener serves many clients at once, one channel per ``accept()``; ``fileno()`` of both
    listener and channels works with selectors and asyncio.  Each side checks the other's
    credentials (``SO_PEERCRED``) before reading a byte from it: by default only the same user is
    accepted (``allow_uids`` widens that).  ``authkey=`` adds a mutual HMAC-SHA256
    challenge-response (pre-authentication reads of at most 256 bytes, bounded by
    ``handshake_timeout``); handshakes of many clients progress side by side, so a stalled client
    never delays another.  A peer proven to be the same user, or authenticated, is trusted
    (pickle is the default serializer); a foreign uid without ``authkey`` gets msgpack and pickle
    raises ``UnsafeSerializer``.  Then each end's first frame (packet) is its hello
    (``ipckit.framing``: magic, protocol version, ``max_message_size``): ``accept()`` returns only
    a client whose hello arrived (one that sends garbage, leaves, or is silent for
    ``handshake_timeout`` is dropped; the messages a client sent before ``accept()`` stay queued for
    the channel, even if it left), and sends above the peer's limit raise MessageTooLarge.  A
    client knows the server's limit at connect from ``<path>.lock``, where the listener published
    it; on an abstract address (no lock file) it learns it from the server's hello, read on its
    first ``recv``/``poll`` after the accept.  A clean close (EndOfChannel) is told apart from a crash
    (PeerDied); sends use ``MSG_NOSIGNAL``, so a dead peer never raises SIGPIPE.
    A stale socket file left by a killed server is replaced only after a probe connection shows
    nothing listens (under an ``flock`` on ``<path>.lock``); a live server is never stolen
    (EndpointExists).  ``pair()`` is a ``socketpair``; ends pass to ``multiprocessing`` children
    like pipe ends.

    ``type=stream`` (default) frames messages on the byte stream (the shared ``fdstream`` code,
    with ``sendmsg`` gathering header and payload into one call).  ``type=seqpacket`` lets the
    kernel keep message boundaries: each message is one packet (one tag byte + payload), a
    message is sent whole or not at all, and an oversized incoming message is discarded with
    MessageTooLarge while the channel stays usable.  Its largest message is bounded by the
    socket send buffer and a kernel allocation limit (about 4 MiB here); ``max_message_size``
    of a seqpacket channel reports the effective limit.

URL format:
    ``unix:///abs/path.sock`` (relative paths are made absolute; at most 107 bytes);
    ``unix://`` with ``listen()`` creates ``ipckit-<random>.sock`` in a new private 0700 directory
    (removed on close); ``unix://@name`` is the Linux abstract namespace, refused unless
    ``abstract=True`` (any local user can connect there, so only the credential check protects it).

Options:
    ``type`` — ``stream`` (default) or ``seqpacket``.
    ``allow_uids`` — extra peer uids accepted besides our own (``"1000,1001"`` or a list of ints).
    ``authkey`` — bytes or str; enables mutual HMAC authentication (both ends need the same key).
    ``handshake_timeout`` — seconds a client has to finish its handshake (authentication, hello) (default 5).
    ``abstract`` — allow ``unix://@name`` addresses (default False).
    ``backlog`` — ``listen()`` backlog (default 128).
    ``max_pending`` — client handshakes in progress at once; the oldest is dropped beyond it
    (default 128).
    ``buffer_size`` — requested socket send buffer of seqpacket channels (default 4 MiB).
    ``checksum`` — CRC32 per frame on stream channels (default off).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode`` (of the
    socket file, default 0600, set explicitly), ``trust``.

Platform notes:
    Linux (``SO_PEERCRED``, abstract namespace, ``MSG_NOSIGNAL``).  The path limit is 107 bytes
    (``sun_path`` is 108 including the terminating NUL).  A socket file's permission bits are
    enforced on ``connect`` by Linux; other users are also refused by the credential check.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import select
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, final

from .. import _handoff
from ..backend import Backend
from ..channel import Channel, Listener
from ..cleanup import StaleObject, Sweep
from ..deadline import MAX_WAIT, Backoff, Deadline, poll_ms, remaining
from ..errors import (
    BufferTooSmall,
    ChannelClosed,
    ChannelTimeout,
    ConfigurationError,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    MessageTooLarge,
    PeerDied,
    PeerRejected,
    PermissionDenied,
    ProtocolError,
    SendTimeout,
    again,
    from_oserror,
)
from ..framing import (
    FLAG_REJECTED,
    HEADER_SIZE,
    HELLO_MAX,
    REJECT_REASON_MAX,
    decode_header,
    decode_hello,
    encode_rejection,
    hello_payload,
)
from ..options import Capabilities, Options, option
from ..serializers import Buffer
from ..url import Endpoint
from .common import auth as _auth
from .common import paths as _paths
from .common.stream import (
    DescriptorChannel,
    FdStreamChannel,
    bytes_waiting,
    publish_limits,
    published_limit,
    rejection_error,
    write_with_linger,
)

__all__ = ["UnixBackend", "UnixOptions", "UnixStreamChannel", "UnixSeqpacketChannel", "MAX_PATH"]

#: Longest socket path in bytes (``sun_path`` holds 108 bytes including the NUL).
MAX_PATH = 107

_PEERCRED = struct.Struct("3i")
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_TAG_DATA = b"\x00"
_TAG_GOODBYE = b"\x01"
_TAG_REJECTED = b"\x02"  # + a short reason: the server refused this client (its first and only packet)
_TAG_HELLO = b"\x03"  # + the hello payload (ipckit.framing): the first packet of each direction
_SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)  # Linux; Python 3.11's socket module lacks the name
_ANY_SIZE = (0,)  # recv_into's nbytes (0: the whole view) and flags, as map() arguments
_DONTWAIT = (socket.MSG_DONTWAIT,)


_C_INT_MAX = 2**31 - 1  # backlog and SO_SNDBUF are C ints


@dataclass
class UnixOptions(Options):
    type: str = option("stream", choices=("stream", "seqpacket"))
    allow_uids: Any = None
    authkey: Any = field(default=None, repr=False)
    handshake_timeout: float = option(5.0, above=0, maximum=MAX_WAIT)  # a deadline poll(2) can wait for
    abstract: bool = False
    backlog: int = option(128, minimum=1, maximum=_C_INT_MAX)
    max_pending: int = option(128, minimum=1)
    buffer_size: int = option(4 * 1024 * 1024, minimum=1, maximum=_C_INT_MAX)
    checksum: bool = False

    #: Each peer's uid is proven by ``SO_PEERCRED`` on its own connection, so a wider socket file
    #: ``mode`` only opens the door to connecting: a same-user peer stays trusted, another uid is
    #: not (the trust rule in ``ipckit.channel.resolve_serializer``).
    mode_voids_trust: ClassVar[bool] = False

    def validate(self) -> None:
        # allow_uids and authkey take several spellings: checked here, once, when options are parsed.
        _allowed_uids(self)
        _authkey(self)


_CAPS = Capabilities(
    duplex=True,
    message_oriented=False,
    selectable=True,
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=True,
    multi_client=True,
    proves_same_user=True,
)
_SEQ_CAPS = dataclasses.replace(
    _CAPS,
    message_oriented=True,
    # One packet per message: bounded by SO_SNDBUF and the kernel's packet allocation (about 4 MiB
    # here as root; less where net.core.wmem_max is small).  ch.max_message_size has the real value.
    max_message_size=4 * 1024 * 1024,
)


# ----------------------------------------------------------------------------- options and addresses
def _sock_type(opts: UnixOptions) -> int:
    kind = opts.type.lower()
    if kind == "stream":
        return socket.SOCK_STREAM
    if kind == "seqpacket":
        return socket.SOCK_SEQPACKET
    raise ConfigurationError(f"unknown unix socket type {opts.type!r}; use 'stream' or 'seqpacket'")


_UIDS_ALLOWED = "uids besides our own, like '1000,1001' or a list of ints, or None"


def _allowed_uids(opts: UnixOptions) -> frozenset[int]:
    uids = {os.geteuid()}
    raw = opts.allow_uids
    if raw is None or raw == "":
        return frozenset(uids)
    items: list[Any]
    if isinstance(raw, str):
        items = [s for s in raw.replace(";", ",").split(",") if s.strip()]
    elif isinstance(raw, int):
        items = [raw]
    else:
        try:
            items = list(raw)
        except TypeError:
            raise ConfigurationError(
                f"bad value {raw!r} for option 'allow_uids'; allowed: {_UIDS_ALLOWED}"
            ) from None
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError(item)
            uids.add(int(item))
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"bad value {raw!r} for option 'allow_uids' ({item!r} is not a uid); allowed: {_UIDS_ALLOWED}"
            ) from None
    return frozenset(uids)


def _authkey(opts: UnixOptions) -> bytes | None:
    try:
        return _auth.coerce_key(opts.authkey)
    except TypeError:
        # The key itself stays out of the message (it may be a secret of the wrong type).
        raise ConfigurationError(
            f"bad value of type {type(opts.authkey).__name__} for option 'authkey'; allowed: bytes or str, or None"
        ) from None


def _check_options(opts: UnixOptions) -> None:
    # Options from parse_options passed their declared bounds and validate(); these are the
    # checks of values that did not come through it.
    _sock_type(opts)
    opts.validate()


@dataclass(frozen=True)
class _Address:
    sockaddr: str | bytes  # what bind/connect take ("\0name" for the abstract namespace)
    path: str | None  # file-system path, None for abstract
    url: str


def _address(endpoint: Endpoint, opts: UnixOptions, *, listening: bool) -> _Address | None:
    """Validate the address; None means "generate one" (listen only)."""
    addr = endpoint.address
    if addr.startswith("@"):
        if not opts.abstract:
            raise InvalidAddress(
                f"unix://{addr} is in the abstract namespace, which any local user can reach; "
                "pass abstract=True to opt in (peers are then admitted by the SO_PEERCRED check)"
            )
        name = addr[1:]
        if not name:
            if not listening:
                raise InvalidAddress("unix://@ needs a name to connect to")
            name = _paths.generated_name()
        raw = name.encode()
        if len(raw) > MAX_PATH:
            raise InvalidAddress(f"abstract socket name is {len(raw)} bytes; the limit is {MAX_PATH} bytes")
        return _Address("\0" + name, None, f"unix://@{name}")
    if not addr:
        if not listening:
            raise InvalidAddress("unix:// needs a socket path to connect to, e.g. unix:///run/app.sock")
        return None
    path = os.path.abspath(addr)
    n = len(os.fsencode(path))
    if n > MAX_PATH:
        raise InvalidAddress(
            f"Unix socket path {path!r} is {n} bytes; the limit is {MAX_PATH} bytes (sun_path holds 108 "
            "including the NUL); use a shorter path"
        )
    return _Address(path, path, f"unix://{path}")


_T = TypeVar("_T")


def _take(call: Callable[..., _T], *args: Any) -> _T:
    """Run a receive that consumes a packet already peeked at, on a seqpacket socket.

    A peer that closes with our packets unread makes the kernel report ECONNRESET once, and ahead
    of the packets still queued (the datagram receive checks the socket error before its queue), so
    a packet peeked just before that close reads as a reset on the consuming call.  The report
    clears the error: one retry reads the packet.
    """
    try:
        return call(*args)
    except ConnectionResetError:
        return call(*args)


def _peer_uid(sock: socket.socket, allowed: frozenset[int], who: str) -> int:
    """Check the peer's credentials (SO_PEERCRED) before anything is read from it."""
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError as exc:
        raise PeerRejected(exc.errno or errno.EPROTO, f"cannot read the {who}'s credentials: {exc}") from exc
    if uid not in allowed:
        raise PeerRejected(
            errno.EACCES,
            f"{who} runs as uid {uid}, which is not allowed (allowed: {sorted(allowed)}); "
            "add it to allow_uids to admit it",
        )
    return int(uid)


def _refuse(conn: socket.socket, seqpacket: bool, reason: str | None = None) -> None:
    """Tell a client the server refused it (a REJECTED frame or packet) before closing; best effort.

    *reason* defaults to the credential check's (the client's uid is not allowed).
    """
    try:
        if reason is None:
            _pid, uid, _gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               _PEERCRED.size))
            reason = f"uid {uid} is not in the server's allow_uids"
        data = _TAG_REJECTED + reason.encode()[:REJECT_REASON_MAX] if seqpacket else encode_rejection(reason)
        conn.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError:
        pass  # the client is gone or its buffer is full: it sees the close instead


# ----------------------------------------------------------------------------- stream channel
@final
class UnixStreamChannel(FdStreamChannel):
    """A framed channel over a connected ``SOCK_STREAM`` Unix socket."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __init__(self, url: str, options: Options, sock: socket.socket, *, peer_trusted: bool,
                 checksum: bool = False) -> None:
        self._sock: socket.socket | None = None
        # The socket stays in blocking mode: a receive with no deadline blocks in recv() itself
        # (close() wakes it with shutdown), and every other call passes MSG_DONTWAIT.
        sock.setblocking(True)
        super().__init__(url, options, rfd=sock.fileno(), wfd=sock.fileno(), peer_trusted=peer_trusted,
                         checksum=checksum)
        self._sock = sock
        self._send_flags = socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT
        self._sendmsg = sock.sendmsg
        self._recv_into = sock.recv_into
        self._recv_blocking = sock.recv_into  # C-level, as the stream kit requires
        self._trusted = peer_trusted

    def _raw_writev(self, bufs: list[memoryview]) -> int:
        return self._sendmsg(bufs, (), self._send_flags)

    def _writes(self, bufs: list[memoryview]) -> Iterator[int]:
        return map(self._sendmsg, (bufs,), ((),), (self._send_flags,))  # C-level, as the stream kit requires

    _blocking_reads = True

    def _raw_readinto(self, view: memoryview) -> int:
        try:
            return self._recv_into(view, 0, socket.MSG_DONTWAIT)
        except ConnectionResetError:
            return 0  # the peer closed with unread data: end of stream (without goodbye → PeerDied)

    def _reads(self, view: memoryview) -> Iterator[int]:
        return map(self._recv_into, (view,), _ANY_SIZE, _DONTWAIT)  # the kit maps ConnectionResetError to 0

    def _pending_rejection(self) -> PeerRejected | None:
        # A refused client's send fails before it read anything: look (without consuming) for the
        # server's REJECTED frame, the first frame of the stream, so the send reports it too.
        sock = self._sock
        if sock is None or self._rseq != 0:
            return None
        data = bytes(self._rmv[self._rpos : self._rend])
        try:
            data += sock.recv(HEADER_SIZE + REJECT_REASON_MAX, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            pass
        if len(data) < HEADER_SIZE:
            return None
        try:
            flags, n, _ = decode_header(data, 0, 0, 0)
        except IPCError:
            return None
        if not flags & FLAG_REJECTED or len(data) < HEADER_SIZE + n:
            return None
        return rejection_error(self._url, data[HEADER_SIZE : HEADER_SIZE + n])

    def _peek_incoming(self) -> bytes | None:
        # Everything queued, looked at with MSG_PEEK (a stream socket's peek spans its packets).
        sock = self._sock
        if sock is None:
            return None
        try:
            waiting = bytes_waiting(sock.fileno())
            return sock.recv(waiting, socket.MSG_PEEK | socket.MSG_DONTWAIT) if waiting > 0 else b""
        except (BlockingIOError, ConnectionResetError):
            return b""  # nothing queued (a reset is reported only once nothing is)
        except OSError:
            return None

    def _unblock_reader(self) -> None:
        # Makes a recv() blocked in another thread return 0 at once; we are closing anyway.
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def _release_fds(self) -> None:
        sock = self._sock
        if sock is not None:
            self._sock = None
            sock.detach()  # the descriptor is closed once, by the base class
        super()._release_fds()

    def __reduce__(self) -> Any:
        return _reduce(self, self._rfd, _rebuild_stream, (self._handoff_state(), self._checksum))


def _rebuild_stream(handed: _handoff.HandedFds, url: str, options: Options, trusted: bool,
                    resume: tuple[Any, ...], checksum: bool) -> UnixStreamChannel:
    (fd,) = _handoff.take_fds(handed)
    ch = UnixStreamChannel(url, options, socket.socket(fileno=fd), peer_trusted=trusted, checksum=checksum)
    ch._resume(*resume)
    return ch


def _reduce(ch: UnixStreamChannel | UnixSeqpacketChannel, fd: int, rebuild: Callable[..., Channel],
            extra: tuple[Any, ...]) -> _handoff.ReduceValue:
    # Outside a multiprocessing hand-off every end refuses, a connected client's too (the
    # contract: plain pickling is a TypeError); another process connects to the URL itself.
    url, options = ch._url, ch._options
    return _handoff.reduce_fds(
        ch, rebuild, (fd,), (url, options, ch._trusted, *extra),
        refuse=f"this unix:// channel ({url}) can only be passed to a child process as an argument of "
               "multiprocessing.Process (it travels as a duplicated socket); otherwise connect to the "
               "listener's URL from the other process")


# ----------------------------------------------------------------------------- seqpacket channel
_kernel_limit: int | None = None
_kernel_limit_lock = threading.Lock()


def _seqpacket_kernel_limit() -> int:
    """Largest packet the kernel accepts on a seqpacket socket with a huge send buffer (probed once).

    Beyond the send buffer, Linux limits one packet by its skb allocation (about 4 MiB here).
    """
    global _kernel_limit
    with _kernel_limit_lock:
        if _kernel_limit is not None:
            return _kernel_limit
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            _set_sndbuf(a, 64 * 1024 * 1024)
            ceiling = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32
            a.setblocking(False)
            probe = bytes(ceiling)
            lo, hi = 0, ceiling
            sink = bytearray(1)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                try:
                    a.send(memoryview(probe)[:mid])
                except OSError:
                    hi = mid - 1
                else:
                    b.recv_into(sink, 1)
                    lo = mid
            _kernel_limit = lo
        finally:
            a.close()
            b.close()
        return lo


def _set_sndbuf(sock: socket.socket, size: int) -> None:
    if os.geteuid() == 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
            return
        except OSError:
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass


def _packet_limit(sock: socket.socket, opts: Options) -> int:
    """Largest message of a seqpacket channel on *sock* (its send buffer raised to ``buffer_size``)."""
    _set_sndbuf(sock, getattr(opts, "buffer_size", UnixOptions.buffer_size))
    sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return min(sndbuf - 32, _seqpacket_kernel_limit()) - 1


def _listener_limit(sock: socket.socket, opts: UnixOptions) -> int:
    """The ``max_message_size`` of the channels a listener on *sock* accepts (what it publishes)."""
    if sock.type == socket.SOCK_SEQPACKET:
        return min(opts.max_message_size, _packet_limit(sock, opts))
    return opts.max_message_size


_HUNG_UP = select.POLLHUP | select.POLLRDHUP


def _peer_hung_up(sock: socket.socket) -> bool:
    """A seqpacket socket whose recv() gave 0: True at the end of the stream (the peer's end is
    closed and nothing is queued), False when that was a packet of 0 bytes and more may follow."""
    poller = select.poll()
    poller.register(sock.fileno(), _HUNG_UP)
    if not any(ev & _HUNG_UP for _, ev in poller.poll(0)):
        return False
    (queued,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))
    return bool(queued == 0)  # the peer ended: only empty packets (if any) are left before the end


@final
class UnixSeqpacketChannel(DescriptorChannel):
    """A message-oriented channel over ``SOCK_SEQPACKET``: one packet per message, no framing.

    Each packet starts with a tag byte (data or goodbye), so an empty message is distinct from
    the end of the stream and a clean close is distinct from a crash.
    """

    capabilities: ClassVar[Capabilities] = _SEQ_CAPS

    def __init__(self, url: str, options: Options, sock: socket.socket, *, peer_trusted: bool) -> None:
        self._sock: socket.socket | None = None
        super().__init__(url, options, peer_trusted=peer_trusted)
        self._trusted = peer_trusted
        opts: UnixOptions = options  # type: ignore[assignment]
        sock.setblocking(False)
        self._limit = _packet_limit(sock, opts)
        self._max = min(self._max, self._limit)
        self._send_max = self._max
        self._sock = sock
        self._fd = sock.fileno()
        self._watch(self._fd, self._fd)
        self._peek = bytearray(1)
        self._tag = bytearray(1)
        self._send_error: IPCError | None = None
        self._recv_error: IPCError | None = None
        self._handed_off = False

    def _too_large(self, n: int) -> str:
        if n > self._limit:
            return (f"message of {n} bytes exceeds the {self._limit}-byte packet limit of this seqpacket socket "
                    f"(send buffer SO_SNDBUF and the kernel's packet allocation limit) on {self._url}; "
                    "use type=stream for larger messages")
        return super()._too_large(n)

    # ---------------------------------------------------------------- the hello
    #: True on a connected client until the server's hello packet was read.
    _hello_due = False

    def _say_hello(self) -> None:
        """Send this end's hello packet, the first of its direction (at connect or accept)."""
        sock = self._sock
        assert sock is not None
        try:
            sock.send(_TAG_HELLO + hello_payload(self._max), socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the peer is gone: the next send or receive reports it (a refused client's, the reason)
        except OSError as exc:
            raise from_oserror(exc, f"sending the hello on {self._url}") from exc

    def _take_hello(self, n: int) -> None:
        """Consume the hello packet of *n* bytes at the head of the queue and learn the peer's limit.

        Raises ProtocolError / IncompatibleEndpoint for a malformed or unexpected one (discarded;
        the channel stays usable, as for any packet it cannot use).
        """
        sock = self._sock
        assert sock is not None
        packet = _take(sock.recv, min(n, 1 + HELLO_MAX))
        if not self._hello_due:
            raise ProtocolError(f"an unexpected hello packet on {self._url}; it was discarded")
        self._hello_due = False
        self._learn_peer_limit(decode_hello(packet[1:], f"the peer of {self._url}"))

    def _take_waiting_hello(self) -> bool:
        """poll(): consume a hello packet at the head of the queue, if there is one (never blocks)."""
        sock = self._sock
        assert sock is not None
        try:
            n = sock.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC | socket.MSG_DONTWAIT)
        except OSError:
            return False
        if n <= 0 or self._peek[0] != _TAG_HELLO[0]:
            return False
        try:
            self._take_hello(n)
        except IPCError:
            pass  # a bad hello is discarded, as recv would; the channel stays usable
        return True

    # ---------------------------------------------------------------- sending
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        self._send_parts([view], view.nbytes, deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        if self._send_error is not None:
            raise again(self._send_error)
        sock = self._sock
        assert sock is not None
        bufs: list[Any] = [_TAG_DATA, *views]
        while True:
            try:
                sock.sendmsg(bufs, (), socket.MSG_NOSIGNAL)
                return
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise again(self._peer_gone(deadline)) from exc
            except OSError as exc:
                if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise MessageTooLarge(self._too_large(total)) from exc
                raise
            events = self._wpoll.poll(poll_ms(deadline))
            if self._closed:
                raise ChannelClosed(f"channel {self._url} was closed while sending")
            if not events:
                raise SendTimeout(f"send timed out on {self._url}: the peer is not reading; nothing was sent")

    def _pending_rejection(self) -> PeerRejected | None:
        # The server's REJECTED packet, if it is the next one (looked at without consuming it).
        sock = self._sock
        if sock is None or self._recv_error is not None:
            return None
        try:
            packet = _take(sock.recv, 1 + REJECT_REASON_MAX, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return None
        if packet[:1] != _TAG_REJECTED:
            return None
        return rejection_error(self._url, packet[1:])

    def _goodbye_after_unread(self) -> bool | None:
        # A seqpacket peek sees one packet; SO_PEEK_OFF moves it along the queue, packet by packet
        # (the offset is in bytes: the sum of the packets before), so the tags can be read in turn.
        sock = self._sock
        if sock is None:
            return None
        offset = 0
        try:
            while True:
                sock.setsockopt(socket.SOL_SOCKET, _SO_PEEK_OFF, offset)
                try:
                    n = sock.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return None
                except ConnectionResetError:
                    continue  # reported once, ahead of the queued packets (as in _next_length)
                if n == 0:
                    return False  # the end of the stream, no goodbye before it (or an empty packet)
                if self._peek[0] == _TAG_GOODBYE[0]:
                    return True
                offset += n
        except OSError:
            return None
        finally:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_PEEK_OFF, -1)
            except OSError:
                pass

    # ---------------------------------------------------------------- receiving
    def _next_length(self, deadline: Deadline) -> int:
        """Wait for the next data packet and return its payload length (handles goodbye and EOF)."""
        if self._recv_error is not None:
            raise again(self._recv_error)
        sock = self._sock
        assert sock is not None
        while True:
            try:
                n = sock.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            except BlockingIOError:
                self._wait_readable(deadline)
                continue
            except ConnectionResetError:
                # The peer closed with our packets unread: a datagram socket reports that once,
                # ahead of the packets still queued (its goodbye among them), so look again.
                continue
            if n <= 0:
                # recv() gives 0 for the end of the stream and for a packet of 0 bytes alike; the
                # latter (no tag: nothing ipckit sends) must not read as the death of a live peer.
                if n == 0 and not _peer_hung_up(sock):
                    _take(sock.recv_into, self._tag, 1)  # consume it
                    raise ProtocolError(f"an empty packet (no tag byte) on {self._url}; it was discarded")
                self._recv_error = PeerDied(f"the peer of {self._url} ended without closing the channel")
                raise again(self._recv_error)
            tag = self._peek[0]
            if tag == _TAG_DATA[0]:
                return n - 1
            if tag == _TAG_REJECTED[0]:
                packet = _take(sock.recv, n)
                self._recv_error = rejection_error(self._url, packet[1 : 1 + REJECT_REASON_MAX])
                if self._send_error is None:  # refused: a send must say so too, not succeed while
                    self._send_error = self._recv_error  # the server is still closing the socket
                raise again(self._recv_error)
            if tag == _TAG_HELLO[0]:
                self._take_hello(n)
                continue
            if tag == _TAG_GOODBYE[0]:
                # Recorded before the packet is consumed: an exception a signal handler raises
                # between the two must not turn a clean close into a crash (PeerDied).
                self._recv_error = EndOfChannel(f"the peer closed {self._url} and every message was received")
                _take(sock.recv_into, self._tag, 1)
                raise again(self._recv_error)
            _take(sock.recv_into, self._tag, 1)  # consume it
            raise ProtocolError(f"unknown packet tag 0x{tag:02x} on {self._url}; the packet was discarded")

    def _discard(self) -> None:
        assert self._sock is not None
        _take(self._sock.recv_into, self._tag, 1)  # seqpacket drops the rest of a truncated packet

    def _recv_message(self, deadline: Deadline) -> Buffer:
        n = self._next_length(deadline)
        if n > self._max:
            self._discard()
            raise MessageTooLarge(f"peer sent a {n}-byte message, over max_message_size={self._max} on "
                                  f"{self._url}; it was discarded")
        out = bytearray(n)
        assert self._sock is not None
        _take(self._sock.recvmsg_into, [self._tag, out])
        return out

    def _recv_message_into(self, view: memoryview, deadline: Deadline) -> int:
        n = self._next_length(deadline)
        if n > view.nbytes:
            if n > self._max:
                self._discard()
                raise MessageTooLarge(f"peer sent a {n}-byte message, over max_message_size={self._max}; "
                                      "it was discarded")
            out = bytearray(n)
            assert self._sock is not None
            _take(self._sock.recvmsg_into, [self._tag, out])
            raise BufferTooSmall(f"message of {n} bytes does not fit the {view.nbytes}-byte buffer; it is in .message",
                                 bytes(out))
        assert self._sock is not None
        _take(self._sock.recvmsg_into, [self._tag, view[:n]])
        return n

    def _poll_locked(self, deadline: Deadline) -> bool:
        while True:
            if self._recv_error is not None:
                return True
            events = self._rpoll.poll(poll_ms(deadline))
            if self._closed:
                raise ChannelClosed(f"channel {self._url} was closed while polling")
            if not any(fd == self._fd for fd, _ in events):
                return False
            # A waiting hello is not a message: take it and look again (within the same deadline).
            if not self._hello_due or not self._take_waiting_hello():
                return True

    def _fileno(self) -> int:
        return self._fd

    # ---------------------------------------------------------------- closing
    def _close(self) -> None:
        sock, self._sock = self._sock, None
        wake, self._wake = self._wake, -1
        try:
            if sock is not None and self._send_error is None and not self._handed_off:
                self._say_goodbye(sock)
        finally:
            if sock is not None:
                sock.close()
            if wake >= 0:
                os.close(wake)

    def _fork_release(self, multiprocessing_child: bool) -> None:
        # As the stream kit: any forked child drops the parent's other ends silently (the base
        # class marked this end handed off, so _close says no goodbye).
        self._close()

    def _say_goodbye(self, sock: socket.socket) -> None:
        write_with_linger(sock.fileno(), lambda: sock.send(_TAG_GOODBYE, socket.MSG_NOSIGNAL))

    def __reduce__(self) -> Any:
        return _reduce(self, self._fd, _rebuild_seqpacket, (self._hello_due, self._peer_max))


def _rebuild_seqpacket(handed: _handoff.HandedFds, url: str, options: Options, trusted: bool, hello_due: bool,
                       peer_max: int | None) -> UnixSeqpacketChannel:
    (fd,) = _handoff.take_fds(handed)
    ch = UnixSeqpacketChannel(url, options, socket.socket(fileno=fd), peer_trusted=trusted)
    ch._hello_due = hello_due
    if peer_max is not None:
        ch._learn_peer_limit(peer_max)
    return ch


def _make_channel(url: str, opts: UnixOptions, sock: socket.socket, *,
                  trusted: bool) -> UnixStreamChannel | UnixSeqpacketChannel:
    """Wrap a connected socket; closes it if the channel cannot be built (e.g. UnsafeSerializer)."""
    try:
        if sock.type == socket.SOCK_SEQPACKET:
            return UnixSeqpacketChannel(url, opts, sock, peer_trusted=trusted)
        return UnixStreamChannel(url, opts, sock, peer_trusted=trusted, checksum=opts.checksum)
    except BaseException:
        sock.close()
        raise


# ----------------------------------------------------------------------------- listener
@final
class _UnixListener(Listener):
    def __init__(self, addr: _Address, opts: UnixOptions, sock: socket.socket, *, lock_fd: int, own_dir: str | None,
                 inode: tuple[int, int] | None) -> None:
        super().__init__(addr.url, opts)
        self._closed = True  # until fully built
        self._addr = addr
        self._sock = sock
        self._lock_fd = lock_fd
        self._own_dir = own_dir
        self._inode = inode
        self._key = _authkey(opts)
        self._allowed = _allowed_uids(opts)
        self._seqpacket = sock.type == socket.SOCK_SEQPACKET
        # Every new client is pending until its handshake (authentication, then its hello) is
        # done, and is trusted (pickle) or not by then: fd -> (handshake, trusted).
        self._pending: dict[int, tuple[_auth.ServerHandshake, bool]] = {}
        # If either descriptor cannot be made (the descriptor limit), the other is closed here; the
        # socket and the lock are listen()'s to release.
        wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ep = select.epoll()
            try:
                ep.register(sock.fileno(), select.EPOLLIN)
                ep.register(wake, select.EPOLLIN)
            except BaseException:
                ep.close()
                raise
        except BaseException:
            os.close(wake)
            raise
        self._wake, self._epoll = wake, ep
        self._closed = False

    @property
    def options(self) -> UnixOptions:
        opts: UnixOptions = self._options  # type: ignore[assignment]
        return opts

    def _accept(self, deadline: Deadline) -> Channel:
        lfd = self._sock.fileno()
        while True:
            if self._closed:
                raise ChannelClosed(f"listener {self._url} was closed")
            self._expire(time.monotonic())
            wait = remaining(deadline)
            if self._pending:
                first = min(h.deadline for h, _ in self._pending.values()) - time.monotonic()
                wait = max(0.0, first) if wait is None else min(wait, max(0.0, first))
            events = self._epoll.poll(-1 if wait is None else wait)
            if self._closed:
                raise ChannelClosed(f"listener {self._url} was closed while accepting")
            for fd, _ in events:
                if fd == lfd:
                    ch = self._take_new()
                    if ch is not None:
                        return ch
                elif fd in self._pending:
                    ch = self._progress(fd)
                    if ch is not None:
                        return ch
            if not events and remaining(deadline) == 0.0:
                raise ChannelTimeout(f"no client connected to {self._url} before the timeout")

    def _take_new(self) -> Channel | None:
        opts = self.options
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            conn.setblocking(False)
            try:
                uid = _peer_uid(conn, self._allowed, "the client")
            except PeerRejected:
                _refuse(conn, self._seqpacket)
                conn.close()
                raise
            # An authenticated peer is trusted; otherwise SO_PEERCRED proved (or not) the same user.
            trusted = self._key is not None or uid == os.geteuid()
            hs = _auth.ServerHandshake(conn, self._key, self._seqpacket, time.monotonic() + opts.handshake_timeout,
                                       _TAG_HELLO if self._seqpacket else None)
            try:
                hs.start()
            except PeerRejected:
                conn.close()
                continue
            if len(self._pending) >= opts.max_pending:
                oldest = min(self._pending, key=lambda k: self._pending[k][0].deadline)
                self._drop(oldest)
            fd = conn.fileno()
            self._pending[fd] = (hs, trusted)
            self._epoll.register(fd, select.EPOLLIN)
            # A client that connected earlier may have sent its hello (and more) already.
            ch = self._progress(fd)
            if ch is not None:
                return ch

    def _progress(self, fd: int) -> Channel | None:
        """Advance the handshake of the pending client *fd*; its channel once the hello is read."""
        hs, trusted = self._pending[fd]
        try:
            done = hs.step()
        except PeerRejected:
            self._drop(fd)
            raise
        except IncompatibleEndpoint as exc:
            _refuse(hs.sock, self._seqpacket, str(exc))  # an ipckit client of another version hears why
            self._drop(fd)
            return None
        except ProtocolError:
            self._drop(fd)  # not an ipckit client (or it left before its hello): accept keeps waiting
            return None
        if not done:
            return None
        self._epoll.unregister(fd)
        del self._pending[fd]
        ch = _make_channel(self._url, self.options, hs.sock, trusted=trusted)
        try:
            ch._learn_peer_limit(hs.peer_max)
            ch._say_hello()
        except BaseException:
            ch.close()
            raise
        return ch

    def _expire(self, now: float) -> None:
        for fd in [fd for fd, (h, _) in self._pending.items() if h.deadline <= now]:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        hs, _ = self._pending.pop(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass
        hs.sock.close()

    def _fileno(self) -> int:
        return self._epoll.fileno()

    def _wakeup(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    def _close(self) -> None:
        for fd in list(self._pending):
            self._drop(fd)
        self._epoll.close()
        self._sock.close()
        os.close(self._wake)
        path = self._addr.path
        if path is not None and self._inode is not None:
            # Remove only the socket file we bound, never a newer one that took the name.
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(path)
            except OSError:
                pass
        if self._lock_fd >= 0:
            if path is not None:
                _paths.unlink_quiet(path + ".lock")
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._own_dir is not None:
            _paths.rmdir_quiet(self._own_dir)


# ----------------------------------------------------------------------------- backend
def _probe_live(path: str, kind: int) -> bool:
    """True if something accepts connections at *path* (a live server, ipckit or not)."""
    probe = socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except BlockingIOError:
        return True  # backlog full: very much alive
    except ConnectionRefusedError:
        return False
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:
            return True  # a live socket of the other type
        raise
    finally:
        probe.close()
    return True


@final
class UnixBackend(Backend):
    scheme: ClassVar[str] = "unix"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = UnixOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if not hasattr(socket, "AF_UNIX") or not hasattr(socket, "SO_PEERCRED"):
            return False, "needs AF_UNIX sockets with SO_PEERCRED (Linux)"
        return True, ""

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        # Socket and lock files in ipckit-* private directories: the sweep of every file-endpoint scheme.
        return _paths.stale_private_entries(sweep)

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: UnixOptions = options
        _check_options(opts)
        if endpoint.address:
            raise InvalidAddress("unix:// pair() takes no address (use listen()/connect() for a named socket)")
        try:
            a, b = socket.socketpair(socket.AF_UNIX, _sock_type(opts))
        except OSError as exc:
            raise from_oserror(exc, "socketpair") from exc
        try:
            first = _make_channel("unix://", opts, a, trusted=True)
        except BaseException:
            b.close()
            raise
        try:
            second = _make_channel("unix://", opts, b, trusted=True)
        except BaseException:
            first.close()
            raise
        # One options set, so no hello: each end learns the other's (equal) limit directly.
        first._learn_peer_limit(second.max_message_size)
        second._learn_peer_limit(first.max_message_size)
        return first, second

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: UnixOptions = options
        _check_options(opts)
        kind = _sock_type(opts)
        addr = _address(endpoint, opts, listening=True)
        own_dir: str | None = None
        if addr is None:
            own_dir = _paths.make_private_dir()
            path = os.path.join(own_dir, _paths.generated_name(".sock"))
            addr = _Address(path, path, f"unix://{path}")
        lock_fd = -1
        sock: socket.socket | None = None
        try:
            inode: tuple[int, int] | None = None
            if addr.path is not None:
                path = addr.path
                _paths.check_parent_dir(path)
                lock_fd = _paths.lock_path_exclusively(path + ".lock")
                self._clear_stale(path, kind)
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK)
            if lock_fd >= 0:
                # Before anyone can connect: a client reads the server's limit here at connect.
                publish_limits(lock_fd, _listener_limit(sock, opts))
            if addr.path is not None:
                # Its mode is set before the file appears at the address (never chmod by path
                # after bind: issue 10, B.10), and before listen(): nobody can connect in between.
                inode = _paths.bind_with_mode(sock, addr.path, opts.mode)
            else:
                try:
                    sock.bind(addr.sockaddr)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise EndpointExists(errno.EADDRINUSE, f"{addr.url} is in use by a live server") from exc
                    raise
            sock.listen(opts.backlog)
            return _UnixListener(addr, opts, sock, lock_fd=lock_fd, own_dir=own_dir, inode=inode)
        except BaseException as exc:
            if sock is not None:
                sock.close()
                if addr.path is not None and inode is not None:
                    _paths.unlink_quiet(addr.path)
            if lock_fd >= 0:
                if addr.path is not None:
                    _paths.unlink_quiet(addr.path + ".lock")
                os.close(lock_fd)
            if own_dir is not None:
                _paths.rmdir_quiet(own_dir)
            if isinstance(exc, OSError) and not isinstance(exc, IPCError):
                raise from_oserror(exc, f"listen on {addr.url}") from exc
            raise

    @staticmethod
    def _clear_stale(path: str, kind: int) -> None:
        """Remove a socket file left by a dead server; refuse anything else (called under the lock)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise EndpointExists(errno.EEXIST, f"{path!r} exists and is not a socket; refusing to replace it")
        _paths.check_owned(path, st, "socket")
        if _probe_live(path, kind):
            raise EndpointExists(errno.EEXIST, f"a live server listens at {path!r}; ipckit never steals an endpoint")
        os.unlink(path)  # stale: its server is gone (the lock was free and nothing answered)

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts: UnixOptions = options
        _check_options(opts)
        kind = _sock_type(opts)
        addr = _address(endpoint, opts, listening=False)
        assert addr is not None
        allowed = _allowed_uids(opts)
        key = _authkey(opts)
        backoff = Backoff(0.0005, 0.02)
        while True:
            sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK)
            try:
                sock.connect(addr.sockaddr)
                break
            except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as exc:
                sock.close()
                if not backoff.sleep(deadline):
                    if isinstance(exc, BlockingIOError):
                        raise ChannelTimeout(f"the listener at {addr.url} did not accept before the timeout "
                                             "(its backlog is full)") from exc
                    raise EndpointNotFound(errno.ENOENT, f"nothing listens at {addr.url}") from exc
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EPROTOTYPE:
                    raise IncompatibleEndpoint(errno.EPROTOTYPE,
                                               f"the listener at {addr.url} uses another socket type than "
                                               f"type={opts.type}") from exc
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise PermissionDenied(exc.errno, f"connect to {addr.url}: permission denied (the socket "
                                           "or its directory belongs to another user)") from exc
                raise from_oserror(exc, f"connect to {addr.url}") from exc
        try:
            uid = _peer_uid(sock, allowed, "the server")
            if key is not None:
                hs_deadline = time.monotonic() + opts.handshake_timeout
                if deadline is not None:
                    hs_deadline = min(hs_deadline, deadline)
                _auth.client_handshake(sock, key, sock.type == socket.SOCK_SEQPACKET, hs_deadline)
        except BaseException:
            sock.close()
            raise
        ch = _make_channel(addr.url, opts, sock, trusted=key is not None or uid == os.geteuid())
        try:
            _greet_server(ch, addr)
        except BaseException:
            ch.close()
            raise
        return ch


def _greet_server(ch: UnixStreamChannel | UnixSeqpacketChannel, addr: _Address) -> None:
    """The client's side of the hello: send ours, and learn the server's limit before accept.

    A path listener published its limit in ``<path>.lock`` (read owner-checked, O_NOFOLLOW).
    Where there is none to read (an abstract address, or a server of another uid whose lock
    file we may not trust), the limit comes with the server's hello frame, read on this
    client's receive path (its first ``recv`` or ``poll``): until then sends are checked
    against this end's own limit only.
    """
    ch._hello_due = True
    if addr.path is not None:
        limit = published_limit(addr.path + ".lock")
        if limit is not None:
            ch._learn_peer_limit(limit)
    ch._say_hello()
