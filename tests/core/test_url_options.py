"""URL parsing and option handling (ipckit.url, ipckit.options.parse_options)."""

from __future__ import annotations

import pytest

import ipckit
from ipckit.backends.pipe import PipeOptions
from ipckit.errors import ConfigurationError, InvalidAddress
from ipckit.options import DEFAULT_MAX_MESSAGE_SIZE, Options, parse_options, parse_size
from ipckit.url import parse_url


@pytest.mark.parametrize("url,scheme,address,options", [
    ("pipe://", "pipe", "", {}),
    ("pipe", "pipe", "", {}),
    ("shm", "shm", "", {}),
    ("SHM://jobs", "shm", "jobs", {}),
    ("shm://jobs?capacity=8MiB&serializer=msgpack", "shm", "jobs", {"capacity": "8MiB", "serializer": "msgpack"}),
    ("unix:///run/app.sock", "unix", "/run/app.sock", {}),
    ("unix://@abstract", "unix", "@abstract", {}),
    ("zmq+tcp://127.0.0.1:5555", "zmq+tcp", "127.0.0.1:5555", {}),
    ("fifo:///tmp/a%20b", "fifo", "/tmp/a b", {}),
])
def test_parse_url(url: str, scheme: str, address: str, options: dict[str, str]) -> None:
    ep = parse_url(url)
    assert (ep.scheme, ep.address, ep.options) == (scheme, address, options)


