"""Packaging: what the sdist and the wheel must carry, checked where each can be seen.

A file moved or added inside ``ipckit/`` must still reach users.  Python modules in a regular
package always do; anything else (``py.typed``, the C fast path's ``.pyi`` stub) only if
pyproject's package-data names it.  Two views:

* from the source tree (the editable install): every package directory is a package, every
  non-Python file is covered by package-data or is the C source that setup.py compiles;
* from an installed wheel (CI runs the whole suite against one, from a directory without the
  source tree): the installed distribution lists those files and every subpackage.

CI (``.ci/run``) also builds the sdist and the wheel with ``python -m build`` and fails if the
suite does not pass on the installed wheel, which is the check that cannot be fooled.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import importlib.util
import subprocess
import sysconfig
from pathlib import Path

import pytest

import ipckit

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "ipckit"
HAVE_SOURCE = (ROOT / "setup.py").is_file() and (SOURCE / "__init__.py").is_file()
INSTALLED_FROM = Path(ipckit.__file__).resolve().parent
EXTENSION = "ipckit.backends.common.ring._ringfast"
EXTENSIONS = (EXTENSION, "ipckit.backends.common._queuefast")

needs_source = pytest.mark.skipif(not HAVE_SOURCE, reason="needs the source tree (this run tests an installed wheel)")


def _installed_as_wheel() -> bool:
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    return INSTALLED_FROM.parent in site


def _pyproject() -> dict[str, object]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    data: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def _setup_py_sources() -> list[str]:
    """The ``sources=[...]`` strings of the Extension(s) in setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "sources" and isinstance(node.value, ast.List):
            out += [elt.value for elt in node.value.elts
                    if isinstance(elt, ast.Constant) and isinstance(elt.value, str)]
    return out


def _source_files() -> list[Path]:
    """Files of the package in the source tree: git's list where there is one, else a walk."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", "ipckit"], capture_output=True,
                                check=True, timeout=30).stdout.decode().split("\0")
        files = [ROOT / p for p in listed if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in SOURCE.rglob("*") if p.is_file()]
    return [p for p in files if p.exists() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc")]


# --------------------------------------------------------------------------- the source tree
@needs_source
def test_every_directory_with_modules_is_a_regular_package() -> None:
    dirs = {p.parent for p in _source_files() if p.suffix == ".py"}
    missing = sorted(str(d.relative_to(ROOT)) for d in dirs if not (d / "__init__.py").is_file())
    assert not missing, f"directories with modules but no __init__.py (not packaged as regular packages): {missing}"


@needs_source
def test_package_data_covers_every_file_that_is_not_python() -> None:
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    patterns = tool["setuptools"]["package-data"]["ipckit"]
    compiled = {str(ROOT / s) for s in _setup_py_sources()}
    uncovered = []
    for path in _source_files():
        if path.suffix == ".py" or str(path) in compiled:
            continue
        rel = path.relative_to(SOURCE).as_posix()
        if not any(fnmatch.fnmatch(rel, pattern) for pattern in patterns):
            uncovered.append(rel)
    assert not uncovered, f"not in [tool.setuptools.package-data] (the wheel would lack them): {uncovered}"


@needs_source
def test_the_extension_source_and_stub_are_where_setup_py_says() -> None:
    sources = _setup_py_sources()
    assert sources == [ext.replace(".", "/") + ".c" for ext in EXTENSIONS]
    for ext, source in zip(EXTENSIONS, sources, strict=True):
        assert (ROOT / source).is_file()
        assert (ROOT / (ext.replace(".", "/") + ".pyi")).is_file()
        assert ext in (ROOT / "setup.py").read_text()


@needs_source
def test_build_is_a_dev_dependency() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    dev = project["optional-dependencies"]["dev"]
    assert any(req.split(">")[0].split("=")[0].strip() == "build" for req in dev), dev


# --------------------------------------------------------------------------- an installed wheel
@pytest.mark.skipif(not _installed_as_wheel(), reason="ipckit is not installed from a wheel here (editable install)")
def test_the_installed_wheel_carries_typing_files_extension_and_every_package() -> None:
    files = {str(f) for f in importlib.metadata.files("ipckit") or []}
    for needed in ("ipckit/py.typed", "ipckit/backends/common/ring/_ringfast.pyi",
                   "ipckit/backends/common/_queuefast.pyi",
                   "ipckit/backends/common/__init__.py", "ipckit/backends/common/ring/__init__.py",
                   "ipckit/testing/__init__.py", "ipckit/bench/__init__.py"):
        assert needed in files, f"{needed} is missing from the installed wheel"
    assert not any(f.endswith(".c") for f in files), "the C source belongs in the sdist, not the wheel"
    if importlib.util.find_spec(EXTENSION) is not None:
        assert any(fnmatch.fnmatch(f, "ipckit/backends/common/ring/_ringfast*.so") for f in files)
    if importlib.util.find_spec("ipckit.backends.common._queuefast") is not None:
        assert any(fnmatch.fnmatch(f, "ipckit/backends/common/_queuefast*.so") for f in files)
    # Every package directory that is installed is listed (nothing copied in by hand).
    for init in INSTALLED_FROM.rglob("__init__.py"):
        rel = "ipckit/" + init.relative_to(INSTALLED_FROM).as_posix()
        assert rel in files, rel
