"""Serializers: pickle (protocol 5), msgpack, json, raw, and a registry for your own.

A serializer is any object with ``name``, ``trusted``, ``dumps(obj)`` and ``loads(view)``.
``trusted`` is True when ``loads`` is safe on bytes from a peer you do not trust (msgpack, json,
raw); pickle is not (unpickling runs code), so channels refuse it unless the peer is proven to be
the same user or authenticated (the trust rule, docs/contract.md section 5).

A serializer may also offer ``dumps_parts(obj) -> list[buffer]``: the channel then sends the parts
as one message without joining them first (pickle uses it for out-of-band buffers, so a large
numpy array is copied once per side).
"""

from __future__ import annotations

import json as _json
import pickle as _pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, DecodeError, SerializerUnavailable

__all__ = [
    "Serializer",
    "PickleSerializer",
    "MsgpackSerializer",
    "JsonSerializer",
    "RawSerializer",
    "register_serializer",
    "get_serializer",
    "serializer_names",
]

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class Serializer(Protocol):
    """What a channel needs from a serializer."""

    name: str
    trusted: bool

    def dumps(self, obj: Any) -> Any:
        """Encode *obj* into a bytes-like object (any C-contiguous buffer)."""
        ...

    def loads(self, data: memoryview) -> Any:
        """Decode one message; raise any exception on bad input (the channel wraps it in DecodeError)."""
        ...


# Out-of-band layout: b"IKOB" | u32 nbuf | u64 pickle_len | nbuf * u64 buf_len | pickle | buffers.
# A plain protocol-5 pickle starts with b"\x80\x05", so the two are told apart by the first byte.
_OOB_MAGIC = b"IKOB"
_OOB_HEAD = struct.Struct("<4sIQ")
_U64 = struct.Struct("<Q")
# Buffers below this size are cheaper to copy into the pickle stream than to send separately.
_OOB_MIN = 64 * 1024


class PickleSerializer:
    """pickle protocol 5 with out-of-band buffers for large ``PickleBuffer``-aware objects (numpy)."""

    name = "pickle"
    trusted = False

    def dumps(self, obj: Any) -> bytes:
        return _pickle.dumps(obj, protocol=5)

    def dumps_parts(self, obj: Any) -> list[Buffer]:
        buffers: list[_pickle.PickleBuffer] = []

        def keep(buf: _pickle.PickleBuffer) -> bool:
            # Returning a true value tells pickle to serialise the buffer in-band.
            raw = buf.raw()
            if raw.nbytes < _OOB_MIN:
                return True
            buffers.append(buf)
            return False

        data = _pickle.dumps(obj, protocol=5, buffer_callback=keep)
        if not buffers:
            return [data]
        views = [b.raw() for b in buffers]
        head = bytearray(_OOB_HEAD.pack(_OOB_MAGIC, len(views), len(data)))
        for v in views:
            head += _U64.pack(v.nbytes)
        return [head, data, *views]

    def loads(self, data: memoryview) -> Any:
        if data[:4] == _OOB_MAGIC:
            _magic, nbuf, plen = _OOB_HEAD.unpack_from(data, 0)
            pos = _OOB_HEAD.size
            if nbuf > (len(data) - pos) // 8:
                raise DecodeError("out-of-band header claims more buffers than the message holds")
            lengths = [_U64.unpack_from(data, pos + 8 * i)[0] for i in range(nbuf)]
            pos += 8 * nbuf
            if pos + plen + sum(lengths) != len(data):
                raise DecodeError("out-of-band lengths do not add up to the message size")
            payload = data[pos : pos + plen]
            pos += plen
            bufs = []
            for n in lengths:
                bufs.append(data[pos : pos + n])
                pos += n
            return _pickle.loads(payload, buffers=bufs)
        return _pickle.loads(data)


