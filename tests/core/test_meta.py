"""Every registered scheme runs the contract its capabilities call for — nothing is skipped silently.

A backend's test class is a ``Test*`` subclass of :class:`ipckit.testing.ChannelContract` with
``scheme`` set; the mixins it lists must be exactly :func:`ipckit.testing.required_contracts` of the
backend's declared capabilities (a missing mixin leaves a promise untested; an extra one means the
capabilities understate what the backend does).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

from ipckit.registry import availability, get_backend, schemes
from ipckit.testing import ChannelContract, required_contracts
from ipckit.testing import contract as contract_package
from ipckit.testing.contract import (
    ALL_CONTRACTS,
    AioContract,
    CrossProcessContract,
    ForkContract,
    FramedStreamContract,
    LargeMessageContract,
    OneWayContract,
    PeerDeathContract,
    WaitContract,
)

TESTS = Path(__file__).parents[1]  # tests/: every layer's directory is searched
MIXINS = set(ALL_CONTRACTS)


def _contract_classes() -> dict[str, list[type]]:
    found: dict[str, list[type]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name == Path(__file__).name or "benchmarks" in path.parts:
            continue
        module = sys.modules.get(path.stem)
        if module is None or not str(getattr(module, "__file__", "")).startswith(str(TESTS)):
            name = f"_ipckit_meta_{path.stem}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, ChannelContract) and obj.__name__.startswith("Test")
                    and obj.__module__ == module.__name__):
                found.setdefault(obj.scheme, []).append(obj)
    return found


def _builtin_schemes() -> list[str]:
    # Schemes registered at run time by other tests (``test-*``) are not backends of ipckit.
    return [s for s in schemes() if not s.startswith("test-")]


@pytest.fixture(scope="module")
def classes() -> dict[str, list[type]]:
    return _contract_classes()


@pytest.mark.parametrize("scheme", _builtin_schemes())
def test_scheme_has_contract_class_matching_capabilities(scheme: str, classes: dict[str, list[type]]) -> None:
    ok, why = availability(scheme)
    if not ok:
        pytest.skip(f"{scheme}:// is not available here: {why}")
    assert scheme in classes, (f"{scheme}:// is registered but no test class runs its contract: add "
                               f"`class Test...(ChannelContract, ...): scheme = {scheme!r}` under tests/")
    for cls in classes[scheme]:
        caps = getattr(cls, "variant_capabilities", None) or get_backend(scheme).capabilities
        needed = required_contracts(caps)
        present = {m for m in MIXINS if issubclass(cls, m)}
        missing = needed - present
        extra = present - needed
        assert not missing, (f"{cls.__name__} ({scheme}://) lacks {sorted(m.__name__ for m in missing)} "
                             f"required by its capabilities {caps}")
        assert not extra, (f"{cls.__name__} ({scheme}://) runs {sorted(m.__name__ for m in extra)} but its "
                           f"capabilities do not declare them: {caps}")


def test_every_contract_class_names_a_registered_scheme(classes: dict[str, list[type]]) -> None:
    registered = set(schemes())
    for scheme, found in classes.items():
        assert scheme in registered, f"{[c.__name__ for c in found]} test unregistered scheme {scheme!r}"


def test_required_contracts_reads_capabilities() -> None:
    from ipckit.options import Capabilities

    minimal = Capabilities(duplex=False, message_oriented=True, detects_peer_close=False, inheritable=False,
                           max_message_size=4096)
    # Forks happen everywhere; ipckit.wait and ipckit.aio work on every backend.
    assert required_contracts(minimal) == {ChannelContract, ForkContract, WaitContract, AioContract}
    full = Capabilities(selectable=True, named=True)
    assert required_contracts(full) == MIXINS
    assert PeerDeathContract not in required_contracts(Capabilities(detects_peer_close=False))
    assert LargeMessageContract in required_contracts(Capabilities(max_message_size=64 * 1024 * 1024))


def test_framed_stream_contract_follows_message_orientation_and_processes() -> None:
    from ipckit.options import Capabilities

    # A byte stream carried across processes: a dying peer can cut one of its frames.
    assert FramedStreamContract in required_contracts(Capabilities(message_oriented=False, cross_process=True))
    # Needed without inheritable ends too: a named-only stream's peers connect instead.
    assert FramedStreamContract in required_contracts(Capabilities(inheritable=False, named=True))
    # The transport keeps message boundaries (seqpacket, rings): there is no frame to cut.
    assert FramedStreamContract not in required_contracts(Capabilities(message_oriented=True))
    # Threads of one process: no peer process to kill.
    assert FramedStreamContract not in required_contracts(Capabilities(cross_process=False, inheritable=False))


def test_framed_stream_contract_runs_on_every_byte_stream_scheme(classes: dict[str, list[type]]) -> None:
    """pipe://, fifo:// and unix:// (stream) frame a byte stream: each runs the mid-frame kill tests
    (the per-scheme check above requires it from the capabilities; this pins that it applies)."""
    running = {scheme for scheme, found in classes.items() if any(issubclass(c, FramedStreamContract) for c in found)}
    assert {"pipe", "fifo", "unix"} <= running
    seqpacket = [c for c in classes.get("unix", []) if getattr(c, "variant_capabilities", None) is not None]
    assert seqpacket and not any(issubclass(c, FramedStreamContract) for c in seqpacket)


def test_all_contracts_lists_every_contract_class() -> None:
    # A mixin added to the package but not to ALL_CONTRACTS would escape required_contracts and
    # this meta-test both.
    exported = {obj for name, obj in vars(contract_package).items()
                if inspect.isclass(obj) and name.endswith("Contract")}
    # The one-way form (pub/sub fan-out) is a contract of its own, not a mixin of ChannelContract:
    # no scheme's capabilities call for it, and its test classes subclass it alone.
    assert exported - {OneWayContract} == MIXINS
    assert not issubclass(OneWayContract, ChannelContract)
    assert CrossProcessContract in MIXINS and ChannelContract is ALL_CONTRACTS[0]


def test_contract_bases_are_not_collected() -> None:
    for mixin in MIXINS:
        assert not mixin.__name__.startswith("Test")



