"""``zmq+ipc://`` — ZeroMQ over Unix-domain sockets (libzmq ``ipc://``), one PAIR socket per channel.

Features:
    A listener serves many clients on one endpoint: its ROUTER socket answers each client's hello
    with a PAIR socket bound for that client alone on a fresh, unguessable path beside the endpoint
    (removed as soon as the client is connected), so every accepted channel is a socket of its
    own.  ``connect()`` needs the listener's answer, so an absent endpoint is EndpointNotFound within
    the deadline, never a hang.  A clean close sends a goodbye (EndOfChannel); a dropped connection
    without it is PeerDied (socket monitor), also for a peer that stops answering heartbeats (when
    ``heartbeat`` is set).  A plain send only means "queued in libzmq"; ``ack=True`` numbers the
    messages and makes the receiver acknowledge what its process received: nothing is lost while
    both live, and PeerDied says how many were not received.  The endpoint is bound under an
    ``flock`` on ``<path>.lock`` after a probe connection showed nobody is bound there, so a second
    binder gets EndpointExists and never steals a live endpoint (libzmq alone would). Ends cannot be
    handed to child processes (libzmq is not fork-safe): a child connects itself.

URL format:
    ``zmq+ipc:///abs/path.ipc`` (at most 107 bytes); ``zmq+ipc://name`` puts ``ipckit-zmq-name.ipc``
    in the runtime directory; ``zmq+ipc://`` with ``listen()`` creates a new private 0700 directory;
    ``pair()`` takes ``zmq+ipc://``.

Options:
    ``ack`` (acknowledged delivery, default False), ``ack_window`` (256), ``linger`` (1 s),
    ``buffer_bytes`` (64 MiB: libzmq's high-water marks), ``heartbeat`` (0: off, see ZmqIpcOptions),
    ``heartbeat_timeout`` (3 s), ``handshake_timeout`` (5 s).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``, ``trust``.

Platform notes:
    Needs pyzmq (libzmq 4.3).  A SIGKILLed listener leaves its ``.ipc`` and ``.lock`` files: a new
    ``listen()`` on the address replaces them (the probe finds nobody), and ``ipckit cleanup``
    removes them.  Details: docs/backends/zmq.md.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, ClassVar, final

import zmq

from ..backend import Backend
from ..channel import Channel, Listener
from ..cleanup import StaleObject, Sweep
from ..deadline import Deadline
from ..errors import EndpointNotFound, InvalidAddress, IPCError, PermissionDenied, from_oserror
from ..options import Capabilities, Options, option
from ..url import Endpoint
from .common import paths as _paths
from .common import zmq as _z

__all__ = ["ZmqIpcBackend", "ZmqIpcOptions", "ZmqIpcChannel"]


@dataclass
class ZmqIpcOptions(_z.ZmqOptions):
    """Options of ``zmq+ipc://`` (the kit's; see docs/backends/zmq.md)."""

    #: seconds between ZMTP heartbeats (0: none, the default here).  Off by default on ipc://: a
    #: killed peer's socket closes at once (PeerDied without them), and with them libzmq 4.3.5
    #: aborts the process (``Assertion failed: !_io_error``, stream_engine_base.cpp) when the peer
    #: hangs up while this end's receive pipe is full and a heartbeat falls due -- a slow reader
    #: whose producer exits.  Set it to treat a stopped (SIGSTOP) peer as dead, knowing that.
    heartbeat: float = option(0.0, minimum=0, maximum=3600)


_CAPS = Capabilities(
    duplex=True,
    message_oriented=True,
    selectable=False,  # ZMQ_FD is edge-triggered: not "readable exactly when poll() is true"
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=False,  # libzmq sockets cannot move to another process
    cross_process=True,
    cross_host=False,
    multi_client=True,
    proves_same_user=True,  # 0600 socket files in owner-checked places
)


@final
class ZmqIpcChannel(_z.ZmqChannel):
    capabilities = _CAPS


@final
class _IpcListener(_z.ZmqListener):
    channel_class = ZmqIpcChannel

    def __init__(self, url: str, opts: ZmqIpcOptions, ctx: zmq.Context[Any], router: zmq.Socket[Any], *,
                 path: str, ident: tuple[int, int], lock_fd: int, own_dir: str | None) -> None:
        self._path = path
        self._ident: tuple[int, int] | None = ident
        self._lock_fd = lock_fd
        self._own_dir = own_dir
        super().__init__(url, opts, ctx, router, peer_trusted=True)

    def bind_client(self, link: _z.Link) -> str:
        path = os.path.join(os.path.dirname(self._path), _paths.generated_name(".ipc"))
        link.ipc_ident = _z.bind_ipc(link.sock, path, self._zopts.mode)
        link.ipc_path = path
        return path

    def release(self) -> None:
        _z.unlink_if_ours(self._path, self._ident)
        self._ident = None
        if self._lock_fd >= 0:
            _paths.unlink_quiet(self._path + ".lock")
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._own_dir is not None:
            _paths.rmdir_quiet(self._own_dir)


def _check(opts: Any) -> ZmqIpcOptions:
    assert isinstance(opts, ZmqIpcOptions)
    return opts


