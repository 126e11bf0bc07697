"""Serializers: pickle (protocol 5), msgpack, json, raw, and a registry for your own.

A serializer is any object with ``name``, ``trusted``, ``dumps(obj)`` and ``loads(view)``.
``trusted`` is True when ``loads`` is safe on bytes from a peer you do not trust (msgpack, json,
raw); pickle is not (unpickling runs code), so channels refuse it unless the peer is proven to be
the same user or authenticated (the trust rule, docs/contract.md section 5).

A serializer may also offer ``dumps_parts(obj) -> list[buffer]``: the channel then sends the parts
as one message without joining them first (pickle uses it for out-of-band buffers, so a large
numpy array is copied once per side); and declare ``loads_any_buffer = True`` when ``loads`` takes
``bytes`` as well as a memoryview.  A channel encodes and decodes through :func:`encoder` and
:func:`decoder`: one call per message each way.
"""

from __future__ import annotations

import pickle as _pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from .errors import ConfigurationError, DecodeError, SerializerUnavailable

__all__ = [
    "Serializer",
    "PickleSerializer",
    "MsgpackSerializer",
    "JsonSerializer",
    "RawSerializer",
    "register_serializer",
    "decoder",
    "encoder",
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
_OOB_FIRST = _OOB_MAGIC[0]
_OOB_HEAD = struct.Struct("<4sIQ")
_U64 = struct.Struct("<Q")
# Buffers below this size are cheaper to copy into the pickle stream than to send separately.
_OOB_MIN = 64 * 1024


class PickleSerializer:
    """pickle protocol 5 with out-of-band buffers for large ``PickleBuffer``-aware objects (numpy)."""

    name = "pickle"
    trusted = False
    loads_any_buffer = True  # loads() takes bytes as well as a memoryview (see decoder())

    def dumps(self, obj: Any) -> bytes:
        return _pickle.dumps(obj, protocol=5)

    def dumps_parts(self, obj: Any) -> list[Buffer]:
        data = self.encode(obj)
        return data if isinstance(data, list) else [data]

    def encode(self, obj: Any) -> Buffer | list[Buffer]:
        """What a channel sends: one ``bytes`` (most objects), or the parts of a message with
        out-of-band buffers (see :func:`encoder`)."""
        # A C-level callback (list.append) costs nothing when there is no buffer, the common case;
        # a Python one (with the in-band threshold) runs only for objects that have small buffers.
        found: list[_pickle.PickleBuffer] = []
        data = _pickle.dumps(obj, protocol=5, buffer_callback=found.append)
        if not found:
            return data
        if any(b.raw().nbytes < _OOB_MIN for b in found):
            return self._encode_thresholded(obj)
        return self._parts(data, found)

    def _encode_thresholded(self, obj: Any) -> Buffer | list[Buffer]:
        buffers: list[_pickle.PickleBuffer] = []

        def keep(buf: _pickle.PickleBuffer) -> bool:
            # Returning a true value tells pickle to serialise the buffer in-band.
            if buf.raw().nbytes < _OOB_MIN:
                return True
            buffers.append(buf)
            return False

        data = _pickle.dumps(obj, protocol=5, buffer_callback=keep)
        return self._parts(data, buffers) if buffers else data

    @staticmethod
    def _parts(data: bytes, buffers: list[_pickle.PickleBuffer]) -> list[Buffer]:
        views = [b.raw() for b in buffers]
        head = bytearray(_OOB_HEAD.pack(_OOB_MAGIC, len(views), len(data)))
        for v in views:
            head += _U64.pack(v.nbytes)
        return [head, data, *views]

    def loads(self, data: memoryview) -> Any:
        # (The first byte tells them apart without slicing: a pickle starts with 0x80.)
        if len(data) >= 4 and data[0] == _OOB_FIRST and data[:4] == _OOB_MAGIC:
            data = memoryview(data)  # (given bytes: the buffers below are views, never copies)
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
    loads_any_buffer = True  # loads() takes bytes as well as a memoryview (see decoder())

    def __init__(self, max_buffer_size: int = 0) -> None:
        import msgpack

        self._packb: Callable[..., bytes] = msgpack.packb
        self._unpackb: Callable[..., Any] = msgpack.unpackb
        self._max = max_buffer_size

    def dumps(self, obj: Any) -> bytes:
        return self._packb(obj, use_bin_type=True)

    def loads(self, data: memoryview) -> Any:
        # unpackb bounds every container and string length by len(data) itself, so a forged
        # "4 billion elements" header fails fast instead of allocating (msgpack >= 1.0).  An
        # extension type is refused (the channel's DecodeError): without the hook unpackb hands
        # the peer's ExtType objects to the application, which the types above do not include.
        # (msgpack's own timestamp type, -1, never reaches the hook: it decodes to a Timestamp.)
        return self._unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext)


