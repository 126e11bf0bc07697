"""The public surface: what ``ipckit`` and ``ipckit.errors`` export, documented, and nothing internal.

The names are pinned here on purpose: adding or removing a public name is an API change and
should show up in a review as an edit of this file.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import warnings
from typing import Any

import pytest

import ipckit
import ipckit.errors

ERRORS = {
    "IPCError",
    "ChannelClosed",
    "EndOfChannel",
    "ChannelBroken",
    "PeerDied",
    "WorkerDied",
    "ChannelBusy",
    "ChannelTimeout",
    "SendTimeout",
    "RecvTimeout",
    "TaskTimeout",
    "MessageTooLarge",
    "BufferTooSmall",
    "ProtocolError",
    "SerializationError",
    "EncodeError",
    "DecodeError",
    "UnsafeSerializer",
    "UnsupportedOperation",
    "EndpointError",
    "EndpointNotFound",
    "EndpointExists",
    "ConnectFailed",
    "PermissionDenied",
    "PeerRejected",
    "IncompatibleEndpoint",
    "ResourceExhausted",
    "ConfigurationError",
    "UnknownScheme",
    "InvalidAddress",
    "BackendUnavailable",
    "SerializerUnavailable",
}

TOP_LEVEL = {
    "pair",
    "listen",
    "connect",
    "publish",  # pub/sub fan-out (ipckit.pubsub)
    "subscribe",
    "wait",  # ipckit.wait: ready channels and listeners of any backends (ipckit.waiting)
    "Channel",
    "Listener",
    "Backend",
    "Capabilities",
    "Options",
    "Serializer",
    "available_backends",
    "register_backend",
    "register_serializer",
    "errors",
    "DEFAULT_CONNECT_TIMEOUT",
    "__version__",
    *ERRORS,
}

#: Helpers for backends (docs/writing-a-backend.md), importable from ipckit.errors by name but
#: not part of the user API.
BACKEND_HELPERS = {"from_oserror", "again"}

#: Public methods still without a docstring in files another change owns; empty it when fixed.
KNOWN_UNDOCUMENTED: set[str] = set()


def test_top_level_names_are_pinned() -> None:
    assert len(ipckit.__all__) == len(set(ipckit.__all__)), "duplicates in ipckit.__all__"
    assert set(ipckit.__all__) == TOP_LEVEL


def test_error_names_are_pinned_and_are_errors() -> None:
    assert len(ipckit.errors.__all__) == len(set(ipckit.errors.__all__))
    assert set(ipckit.errors.__all__) == ERRORS
    for name in ERRORS:
        cls = getattr(ipckit.errors, name)
        assert isinstance(cls, type) and issubclass(cls, ipckit.IPCError), name
        assert getattr(ipckit, name) is cls, f"ipckit.{name} is not ipckit.errors.{name}"


def test_backend_helpers_are_importable_but_not_exported() -> None:
    from ipckit.errors import again, from_oserror

    assert callable(again) and callable(from_oserror)
    for name in BACKEND_HELPERS:
        assert name not in ipckit.errors.__all__
        assert name not in ipckit.__all__
        assert not hasattr(ipckit, name), f"ipckit.{name} leaks an internal helper into the top level"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from ipckit import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == TOP_LEVEL


def _documented(obj: Any) -> bool:
    return bool((inspect.getdoc(obj) or "").strip())


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    obj = getattr(ipckit, name)
    assert not name.startswith("_") or name == "__version__"
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        assert _documented(obj), f"ipckit.{name} has no docstring"
        module = obj.__name__ if inspect.ismodule(obj) else obj.__module__
        assert not any(part.startswith("_") for part in module.split(".")), f"{name} comes from {module}"
    else:  # constants: a version string and a number of seconds
        assert isinstance(obj, (str, float)), name


@pytest.mark.parametrize("cls", [ipckit.Channel, ipckit.Listener, ipckit.Backend, ipckit.Capabilities,
                                 ipckit.Options], ids=lambda c: c.__name__)
def test_public_methods_of_the_base_classes_are_documented(cls: type) -> None:
    missing = []
    for name, member in vars(cls).items():
        if name.startswith("_") or f"{cls.__name__}.{name}" in KNOWN_UNDOCUMENTED:
            continue
        target = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if (isinstance(member, property) or inspect.isfunction(target)) and not _documented(target):
            missing.append(name)
    assert not missing, f"{cls.__name__}: public members without a docstring: {missing}"


# --------------------------------------------------------------------------- the deprecated alias
def test_fdstream_alias_warns_and_reexports_the_stream_kit() -> None:
    """``ipckit.fdstream`` (the old home of FdStreamChannel) still imports for one release."""
    import ipckit.backends.common.stream as stream

    saved = sys.modules.pop("ipckit.fdstream", None)
    try:
        with pytest.warns(DeprecationWarning, match=r"ipckit\.backends\.common\.stream"):
            old = importlib.import_module("ipckit.fdstream")
        for name in ("FdStreamChannel", "DescriptorChannel"):
            assert getattr(old, name) is getattr(stream, name)
        assert set(old.__all__) == set(stream.__all__)
        for name in stream.__all__:
            assert getattr(old, name) is getattr(stream, name), name
        # A third-party subclass written against the old name is a subclass of the new class.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sub = type("LegacyChannel", (old.FdStreamChannel,), {})
        assert issubclass(sub, stream.FdStreamChannel)
    finally:
        sys.modules.pop("ipckit.fdstream", None)
        if saved is not None:
            sys.modules["ipckit.fdstream"] = saved


def test_nothing_in_ipckit_imports_the_alias() -> None:
    # The alias warns, so nothing of ipckit itself may import it: not the core, not a backend
    # (loaded through the registry), not the testing package or the command line.
    code = (
        "import sys, ipckit, ipckit.cli, ipckit.testing\n"
        "from ipckit.registry import get_backend, schemes\n"
        "for s in schemes():\n"
        "    try:\n"
        "        get_backend(s)\n"
        "    except ipckit.BackendUnavailable:\n"
        "        pass\n"
        "assert 'ipckit.fdstream' not in sys.modules, 'something imported ipckit.fdstream'\n"
    )
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
