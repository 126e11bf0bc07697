# Types of the C fast path (_ringfast.c); the pure-Python reference is cursor.PyWriter/PyReader.
from collections.abc import Callable, Mapping
from typing import Any

# The module's own copy of the ring layout (names as in protocol.LAYOUT); cursor.py uses the
# module only when the two are equal.
LAYOUT: Mapping[str, int]

class _Cursor:
    capacity: int
    max_message_size: int
    own: int
    peer: int
    limit: int
    fast_max: int
    budget: int
    hold: int
    lock: Any
    wake: Callable[[], object] | None
    @property
    def attached(self) -> bool: ...
    def __init__(self, buffer: Any, offset: int, capacity: int, max_message_size: int) -> None: ...
    def detach(self) -> None: ...

class Writer(_Cursor):
    def send(self, data: Any, /) -> bool: ...
    def send_held(self, data: Any, /) -> bool: ...

class Reader(_Cursor):
    def recv(self) -> bytes | None: ...
    def recv_held(self) -> bytes | None: ...
