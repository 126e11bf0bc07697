"""Scheme registry: ``scheme -> "module:Class"``, imported on first use.

``import ipckit`` imports no backend module.  An unknown scheme raises UnknownScheme with a
"did you mean"; a backend whose dependency is missing raises BackendUnavailable with the install
command.  Third-party backends register with :func:`register_backend` or the ``ipckit.backends``
entry-point group.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

from .backend import Backend
from .errors import BackendUnavailable, ConfigurationError, UnknownScheme

__all__ = ["register_backend", "get_backend", "schemes", "available_backends", "BackendSpec"]


@dataclass
class BackendSpec:
    target: str | type[Backend]
    install_hint: str = ""


_SPECS: dict[str, BackendSpec] = {
    "memory": BackendSpec("ipckit.backends.memory:MemoryBackend"),
    "pipe": BackendSpec("ipckit.backends.pipe:PipeBackend"),
    "fifo": BackendSpec("ipckit.backends.fifo:FifoBackend"),
    "unix": BackendSpec("ipckit.backends.unix:UnixBackend"),
    "shm": BackendSpec("ipckit.backends.shm:ShmBackend", "pip install posix_ipc"),
    "sysv+shm": BackendSpec("ipckit.backends.sysv_shm:SysvShmBackend", "pip install sysv_ipc"),
    "mq": BackendSpec("ipckit.backends.mq:MqBackend", "pip install posix_ipc"),
    "sysv+mq": BackendSpec("ipckit.backends.sysv_mq:SysvMqBackend", "pip install sysv_ipc"),
    "zmq+ipc": BackendSpec("ipckit.backends.zmq_ipc:ZmqIpcBackend", "pip install pyzmq"),
    "zmq+tcp": BackendSpec("ipckit.backends.zmq_tcp:ZmqTcpBackend", "pip install pyzmq"),
}
_LOADED: dict[str, type[Backend]] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register_backend(
    scheme: str, target: str | type[Backend], *, install_hint: str = "", replace: bool = False
) -> None:
    """Register a backend class (or a lazy ``"module:Class"`` string) for *scheme*.

    Raises:
        ConfigurationError: the scheme is taken and ``replace`` is false, or the name is invalid.
    """
    if not isinstance(scheme, str) or not scheme or not scheme.replace("+", "").replace("-", "").isalnum():
        raise ConfigurationError(f"invalid scheme name {scheme!r}: use letters, digits, '+' or '-'")
    scheme = scheme.lower()
    with _lock:
        if scheme in _SPECS and not replace:
            raise ConfigurationError(f"scheme {scheme!r} is already registered; pass replace=True to override")
        _SPECS[scheme] = BackendSpec(target, install_hint)
        _LOADED.pop(scheme, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="ipckit.backends"):
        _SPECS.setdefault(ep.name, BackendSpec(ep.value))


def schemes() -> list[str]:
    """Every registered scheme, whether or not it works here."""
    _load_entry_points()
    return sorted(_SPECS)


def is_registered(scheme: str) -> bool:
    """True if *scheme* is registered (without importing anything)."""
    if scheme not in _SPECS:
        _load_entry_points()
    return scheme in _SPECS


def get_backend(scheme: str) -> type[Backend]:
    """The backend class for *scheme*, importing its module on first use.

    Raises:
        UnknownScheme: nothing is registered under *scheme* (with a "did you mean").
        BackendUnavailable: the backend's module or dependency cannot be imported here.
    """
    cls = _LOADED.get(scheme)
    if cls is not None:
        return cls
    spec = _SPECS.get(scheme)
    if spec is None:
        _load_entry_points()
        spec = _SPECS.get(scheme)
    if spec is None:
        import difflib  # only for this error's hint: not at `import ipckit`

        close = difflib.get_close_matches(scheme, list(_SPECS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownScheme(f"unknown scheme {scheme!r}{hint} (registered: {', '.join(sorted(_SPECS))})")
    if isinstance(spec.target, str):
        module_name, _, attr = spec.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = spec.install_hint or (f"pip install {exc.name}" if exc.name else "")
            raise BackendUnavailable(
                f"the {scheme}:// backend cannot be loaded: {exc}" + (f"; install it with `{hint}`" if hint else "")
            ) from exc
        cls = getattr(module, attr)
    else:
        cls = spec.target
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigurationError(f"{spec.target!r} registered for {scheme!r} is not an ipckit Backend subclass")
    _LOADED[scheme] = cls
    return cls


def availability(scheme: str) -> tuple[bool, str]:
    """``(works_here, reason)`` for *scheme*; imports the backend module."""
    try:
        cls = get_backend(scheme)
    except (BackendUnavailable, ConfigurationError) as exc:
        return False, str(exc)
    try:
        return cls.is_available()
    except Exception as exc:  # a probe that crashes means "not available", with the reason
        return False, f"availability probe failed: {exc!r}"


def available_backends() -> dict[str, bool]:
    """``{scheme: works_here}`` for every registered scheme."""
    return {s: availability(s)[0] for s in schemes()}
