"""The Channel and Listener base classes: the required hooks are abstract.

A backend class that misses one fails with TypeError naming it when it is instantiated, not with
NotImplementedError on the first call that needs it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest

import ipckit.backends
from ipckit.channel import Channel, Listener
from ipckit.deadline import Deadline
from ipckit.options import Options
from ipckit.serializers import Buffer

CHANNEL_HOOKS = ["_send_message", "_recv_message", "_poll", "_close"]
LISTENER_HOOKS = ["_accept", "_close"]


class _Complete(Channel):
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        pass

    def _recv_message(self, deadline: Deadline) -> Buffer:
        return b""

    def _poll(self, deadline: Deadline) -> bool:
        return False

    def _close(self) -> None:
        pass


class _CompleteListener(Listener):
    def _accept(self, deadline: Deadline) -> Channel:
        return _Complete("test://", Options(), peer_trusted=True)

    def _close(self) -> None:
        pass


def _without(base: type, hook: str) -> type:
    """A subclass of *base*'s abstract parent with every required hook but *hook*."""
    body = {name: fn for name, fn in vars(base).items() if name in CHANNEL_HOOKS + LISTENER_HOOKS and name != hook}
    return type(f"Missing{hook}", (base.__mro__[1],), body)


def test_required_hooks_are_exactly_the_abstract_methods() -> None:
    assert sorted(Channel.__abstractmethods__) == sorted(CHANNEL_HOOKS)
    assert sorted(Listener.__abstractmethods__) == sorted(LISTENER_HOOKS)


@pytest.mark.parametrize("hook", CHANNEL_HOOKS)
def test_channel_missing_a_hook_fails_at_construction(hook: str) -> None:
    cls = _without(_Complete, hook)
    with pytest.raises(TypeError, match=rf"abstract.*\b{hook}\b"):
        cls("test://", Options(), peer_trusted=True)


@pytest.mark.parametrize("hook", LISTENER_HOOKS)
def test_listener_missing_a_hook_fails_at_construction(hook: str) -> None:
    cls = _without(_CompleteListener, hook)
    with pytest.raises(TypeError, match=rf"abstract.*\b{hook}\b"):
        cls("test://", Options())


def test_a_complete_subclass_works() -> None:
    with _Complete("test://", Options(), peer_trusted=True) as ch:
        ch.send_bytes(b"x", timeout=0)
        assert ch.recv_bytes(timeout=0) == b""
        assert ch.poll() is False
    assert ch.closed
    with _CompleteListener("test://", Options()) as lst, lst.accept(timeout=0) as peer:
        assert not peer.closed


def _subclasses(cls: type) -> Iterator[type]:
    sub: type
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_scheme_module_class_is_concrete() -> None:
    """Kits (``backends/common``) may hold abstract bases; a scheme module's classes must be complete."""
    schemes = [m.name for m in pkgutil.iter_modules(ipckit.backends.__path__, "ipckit.backends.") if not m.ispkg]
    assert schemes, "no scheme modules found"
    for name in schemes:
        importlib.import_module(name)
    found: list[Any] = [c for c in {*_subclasses(Channel), *_subclasses(Listener)} if c.__module__ in schemes]
    assert {c.__module__ for c in found} == set(schemes), "every scheme module defines a channel class"
    abstract = {f"{c.__module__}.{c.__qualname__}": sorted(c.__abstractmethods__)
                for c in found if inspect.isabstract(c)}
    assert not abstract, f"scheme classes missing required hooks: {abstract}"