@pytest.mark.parametrize("url", ["", "://x", "1abc://", "pipe://\x00", "shm://x?a=1&a=2", "shm://x?novalue"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_url(url)


def test_url_must_be_str() -> None:
    with pytest.raises(InvalidAddress):
        parse_url(b"pipe://")  # type: ignore[arg-type]


@pytest.mark.parametrize("text,value", [("4096", 4096), ("64k", 65536), ("64KiB", 65536), ("64kb", 64000),
                                        ("8MiB", 8 * 1024**2), ("8mb", 8_000_000), ("1G", 1024**3),
                                        ("1 GiB", 1024**3), (12, 12)])
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("bad", ["", "8 MiBs", "-1", "1.5MiB", "lots"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_parse_size_rejects_bool() -> None:
    with pytest.raises(ValueError):
        parse_size(True)


def test_defaults() -> None:
    opts = parse_options(Options, {}, {})
    assert opts.serializer is None and opts.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    assert opts.default_timeout is None and opts.mode == 0o600 and opts.trust is False


def test_query_values_are_converted() -> None:
    opts = parse_options(PipeOptions, {"max_message_size": "1MiB", "default_timeout": "2.5", "mode": "640",
                                       "trust": "yes", "checksum": "on", "pipe_size": "64k"}, {})
    assert opts.max_message_size == 1024**2
    assert opts.default_timeout == 2.5
    assert opts.mode == 0o640
    assert opts.trust is True and opts.checksum is True
    assert opts.pipe_size == 65536
    assert parse_options(Options, {"default_timeout": "none"}, {}).default_timeout is None


def test_keywords_win_over_query() -> None:
    opts = parse_options(PipeOptions, {"max_message_size": "1MiB", "checksum": "true"},
                         {"max_message_size": 4096, "checksum": False})
    assert opts.max_message_size == 4096 and opts.checksum is False


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_options(PipeOptions, {"capacty": "1"}, {})
    text = str(info.value)
    assert "capacty" in text
    for name in ("checksum", "default_timeout", "max_message_size", "mode", "pipe_size", "serializer", "trust"):
        assert name in text


@pytest.mark.parametrize("query,kwargs", [
    ({"max_message_size": "big"}, {}),
    ({}, {"max_message_size": -1}),
    ({}, {"default_timeout": -1.0}),
    ({"mode": "999"}, {}),
    ({}, {"mode": 0o1777}),
    ({"trust": "maybe"}, {}),
    ({}, {"max_message_size": True}),
    ({}, {"default_timeout": "soon"}),
])
def test_bad_values(query: dict[str, str], kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        parse_options(PipeOptions, query, kwargs)


def test_options_through_the_public_api() -> None:
    a, b = ipckit.pair("pipe://?max_message_size=1KiB", default_timeout=0.5)
    try:
        assert a.max_message_size == 1024
        with pytest.raises(ipckit.MessageTooLarge):
            a.send_bytes(b"x" * 1025)
    finally:
        a.close()
        b.close()
    with pytest.raises(ConfigurationError, match="valid options"):
        ipckit.pair("pipe://", bogus=1)
    with pytest.raises(ConfigurationError, match="valid options"):
        ipckit.pair("memory://?bogus=1")


# --------------------------------------------------------------------------- A.5: bounds and messages
@pytest.mark.parametrize("value,reason", [(-1, "below the minimum"), (0, "below the minimum"),
                                          (2**31 + 1, "above the maximum"),
                                          (2.5, "a float is not a whole number of bytes"),
                                          ("2.5", "'2.5' is not a size"), (True, "a bool is not an integer")])
@pytest.mark.parametrize("scheme", ["shm", "sysv+shm"])
def test_ring_capacity_is_bounded_with_a_message_naming_option_value_and_range(
        scheme: str, value: object, reason: str) -> None:
    # Before: -1 and 0 made a ring silently, 2**31 + 1 raised a raw ValueError from the ring,
    # 2.5 said "expected string or bytes-like object".
    with pytest.raises(ConfigurationError) as info:
        ipckit.pair(f"{scheme}://", capacity=value)
    text = str(info.value)
    assert f"bad value {value!r} for option 'capacity' ({reason})" in text
    assert "allowed: a size in bytes from 1 to 2147483648 (an integer, or a string like 4096, 64KiB, 8MiB)" in text


def test_capacity_bound_is_declared_on_the_field() -> None:
    from ipckit.backends.common.ring.buffer import MAX_CAPACITY
    from ipckit.backends.common.ring.channel import RingOptions
    from ipckit.options import Bounds, option_bounds

    assert option_bounds(RingOptions, "capacity") == Bounds(minimum=1, maximum=MAX_CAPACITY)
    assert option_bounds(RingOptions, "spin") is None


def test_option_declares_bounds_and_validate_hook_runs_last() -> None:
    from dataclasses import dataclass

    from ipckit.options import allowed_values, option

    @dataclass
    class Opts(Options):
        level: int = option(3, minimum=1, maximum=9)
        ratio: float | None = option(0.5, above=0)
        kind: str = option("a", choices=("a", "B"))
        low: int = 0
        high: int = 10

        def validate(self) -> None:
            if self.low > self.high:
                raise ConfigurationError(f"low={self.low} is above high={self.high}; allowed: low <= high")

    assert allowed_values(Opts, "level") == "an integer from 1 to 9"
    assert allowed_values(Opts, "ratio") == "a number > 0, or None"
    assert allowed_values(Opts, "kind") == "one of 'a', 'b'"
    assert parse_options(Opts, {"level": "9", "kind": "b"}, {"ratio": None}).level == 9
    assert parse_options(Opts, {}, {"kind": "A"}).kind == "A"  # choices ignore case, the value is kept
    for kwargs, text in [({"level": 10}, "bad value 10 for option 'level' (above the maximum); allowed: an integer "
                                         "from 1 to 9"),
                         ({"level": 2.0}, "bad value 2.0 for option 'level' (a float is not an integer)"),
                         ({"ratio": 0}, "bad value 0 for option 'ratio' (not above 0); allowed: a number > 0, or None"),
                         ({"ratio": float("nan")}, "bad value nan for option 'ratio' (not above 0)"),
                         ({"kind": "c"}, "bad value 'c' for option 'kind' (not one of the choices); allowed: one of "
                                         "'a', 'b'"),
                         ({"low": 11}, "low=11 is above high=10")]:
        with pytest.raises(ConfigurationError) as info:
            parse_options(Opts, {}, kwargs)
        assert text in str(info.value)


@pytest.mark.parametrize("url,kwargs,text", [
    ("pipe://?mode=999", {}, "bad value '999' for option 'mode' (not octal digits); allowed: a permission mask"),
    ("pipe://", {"mode": 0o1000}, "bad value 512 for option 'mode' (above the maximum); allowed: a permission mask "
                                  "from 0o000 to 0o777"),
    ("pipe://", {"pipe_size": 0}, "bad value 0 for option 'pipe_size' (below the minimum); allowed: a size in bytes "
                                  ">= 1"),
    ("pipe://", {"default_timeout": "soon"}, "bad value 'soon' for option 'default_timeout' (not a number); allowed: "
                                             "a number >= 0, or None"),
    ("pipe://", {"serializer": 12}, "bad value 12 for option 'serializer' (a value of type int is none of these); "
                                    "allowed: a serializer name"),
    ("memory://", {"capacity": -1}, "bad value -1 for option 'capacity' (below the minimum)"),
    ("unix://", {"type": "dgram"}, "bad value 'dgram' for option 'type' (not one of the choices); allowed: one of "
                                   "'stream', 'seqpacket'"),
    ("unix://", {"backlog": 2**40}, "bad value 1099511627776 for option 'backlog' (above the maximum)"),
    ("unix://", {"handshake_timeout": 0}, "bad value 0 for option 'handshake_timeout' (not above 0); allowed: a "
                                          "number > 0"),
    ("unix://", {"allow_uids": "me"}, "bad value 'me' for option 'allow_uids' ('me' is not a uid); allowed: uids"),
    ("unix://", {"authkey": 12}, "bad value of type int for option 'authkey'; allowed: bytes or str, or None"),
])
def test_option_errors_name_option_value_and_what_is_allowed(url: str, kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ipckit.pair(url, **kwargs)
    assert text in str(info.value)
