"""Cut a call at a chosen point, as a signal handler's exception would (the interrupt proofs).

A :class:`Cutter` traces the code of the given source files and raises :class:`Cut` once, at the
*at*-th point where it stops: every bytecode instruction, or only the points where CPython runs a
pending signal handler (the instruction after a call, a function's start, a loop's back edge),
which is where a real ``KeyboardInterrupt`` can arrive.  A test runs a transfer once per point,
``at = 1, 2, ...``, until the cutter no longer fires, and checks after each cut that the channel
(or ring) is whole: nothing lost, duplicated or split.  Used by the ring kit's and the stream kit's
cut-everywhere tests.
"""

from __future__ import annotations

import dis
import sys
import types
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

__all__ = ["Cut", "Cutter", "handler_points"]

#: Where a pending signal's handler runs: the instruction after a call, a function's start, a loop's back edge.
_AFTER = frozenset({"CALL", "CALL_FUNCTION_EX"})
_AT = frozenset({"RESUME", "JUMP_BACKWARD"})
_points: dict[types.CodeType, frozenset[int]] = {}


def handler_points(code: types.CodeType) -> frozenset[int]:
    """The instruction offsets of *code* at which CPython may run a pending signal handler."""
    found = _points.get(code)
    if found is None:
        ins = list(dis.get_instructions(code))
        offsets = {x.offset for x in ins if x.opname in _AT}
        offsets |= {ins[j + 1].offset for j, x in enumerate(ins[:-1]) if x.opname in _AFTER}
        found = _points[code] = frozenset(offsets)
    return found


class Cut(Exception):
    """The exception raised at the chosen point (standing for a signal handler's)."""


class Cutter:
    """Raises :class:`Cut` at the *at*-th traced point in *files*, once.

    *handler_points_only*: count only the points where a signal handler can run (else every
    instruction); *skip*: names of functions never cut (code that cannot be made immune to an
    exception at its first instruction, such as a last release of descriptors).
    """

    def __init__(self, at: int, files: Iterable[str], *, handler_points_only: bool = False,
                 skip: Iterable[str] = ()) -> None:
        self.at = at
        self.count = 0
        self.fired = False
        self._files = frozenset(files)
        self._points_only = handler_points_only
        self._skip = frozenset(skip)

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and not self.fired and (
            not self._points_only or frame.f_lasti in handler_points(frame.f_code)
        ):
            self.count += 1
            if self.count == self.at:
                self.fired = True
                raise Cut(f"cut at point {self.at} ({frame.f_code.co_name}:{frame.f_lineno})")
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if self.fired or code.co_filename not in self._files or code.co_name in self._skip:
            return None
        frame.f_trace_opcodes = True
        return self._local

    def run(self, fn: Callable[[], Any]) -> Any:
        sys.settrace(self._global)
        try:
            return fn()
        finally:
            sys.settrace(None)
