"""Pub/sub fan-out: :func:`publish` and :func:`subscribe` (``zmq+ipc://`` and ``zmq+tcp://``).

Two factories of their own rather than an option of ``listen``/``connect``: a publisher is one
object that sends to many (not a Listener handing out one duplex channel per peer), and a
subscriber is a one-way receiving Channel.  With ``listen(url, pattern="pub")`` the type a
factory returns, and whether ``send`` works on it, would hang on an option; here the call says
it.  The ZeroMQ kit does the work (``ipckit.backends.common.zmq_pubsub``); it is imported on
first use, so ``import ipckit`` still imports no backend.

Declared lossy: under ``policy="drop-new"`` (the default) a subscriber that has ``window``
messages not yet taken misses the next ones, and counts them exactly; ``policy="block"`` makes
the publisher wait for it instead (within the send's timeout).  See docs/backends/zmq.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import DEFAULT_CONNECT_TIMEOUT
from .deadline import deadline_from
from .errors import BackendUnavailable, IPCError, ResourceExhausted, UnsupportedOperation, from_oserror
from .options import parse_options
from .url import parse_url

if TYPE_CHECKING:
    from .backends.common.zmq_pubsub import Publisher, PubSubOptions, Subscriber

__all__ = ["publish", "subscribe"]

_SCHEMES = ("zmq+ipc", "zmq+tcp")


def _prepare(url: str, kwargs: dict[str, Any]) -> tuple[str, str, PubSubOptions]:
    endpoint = parse_url(url)
    if endpoint.scheme not in _SCHEMES:
        raise UnsupportedOperation(f"pub/sub fan-out runs over zmq+ipc:// and zmq+tcp://, not {endpoint.scheme}://")
    try:
        import zmq

        from .backends.common import zmq_pubsub as _ps
    except ImportError as exc:
        raise BackendUnavailable(f"pub/sub fan-out needs pyzmq: {exc}") from exc
    if endpoint.scheme == "zmq+ipc" and not zmq.has("ipc"):
        raise BackendUnavailable("this libzmq was built without ipc:// support")
    cls = _ps.PubSubTcpOptions if endpoint.scheme == "zmq+tcp" else _ps.PubSubOptions
    return endpoint.scheme, endpoint.address, parse_options(cls, endpoint.options, kwargs)


def _guard(what: str, exc: BaseException) -> IPCError | None:
    if isinstance(exc, IPCError):
        return None
    if isinstance(exc, OSError):
        return from_oserror(exc, what)
    if isinstance(exc, MemoryError):
        return ResourceExhausted(f"{what}: out of memory")
    return None


def publish(url: str, **options: Any) -> Publisher:
    """Bind a publisher at *url*; every ``send`` goes to each subscriber in the set.

    ``zmq+ipc:///path`` / ``zmq+ipc://name`` / ``zmq+ipc://`` (a fresh private path), or
    ``zmq+tcp://host:port`` (loopback unless CURVE: the scheme's rules; port 0 picks one).  The
    publisher's ``url`` is what subscribers pass.  Options: ``policy`` (``drop-new`` or
    ``block``), ``heartbeat``, ``heartbeat_timeout``, ``linger``, ``max_message_size``,
    ``serializer``, ``default_timeout``, ``mode``, ``trust``; over tcp ``curve``, ``allow``,
    ``insecure``.

    Raises:
        EndpointExists: a live publisher or listener is bound there.
        InvalidAddress, ConfigurationError, UnsafeSerializer, UnsupportedOperation: bad request.
    """
    scheme, address, opts = _prepare(url, options)
    from .backends.common import zmq_pubsub as _ps

    try:
        return _ps.publish(scheme, address, opts)
    except BaseException as exc:
        err = _guard(f"publish() on {scheme}://{address}", exc)
        if err is None:
            raise
        raise err from exc


def subscribe(url: str, *, timeout: float | None = DEFAULT_CONNECT_TIMEOUT, **options: Any) -> Subscriber:
    """Join the publisher at *url*; returns a one-way receiving Channel.

    Returns once the publisher registered this subscriber (a handshake within *timeout* and
    ``handshake_timeout``): every message published after that is received or counted as dropped.
    Options: ``window`` (messages the publisher may send ahead of ``recv``, default 1000),
    ``heartbeat``, ``heartbeat_timeout``, ``max_message_size``, ``serializer``, ``default_timeout``,
    ``mode``, ``trust``; over tcp ``curve`` and ``server_key``.

    Raises:
        EndpointNotFound: no publisher answered in time.
        PeerRejected: the CURVE handshake failed.
        InvalidAddress, ConfigurationError, UnsafeSerializer, UnsupportedOperation: bad request.
    """
    scheme, address, opts = _prepare(url, options)
    from .backends.common import zmq_pubsub as _ps

    deadline = deadline_from(timeout)
    try:
        return _ps.subscribe(scheme, address, opts, deadline)
    except BaseException as exc:
        err = _guard(f"subscribe() to {scheme}://{address}", exc)
        if err is None:
            raise
        raise err from exc
