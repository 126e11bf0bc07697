"""The documentation site builds with ``mkdocs build --strict``: every page in the nav, every link
and anchor resolving, every docstring the API reference renders parsing without a warning.

The build runs in a subprocess, as CI and a user (``mkdocs serve``) run it, from the repository
root where mkdocs.yml is.  CI's wheel run has tests/ but no docs/ (and no ipckit/ source for
mkdocstrings to read): there the test skips.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ipckit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mkdocs.yml"
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 120  # seconds; the build takes 5-10 s on the 2-vCPU VM

pytestmark = [
    pytest.mark.timeout(BUILD_TIMEOUT + 30),
    pytest.mark.skipif(not (DOCS.is_dir() and CONFIG.is_file() and (ROOT / "ipckit").is_dir()),
                       reason="no docs/ beside the tests (wheel run)"),
    pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                       reason="mkdocs is not installed (it is in the dev extra: pip install -e '.[dev]')"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner about mkdocs 2, not a warning of ours
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _section(page: str, anchor: str) -> str:
    """The HTML of the object whose heading has id *anchor*, up to the next object heading."""
    start = page.index(f'id="{anchor}"')
    following = re.search(r'<h\d id="ipckit\.', page[start + 1:])
    return page[start:start + 1 + following.start()] if following else page[start:]


def test_every_page_of_docs_is_built(site: Path) -> None:
    # --strict already fails on a page left out of the nav; this checks the build wrote them all.
    pages = sorted(p.relative_to(DOCS) for p in DOCS.rglob("*.md"))
    assert pages, "docs/ has no pages"
    missing = []
    for page in pages:
        stem = page.with_suffix("")
        # a.md -> a/index.html; an index.md is its directory's index.html
        built = site / (stem.parent if stem.name == "index" else stem) / "index.html"
        if not built.is_file():
            missing.append(str(page))
    assert not missing, f"pages not built: {missing}"
    for key in ("index.html", "getting-started/index.html", "concepts/index.html", "choosing/index.html",
                "benchmarks/index.html", "reference/index.html"):
        assert (site / key).is_file(), key


def test_reference_renders_channel_send_from_its_docstring(site: Path) -> None:
    page = (site / "reference" / "channel" / "index.html").read_text()
    send = _section(page, "ipckit.Channel.send")
    doc = ipckit.Channel.send.__doc__
    assert doc is not None
    summary = doc.strip().splitlines()[0].replace("*obj*", "<em>obj</em>")
    assert summary in send, f"{summary!r} is not in the rendered Channel.send"
    # The "Raises:" block became the reference's exceptions table, each error a link to its entry.
    assert 'doc-section-title">Raises:' in send
    assert 'href="../errors/#ipckit.errors.SendTimeout"' in send


def test_reference_has_no_raw_sphinx_roles_or_unparsed_sections(site: Path) -> None:
    # docs/reference/griffe_roles.py turns :class:`X` into links, and a "Raises:" line that does
    # not start a section of its own (no blank line before it) renders as plain text: both would
    # show up in the HTML as these strings.
    bad = {}
    for html in sorted((site / "reference").rglob("index.html")):
        text = html.read_text()
        roles = re.findall(r":(?:class|func|meth|mod|data|attr|exc):<code>", text)
        raw = [m for m in re.findall(r"(?m)^.*\b(?:Raises|Args|Returns):\s*$", text) if "doc-section-title" not in m]
        if roles or raw:
            bad[str(html.relative_to(site))] = (roles[:3], raw[:3])
    assert not bad, bad