class MsgpackSerializer:
    """msgpack; safe on untrusted input (no ext types, bounded buffers, string map keys only)."""

    name = "msgpack"
    trusted = True

    def __init__(self, max_buffer_size: int = 0) -> None:
        import msgpack

        self._packb: Callable[..., bytes] = msgpack.packb
        self._unpackb: Callable[..., Any] = msgpack.unpackb
        self._max = max_buffer_size

    def dumps(self, obj: Any) -> bytes:
        return self._packb(obj, use_bin_type=True)

    def loads(self, data: memoryview) -> Any:
        # unpackb bounds every container and string length by len(data) itself, so a forged
        # "4 billion elements" header fails fast instead of allocating (msgpack >= 1.0).
        return self._unpackb(data, raw=False, strict_map_key=True)


class JsonSerializer:
    """JSON (UTF-8); NaN and Infinity are refused both ways."""

    name = "json"
    trusted = True

    def dumps(self, obj: Any) -> bytes:
        return _json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()

    def loads(self, data: memoryview) -> Any:
        def refuse(value: str) -> Any:
            raise ValueError(f"{value} is not valid JSON")

        return _json.loads(bytes(data), parse_constant=refuse)


class RawSerializer:
    """Bytes only: ``send`` takes any bytes-like object, ``recv`` returns ``bytes``."""

    name = "raw"
    trusted = True

    def dumps(self, obj: Any) -> Buffer:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return obj
        raise TypeError(f"the raw serializer sends bytes-like objects only, not {type(obj).__name__}; "
                        "use serializer='msgpack' or 'pickle' for other objects")

    def loads(self, data: memoryview) -> bytes:
        return bytes(data)


_FACTORIES: dict[str, Callable[[], Serializer]] = {
    "pickle": PickleSerializer,
    "msgpack": MsgpackSerializer,
    "json": JsonSerializer,
    "raw": RawSerializer,
}
_entry_points_loaded = False


def register_serializer(name: str, factory: Callable[[], Serializer] | Serializer, *, replace: bool = False) -> None:
    """Make a serializer available by *name* (``serializer="name"``).

    *factory* is a serializer instance or a zero-argument callable returning one.
    Raises:
        ConfigurationError: *name* is taken and ``replace`` is false.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError("serializer name must be a non-empty str")
    if name in _FACTORIES and not replace:
        raise ConfigurationError(f"serializer {name!r} is already registered; pass replace=True to override")
    if isinstance(factory, Serializer) and not isinstance(factory, type):
        instance = factory
        _FACTORIES[name] = lambda: instance
    else:
        _FACTORIES[name] = factory


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="ipckit.serializers"):
        if ep.name not in _FACTORIES:
            _FACTORIES[ep.name] = lambda ep=ep: ep.load()()  # type: ignore[misc]


def serializer_names() -> list[str]:
    """Names of all registered serializers."""
    _load_entry_points()
    return sorted(_FACTORIES)


def get_serializer(spec: str | Serializer) -> Serializer:
    """Resolve a serializer name (or pass an instance through).

    Raises:
        SerializerUnavailable: unknown name, or its dependency is missing.
        ConfigurationError: *spec* is neither a name nor a serializer object.
    """
    if not isinstance(spec, str):
        if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
            return spec
        raise ConfigurationError(
            f"serializer must be a name ({', '.join(serializer_names())}) or an object with dumps/loads, "
            f"got {type(spec).__name__}"
        )
    factory = _FACTORIES.get(spec)
    if factory is None:
        _load_entry_points()
        factory = _FACTORIES.get(spec)
    if factory is None:
        raise SerializerUnavailable(f"unknown serializer {spec!r}; registered: {', '.join(serializer_names())}")
    try:
        return factory()
    except ImportError as exc:
        raise SerializerUnavailable(
            f"serializer {spec!r} needs a missing package: {exc}; pip install {exc.name}"
        ) from exc


def parts_nbytes(parts: Sequence[Buffer]) -> int:
    """Total byte length of a list of buffers."""
    total = 0
    for p in parts:
        total += p.nbytes if isinstance(p, memoryview) else len(p)
    return total
