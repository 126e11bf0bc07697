"""The factories: :func:`pair`, :func:`listen`, :func:`connect`."""

from __future__ import annotations

from typing import Any

from .backend import Backend
from .channel import Channel, Listener, resolve_serializer
from .deadline import deadline_from
from .options import Options, parse_options
from .registry import get_backend
from .url import Endpoint, parse_url

__all__ = ["pair", "listen", "connect", "DEFAULT_CONNECT_TIMEOUT"]

#: Seconds ``connect`` waits for a listener when no ``timeout`` is given: opening never hangs.
DEFAULT_CONNECT_TIMEOUT = 10.0


def _prepare(url: str, kwargs: dict[str, Any]) -> tuple[Backend, Endpoint, Options]:
    endpoint = parse_url(url)
    cls = get_backend(endpoint.scheme)
    options = parse_options(cls.options_class, endpoint.options, kwargs)
    # Refuse an unsafe serializer before any OS object exists, so nothing is left to clean up.
    resolve_serializer(options, cls.capabilities.proves_same_user)
    return cls(), endpoint, options


def pair(url: str = "pipe://", **options: Any) -> tuple[Channel, Channel]:
    """Create two connected channels; hand one to a child process.

    ``url`` names the backend (``"pipe://"``, ``"shm"``, ``"unix://"``...); options come as
    keywords or URL query.
    Raises:
        UnknownScheme, BackendUnavailable, ConfigurationError, UnsafeSerializer: bad request.
        UnsupportedOperation: the backend has no anonymous pair.
        ResourceExhausted, EndpointError: the OS refused.
    """
    backend, endpoint, opts = _prepare(url, options)
    return backend.pair(endpoint, opts)


def listen(url: str, **options: Any) -> Listener:
    """Create (and own) the named endpoint *url*; ``accept()`` returns one channel per peer.

    Raises:
        EndpointExists: a live endpoint already has that name (ipckit never steals one).
        InvalidAddress, PermissionDenied, ConfigurationError, UnsupportedOperation: as the message says.
    """
    backend, endpoint, opts = _prepare(url, options)
    return backend.listen(endpoint, opts)


def connect(url: str, *, timeout: float | None = DEFAULT_CONNECT_TIMEOUT, **options: Any) -> Channel:
    """Connect to the endpoint at *url*, waiting up to *timeout* seconds for it to appear.

    *timeout* bounds only the connection; blocking calls on the channel use the
    ``default_timeout`` option.
    Raises:
        EndpointNotFound: nothing listens there (after waiting up to *timeout*).
        ChannelTimeout: the listener did not answer in time.
        PermissionDenied, PeerRejected, InvalidAddress, ConfigurationError: as the message says.
    """
    backend, endpoint, opts = _prepare(url, options)
    return backend.connect(endpoint, opts, deadline_from(timeout))
