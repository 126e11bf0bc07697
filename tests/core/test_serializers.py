"""Serializers on their own (ipckit.serializers) and the trust rule.

The rule is section 5 of docs/contract.md; the failure rows Ser-1…Ser-5 are in docs/design.md.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import ipckit
from ipckit.channel import resolve_serializer
from ipckit.errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    SerializerUnavailable,
    UnsafeSerializer,
)
from ipckit.options import Options
from ipckit.serializers import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    RawSerializer,
    get_serializer,
    parts_nbytes,
    register_serializer,
    serializer_names,
)


def _join(parts: list[object]) -> memoryview:
    return memoryview(b"".join(memoryview(p).cast("B") for p in parts))  # type: ignore[arg-type]


def test_builtin_names_and_trust() -> None:
    assert {"pickle", "msgpack", "json", "raw"} <= set(serializer_names())
    assert get_serializer("pickle").trusted is False
    for name in ("msgpack", "json", "raw"):
        assert get_serializer(name).trusted is True


def test_pickle_in_band_for_small_objects() -> None:
    s = PickleSerializer()
    parts = s.dumps_parts({"a": np.arange(10)})
    assert len(parts) == 1
    got = s.loads(_join(parts))
    np.testing.assert_array_equal(got["a"], np.arange(10))


def test_pickle_out_of_band_numpy() -> None:
    s = PickleSerializer()
    arr = np.arange(100_000, dtype=np.float64).reshape(1000, 100)
    parts = s.dumps_parts({"x": arr, "y": [1, 2]})
    assert len(parts) > 2  # header, pickle stream, the array's buffer
    assert any(memoryview(p).nbytes == arr.nbytes for p in parts)
    assert parts_nbytes(parts) == len(_join(parts))
    got = s.loads(_join(parts))
    np.testing.assert_array_equal(got["x"], arr)
    assert got["y"] == [1, 2]


def test_pickle_oob_bad_lengths_are_decode_errors() -> None:
    s = PickleSerializer()
    data = bytes(_join(s.dumps_parts(np.zeros(100_000))))
    with pytest.raises(DecodeError):
        s.loads(memoryview(data[:-1]))
    forged = b"IKOB" + (2**31).to_bytes(4, "little") + (0).to_bytes(8, "little")
    with pytest.raises(DecodeError):
        s.loads(memoryview(forged))


def test_plain_pickle_still_loads() -> None:
    assert PickleSerializer().loads(memoryview(pickle.dumps({1: 2}, protocol=5))) == {1: 2}


def test_msgpack_roundtrip_and_bin() -> None:
    s = MsgpackSerializer()
    obj = {"s": "✓", "b": b"\x00", "l": [1, 2.5, None, True]}
    assert s.loads(memoryview(s.dumps(obj))) == obj


@pytest.mark.parametrize("bomb", [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 billion elements
    b"\xdf\xff\xff\xff\xff",  # map32 of 4 billion entries
    b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB
])
def test_msgpack_bomb_fails_fast(bomb: bytes) -> None:
    with pytest.raises(ValueError):
        MsgpackSerializer().loads(memoryview(bomb))


def test_msgpack_non_string_keys_refused() -> None:
    s = MsgpackSerializer()
    with pytest.raises(ValueError):
        s.loads(memoryview(s.dumps({1: 2})))


def test_json_refuses_nan_both_ways() -> None:
    s = JsonSerializer()
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            s.dumps(value)
    for text in (b"NaN", b"Infinity", b"[-Infinity]"):
        with pytest.raises(ValueError):
            s.loads(memoryview(text))
    assert s.loads(memoryview(s.dumps({"a": [1, "x"]}))) == {"a": [1, "x"]}


def test_raw_only_bytes() -> None:
    s = RawSerializer()
    with pytest.raises(TypeError):
        s.dumps("text")
    with pytest.raises(TypeError):
        s.dumps(123)
    assert s.dumps(b"x") == b"x"
    assert s.loads(memoryview(b"abc")) == b"abc"


def test_raw_through_a_channel_is_encode_error() -> None:
    a, b = ipckit.pair("memory://", serializer="raw")
    try:
        with pytest.raises(EncodeError):
            a.send("text")
        a.send(bytearray(b"ok"))
        assert b.recv(timeout=1) == b"ok"
    finally:
        a.close()
        b.close()


def test_unknown_serializer() -> None:
    with pytest.raises(SerializerUnavailable, match="registered"):
        get_serializer("yaml")
    with pytest.raises(ConfigurationError):
        get_serializer(42)  # type: ignore[arg-type]


class _Upper:
    name = "upper"
    trusted = True

    def dumps(self, obj: object) -> bytes:
        return str(obj).upper().encode()

    def loads(self, data: memoryview) -> str:
        return bytes(data).decode()


def test_register_user_serializer() -> None:
    register_serializer("test-upper", _Upper(), replace=True)
    with pytest.raises(ConfigurationError):
        register_serializer("test-upper", _Upper)
    a, b = ipckit.pair("memory://", serializer="test-upper")
    try:
        a.send("hello")
        assert b.recv(timeout=1) == "HELLO"
    finally:
        a.close()
        b.close()
    # an instance works directly too
    a, b = ipckit.pair("memory://", serializer=_Upper())
    try:
        a.send("x")
        assert b.recv(timeout=1) == "X"
    finally:
        a.close()
        b.close()


def test_missing_dependency_is_serializer_unavailable() -> None:
    def factory() -> object:
        import ipckit_no_such_module  # type: ignore[import-not-found]  # noqa: F401

        raise AssertionError("unreachable")

    register_serializer("test-missing", factory, replace=True)  # type: ignore[arg-type]
    with pytest.raises(SerializerUnavailable, match="pip install"):
        get_serializer("test-missing")


def test_trust_rule() -> None:
    untrusted = Options()
    assert resolve_serializer(untrusted, peer_trusted=False).name == "msgpack"
    assert resolve_serializer(untrusted, peer_trusted=True).name == "pickle"
    with pytest.raises(UnsafeSerializer):
        resolve_serializer(Options(serializer="pickle"), peer_trusted=False)
    assert resolve_serializer(Options(serializer="pickle", trust=True), peer_trusted=False).name == "pickle"
    assert resolve_serializer(Options(trust=True), peer_trusted=False).name == "pickle"


def test_serializer_mismatch_is_decode_error() -> None:
    a, b = ipckit.pair("memory://", serializer="pickle")
    try:
        a.send({"x": 1})
        data = b.recv_bytes(timeout=1)
        a.send_bytes(data)
    finally:
        a.close()
    c, d = ipckit.pair("memory://", serializer="json")
    try:
        c.send_bytes(data)
        with pytest.raises(DecodeError):
            d.recv(timeout=1)
    finally:
        b.close()
        c.close()
        d.close()
