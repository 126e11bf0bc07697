"""``zmq+tcp://`` — ZeroMQ over TCP, one PAIR socket per channel; loopback unless CURVE is on.

Features:
    The same channels as ``zmq+ipc://`` (a ROUTER rendezvous that hands each client a PAIR socket
    on a fresh ephemeral port of the listener's host; goodbye = EndOfChannel, a dropped
    connection or missed heartbeats = PeerDied; ``ack=True`` for acknowledged delivery), across
    machines.  Binds ``127.0.0.1`` by default; any other address needs CURVE (``curve=`` with an
    allow-list ``allow=`` of client public keys), or ``insecure=True``, which warns.  Over TCP the
    peer is not proven to be the same user, so the default serializer is msgpack and pickle raises
    UnsafeSerializer unless CURVE authenticated the peer or ``trust=True``.  Ends cannot be handed
    to child processes (libzmq is not fork-safe): a child connects itself.

URL format:
    ``zmq+tcp://host:port`` (``[v6addr]:port``); port 0 with ``listen()`` picks a free port, and the
    listener's ``url`` tells it.  ``zmq+tcp://`` with ``pair()``: two ends over loopback.

Options:
    ``curve`` (a KeyPair or a ``.key_secret`` file: this end's key pair; turns CURVE on), ``allow``
    (listener: client public keys, or a file of them), ``server_key`` (client: the listener's public
    key), ``insecure`` (bind beyond loopback without CURVE), and the zmq+ipc options (``ack``,
    ``ack_window``, ``linger``, ``buffer_bytes``, ``heartbeat``, ``heartbeat_timeout``, ``handshake_timeout``).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``trust``.

Platform notes:
    Needs pyzmq (libzmq 4.3, with CURVE for ``curve=``).  Nothing is left in the file system.
    Details: docs/backends/zmq.md.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import zmq

from ..backend import Backend
from ..channel import Channel, Listener
from ..deadline import Deadline, remaining
from ..errors import ConfigurationError, EndpointNotFound, InvalidAddress, PermissionDenied
from ..options import Capabilities, Options
from ..url import Endpoint
from .common import zmq as _z
from .common import zmq_security as _sec

__all__ = ["ZmqTcpBackend", "ZmqTcpOptions", "ZmqTcpChannel"]


@dataclass
class ZmqTcpOptions(_z.ZmqOptions):
    """Options of ``zmq+tcp://`` (see docs/backends/zmq.md)."""

    curve: Any = field(default=None, repr=False)
    allow: Any = field(default=None, repr=False)
    server_key: Any = None
    insecure: bool = False

    def validate(self) -> None:
        if self.curve is not None:
            _sec.as_keypair(self.curve)
            if self.allow is not None or self.server_key is not None:
                # CURVE authenticates the peer (the listener's allow-list, the client's known
                # server key): that is the proof the trust rule asks for before pickle
                # (docs/contract.md section 5), so it counts as trust= here.
                self.trust = True
        if self.server_key is not None:
            _sec.as_server_key(self.server_key)
        if self.allow is not None:
            _sec.load_public_keys(self.allow)


_CAPS = Capabilities(
    duplex=True,
    message_oriented=True,
    selectable=False,
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=False,
    cross_process=True,
    cross_host=True,
    multi_client=True,
    proves_same_user=False,  # TCP proves nothing about the peer's user; CURVE authenticates keys
)


@final
class ZmqTcpChannel(_z.ZmqChannel):
    capabilities = _CAPS


def _split(address: str, *, listening: bool) -> tuple[str, int]:
    """``host:port`` → (host, port); ``[::1]:port`` for IPv6."""
    if not address:
        raise InvalidAddress("zmq+tcp:// needs host:port (e.g. zmq+tcp://127.0.0.1:5555, port 0 to pick one)")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidAddress(f"zmq+tcp address {address!r} must be host:port with a port from 0 to 65535")
    port = int(port_text)
    if port == 0 and not listening:
        raise InvalidAddress(f"zmq+tcp://{address}: connect needs the listener's real port (its url tells it)")
    return host, port


def _zaddr(host: str, port: int | str) -> str:
    try:
        v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        v6 = False
    return f"tcp://[{host}]:{port}" if v6 else f"tcp://{host}:{port}"


def _ipv6(sock: zmq.Socket[Any], host: str) -> None:
    if ":" in host:
        sock.setsockopt(zmq.IPV6, 1)


@final
class _TcpListener(_z.ZmqListener):
    channel_class = ZmqTcpChannel

    def __init__(self, url: str, opts: ZmqTcpOptions, ctx: zmq.Context[Any], router: zmq.Socket[Any], *,
                 host: str, curve: _sec.CurveServer | None) -> None:
        self._host = host
        self._curve = curve
        super().__init__(url, opts, ctx, router, peer_trusted=curve is not None)

    def curve_server(self) -> Callable[[zmq.Socket[Any]], None] | None:
        return self._curve.apply if self._curve is not None else None

    def bind_client(self, link: _z.Link) -> str:
        _ipv6(link.sock, self._host)
        link.sock.bind(_zaddr(self._host, "*"))
        last = link.sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    def release(self) -> None:
        if self._curve is not None:
            self._curve.close()


