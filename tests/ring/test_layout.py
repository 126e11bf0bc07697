"""The ring's layout is defined once per language: protocol.py for Python, RING_LAYOUT in
_ringfast.c for C, which reports it as ``_ringfast.LAYOUT``.  These tests compare the two, check
that the cursors refuse a C build with another layout, and pin the layout's own invariants."""

from __future__ import annotations

import struct

import pytest

from ipckit.backends.common.ring import buffer as R
from ipckit.backends.common.ring import cursor as RC
from ipckit.backends.common.ring import protocol as P

try:
    from ipckit.backends.common.ring import _ringfast
except ImportError:  # test_ringcursor.test_c_extension_is_in_use reports a missing build
    _ringfast = None  # type: ignore[assignment]

needs_c = pytest.mark.skipif(_ringfast is None, reason="the C cursor extension is not built")


@needs_c
def test_c_module_reports_the_python_layout() -> None:
    differences = P.layout_differences(_ringfast.LAYOUT)
    assert not differences, (
        "ipckit/backends/common/ring/_ringfast.c (RING_LAYOUT) and protocol.py define the ring "
        "differently -- change both, then rebuild (python setup.py build_ext --inplace):\n  "
        + "\n  ".join(differences)
    )


@needs_c
def test_c_layout_is_read_only() -> None:
    with pytest.raises(TypeError):
        _ringfast.LAYOUT["W_WPOS"] = 9  # type: ignore[index]
    with pytest.raises(TypeError):
        P.LAYOUT["W_WPOS"] = 9  # type: ignore[index]


def test_layout_differences_names_each_difference() -> None:
    theirs = dict(P.LAYOUT)
    assert P.layout_differences(theirs) == []
    theirs["W_RPOS"] = 24
    del theirs["PAD"]
    theirs["W_EXTRA"] = 3
    theirs["MSG"] = True  # equal to 1, but not an int from a C table
    assert P.layout_differences(theirs) == [
        "MSG: True, protocol.py has 1",
        "PAD: missing (protocol.py has 3)",
        "W_EXTRA: 3, unknown to protocol.py",
        "W_RPOS: 24, protocol.py has 16",
    ]
    assert P.layout_differences(None) == ["not a mapping of names to values: None"]


@needs_c
@pytest.mark.parametrize("layout", [None, {**P.LAYOUT, "W_WPOS": 9}], ids=["no-layout", "other-layout"])
def test_cursor_refuses_a_c_build_with_another_layout(monkeypatch: pytest.MonkeyPatch, layout: object) -> None:
    """A stale build would read and write the wrong words: the pure-Python cursors run instead."""
    monkeypatch.delenv("IPCKIT_PURE_PYTHON", raising=False)
    if layout is None:
        monkeypatch.delattr(_ringfast, "LAYOUT")
    else:
        monkeypatch.setattr(_ringfast, "LAYOUT", layout)
    assert RC._load() == (RC.PyWriter, RC.PyReader, "python")
    monkeypatch.undo()
    monkeypatch.delenv("IPCKIT_PURE_PYTHON", raising=False)
    assert RC._load() == (_ringfast.Writer, _ringfast.Reader, "c")


def test_layout_invariants() -> None:
    """What buffer.py's docstring and the cursors rely on, checked on the one definition."""
    words = {name: value for name, value in P.LAYOUT.items() if name.startswith("W_")}
    assert len(set(words.values())) == len(words), "two control words share an index"
    assert all(0 <= w < P.CONTROL_WORDS for w in words.values())
    line = {name: w * 8 // P.ALIGN for name, w in words.items()}
    # The counters each own a cache line; the flags and the constants share the read-mostly first one.
    assert line["W_WPOS"] != line["W_RPOS"] and 0 not in (line["W_WPOS"], line["W_RPOS"])
    assert [n for n, ln in line.items() if ln == line["W_WPOS"]] == ["W_WPOS"]
    assert [n for n, ln in line.items() if ln == line["W_RPOS"]] == ["W_RPOS"]
    assert {n for n, ln in line.items() if ln == 0} == set(words) - {"W_WPOS", "W_RPOS"}
    # Payloads start at 48 (mod 64) of a page-aligned mapping (the memcpy distance argument).
    assert (P.CONTROL_SIZE + P.HEADER_SIZE) % P.ALIGN == 48
    assert P.CONTROL_SIZE % 8 == 0 and P.ALIGN & (P.ALIGN - 1) == 0
    assert P.MIN_CAPACITY % P.ALIGN == 0 and P.MAX_CAPACITY % P.ALIGN == 0
    assert struct.calcsize("<IIQ") == P.HEADER_SIZE == R._HDR.size
    assert sorted((P.MSG, P.CONT, P.PAD, P.ABORT)) == [1, 2, 3, 4]  # 0 stays invalid
    assert P.MAGIC.to_bytes(8, "little") == b"IPCKRNG1"
    assert [P.record_size(n) for n in (0, 48, 49, 64)] == [64, 64, 128, 128]


def test_buffer_and_cursor_take_the_layout_from_protocol() -> None:
    assert (R.MAGIC, R.VERSION, R.CONTROL_SIZE, R.MIN_CAPACITY, R.MAX_CAPACITY) == (
        P.MAGIC, P.VERSION, P.CONTROL_SIZE, P.MIN_CAPACITY, P.MAX_CAPACITY)
    assert (R.WRITE_POS, R.WRITER_CLOSED, R._W_RSLEEP) == (P.W_WPOS, P.W_WCLOSED, P.W_RSLEEP)
    assert (RC._CONTROL_SIZE, RC._COUNTER_MAX, RC._W_WPOS, RC._W_RPOS) == (
        P.CONTROL_SIZE, P.COUNTER_MAX, P.W_WPOS, P.W_RPOS)
