"""pytest plugin for ipckit's own suite: the figures of the reliability report.

CI sets ``IPCKIT_RELIABILITY_REPORT=<path>`` for its runs; at the end of each run this plugin merges
what the run measured into that JSON file (``reliability-report.json``) and prints the report's
one-line summary.  Without the variable nothing is written: the figures are still computed (a test
that checks them still fails), they are just not kept.

What goes into the report:

* **sections written by tests** through the session fixture ``reliability``:
  ``reliability.add(section, subject, **figures)`` stores one row (``subject`` is the backend,
  e.g. ``"shm"``, or another name the section uses), ``reliability.summary(section, text)`` the
  section's fragment of the one-line summary.  A section is replaced as a whole by the next run
  that writes it; sections this run did not touch are kept from earlier runs (so the suite run and
  CI's proof stage build one report).
* **the fault matrix** and **the security checklist**, from test outcomes: every test marked
  ``@pytest.mark.fs("FS01", ...)`` or ``@pytest.mark.security("S4", ...)`` (or
  matched by a pattern that :data:`FS_PATTERNS` registers, for the shipped contract's tests, which
  cannot carry our marker) counts as one case of each scenario it names, for the backend it ran on
  (:func:`subject_of`).

Size: the proof tests run small by default and at the report's full size under ``IPCKIT_PROOF=1``
(CI's proof stage): :func:`scaled` picks the number.  A small run exercises the same code and
checks, so the ordinary suite still catches a regression; only the full run's figures are quoted.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "IPCKIT_RELIABILITY_REPORT"
PROOF_ENV = "IPCKIT_PROOF"

#: Order of the fragments in the one-line summary (sections not listed follow, by name).
SUMMARY_ORDER = ["fault_matrix", "detection", "timeouts", "load", "lossy", "fuzz", "exhaustion",
                 "leaks", "security", "orphans"]

#: Scenario -> ``fnmatch`` patterns on test names (``item.originalname``, e.g. ``"test_sigkill_*"``)
#: of tests that prove it and cannot be marked (the shipped contract's rows).  Filled by
#: tests/reliability/scenarios.py through :func:`register_patterns`.
FS_PATTERNS: dict[str, list[str]] = {}


def register_patterns(patterns: dict[str, list[str]]) -> None:
    for fs, pats in patterns.items():
        FS_PATTERNS.setdefault(fs, []).extend(pats)


def proof() -> bool:
    """True in CI's proof stage (``IPCKIT_PROOF=1``): the report's full sizes."""
    return os.environ.get(PROOF_ENV, "") == "1"


def scaled(small: int, full: int) -> int:
    """*full* in the proof stage, *small* otherwise."""
    return full if proof() else small


#: For the proof stage's files (timing, load, exhaustion, orphans): minutes each even small, so the
#: ordinary suite -- the README's command, which CI runs twice -- leaves them to CI's proof stage,
#: where they run once at full size.  ``IPCKIT_PROOF=1 python -m pytest tests/reliability`` runs
#: them anywhere.
proof_only = pytest.mark.skipif(not proof(), reason="a reliability proof: CI's proof stage runs it at full size "
                                                    "(IPCKIT_PROOF=1 python -m pytest tests/reliability)")


def subject_of(item: pytest.Item) -> str:
    """The backend a test ran on: the contract class's ``scheme`` (with the class name when one
    scheme has several classes, e.g. unix stream and seqpacket), else a ``scheme``/``backend``
    parameter, else ``"-"``."""
    cls = getattr(item, "cls", None)
    scheme = getattr(cls, "scheme", "") if cls is not None else ""
    if scheme:
        variant = getattr(cls, "report_subject", "")
        return str(variant or scheme)
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for name in ("scheme", "backend", "url"):
            if name in callspec.params:
                return str(callspec.params[name]).partition("://")[0]
    for kind in ("fs", "security"):
        marker = item.get_closest_marker(kind)
        if marker is not None and "subject" in marker.kwargs:
            return str(marker.kwargs["subject"])
    # A module-level test of one backend's file (tests/backends/test_sysv_mq.py -> "sysv+mq").
    stem = Path(str(getattr(item, "path", ""))).stem
    if stem.startswith("test_"):
        from ipckit.registry import is_registered

        guess = stem[len("test_"):].replace("_", "+")
        if is_registered(guess):
            return guess
    return "-"


@dataclass
class Recorder:
    """What tests of this run recorded (the ``reliability`` fixture)."""

    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (scenario, subject) -> list of (nodeid, outcome, seconds)
    cases: dict[tuple[str, str], list[tuple[str, str, float]]] = field(default_factory=dict)

    @property
    def proof(self) -> bool:
        return proof()

    def add(self, section: str, subject: str, **figures: Any) -> None:
        sec = self.sections.setdefault(section, {"rows": {}, "summary": None})
        sec["rows"].setdefault(subject, []).append(figures)

    def summary(self, section: str, text: str) -> None:
        self.sections.setdefault(section, {"rows": {}, "summary": None})["summary"] = text


_recorder = Recorder()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fs(*ids, subject=None): fault scenarios (FS01..FS18) of the "
                                       "reliability matrix that this test proves")
    config.addinivalue_line("markers", "security(*ids, subject=None): items (S1..S20) of the security "
                                       "checklist that this test proves")


@pytest.fixture(scope="session")
def reliability() -> Iterator[Recorder]:
    yield _recorder


def _scenarios_of(item: pytest.Item) -> list[str]:
    ids: list[str] = []
    for kind in ("fs", "security"):
        for marker in item.iter_markers(kind):
            ids.extend(str(a) for a in marker.args)
    name = getattr(item, "originalname", None) or item.name
    for fs, pats in FS_PATTERNS.items():
        if any(fnmatch.fnmatchcase(name, p) for p in pats):
            ids.append(fs)
    return sorted(set(ids))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    ids = _scenarios_of(item)
    if not ids:
        return
    # One case per test: its call's outcome, or the setup/teardown failure that replaced it.
    if rep.when == "call" or (rep.when == "setup" and not rep.passed) or (rep.when == "teardown" and rep.failed):
        # A strict xfail is a known failure: counted, never as passed (the report must not read
        # 100 % while a known bug is pinned).
        if hasattr(rep, "wasxfail"):
            result = "xfailed"
        else:
            result = "skipped" if rep.skipped else ("passed" if rep.passed else "failed")
        subject = subject_of(item)
        for fs in ids:
            rows = _recorder.cases.setdefault((fs, subject), [])
            if rep.when == "teardown" and rows and rows[-1][0] == item.nodeid:
                rows[-1] = (item.nodeid, "failed", rows[-1][2])
            else:
                rows.append((item.nodeid, result, rep.duration))


def _matrix(prefix: str, title: str, what: str) -> dict[str, Any] | None:
    """The cases of the scenarios whose id starts with *prefix* ("FS": faults, "S": security)."""
    mine = {k: v for k, v in _recorder.cases.items() if k[0].startswith(prefix)}
    if not mine:
        return None
    rows: dict[str, list[dict[str, Any]]] = {}
    passed = total = 0
    slowest = ("", 0.0)
    for (fs, subject), cases in sorted(mine.items()):
        counted = [c for c in cases if c[1] != "skipped"]
        ok = sum(1 for c in counted if c[1] == "passed")
        passed += ok
        total += len(counted)
        for nodeid, _, secs in counted:
            if secs > slowest[1]:
                slowest = (nodeid, secs)
        rows.setdefault(subject, []).append({"scenario": fs, "passed": ok, "total": len(counted),
                                             "skipped": len(cases) - len(counted),
                                             "failed": [c[0] for c in counted if c[1] == "failed"],
                                             "known_failures": [c[0] for c in counted if c[1] == "xfailed"]})
    scenarios = sorted({fs for fs, _ in mine})
    subjects = sorted({s for _, s in mine})
    known = sum(len(r["known_failures"]) for rs in rows.values() for r in rs)
    return {"rows": rows, "passed": passed, "total": total, "scenarios": scenarios,
            "slowest": {"test": slowest[0], "seconds": round(slowest[1], 3)},
            "known_failures": known,
            "summary": (f"{title} {passed}/{total} ({len(scenarios)} {what} x {len(subjects)} "
                        f"backends{f'; {known} known failures pinned by strict xfails' if known else ''}), "
                        f"slowest {slowest[1]:.1f} s")}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def summary_line(report: dict[str, Any]) -> str:
    sections = report.get("sections", {})
    order = [s for s in SUMMARY_ORDER if s in sections] + sorted(s for s in sections if s not in SUMMARY_ORDER)
    parts = [sections[s]["summary"] for s in order if sections[s].get("summary")]
    machine = report.get("machine", {})
    head = f"ipckit reliability ({machine.get('cpus', '?')} vCPU, Linux {machine.get('kernel', '?')})"
    return head + ": " + "; ".join(parts) if parts else head + ": nothing measured"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    sections = dict(_recorder.sections)
    # The matrices come from the whole suite's run; the proof stage (tests/reliability only) would
    # replace them with its few marked tests.
    for name, prefix, title, what in (("fault_matrix", "FS", "fault matrix", "scenarios"),
                                      ("security", "S", "security checklist", "items")):
        matrix = None if proof() else _matrix(prefix, title, what)
        if matrix is not None:
            sections[name] = matrix
    if not sections:
        return
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        report = {}
    run = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _git_commit(),
           "proof": proof(), "exitstatus": int(exitstatus), "args": list(session.config.invocation_params.args)}
    for name, sec in sections.items():
        report.setdefault("sections", {})[name] = {**sec, "run": run}
    report["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release().split("-")[0],
                         "python": platform.python_version(), "platform": platform.platform()}
    report["summary"] = summary_line(report)
    Path(path).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(report["summary"])
