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
