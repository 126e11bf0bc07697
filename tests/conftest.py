"""Shared test configuration: the ipckit leak guard runs around every test, and the directory
fixtures the named backends' tests share."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

pytest_plugins = ["ipckit.testing.plugin", "reliability_report"]


def pytest_configure(config: pytest.Config) -> None:
    # The fault matrix counts the shipped contract's tests too: their names, by scenario, registered
    # on import (here, once reliability_report is loaded: importing it earlier defeats assert rewriting).
    import reliability.scenarios
    import reliability.security_map  # noqa: F401  (the security checklist's names, likewise)


@pytest.fixture
def tmp() -> Iterator[str]:
    """A private temporary directory that the test must leave empty."""
    d = tempfile.mkdtemp(prefix="ipckit-test-")
    try:
        yield d
    finally:
        left = os.listdir(d)
        if not left:
            os.rmdir(d)
        assert not left, f"left behind: {left}"


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A world-writable sticky directory (like /tmp) where another user can plant things."""
    d = tempfile.mkdtemp(prefix="ipckit-test-shared-")
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d)  # what other users planted there too (links are removed, not followed)