def _client_curve(opts: ZmqTcpOptions) -> Callable[[zmq.Socket[Any]], None] | None:
    if opts.curve is None and opts.server_key is None:
        return None
    if opts.curve is None or opts.server_key is None:
        raise ConfigurationError("a CURVE client needs both curve= (its own key pair) and server_key= (the "
                                 "listener's public key)")
    keypair = _sec.as_keypair(opts.curve)
    server = _sec.as_server_key(opts.server_key)
    return lambda sock: _sec.apply_curve_client(sock, keypair, server)


@final
class ZmqTcpBackend(Backend):
    scheme: ClassVar[str] = "zmq+tcp"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = ZmqTcpOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: ZmqTcpOptions = options
        if endpoint.address:
            raise InvalidAddress("zmq+tcp:// pair() takes no address (use listen()/connect())")
        a = b = None
        try:
            a = _z.make_link(opts)
            a.sock.bind("tcp://127.0.0.1:*")
            last = a.sock.getsockopt(zmq.LAST_ENDPOINT)
            b = _z.make_link(opts)
            _z.connect_link(b, last.decode() if isinstance(last, bytes) else str(last), "zmq+tcp://")
            _z.await_handshake([a, b], "zmq+tcp:// pair()")
            # Both ends are this process: trusted as much as the caller's options say (trust=).
            first = ZmqTcpChannel("zmq+tcp://", opts, a, peer_trusted=False, peer_max=opts.max_message_size,
                                  connected=True)
            a = None
            return first, ZmqTcpChannel("zmq+tcp://", opts, b, peer_trusted=False, peer_max=opts.max_message_size,
                                        connected=True)
        except BaseException as exc:
            for link in (a, b):
                if link is not None:
                    link.destroy(0)
            if isinstance(exc, zmq.ZMQError):
                raise _z.zmq_error(exc, "zmq+tcp:// pair()") from exc
            raise

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: ZmqTcpOptions = options
        host, port = _split(endpoint.address or "127.0.0.1:0", listening=True)
        _sec.check_bind_address(host, curve=opts.curve is not None, insecure=opts.insecure)
        curve: _sec.CurveServer | None = None
        ctx = _z.new_context()
        try:
            if opts.curve is not None:
                if opts.allow is None:
                    raise ConfigurationError("a CURVE listener needs allow= (the public keys of the clients it "
                                             "admits, or a file of them)")
                curve = _sec.CurveServer(ctx, _sec.as_keypair(opts.curve), _sec.load_public_keys(opts.allow))
            router = ctx.socket(zmq.ROUTER)
            _z.configure(router, opts, channel=False)
            _ipv6(router, host)
            if curve is not None:
                curve.apply(router)
            try:
                router.bind(_zaddr(host, port))
            except zmq.ZMQError as exc:
                raise _z.zmq_error(exc, f"listen on zmq+tcp://{endpoint.address}") from exc
            last = router.getsockopt(zmq.LAST_ENDPOINT)
            real = (last.decode() if isinstance(last, bytes) else str(last)).rpartition(":")[2]
            shown = f"[{host}]" if ":" in host else host
            return _TcpListener(f"zmq+tcp://{shown}:{real}", opts, ctx, router, host=host, curve=curve)
        except BaseException:
            if curve is not None:
                curve.close()
            ctx.destroy(linger=0)
            raise

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts: ZmqTcpOptions = options
        host, port = _split(endpoint.address, listening=False)
        url = f"zmq+tcp://{endpoint.address}"
        curve = _client_curve(opts)
        # zmq connects in the background and retries for ever: a plain TCP probe first, so a port
        # nobody listens on is EndpointNotFound at once, not a wait for the whole deadline.
        left = remaining(deadline)
        try:
            probe = socket.create_connection((host, port), timeout=min(left, 5.0) if left is not None else 5.0)
            probe.close()
        except ConnectionRefusedError as exc:
            raise EndpointNotFound(errno.ECONNREFUSED, f"nobody listens at {url}: is the listener running?") from exc
        except OSError as exc:
            raise EndpointNotFound(exc.errno or errno.EHOSTUNREACH,
                                   f"cannot reach {url}: {exc.strerror or exc}") from exc
        answer = _z.rendezvous(url, _zaddr(host, port), opts, deadline, curve)
        client = answer.get("endpoint")
        peer_max = answer.get("max")
        if not isinstance(client, str) or not isinstance(peer_max, int):
            raise PermissionDenied(errno.EPROTO, f"{url} answered without an endpoint; refused")
        # Only the port is taken from the answer: a listener never sends us to another host.
        their_port = client.rpartition(":")[2]
        if not their_port.isdigit():
            raise PermissionDenied(errno.EPROTO, f"{url} answered with a malformed endpoint; refused")
        link = _z.make_link(opts, curve)
        _ipv6(link.sock, host)
        _z.connect_link(link, _zaddr(host, their_port), url)
        try:
            _z.await_handshake([link], f"connect to {url}", _z.handshake_left(opts, deadline))
            return ZmqTcpChannel(url, opts, link, peer_trusted=curve is not None, peer_max=peer_max, connected=True)
        except BaseException:
            link.destroy(0)
            raise
