"""The factories: :func:`pair`, :func:`listen`, :func:`connect`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .backend import Backend
from .channel import Channel, Listener, resolve_serializer
from .deadline import deadline_from
from .errors import IPCError, ResourceExhausted, from_oserror
from .options import Options, parse_options
from .registry import get_backend
from .url import Endpoint, parse_url

__all__ = ["pair", "listen", "connect", "DEFAULT_CONNECT_TIMEOUT"]

#: Seconds ``connect`` waits for a listener when no ``timeout`` is given: opening never hangs.
DEFAULT_CONNECT_TIMEOUT = 10.0


def _prepare(url: str, kwargs: dict[str, Any]) -> tuple[Backend, Endpoint, Options]:
    endpoint = parse_url(url)
    try:
        cls = get_backend(endpoint.scheme)
    except OSError as exc:  # its first import met a limit (no descriptor left to open the module)
        raise from_oserror(exc, f"loading the {endpoint.scheme}:// backend") from exc
    options = parse_options(cls.options_class, endpoint.options, kwargs)
    # Refuse an unsafe serializer before any OS object exists, so nothing is left to clean up.
    resolve_serializer(options, cls.capabilities.proves_same_user)
    return cls(), endpoint, options


_T = TypeVar("_T")


def _shown(endpoint: Endpoint) -> str:
    # Without the query: options such as authkey stay out of error messages.
    return f"{endpoint.scheme}://{endpoint.address}"


def _opening(what: str, make: Callable[[], _T]) -> _T:
    """Run a backend factory; an OS error that escapes it leaves as the ipckit error for it.

    The one boundary for every backend (P8 in docs/contract.md): EMFILE/ENFILE/ENOSPC/ENOMEM
    become ResourceExhausted naming the limit (``ipckit.errors.from_oserror``), whichever call of
    the backend met them.  A backend releases what it made before the error leaves it.
    """
    try:
        return make()
    except IPCError:
        raise
    except OSError as exc:
        raise from_oserror(exc, what) from exc
    except MemoryError as exc:
        raise ResourceExhausted(f"{what}: out of memory") from exc


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
    return _opening(f"pair() on {_shown(endpoint)}", lambda: backend.pair(endpoint, opts))


def listen(url: str, **options: Any) -> Listener:
    """Create (and own) the named endpoint *url*; ``accept()`` returns one channel per peer.

    Raises:
        EndpointExists: a live endpoint already has that name (ipckit never steals one).
        InvalidAddress, PermissionDenied, ConfigurationError, UnsupportedOperation: as the message says.
    """
    backend, endpoint, opts = _prepare(url, options)
    return _opening(f"listen() on {_shown(endpoint)}", lambda: backend.listen(endpoint, opts))


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
    deadline = deadline_from(timeout)
    return _opening(f"connect() to {_shown(endpoint)}", lambda: backend.connect(endpoint, opts, deadline))