def _finite(text: str) -> float:
    # "1e999" is valid JSON syntax but float() makes it inf, which the refusal of Infinity covers.
    value = float(text)
    if value - value != 0.0:
        raise ValueError(f"{text[:40]} is out of the range of a float (Infinity is not valid JSON)")
    return value


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} ({len(data)} bytes): ipckit's msgpack carries no extension types")


class JsonSerializer:
    """JSON (UTF-8); NaN and Infinity are refused both ways."""

    name = "json"
    trusted = True
    loads_any_buffer = True  # loads() takes bytes as well as a memoryview (see decoder())

    def __init__(self) -> None:
        import json  # here, not at the top: `import ipckit` stays cheap for those who never use JSON

        self._dumps: Callable[..., str] = json.dumps
        self._loads: Callable[..., Any] = json.loads

    def dumps(self, obj: Any) -> bytes:
        return self._dumps(obj, allow_nan=False, separators=(",", ":")).encode()

    def loads(self, data: memoryview) -> Any:
        def refuse(value: str) -> Any:
            raise ValueError(f"{value} is not valid JSON")

        return self._loads(bytes(data), parse_constant=refuse, parse_float=_finite)


class RawSerializer:
    """Bytes only: ``send`` takes any bytes-like object, ``recv`` returns ``bytes``."""

    name = "raw"
    trusted = True
    loads_any_buffer = True  # loads() takes bytes as well as a memoryview (see decoder())

    def dumps(self, obj: Any) -> Buffer:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return obj
        raise TypeError(f"the raw serializer sends bytes-like objects only, not {type(obj).__name__}; "
                        "use serializer='msgpack' or 'pickle' for other objects")

    def loads(self, data: memoryview) -> bytes:
        return bytes(data)  # (the very object when it is bytes already: no copy)


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


def encoder(ser: Serializer) -> Callable[[Any], Any]:
    """The one call a channel's ``send`` makes to encode an object: it returns one bytes-like
    object, or a ``list`` of parts (``dumps_parts``) for a message of several buffers.

    The built-in pickle serializer's own ``encode`` returns ``bytes`` directly for the common case,
    so a small object costs the serializer's time and one call (issue 11: the object path is the
    bytes path).
    """
    fast = getattr(ser, "encode", None)
    if fast is not None and isinstance(ser, PickleSerializer):
        return cast("Callable[[Any], Any]", fast)
    parts = getattr(ser, "dumps_parts", None)
    if parts is None:
        return ser.dumps

    def encode(obj: Any) -> Any:
        got = parts(obj)
        return got[0] if len(got) == 1 else list(got)

    return encode


def decoder(ser: Serializer) -> Callable[[Any], Any]:
    """The one call a channel's ``recv`` makes to decode a message, given what the backend
    received (``bytes``, ``bytearray`` or a ``memoryview``).  A serializer whose ``loads`` declares
    ``loads_any_buffer = True`` gets it as it is (no view made per message); others get the
    ``memoryview`` the protocol promises them."""
    loads = ser.loads
    if getattr(ser, "loads_any_buffer", False) is True:
        return loads

    def decode(data: Any) -> Any:
        return loads(data if isinstance(data, memoryview) else memoryview(data))

    return decode
