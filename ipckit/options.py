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
import operator
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigurationError
from .serializers import Serializer, serializer_names

__all__ = ["Capabilities", "Options", "Bounds", "option", "option_bounds", "allowed_values", "parse_options",
           "parse_size", "DEFAULT_MAX_MESSAGE_SIZE"]

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
    #: payload bytes one direction is sure to hold while nobody receives (None: at least 1 MiB);
    #: a send beyond it waits for the receiver (a SysV queue's msgmnb is 16 KiB for both ways)
    buffered_bytes: int | None = None
    #: messages one direction is sure to hold unread, within ``buffered_bytes`` (None: no count
    #: limit; a POSIX queue holds msg_max kernel messages whatever their size)
    buffered_messages: int | None = None


@dataclass(frozen=True)
class Bounds:
    """What an option allows beyond its type, declared on the field with :func:`option`.

    :func:`parse_options` checks them on the converted value and :func:`allowed_values` describes
    them, so a bound is declared once and never checked by hand in a backend.
    """

    #: the value must be >= this
    minimum: float | None = None
    #: the value must be > this (e.g. a timeout that cannot be 0)
    above: float | None = None
    #: the value must be <= this
    maximum: float | None = None
    #: a string option: one of these (compared case-insensitively)
    choices: tuple[str, ...] = ()
    #: replaces the generated description of what is allowed (e.g. octal masks)
    describe: str = ""

    def violated(self, value: Any) -> str | None:
        """Why *value* is out of bounds, or None.  NaN fails every numeric bound."""
        if value is None:
            return None
        if self.choices:
            if not isinstance(value, str) or value.lower() not in self.choices:
                return "not one of the choices"
            return None
        if self.minimum is not None and not value >= self.minimum:
            return "below the minimum"
        if self.above is not None and not value > self.above:
            return f"not above {_number(self.above)}"
        if self.maximum is not None and not value <= self.maximum:
            return "above the maximum"
        return None

    def text(self) -> str:
        """The bounds as words: ``from 1 to 2147483648``, ``>= 0``, ``> 0``, ``one of ...``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None and self.above is None:
            return f"from {_number(self.minimum)} to {_number(self.maximum)}"
        parts = []
        if self.minimum is not None:
            parts.append(f">= {_number(self.minimum)}")
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        if self.maximum is not None:
            parts.append(f"<= {_number(self.maximum)}")
        return " and ".join(parts)


def _number(x: float) -> str:
    return str(int(x)) if isinstance(x, int) or (isinstance(x, float) and x.is_integer()) else str(x)


_BOUNDS = "ipckit.bounds"


def option(
    default: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
    describe: str = "",
    **field_args: Any,
) -> Any:
    """A dataclass field of an :class:`Options` class with declared :class:`Bounds`.

    ``capacity: int = option(4 * MiB, minimum=1, maximum=2**31)``; *field_args* go to
    :func:`dataclasses.field` (e.g. ``repr=False``).
    """
    bounds = Bounds(minimum=minimum, above=above, maximum=maximum,
                    choices=tuple(c.lower() for c in choices), describe=describe)
    return dataclasses.field(default=default, metadata={_BOUNDS: bounds}, **field_args)


@dataclass
class Options:
    """Options every backend accepts.

    ``serializer``: name or object (default: pickle where the peer is proven trusted, else msgpack).
    ``max_message_size``: bytes; larger messages raise MessageTooLarge (accepts ``64MiB``).
    ``default_timeout``: seconds for blocking calls that pass no ``timeout`` (None = forever).
    ``mode``: permission bits of named objects (owner-only by default).
    ``trust``: treat the peer as trusted, allowing pickle where it is not proven (your risk).

    A subclass declares its own fields' bounds with :func:`option`; checks that bounds cannot
    express (several fields together, a backend's own syntax) go in :meth:`validate`.
    """

    serializer: str | Serializer | None = None
    max_message_size: int = option(DEFAULT_MAX_MESSAGE_SIZE, minimum=0)
    default_timeout: float | None = option(None, minimum=0)
    mode: int = option(0o600, minimum=0, maximum=0o777,
                       describe="a permission mask from 0o000 to 0o777, like 0o600 (octal digits like 600 in a URL)")
    trust: bool = False

    def validate(self) -> None:
        """Called by :func:`parse_options` after every field passed its type and bounds.

        Raises:
            ConfigurationError: naming the option, the value and what is allowed.
        """


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
          "g": 1024**3, "gib": 1024**3, "gb": 1000**3}
_SIZE_TEXT = "a size in bytes (an integer, or a string like 4096, 64KiB, 8MiB)"


def parse_size(value: str | int) -> int:
    """Parse ``8MiB`` / ``64k`` / ``4096`` into bytes.

    Raises:
        ValueError: *value* is not a whole number of bytes (a float, a bool, text that is no size).
    """
    if isinstance(value, bool):
        raise ValueError("a bool is not a size")
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a size")
        unit = m.group(2).lower() if m.group(2) else None
        return int(m.group(1)) * _UNITS[unit]
    try:
        return operator.index(value)  # int, numpy integers; never a float
    except TypeError:
        raise ValueError(f"a {type(value).__name__} is not a whole number of bytes") from None


def _is_size(name: str) -> bool:
    return name.endswith(("size", "capacity", "bytes"))


def _describe(name: str, hint: Any) -> tuple[str, str]:
    """What a field of (non-Union) type *hint* accepts: a noun and a detail, in words."""
    if hint is Any or hint is object:
        return "any value", "checked when the channel opens"
    if hint is bool:
        return "true or false", "in a URL also 1/0, yes/no, on/off"
    if hint is int:
        if name == "mode":
            return "a permission mask", "like 0o600; octal digits like 600 in a URL"
        if _is_size(name):
            return "a size in bytes", "an integer, or a string like 4096, 64KiB, 8MiB"
        return "an integer", ""
    if hint is float:
        return "a number", ""
    if hint is str:
        return "a string", ""
    if hint is Serializer:
        return f"a serializer name ({', '.join(serializer_names())}) or an object with dumps and loads", ""
    return getattr(hint, "__name__", str(hint)), ""


def _fields(cls: type[Options]) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def option_bounds(cls: type[Options], name: str) -> Bounds | None:
    """The :class:`Bounds` field *name* of *cls* declares (None: only its type is checked)."""
    bounds = _fields(cls)[name].metadata.get(_BOUNDS)
    return bounds if isinstance(bounds, Bounds) else None


def allowed_values(cls: type[Options], name: str) -> str:
    """What option *name* of *cls* allows, in words (every option error ends with it)."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    members = [a for a in args if a is not type(None)]
    if Serializer in members:  # a name is a str: "a serializer name" says it
        members = [a for a in members if a is not str]
    bounds = option_bounds(cls, name)
    if bounds is not None and bounds.describe:
        text = bounds.describe
    elif bounds is not None and bounds.choices:
        text = bounds.text()
    else:
        texts = []
        for member in members:
            noun, detail = _describe(name, member)
            if bounds is not None and (limits := bounds.text()):
                noun += f" {limits}"
            texts.append(f"{noun} ({detail})" if detail else noun)
        text = " or ".join(texts)
    return f"{text}, or None" if type(None) in args else text


def _convert(name: str, hint: Any, value: Any) -> Any:
    """Coerce *value* (a URL string or a keyword value) to the field type *hint*.

    Raises ValueError or TypeError with a short reason (the caller adds what is allowed).
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        reasons = []
        for a in non_none:
            try:
                return _convert(name, a, value)
            except (TypeError, ValueError) as exc:
                reasons.append(str(exc))
        if len(reasons) == 1:
            raise ValueError(reasons[0])
        raise ValueError(f"a value of type {type(value).__name__} is none of these")
    if hint is Any or hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("not a bool")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError("a bool is not an integer")
        if name == "mode" and isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError("not octal digits") from None
        if _is_size(name):
            return parse_size(value)
        if isinstance(value, str):
            try:
                return int(value, 10)
            except ValueError:
                raise ValueError("not an integer") from None
        try:
            return operator.index(value)
        except TypeError:
            raise ValueError(f"a {type(value).__name__} is not an integer") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError("a bool is not a number")
        if isinstance(value, (int, float, str)):
            try:
                return float(value)
            except (ValueError, OverflowError):
                raise ValueError("not a number") from None
        raise ValueError(f"a {type(value).__name__} is not a number")
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"a {type(value).__name__} is not a string")
        return value
    if hint is Serializer:
        if isinstance(value, str) or not (callable(getattr(value, "dumps", None))
                                          and callable(getattr(value, "loads", None))):
            raise TypeError(f"a {type(value).__name__} is not a serializer")
        return value
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    if isinstance(hint, type) and isinstance(value, str):
        raise TypeError(f"expected {hint.__name__}, got a string")
    return value


OptionsT = TypeVar("OptionsT", bound=Options)


def parse_options(cls: type[OptionsT], query: dict[str, str], kwargs: dict[str, Any]) -> OptionsT:
    """Build *cls* from URL *query* strings and *kwargs* (kwargs win), checking each field's type
    and declared bounds, then :meth:`Options.validate`.

    Raises:
        ConfigurationError: an unknown option (the message lists the valid ones) or a bad value
            (the message names the option, the value and what is allowed).
    """
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    merged: dict[str, Any] = dict(query)
    merged.update(kwargs)
    values: dict[str, Any] = {}
    for key, raw in merged.items():
        if key not in fields:
            raise ConfigurationError(f"unknown option {key!r}; valid options: {', '.join(sorted(fields))}")
        cause: Exception | None = None
        try:
            value = _convert(key, hints[key], raw)
            bounds = option_bounds(cls, key)
            reason = bounds.violated(value) if bounds is not None else None
        except (TypeError, ValueError) as exc:
            reason, cause = str(exc), exc
        if reason is not None:
            raise ConfigurationError(
                f"bad value {raw!r} for option {key!r} ({reason}); allowed: {allowed_values(cls, key)}"
            ) from cause
        values[key] = value
    opts = cls(**values)
    opts.validate()
    return opts
