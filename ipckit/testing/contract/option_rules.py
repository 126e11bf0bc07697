"""OptionRules: every option of a backend refuses a bad value with a message that says what is allowed.

Part of :class:`~ipckit.testing.contract.ChannelContract` (so it runs on every backend).  The
values come from the backend's options class itself: a wrong-typed value for each field's type
hint, and a value just past each bound the field declares (``ipckit.options.option``), so an
option added later is checked without touching this module.  Each must raise
:class:`~ipckit.errors.ConfigurationError` naming the option, the value and what is allowed
(:func:`ipckit.options.allowed_values`), as a keyword and as a URL query value, and through the
public factories before any OS object exists (the leak guard checks that).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

import ipckit

from ...errors import ConfigurationError
from ...options import Capabilities, Options, allowed_values, option_bounds, parse_options
from ...registry import get_backend

__all__ = ["OptionRules", "wrong_typed_values", "out_of_bounds_values"]


class _NotAnOption:
    """A value of no type any option accepts."""

    def __repr__(self) -> str:
        return "<not an option value>"


def _plain(hint: Any) -> list[Any]:
    """The non-None members of *hint* (a Union) or ``[hint]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def wrong_typed_values(hint: Any) -> list[tuple[Any, bool]]:
    """``(value, as_query)`` pairs that a field typed *hint* must refuse: keywords of the wrong type,
    and (``as_query``) URL strings that do not parse as it.  ``Any`` fields have none."""
    members = _plain(hint)
    if any(m is Any or m is object for m in members):
        return []
    accepts = set(members)
    out: list[tuple[Any, bool]] = [(_NotAnOption(), False), (b"bytes", False)]
    if accepts <= {int, float, bool}:
        out.append(("12abc", True))  # a URL value that is no number nor bool
    if bool in accepts:
        out += [(2, False), ("maybe", True)]
    elif accepts & {int, float}:
        out.append((True, False))  # a bool is not a number of bytes or seconds
        if float not in accepts:
            out += [(2.5, False), ("2.5", True)]
    if str in accepts:
        out.append((12, False))  # neither a name nor a serializer object
    return out


def out_of_bounds_values(cls: type[Options], name: str) -> list[Any]:
    """Values just past each bound the field *name* of *cls* declares."""
    bounds = option_bounds(cls, name)
    if bounds is None:
        return []
    out: list[Any] = []
    whole = int in _plain(typing.get_type_hints(cls)[name])
    step = 1 if whole else 0.5
    if bounds.minimum is not None:
        out.append(bounds.minimum - step)
    if bounds.above is not None:
        out.append(bounds.above)
        out.append(bounds.above - step)
    if bounds.maximum is not None:
        out.append(bounds.maximum + step)
    if bounds.choices:
        out.append("no-such-" + bounds.choices[0])
    if not whole and bounds.maximum is None:
        out.append(math.nan)  # no number is >= or > a NaN
    return out


class OptionRules:
    """Every option refuses a wrong-typed or out-of-bounds value: ConfigurationError naming the
    option, the value and what is allowed (docs/contract.md §4)."""

    scheme: ClassVar[str]
    options: ClassVar[dict[str, Any]]
    fresh_url: Callable[[], str]

    if TYPE_CHECKING:
        @property
        def caps(self) -> Capabilities: ...  # ChannelContract's

    def _options_class(self) -> type[Options]:
        return get_backend(self.scheme).options_class

    def _refused(self, cls: type[Options], name: str, value: Any, *, as_query: bool) -> str:
        query, kwargs = ({name: value}, {}) if as_query else ({}, {name: value})
        with pytest.raises(ConfigurationError) as info:
            parse_options(cls, query, kwargs)
        text = str(info.value)
        allowed = allowed_values(cls, name)
        assert allowed, f"ipckit.options.allowed_values({cls.__name__}, {name!r}) is empty"
        for part in (repr(name), repr(value), allowed):
            assert part in text, f"{name}={value!r}: the message {text!r} does not say {part!r}"
        return text

    def test_every_option_refuses_a_wrong_type(self) -> None:
        cls = self._options_class()
        hints = typing.get_type_hints(cls)
        checked = 0
        for f in dataclasses.fields(cls):
            for value, as_query in wrong_typed_values(hints[f.name]):
                self._refused(cls, f.name, value, as_query=as_query)
                checked += 1
        assert checked, f"{cls.__name__} has no typed option to check"

    def test_every_declared_bound_is_enforced(self) -> None:
        cls = self._options_class()
        for f in dataclasses.fields(cls):
            # As keywords: a URL spells some values differently (mode is octal there), and the
            # bound is checked on the converted value either way.
            for value in out_of_bounds_values(cls, f.name):
                self._refused(cls, f.name, value, as_query=False)

    def test_bad_option_refused_before_anything_is_made(self) -> None:
        # Through the public factories: refused while parsing, so nothing exists to clean up (the
        # leak guard checks); the first bound of each option stands for the rest.
        cls = self._options_class()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            bad = out_of_bounds_values(cls, f.name)[:1]
            bad = bad or [v for v, as_query in wrong_typed_values(hints[f.name]) if not as_query][:1]
            for value in bad:
                opts = {**self.options, f.name: value}
                with pytest.raises(ConfigurationError, match=f.name):
                    if self.caps.anonymous_pair:
                        ipckit.pair(f"{self.scheme}://", **opts)
                    else:
                        ipckit.listen(self.fresh_url(), **opts)
