"""The layout, read from the source: ``ipckit/backends/`` holds one module per scheme and the kits'
package ``common/``; no scheme module imports another, no kit imports a scheme, and ``import
ipckit`` loads neither — so a new backend builds on a kit and never on a sibling scheme.

Imports are read with :mod:`ast` (every ``import`` statement anywhere in a file: module level,
functions, ``try``/``if`` blocks; absolute and relative; plus ``importlib.import_module`` /
``__import__`` with a constant name), not by importing, so a dependency that is missing here
hides nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ipckit
from ipckit import registry

PACKAGE = Path(ipckit.__file__).resolve().parent
BACKENDS = PACKAGE / "backends"
KITS = BACKENDS / "common"
BENCH = PACKAGE / "bench"


def module_name(path: Path) -> str:
    """The dotted name of the module in *path* (a file under the ipckit package)."""
    parts = path.resolve().relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, level: int, package: str) -> str:
    """The absolute name of ``from <level dots><name> import ...`` inside *package*."""
    if not level:
        return name
    base = package.split(".")
    if level - 1 >= len(base):
        raise ValueError(f"relative import beyond the top-level package in {package}")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module an import in *source* (the code of *module*) may load, as absolute names.

    ``from X import n`` yields ``X`` and ``X.n`` (``n`` may be a submodule); ``import X.Y`` yields
    ``X.Y``.  Over-approximating is safe here: a name that is not a module matches no scheme.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", node.level, package)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _callee(node.func) in ("import_module", "__import__")):
            name = node.args[0].value
            level = len(name) - len(name.lstrip("."))
            found.add(_resolve(name[level:], level, package))
    return found


def _callee(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


def _names(found: set[str], modules: set[str]) -> set[str]:
    """The members of *modules* that *found* reaches (the module itself or something inside it)."""
    return {m for m in modules for name in found if name == m or name.startswith(m + ".")}


def registered_scheme_modules() -> set[str]:
    """The modules of the built-in schemes: the ``"module:Class"`` targets under ipckit.backends."""
    targets = [spec.target for spec in registry._SPECS.values() if isinstance(spec.target, str)]
    return {t.partition(":")[0] for t in targets if t.startswith("ipckit.backends.")}


def scheme_module_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(BACKENDS.glob("*.py")) if p.name != "__init__.py"}


SCHEMES = sorted(registered_scheme_modules() | set(scheme_module_files()))


# --------------------------------------------------------------------------- the reader itself
def test_import_reader_sees_every_form() -> None:
    source = '''
import ipckit.backends.pipe
from ipckit.backends import fifo
from . import unix
from .shm import ShmOptions
from ..backends.memory import MemoryBackend
from .common.stream import FdStreamChannel

def later():
    from .sysv_shm import X

try:
    import importlib
    importlib.import_module("ipckit.backends.zmq")
except ImportError:
    importlib.import_module(".mq", __package__)
    __import__("ipckit.backends.mq")
'''
    found = imported_modules(source, "ipckit.backends.example")
    schemes = {f"ipckit.backends.{s}" for s in ("pipe", "fifo", "unix", "shm", "memory", "sysv_shm", "zmq", "mq")}
    assert _names(found, schemes) == schemes
    assert "ipckit.backends.common.stream" in found
    # A package's relative imports start from the package itself.
    assert imported_modules("from . import ring", "ipckit.backends.common", is_package=True) >= {
        "ipckit.backends.common.ring"}
    assert imported_modules("from .. import fifo", "ipckit.backends.common.stream") >= {"ipckit.backends.fifo"}


# --------------------------------------------------------------------------- (a) schemes alone
def test_backends_directory_holds_only_scheme_modules_and_the_kits() -> None:
    files = scheme_module_files()
    registered = registered_scheme_modules()
    assert registered, "the registry names no built-in scheme module"
    strays = sorted(set(files) - registered)
    assert not strays, (f"{strays} sit in ipckit/backends/ but no scheme's registry target names them: "
                        "shared machinery belongs in a kit under ipckit/backends/common/")
    missing = sorted(registered - set(files))
    assert not missing, f"registry targets {missing} are not modules directly in ipckit/backends/"
    others = sorted(p.name for p in BACKENDS.iterdir()
                    if p.name not in ("__init__.py", "common", "__pycache__") and p.suffix != ".py")
    assert not others, f"ipckit/backends/ holds {others}: only scheme modules, __init__.py and common/ belong there"
    assert (KITS / "__init__.py").is_file()


@pytest.mark.parametrize("scheme_module", SCHEMES)
def test_no_scheme_module_imports_another(scheme_module: str) -> None:
    path = scheme_module_files().get(scheme_module)
    assert path is not None, f"{scheme_module} has no file in ipckit/backends/"
    siblings = _names(imports_of(path), set(SCHEMES) - {scheme_module})
    assert not siblings, (f"{scheme_module} imports the scheme module(s) {sorted(siblings)}: move what they share "
                          "into a kit under ipckit/backends/common/")


# --------------------------------------------------------------------------- (c) kits below schemes
KIT_FILES = sorted(KITS.rglob("*.py"))


@pytest.mark.parametrize("kit", KIT_FILES, ids=[str(p.relative_to(KITS)) for p in KIT_FILES])
def test_kits_import_no_scheme_module(kit: Path) -> None:
    schemes = _names(imports_of(kit), set(SCHEMES))
    assert not schemes, f"the kit {module_name(kit)} imports the scheme module(s) {sorted(schemes)}"


# --------------------------------------------------------------------------- (b) import ipckit
def test_import_ipckit_imports_no_backend_and_no_kit() -> None:
    # A fresh interpreter: this one has imported backends already.  The lazy attribute is touched
    # too, so the lazy exports are covered.
    code = ("import ipckit, sys; ipckit.available_backends.__doc__; "
            "print(sorted(m for m in sys.modules if m == 'ipckit.backends' or m.startswith('ipckit.backends.')"
            " or m.split('.')[:2] in (['ipckit', 'testing'], ['ipckit', 'bench'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", f"import ipckit loaded {out.stdout.strip()}"


# --------------------------------------------------------------------------- the bench's modules
def test_bench_modules_import_in_one_direction() -> None:
    """The harness's modules form no circle, and its data model imports none of them."""
    modules = {module_name(p): p for p in sorted(BENCH.glob("*.py"))}
    graph = {m: _names(imports_of(p), set(modules) - {m, "ipckit.bench"}) for m, p in modules.items()}
    assert graph["ipckit.bench.model"] == set(), graph["ipckit.bench.model"]
    assert graph["ipckit.bench.subject"] == set(), graph["ipckit.bench.subject"]
    assert "ipckit.bench.links" not in graph["ipckit.bench.baselines"]
    assert "ipckit.bench.baselines" not in graph["ipckit.bench.links"]

    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import circle: {' -> '.join([*path[path.index(m):], m])}"
        if m in done:
            return
        for dep in sorted(graph[m]):
            visit(dep, (*path, m))
        done.add(m)

    for m in sorted(graph):
        visit(m, ())