@final
class ZmqIpcBackend(Backend):
    scheme: ClassVar[str] = "zmq+ipc"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = ZmqIpcOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if not zmq.has("ipc"):
            return False, "this libzmq was built without ipc:// support"
        return True, ""

    @classmethod
    def notes(cls) -> list[str]:
        return [f"zmq+*: pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}; a plain send means 'queued', "
                "ack=True means 'received by the peer process'"]

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        # .ipc socket files and their .lock files: nobody binds or holds them once their process died.
        return _paths.stale_private_entries(sweep)

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts = _check(options)
        if endpoint.address:
            raise InvalidAddress("zmq+ipc:// pair() takes no address (use listen()/connect() for a named endpoint)")
        own_dir = _paths.make_private_dir()
        path = os.path.join(own_dir, _paths.generated_name(".ipc"))
        a = b = None
        try:
            _z.check_ipc_length(path)
            a = _z.make_link(opts)
            a.ipc_ident = _z.bind_ipc(a.sock, path, opts.mode)
            b = _z.make_link(opts)
            _z.connect_link(b, "ipc://" + path, "zmq+ipc://")
            _z.await_handshake([a, b], "zmq+ipc:// pair()")
            _z.unlink_if_ours(path, a.ipc_ident)  # both are in: nobody else may ever come
            first = ZmqIpcChannel("zmq+ipc://", opts, a, peer_trusted=True, peer_max=opts.max_message_size,
                                  connected=True)
            a = None
            second = ZmqIpcChannel("zmq+ipc://", opts, b, peer_trusted=True, peer_max=opts.max_message_size,
                                   connected=True)
            return first, second
        except BaseException:
            for link in (a, b):
                if link is not None:
                    link.destroy(0)
            raise
        finally:
            _paths.unlink_quiet(path)
            _paths.rmdir_quiet(own_dir)

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts = _check(options)
        own_dir: str | None = None
        if endpoint.address:
            path = _z.ipc_path_of(endpoint.address)
            url = f"zmq+ipc://{endpoint.address}"
        else:
            own_dir = _paths.make_private_dir()
            path = os.path.join(own_dir, _paths.generated_name(".ipc"))
            url = f"zmq+ipc://{path}"
        lock_fd = -1
        ctx = None
        ident: tuple[int, int] | None = None
        try:
            _z.check_ipc_length(path)
            # The per-client sockets go beside it, with generated names.
            _z.check_ipc_length(os.path.join(os.path.dirname(path), _paths.generated_name(".ipc")))
            _paths.check_parent_dir(path)
            lock_fd = _paths.lock_path_exclusively(path + ".lock")
            _z.clear_stale_ipc(path)  # under the lock: a dead binder's file goes, a live one is refused
            ctx = _z.new_context()
            router = ctx.socket(zmq.ROUTER)
            _z.configure(router, opts, channel=False)
            ident = _z.bind_ipc(router, path, opts.mode)
            return _IpcListener(url, opts, ctx, router, path=path, ident=ident, lock_fd=lock_fd, own_dir=own_dir)
        except BaseException as exc:
            if ctx is not None:
                ctx.destroy(linger=0)
                _z.unlink_if_ours(path, ident)
            if lock_fd >= 0:
                _paths.unlink_quiet(path + ".lock")
                os.close(lock_fd)
            if own_dir is not None:
                _paths.rmdir_quiet(own_dir)
            if isinstance(exc, zmq.ZMQError):
                raise _z.zmq_error(exc, f"listen on {url}") from exc
            if isinstance(exc, OSError) and not isinstance(exc, IPCError):
                raise from_oserror(exc, f"listen on {url}") from exc
            raise

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts = _check(options)
        if not endpoint.address:
            raise InvalidAddress("zmq+ipc:// connect() needs an address: the listener's url")
        path = _z.ipc_path_of(endpoint.address)
        url = f"zmq+ipc://{endpoint.address}"
        try:
            _z.check_ipc_mode(path, opts.mode)
            if not _z.probe_live(path):
                raise EndpointNotFound(errno.ECONNREFUSED, f"nobody listens at {url} (a stale endpoint file): is "
                                                           "the listener running?")
        except OSError as exc:
            if isinstance(exc, IPCError):
                raise
            raise from_oserror(exc, f"connect to {url}") from exc
        answer = _z.rendezvous(url, "ipc://" + path, opts, deadline)
        client = answer.get("endpoint")
        peer_max = answer.get("max")
        if (not isinstance(client, str) or not isinstance(peer_max, int)
                or os.path.dirname(client) != os.path.dirname(path)):
            raise PermissionDenied(errno.EPROTO, f"{url} answered with an endpoint outside its directory; refused")
        _z.check_ipc_mode(client, opts.mode)
        link = _z.make_link(opts)
        _z.connect_link(link, "ipc://" + client, url)
        try:
            # Connected before connect() returns: what is sent then goes on a live connection.
            _z.await_handshake([link], f"connect to {url}", _z.handshake_left(opts, deadline))
            return ZmqIpcChannel(url, opts, link, peer_trusted=True, peer_max=peer_max, connected=True)
        except BaseException:
            link.destroy(0)
            raise
