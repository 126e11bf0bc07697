"""Capabilities as data, the options every backend accepts, and option parsing.

A backend declares what its channels can do as a frozen :class:`Capabilities` record (tests, the
bench harness and the docs read it) and its options as a dataclass deriving from
:class:`Options`.  Options arrive as URL query strings or keywords; keywords win; an unknown name
is an error that lists the valid ones.

This module sits at the bottom of the core stack: ``channel`` and ``backend`` both import it,
and it imports neither.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigurationError
from .serializers import Serializer

__all__ = ["Capabilities", "Options", "parse_options", "parse_size", "DEFAULT_MAX_MESSAGE_SIZE"]

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Capabilities:
    """What a backend's channels can do. Read by the conformance suite, the harness and the docs."""

    #: both ends can send and receive
    duplex: bool = True
    #: message boundaries come from the transport (no framing needed)
    message_oriented: bool = False
    #: the transport's own hard limit on one message (None: only ``max_message_size`` applies)
    max_message_size: int | None = None
    #: ``fileno()`` gives a descriptor usable with selectors / asyncio
    selectable: bool = False
    #: a clean close and a crash of the peer are both detected (EndOfChannel / PeerDied)
    detects_peer_close: bool = True
    #: several processes may send into one endpoint
    multi_producer: bool = False
    #: several processes may receive from one endpoint
    multi_consumer: bool = False
    #: endpoints have names (``listen``/``connect``)
    named: bool = False
    #: ``pair()`` gives a connected pair
    anonymous_pair: bool = True
    #: a channel end can be handed to a child process (multiprocessing, fork and spawn)
    inheritable: bool = True
    #: the two ends may live in different processes (False: threads of one process only)
    cross_process: bool = True
    #: peers may be on different machines
    cross_host: bool = False
    #: a listener accepts many clients, one channel each
    multi_client: bool = False
    #: same-user peers are proven by the mechanism itself (pickle is allowed by default)
    proves_same_user: bool = True


@dataclass
class Options:
    """Options every backend accepts.

    ``serializer``: name or object (default: pickle where the peer is proven trusted, else msgpack).
    ``max_message_size``: bytes; larger messages raise MessageTooLarge (accepts ``64MiB``).
    ``default_timeout``: seconds for blocking calls that pass no ``timeout`` (None = forever).
    ``mode``: permission bits of named objects (owner-only by default).
    ``trust``: treat the peer as trusted, allowing pickle where it is not proven (your risk).
    """

    serializer: str | Serializer | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    default_timeout: float | None = None
    mode: int = 0o600
    trust: bool = False


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
          "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


def parse_size(value: str | int) -> int:
    """Parse ``8MiB`` / ``64k`` / ``4096`` into bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be an integer, not a bool")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size (examples: 4096, 64KiB, 8MiB)")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1)) * _UNITS[unit]


def _convert(name: str, hint: Any, value: Any) -> Any:
    """Coerce *value* (a URL string or a keyword value) to the field type *hint*."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _convert(name, a, value)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if hint is Any or hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a bool, got {value!r}")
    if hint is int:
        if name == "mode" and isinstance(value, str):
            return int(value, 8)
        if name.endswith(("size", "capacity", "bytes")) or name == "capacity":
            return parse_size(value)
        if isinstance(value, bool):
            raise ValueError("expected an int, got a bool")
        return int(value)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a bool")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a str, got {type(value).__name__}")
        return value
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    if hint is Serializer and not isinstance(value, str):
        return value
    if isinstance(hint, type) and isinstance(value, str):
        raise TypeError(f"expected {hint.__name__}, got a string")
    return value


OptionsT = TypeVar("OptionsT", bound=Options)


def parse_options(cls: type[OptionsT], query: dict[str, str], kwargs: dict[str, Any]) -> OptionsT:
    """Build *cls* from URL *query* strings and *kwargs* (kwargs win).

    Raises:
        ConfigurationError: an unknown option (the message lists the valid ones) or a bad value.
    """
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = dict(query)
    merged.update(kwargs)
    values: dict[str, Any] = {}
    for key, raw in merged.items():
        if key not in valid:
            raise ConfigurationError(f"unknown option {key!r}; valid options: {', '.join(sorted(valid))}")
        try:
            values[key] = _convert(key, hints[key], raw)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad value {raw!r} for option {key!r}: {exc}") from exc
    opts = cls(**values)
    if opts.max_message_size < 0:
        raise ConfigurationError("max_message_size must be >= 0")
    if opts.default_timeout is not None and not opts.default_timeout >= 0:
        raise ConfigurationError("default_timeout must be None or >= 0")
    if not 0 <= opts.mode <= 0o777:
        raise ConfigurationError(f"mode must be a permission mask like 0o600, got {oct(opts.mode)}")
    return opts
