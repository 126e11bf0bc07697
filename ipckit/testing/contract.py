"""The channel contract as pytest classes: one base class plus capability mixins.

A backend's test module is a few lines::

    from ipckit.testing import ChannelContract, CrossProcessContract, PeerDeathContract, SelectableContract

    class TestPipe(ChannelContract, DuplexContract, PeerCloseContract, CrossProcessContract,
                   PeerDeathContract, SelectableContract, LargeMessageContract):
        scheme = "pipe"

:func:`required_contracts` says which mixins a backend's capabilities call for; the meta-test
checks every registered scheme against it, so nothing is skipped silently.  Backends that only have
named endpoints override :meth:`ChannelContract.fresh_url` (e.g. a path inside ``self.tmpdir``);
the contract then connects pairs with ``listen``/``connect``.

The classes carry no ``Test`` prefix, so pytest collects only the subclasses.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import selectors
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import pytest

import ipckit

from ..channel import Channel, Listener
from ..errors import (
    BufferTooSmall,
    ChannelBroken,
    ChannelClosed,
    ChannelTimeout,
    DecodeError,
    EncodeError,
    EndOfChannel,
    EndpointExists,
    EndpointNotFound,
    IPCError,
    MessageTooLarge,
    PeerDied,
    RecvTimeout,
    UnsafeSerializer,
)
from ..options import Capabilities
from ..registry import get_backend
from . import workers
from .peers import spawn_peer
from .signals import signal_storm

_np: Any
try:  # numpy is optional for users of the contract; the buffer tests skip without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

__all__ = [
    "ChannelContract",
    "DuplexContract",
    "PeerCloseContract",
    "SelectableContract",
    "LargeMessageContract",
    "CrossProcessContract",
    "PeerDeathContract",
    "ListenerContract",
    "required_contracts",
    "timing_bounds",
    "wait_until_blocked",
]

KiB = 1024
MiB = 1024 * KiB

#: Extra seconds of slack on the upper timing bound (busy CI machines): ``IPCKIT_TIMING_SLACK``.
_SLACK = float(os.environ.get("IPCKIT_TIMING_SLACK", "0") or 0)


def timing_bounds(timeout: float) -> tuple[float, float]:
    """Acceptable elapsed seconds for a call with *timeout* (contract P4: ``[t - 20 ms, t + max(100 ms, 10 %)]``)."""
    return max(0.0, timeout - 0.02), timeout + max(0.1, 0.1 * timeout) + _SLACK


def wait_until_blocked(thread: threading.Thread, names: tuple[str, ...] = ("_locked_recv", "accept"),
                       timeout: float = 5.0) -> None:
    """Wait until *thread* is inside one of the functions *names* (a blocking call), without sleeping blind."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name in names:
                return
            frame = frame.f_back
        if not thread.is_alive():
            raise AssertionError(f"{thread.name} ended before blocking")
        time.sleep(0.001)
    raise AssertionError(f"{thread.name} did not reach {names} within {timeout} s")


class _Thread(threading.Thread):
    """A thread that keeps its target's result or exception for the test to check."""

    def __init__(self, target: Callable[[], Any], name: str = "ipckit-contract") -> None:
        super().__init__(target=self._run, name=name, daemon=True)
        self._fn = target
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def outcome(self, timeout: float = 10.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still blocked after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


# Sample objects per serializer: what each can round-trip.
_SAMPLES: dict[str, list[Any]] = {
    "pickle": [None, 0, -1, 2**70, 1.5, "text ✓", b"\x00\xff", [1, [2, 3]], {"a": (1, 2), 3: {4}},
               {"nested": {"list": list(range(100))}}],
    "msgpack": [None, 0, -1, 2**63 - 1, 1.5, "text ✓", b"\x00\xff", [1, [2, 3]], {"a": [1, 2], "b": {"c": None}}],
    "json": [None, 0, -1, 1.5, "text ✓", [1, [2, 3]], {"a": [1, 2], "b": {"c": None}}, True],
    "raw": [b"", b"\x00", b"bytes" * 100],
}

_SIZES = [0, 1, 4095, 4096, 4097, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 1 * MiB]


def _send_each(ch: Channel, messages: Iterable[bytes], timeout: float = 20.0) -> None:
    for m in messages:
        ch.send_bytes(m, timeout=timeout)


def _blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + n).randbytes(n)


class ChannelContract:
    """What every channel does, on every backend (contract §3, reliability.md C-1…C-14).

    Subclasses set ``scheme`` (and optionally ``options``: extra keyword options for every
    channel).  Helpers: :meth:`make_pair` (closed automatically after the test), :meth:`fresh_url`,
    ``self.tmpdir`` (a private directory, checked empty and removed after the test).
    """

    scheme: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    #: ``max_message_size`` the size-limit tests set (kept small so they stay fast).
    limit_size: ClassVar[int] = 256 * KiB
    #: Capabilities of the variant under test when ``options`` change them (e.g. a seqpacket mode);
    #: None: the backend's declared capabilities.  The meta-test reads this too.
    variant_capabilities: ClassVar[Capabilities | None] = None

    tmpdir: str
    _owned: list[Channel | Listener]

    # ------------------------------------------------------------------ fixtures & helpers
    @pytest.fixture(autouse=True)
    def _contract_resources(self) -> Iterator[None]:
        assert self.scheme, f"{type(self).__name__} must set `scheme`"
        self._owned = []
        self.tmpdir = tempfile.mkdtemp(prefix=f"ipckit-test-{os.getpid()}-")
        try:
            yield
        finally:
            for obj in reversed(self._owned):
                obj.close()
            left = sorted(os.listdir(self.tmpdir))
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        assert not left, f"files left in the test's directory after closing everything: {left}"

    @property
    def caps(self) -> Capabilities:
        return self.variant_capabilities or get_backend(self.scheme).capabilities

    def own(self, obj: Any) -> Any:
        """Close *obj* (a channel or listener) after the test."""
        self._owned.append(obj)
        return obj

    def fresh_url(self) -> str:
        """A new, unused address for ``listen`` (override for path-based schemes, e.g. in ``self.tmpdir``)."""
        return f"{self.scheme}://ikt-{os.getpid()}-{secrets.token_hex(6)}"

    def make_pair(self, **options: Any) -> tuple[Channel, Channel]:
        """Two connected ends (``pair()``, or ``listen``/``connect`` for named-only backends)."""
        opts = {**self.options, **options}
        if self.caps.anonymous_pair:
            a, b = ipckit.pair(f"{self.scheme}://", **opts)
            return self.own(a), self.own(b)
        return self.connect_pair(**opts)

    def connect_pair(self, **options: Any) -> tuple[Channel, Channel]:
        """``(client, server)`` over a fresh listener (kept open until the test ends)."""
        opts = {**self.options, **options}
        lst = self.own(ipckit.listen(self.fresh_url(), **opts))
        client = _Thread(lambda: ipckit.connect(lst.url, timeout=10.0, **opts), name="ipckit-connect")
        client.start()
        try:
            server = self.own(lst.accept(timeout=10.0))
        finally:
            client.join(15.0)
        return self.own(client.outcome()), server

    def limit(self, wanted: int) -> int:
        """*wanted* capped by the transport's own message limit."""
        hard = self.caps.max_message_size
        return wanted if hard is None else min(wanted, hard)

    def _expect_timeout(self, call: Callable[[], Any], timeout: float, exc: type[BaseException]) -> None:
        start = time.monotonic()
        with pytest.raises(exc):
            call()
        elapsed = time.monotonic() - start
        low, high = timing_bounds(timeout)
        assert low <= elapsed <= high, f"timeout={timeout}: returned after {elapsed:.3f} s, not in [{low}, {high}]"

    # ------------------------------------------------------------------ serializers and buffers
    def test_default_serializer_follows_trust(self) -> None:
        a, b = self.make_pair()
        expected = "pickle" if self.caps.proves_same_user else "msgpack"
        assert a.serializer.name == b.serializer.name == expected

    @pytest.mark.parametrize("serializer", sorted(_SAMPLES))
    def test_roundtrip_every_serializer(self, serializer: str) -> None:
        trust = {} if serializer != "pickle" or self.caps.proves_same_user else {"trust": True}
        a, b = self.make_pair(serializer=serializer, **trust)
        for obj in _SAMPLES[serializer]:
            a.send(obj, timeout=5.0)
            got = b.recv(timeout=5.0)
            assert got == obj and type(got) is type(obj)

    def test_pickle_numpy_out_of_band(self) -> None:
        if _np is None:
            pytest.skip("numpy is not installed")
        trust = {} if self.caps.proves_same_user else {"trust": True}
        a, b = self.make_pair(serializer="pickle", **trust)
        arrays = [_np.arange(10, dtype=_np.int32), _np.arange(200_000, dtype=_np.float64).reshape(400, 500)]
        for arr in arrays:
            if arr.nbytes > self.limit(arr.nbytes):
                continue
            sender = _Thread(functools.partial(a.send, {"x": arr, "tag": "t"}, timeout=10.0))
            sender.start()
            got = b.recv(timeout=10.0)
            sender.outcome()
            assert got["tag"] == "t"
            _np.testing.assert_array_equal(got["x"], arr)
            assert got["x"].dtype == arr.dtype and got["x"].shape == arr.shape

    def test_pickle_refused_unless_trusted(self) -> None:
        if self.caps.proves_same_user:
            a, b = self.make_pair(serializer="pickle")
            a.send({1, 2}, timeout=5.0)
            assert b.recv(timeout=5.0) == {1, 2}
            return
        with pytest.raises(UnsafeSerializer):
            self.make_pair(serializer="pickle")
        a, b = self.make_pair(serializer="pickle", trust=True)
        a.send({1, 2}, timeout=5.0)
        assert b.recv(timeout=5.0) == {1, 2}

    def test_send_bytes_every_buffer_type(self) -> None:
        a, b = self.make_pair()
        data = _blob(1000)
        buffers: list[Any] = [data, bytearray(data), memoryview(data), memoryview(bytearray(data))[10:900]]
        if _np is not None:
            buffers.append(_np.frombuffer(data, dtype=_np.uint8))
            buffers.append(_np.frombuffer(data, dtype=_np.float64).reshape(5, 25))
        for buf in buffers:
            a.send_bytes(buf, timeout=5.0)
            assert b.recv_bytes(timeout=5.0) == memoryview(buf).tobytes()

    def test_send_bytes_rejects_non_buffers(self) -> None:
        a, b = self.make_pair()
        with pytest.raises(EncodeError):
            a.send_bytes("text", timeout=5.0)
        with pytest.raises(EncodeError):
            a.send_bytes(12345, timeout=5.0)
        if _np is not None:
            with pytest.raises(EncodeError):
                a.send_bytes(_np.zeros((10, 10))[:, ::2], timeout=5.0)  # not contiguous
        a.send_bytes(b"still fine", timeout=5.0)
        assert b.recv_bytes(timeout=5.0) == b"still fine"

    def test_empty_message_is_a_message(self) -> None:
        a, b = self.make_pair()
        a.send_bytes(b"", timeout=5.0)
        a.send_bytes(b"after", timeout=5.0)
        assert b.poll(5.0)
        assert b.recv_bytes(timeout=5.0) == b""
        assert b.recv_bytes(timeout=5.0) == b"after"
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0)

    @pytest.mark.parametrize("size", _SIZES)
    def test_sizes_roundtrip(self, size: int) -> None:
        if size > self.limit(size):
            pytest.skip(f"{self.scheme} carries at most {self.caps.max_message_size} bytes per message")
        a, b = self.make_pair()
        data = _blob(size)
        sender = _Thread(lambda: _send_each(a, [data] * 3))
        sender.start()
        for _ in range(3):
            assert b.recv_bytes(timeout=10.0) == data
        sender.outcome()

    def test_ordering_10000_messages(self) -> None:
        a, b = self.make_pair()
        n = 10_000
        sender = _Thread(lambda: _send_each(a, (i.to_bytes(4, "little") * (i % 7) for i in range(n))))
        sender.start()
        for i in range(n):
            assert b.recv_bytes(timeout=10.0) == i.to_bytes(4, "little") * (i % 7)
        sender.outcome()
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0)

    # ------------------------------------------------------------------ size limits
    def test_max_message_size_exact_and_one_over(self) -> None:
        limit = self.limit(self.limit_size)
        a, b = self.make_pair(max_message_size=limit)
        assert a.max_message_size == limit
        exact = _blob(limit)
        sender = _Thread(lambda: a.send_bytes(exact, timeout=10.0))
        sender.start()
        assert b.recv_bytes(timeout=10.0) == exact
        sender.outcome()
        with pytest.raises(MessageTooLarge):
            a.send_bytes(_blob(limit + 1), timeout=5.0)
        with pytest.raises(MessageTooLarge):
            a.send(_blob(limit + 1), timeout=5.0)  # serialized form is larger still
        # Nothing of the refused messages reached the peer; the channel still works.
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0)
        a.send_bytes(b"next", timeout=5.0)
        assert b.recv_bytes(timeout=5.0) == b"next"

    # ------------------------------------------------------------------ receive variants
    def test_recv_bytes_into(self) -> None:
        a, b = self.make_pair()
        data = _blob(3000)
        a.send_bytes(data, timeout=5.0)
        buf = bytearray(3000)
        assert b.recv_bytes_into(buf, timeout=5.0) == 3000 and buf == data
        a.send_bytes(b"short", timeout=5.0)
        big = bytearray(10_000)
        assert b.recv_bytes_into(big, timeout=5.0) == 5 and big[:5] == b"short"
        if _np is not None:
            arr = _np.zeros(100, dtype=_np.uint8)
            a.send_bytes(bytes(range(100)), timeout=5.0)
            assert b.recv_bytes_into(arr, timeout=5.0) == 100
            assert bytes(arr) == bytes(range(100))
        with pytest.raises(TypeError):
            b.recv_bytes_into(b"read-only", timeout=0)

    def test_recv_bytes_into_too_small_keeps_message(self) -> None:
        a, b = self.make_pair()
        a.send_bytes(b"0123456789", timeout=5.0)
        a.send_bytes(b"next", timeout=5.0)
        with pytest.raises(BufferTooSmall) as info:
            b.recv_bytes_into(bytearray(4), timeout=5.0)
        assert info.value.message == b"0123456789"
        assert b.recv_bytes(timeout=5.0) == b"next"

    def test_recv_view(self) -> None:
        a, b = self.make_pair()
        data = _blob(5000)
        a.send_bytes(data, timeout=5.0)
        a.send_bytes(b"second", timeout=5.0)
        view = b.recv_view(timeout=5.0)
        assert isinstance(view, memoryview) and view.readonly
        assert view.tobytes() == data
        assert bytes(b.recv_view(timeout=5.0)) == b"second"

    # ------------------------------------------------------------------ timeouts
    @pytest.mark.parametrize("timeout", [0.0, 0.05, 0.5])
    def test_recv_timeout(self, timeout: float) -> None:
        a, b = self.make_pair()
        self._expect_timeout(lambda: b.recv(timeout=timeout), timeout, RecvTimeout)
        a.send_bytes(b"x", timeout=5.0)  # nothing was consumed by the timeout; the channel works
        assert b.recv_bytes(timeout=5.0) == b"x"

    @pytest.mark.parametrize("timeout", [0.05, 0.5])
    def test_recv_timeout_under_signal_storm(self, timeout: float) -> None:
        _a, b = self.make_pair()
        with signal_storm(hz=200) as storm:
            self._expect_timeout(lambda: b.recv(timeout=timeout), timeout, RecvTimeout)
            self._expect_timeout(lambda: b.poll(timeout) or (_ for _ in ()).throw(RecvTimeout()), timeout,
                                 RecvTimeout)
        assert storm.count >= 3

    def test_recv_timeout_is_a_timeout_error(self) -> None:
        _a, b = self.make_pair()
        with pytest.raises(TimeoutError):
            b.recv(timeout=0)
        with pytest.raises(ChannelTimeout):
            b.recv_bytes(timeout=0)

    def test_default_timeout_option(self) -> None:
        _a, b = self.make_pair(default_timeout=0.05)
        self._expect_timeout(lambda: b.recv(), 0.05, RecvTimeout)
        with pytest.raises(RecvTimeout):
            b.recv(timeout=0)

    def test_poll(self) -> None:
        a, b = self.make_pair()
        assert b.poll() is False
        assert b.poll(0.01) is False
        a.send(1, timeout=5.0)
        assert b.poll(5.0) is True
        assert b.poll(0) is True  # polling consumes nothing
        assert b.recv(timeout=5.0) == 1
        assert b.poll(0) is False

    # ------------------------------------------------------------------ serializer errors
    def test_encode_error_leaves_channel_usable(self) -> None:
        a, b = self.make_pair(serializer="msgpack")
        with pytest.raises(EncodeError):
            a.send(object(), timeout=5.0)
        a.send({"ok": 1}, timeout=5.0)
        assert b.recv(timeout=5.0) == {"ok": 1}
        with pytest.raises(RecvTimeout):
            b.recv(timeout=0)

    @pytest.mark.parametrize("serializer,junk", [("msgpack", b"\xc1"), ("msgpack", b"\x92\x01"),
                                                 ("json", b"{not json"), ("json", b"NaN")])
    def test_decode_error_leaves_channel_usable(self, serializer: str, junk: bytes) -> None:
        a, b = self.make_pair(serializer=serializer)
        a.send_bytes(junk, timeout=5.0)
        a.send([1, "two"], timeout=5.0)
        with pytest.raises(DecodeError):
            b.recv(timeout=5.0)
        assert b.recv(timeout=5.0) == [1, "two"]

    def test_raw_serializer_refuses_objects(self) -> None:
        a, b = self.make_pair(serializer="raw")
        with pytest.raises(EncodeError):
            a.send({"not": "bytes"}, timeout=5.0)
        a.send(b"bytes", timeout=5.0)
        assert b.recv(timeout=5.0) == b"bytes"

    # ------------------------------------------------------------------ close
    def test_close_is_idempotent_and_ops_after_close_raise(self) -> None:
        a, _b = self.make_pair()
        assert not a.closed
        a.close()
        a.close()
        assert a.closed
        ops: list[Callable[[], Any]] = [
            lambda: a.send(1), lambda: a.send_bytes(b"x"), lambda: a.recv(timeout=0), lambda: a.recv_bytes(timeout=0),
            lambda: a.recv_bytes_into(bytearray(4), timeout=0), lambda: a.recv_view(timeout=0),
            lambda: a.poll(0), lambda: a.fileno(),
        ]
        for op in ops:
            with pytest.raises(ChannelClosed):
                op()

    def test_context_manager_closes(self) -> None:
        a, _b = self.make_pair()
        with a as entered:
            assert entered is a
        assert a.closed

    @pytest.mark.parametrize("timeout", [10.0, None], ids=["deadline", "forever"])
    def test_close_from_another_thread_wakes_recv(self, timeout: float | None) -> None:
        # Both waits: with a deadline, and without one (where a backend may block in the
        # system call itself and must still be woken).
        _a, b = self.make_pair()
        waiter = _Thread(lambda: b.recv(timeout=timeout), name="ipckit-blocked-recv")
        waiter.start()
        wait_until_blocked(waiter)
        start = time.monotonic()
        b.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()
        assert waiter.finished_at - start <= 0.5, f"woke after {waiter.finished_at - start:.3f} s"

    def test_close_from_another_thread_wakes_poll(self) -> None:
        _a, b = self.make_pair()
        waiter = _Thread(lambda: b.poll(10.0), name="ipckit-blocked-poll")
        waiter.start()
        wait_until_blocked(waiter, ("_poll",))
        start = time.monotonic()
        b.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()
        assert waiter.finished_at - start <= 0.5

    # ------------------------------------------------------------------ threads
    def test_two_threads_receiving_never_corrupt(self) -> None:
        a, b = self.make_pair()
        n = 2000
        stop = b"stop"

        def receive() -> list[int]:
            got: list[int] = []
            while True:
                data = b.recv_bytes(timeout=20.0)
                if data == stop:
                    return got
                got.append(workers.check_payload(data))

        r1, r2 = _Thread(receive, "ipckit-recv-1"), _Thread(receive, "ipckit-recv-2")
        r1.start()
        r2.start()
        for i in range(n):
            a.send_bytes(workers.make_payload(i, i % 300), timeout=20.0)
        a.send_bytes(stop, timeout=5.0)
        a.send_bytes(stop, timeout=5.0)
        got1, got2 = r1.outcome(30.0), r2.outcome(30.0)
        assert got1 == sorted(got1) and got2 == sorted(got2)
        assert sorted(got1 + got2) == list(range(n))

    def test_two_threads_sending_never_interleave(self) -> None:
        a, b = self.make_pair()
        n = 500

        def send(tag: int) -> None:
            for i in range(n):
                a.send_bytes(workers.make_payload(tag * n + i, 100 + (i % 5) * 4000), timeout=20.0)

        s1, s2 = _Thread(lambda: send(0), "ipckit-send-1"), _Thread(lambda: send(1), "ipckit-send-2")
        s1.start()
        s2.start()
        got = [workers.check_payload(b.recv_bytes(timeout=20.0)) for _ in range(2 * n)]
        s1.outcome()
        s2.outcome()
        first = [s for s in got if s < n]
        second = [s for s in got if s >= n]
        assert first == list(range(n)) and second == list(range(n, 2 * n))

    # ------------------------------------------------------------------ errors
    def test_only_ipckit_errors_leave(self) -> None:
        a, b = self.make_pair()
        b.close()
        for op in (lambda: b.recv(timeout=0), lambda: b.send(1, timeout=0), lambda: b.poll(0)):
            with pytest.raises(IPCError):
                op()
        with pytest.raises(TypeError):
            pickle_channel(a)

    def test_repr_and_url(self) -> None:
        a, _b = self.make_pair()
        assert self.scheme in repr(a)
        assert a.url.startswith(f"{self.scheme}:")

    # ------------------------------------------------------------------ model test
    def test_model_against_deque(self) -> None:
        from hypothesis import HealthCheck, settings
        from hypothesis import strategies as st
        from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

        contract = self
        duplex = self.caps.duplex

        class Model(RuleBasedStateMachine):
            def __init__(self) -> None:
                super().__init__()
                opts = {**contract.options, "serializer": "raw"}
                if contract.caps.anonymous_pair:
                    self.a, self.b = ipckit.pair(f"{contract.scheme}://", **opts)
                else:
                    self.a, self.b = contract.connect_pair(**opts)
                self.ab: deque[bytes] = deque()
                self.ba: deque[bytes] = deque()

            @rule(data=st.binary(max_size=2000))
            def send_ab(self, data: bytes) -> None:
                self.a.send_bytes(data, timeout=5.0)
                self.ab.append(data)

            @precondition(lambda self: duplex)
            @rule(data=st.binary(max_size=2000))
            def send_ba(self, data: bytes) -> None:
                self.b.send_bytes(data, timeout=5.0)
                self.ba.append(data)

            @rule()
            def recv_b(self) -> None:
                if self.ab:
                    assert self.b.recv_bytes(timeout=5.0) == self.ab.popleft()
                else:
                    with pytest.raises(RecvTimeout):
                        self.b.recv_bytes(timeout=0)

            @precondition(lambda self: duplex)
            @rule()
            def recv_a(self) -> None:
                if self.ba:
                    assert self.a.recv_bytes(timeout=5.0) == self.ba.popleft()
                else:
                    with pytest.raises(RecvTimeout):
                        self.a.recv_bytes(timeout=0)

            @rule(size=st.integers(0, 64))
            def recv_into_b(self, size: int) -> None:
                if not self.ab:
                    return
                expected = self.ab.popleft()
                if len(expected) > size:
                    with pytest.raises(BufferTooSmall) as info:
                        self.b.recv_bytes_into(bytearray(size), timeout=5.0)
                    assert info.value.message == expected
                else:
                    buf = bytearray(size)
                    assert self.b.recv_bytes_into(buf, timeout=5.0) == len(expected)
                    assert buf[: len(expected)] == expected

            @invariant()
            def poll_matches(self) -> None:
                assert self.b.poll(0) == bool(self.ab)

            def teardown(self) -> None:
                self.a.close()
                self.b.close()

        Model.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None, database=None,
                                           suppress_health_check=list(HealthCheck))
        run_state_machine_as_test(Model, settings=Model.TestCase.settings)  # type: ignore[no-untyped-call]


def pickle_channel(ch: Channel) -> bytes:
    import pickle

    return pickle.dumps(ch)


class DuplexContract:
    """Both ends send and receive (``capabilities.duplex``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def test_both_directions(self) -> None:
        a, b = self.make_pair()
        a.send("to b", timeout=5.0)
        b.send("to a", timeout=5.0)
        assert b.recv(timeout=5.0) == "to b"
        assert a.recv(timeout=5.0) == "to a"

    def test_ping_pong(self) -> None:
        a, b = self.make_pair()
        for i in range(500):
            a.send_bytes(i.to_bytes(4, "little"), timeout=5.0)
            assert b.recv_bytes(timeout=5.0) == i.to_bytes(4, "little")
            b.send_bytes(b"ack", timeout=5.0)
            assert a.recv_bytes(timeout=5.0) == b"ack"

    def test_send_while_another_thread_receives(self) -> None:
        a, b = self.make_pair()
        n = 2000
        echo = _Thread(lambda: _send_each(b, (b.recv_bytes(timeout=10.0) for _ in range(n))))
        echo.start()
        receiver = _Thread(lambda: [a.recv_bytes(timeout=10.0) for _ in range(n)])
        receiver.start()
        for i in range(n):
            a.send_bytes(workers.make_payload(i, i % 100), timeout=10.0)
        assert [workers.check_payload(m) for m in receiver.outcome(20.0)] == list(range(n))
        echo.outcome()

    def test_both_sides_send_large_at_once(self) -> None:
        # Both directions full at the same time must not deadlock the framing layer.
        a, b = self.make_pair()
        data = _blob(512 * KiB)
        ta = _Thread(lambda: _send_each(a, [data] * 4))
        tb = _Thread(lambda: _send_each(b, [data] * 4))
        ta.start()
        tb.start()
        for _ in range(4):
            assert a.recv_bytes(timeout=10.0) == data
            assert b.recv_bytes(timeout=10.0) == data
        ta.outcome()
        tb.outcome()


class PeerCloseContract:
    """A clean close of the peer is told apart (``capabilities.detects_peer_close``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def test_peer_close_delivers_in_flight_then_end(self) -> None:
        a, b = self.make_pair()
        for i in range(3):
            a.send(i, timeout=5.0)
        a.close()
        assert [b.recv(timeout=5.0) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(EndOfChannel):
            b.recv(timeout=5.0)
        with pytest.raises(EndOfChannel):  # and stays at the end
            b.recv(timeout=0)
        assert b.poll(0) is True  # recv would not block: it raises at once

    def test_iteration_ends_at_end_of_channel(self) -> None:
        a, b = self.make_pair()
        for i in range(5):
            a.send(i, timeout=5.0)
        a.close()
        assert list(b) == [0, 1, 2, 3, 4]

    def test_peer_close_wakes_blocked_recv(self) -> None:
        a, b = self.make_pair()
        waiter = _Thread(lambda: b.recv(timeout=10.0), name="ipckit-blocked-recv")
        waiter.start()
        wait_until_blocked(waiter)
        a.close()
        with pytest.raises(EndOfChannel):
            waiter.outcome()

    def test_send_after_peer_closed(self) -> None:
        a, b = self.make_pair()
        b.close()
        with pytest.raises((EndOfChannel, ChannelBroken)):
            for _ in range(100):  # a stream may accept a few bytes before noticing
                a.send_bytes(b"x" * 1000, timeout=1.0)


class SelectableContract:
    """``fileno()`` works with selectors and asyncio (``capabilities.selectable``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def test_selector_readiness(self) -> None:
        a, b = self.make_pair()
        fd = b.fileno()
        assert isinstance(fd, int) and fd >= 0
        with selectors.DefaultSelector() as sel:
            sel.register(b, selectors.EVENT_READ)
            assert sel.select(0) == []
            a.send(1, timeout=5.0)
            a.send(2, timeout=5.0)
            assert len(sel.select(5.0)) == 1
            assert b.recv(timeout=0) == 1
            # The second message may sit in a read-ahead buffer; the descriptor must still say so.
            assert len(sel.select(1.0)) == 1
            assert b.recv(timeout=0) == 2
            assert sel.select(0) == []
            sel.unregister(b)

    def test_selector_sees_peer_close(self) -> None:
        a, b = self.make_pair()
        with selectors.DefaultSelector() as sel:
            sel.register(b.fileno(), selectors.EVENT_READ)
            a.close()
            assert len(sel.select(5.0)) == 1
            with pytest.raises(EndOfChannel):
                b.recv(timeout=0)

    def test_asyncio_reader(self) -> None:
        import asyncio

        a, b = self.make_pair()

        async def main() -> list[Any]:
            loop = asyncio.get_running_loop()
            got: list[Any] = []
            done = asyncio.Event()

            def on_readable() -> None:
                while b.poll(0):
                    got.append(b.recv(timeout=0))
                if len(got) == 3:
                    done.set()

            loop.add_reader(b.fileno(), on_readable)
            try:
                for i in range(3):
                    a.send(i, timeout=5.0)
                await asyncio.wait_for(done.wait(), 5.0)
            finally:
                loop.remove_reader(b.fileno())
            return got

        assert asyncio.run(main()) == [0, 1, 2]


class LargeMessageContract:
    """Messages of several MiB (backends without a small transport limit)."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    @pytest.mark.parametrize("size", [1 * MiB + 7, 8 * MiB])
    def test_large_roundtrip(self, size: int) -> None:
        a, b = self.make_pair()
        data = _blob(size)
        sender = _Thread(lambda: a.send_bytes(data, timeout=20.0))
        sender.start()
        assert b.recv_bytes(timeout=20.0) == data
        sender.outcome()

    def test_large_recv_into_and_view(self) -> None:
        a, b = self.make_pair()
        data = _blob(3 * MiB)
        sender = _Thread(lambda: _send_each(a, [data] * 2))
        sender.start()
        buf = bytearray(4 * MiB)
        assert b.recv_bytes_into(buf, timeout=20.0) == len(data)
        assert buf[: len(data)] == data
        assert b.recv_view(timeout=20.0) == data
        sender.outcome()

    def test_large_under_signal_storm(self) -> None:
        a, b = self.make_pair()
        data = _blob(8 * MiB)
        sender = _Thread(lambda: a.send_bytes(data, timeout=20.0))
        with signal_storm(hz=200):
            sender.start()
            got = b.recv_bytes(timeout=20.0)
        assert got == data
        sender.outcome()


class CrossProcessContract:
    """An end works in a child process, under *fork* and *spawn* (``capabilities.inheritable``)."""

    make_pair: Callable[..., tuple[Channel, Channel]]
    own: Callable[[Any], Any]
    caps: Capabilities
    options: ClassVar[dict[str, Any]]
    fresh_url: Callable[[], str]

    def child_end(self, **options: Any) -> tuple[Channel | Listener, Channel | workers.Dial, Callable[[], Channel]]:
        """``(mine, theirs, finish)``: *theirs* goes to the child; call *finish()* after starting it.

        For a pair, *finish* closes this process's copy of the child's end and returns *mine*; for
        named-only backends the child dials the URL and *finish* accepts it.
        """
        if self.caps.anonymous_pair:
            mine, theirs = self.make_pair(**options)

            def finish() -> Channel:
                theirs.close()  # the child has its own copy now
                return mine

            return mine, theirs, finish
        opts = {**self.options, **options}
        lst = self.own(ipckit.listen(self.fresh_url(), **opts))
        dial = workers.Dial(lst.url, opts)

        def accept() -> Channel:
            ch: Channel = self.own(lst.accept(timeout=20.0))
            return ch

        return lst, dial, accept

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_echo_in_child(self, method: str) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.echo, theirs, method=method) as peer:
            ch = finish()
            peer.wait_ready()
            n = 2000 if method == "fork" else 500
            sizes = [0, 1, 100, 4095, 4096, 70_000] + [i % 1500 for i in range(n - 6)]
            sender = _Thread(lambda: _send_each(ch, (workers.make_payload(i, s) for i, s in enumerate(sizes))))
            sender.start()
            for i in range(n):
                assert workers.check_payload(ch.recv_bytes(timeout=20.0)) == i
            sender.outcome()
            ch.close()
            assert peer.join() == n

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_child_closes_with_three_in_flight(self, method: str) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.send_messages, theirs, [1, "two", {"three": 3}], method=method) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.join() == 3
            assert [ch.recv(timeout=10.0) for _ in range(3)] == [1, "two", {"three": 3}]
            with pytest.raises(EndOfChannel):
                ch.recv(timeout=10.0)

    def test_child_receives(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 50, method="fork") as peer:
            ch = finish()
            peer.wait_ready()
            for i in range(50):
                ch.send({"i": i}, timeout=10.0)
            assert peer.join() == [{"i": i} for i in range(50)]

    def test_plain_pickle_is_refused_with_advice(self) -> None:
        a, _b = self.make_pair()
        import pickle

        with pytest.raises(TypeError):
            pickle.dumps(a)


class PeerDeathContract:
    """A SIGKILLed peer surfaces as PeerDied after its fully sent messages (contract P5)."""

    child_end: Callable[..., tuple[Channel | Listener, Channel | workers.Dial, Callable[[], Channel]]]

    @pytest.mark.parametrize("count", [0, 3])
    def test_sender_killed_after_sending(self, count: int) -> None:
        _, theirs, finish = self.child_end()
        messages = [workers.make_payload(i, 1000 * i) for i in range(count)]
        with spawn_peer(workers.send_then_kill, theirs, messages) as peer:
            ch = finish()
            peer.wait_ready()
            assert peer.wait_exit() == -9
            for i in range(count):
                assert workers.check_payload(ch.recv_bytes(timeout=10.0)) == i
            start = time.monotonic()
            with pytest.raises(PeerDied):
                ch.recv_bytes(timeout=10.0)
            assert time.monotonic() - start < 2.0
            with pytest.raises(PeerDied):  # and stays dead
                ch.recv_bytes(timeout=0)

    def test_blocked_recv_sees_peer_death(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_messages, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()
            waiter = _Thread(lambda: ch.recv(timeout=10.0), name="ipckit-blocked-recv")
            waiter.start()
            wait_until_blocked(waiter)
            killed_at = time.monotonic()
            peer.kill()
            with pytest.raises(PeerDied):
                waiter.outcome(10.0)
            assert waiter.finished_at - killed_at < 2.0
            peer.wait_exit()

    def test_send_to_killed_reader(self) -> None:
        _, theirs, finish = self.child_end()
        with spawn_peer(workers.recv_then_kill, theirs, 1) as peer:
            ch = finish()
            peer.wait_ready()
            ch.send_bytes(b"one", timeout=5.0)
            assert peer.wait_exit() == -9
            start = time.monotonic()
            with pytest.raises(PeerDied):
                for _ in range(1000):  # a buffered transport may accept some bytes first
                    ch.send_bytes(b"x" * 4096, timeout=2.0)
            assert time.monotonic() - start < 3.0


class ListenerContract:
    """Named endpoints: listen / connect / accept (``capabilities.named``)."""

    own: Callable[[Any], Any]
    fresh_url: Callable[[], str]
    options: ClassVar[dict[str, Any]]
    connect_pair: Callable[..., tuple[Channel, Channel]]

    def test_listen_connect_roundtrip(self) -> None:
        client, server = self.connect_pair()
        client.send("hello", timeout=5.0)
        assert server.recv(timeout=5.0) == "hello"

    def test_connect_to_missing_endpoint(self) -> None:
        start = time.monotonic()
        with pytest.raises(EndpointNotFound):
            ipckit.connect(self.fresh_url(), timeout=0.2, **self.options)
        assert time.monotonic() - start < 0.2 + 1.0

    def test_listen_twice_is_refused(self) -> None:
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        with pytest.raises(EndpointExists):
            ipckit.listen(lst.url, **self.options)

    def test_accept_timeout(self) -> None:
        lst = self.own(ipckit.listen(self.fresh_url(), **self.options))
        start = time.monotonic()
        with pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.05)
        low, high = timing_bounds(0.05)
        assert low <= time.monotonic() - start <= high

    def test_close_removes_endpoint_and_name_is_reusable(self) -> None:
        url = self.fresh_url()
        lst = ipckit.listen(url, **self.options)
        lst.close()
        lst.close()
        assert lst.closed
        with pytest.raises(ChannelClosed):
            lst.accept(timeout=0)
        with pytest.raises(EndpointNotFound):
            ipckit.connect(url, timeout=0.1, **self.options)
        again = self.own(ipckit.listen(url, **self.options))
        assert again.url == lst.url

    def test_close_wakes_blocked_accept(self) -> None:
        lst = ipckit.listen(self.fresh_url(), **self.options)
        waiter = _Thread(lambda: lst.accept(timeout=10.0), name="ipckit-blocked-accept")
        waiter.start()
        wait_until_blocked(waiter, ("_accept",))
        start = time.monotonic()
        lst.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()
        assert waiter.finished_at - start <= 0.5

    def test_second_accepting_thread_waits_within_its_deadline(self) -> None:
        """Accepts are serialised (not refused): a second thread waits for the first, bounded by
        its own deadline."""
        lst = ipckit.listen(self.fresh_url(), **self.options)
        waiter = _Thread(lambda: lst.accept(timeout=10.0), name="ipckit-blocked-accept")
        waiter.start()
        wait_until_blocked(waiter, ("_accept",))
        start = time.monotonic()
        with pytest.raises(ChannelTimeout):
            lst.accept(timeout=0.1)
        low, high = timing_bounds(0.1)
        assert low <= time.monotonic() - start <= high
        lst.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()

    def test_channels_outlive_listener(self) -> None:
        client, server = self.connect_pair()
        self._owned_listeners_close()
        server.send(1, timeout=5.0)
        assert client.recv(timeout=5.0) == 1

    def _owned_listeners_close(self) -> None:
        for obj in getattr(self, "_owned", []):
            if isinstance(obj, Listener):
                obj.close()


# --------------------------------------------------------------------------- capability → mixins
_ALWAYS: tuple[type, ...] = (ChannelContract,)


def required_contracts(caps: Capabilities) -> set[type]:
    """The contract classes a backend with capabilities *caps* must run (the meta-test checks them).

    ChannelContract always; DuplexContract if ``duplex``; PeerCloseContract if ``detects_peer_close``;
    SelectableContract if ``selectable``; LargeMessageContract unless the transport caps messages
    below 8 MiB; CrossProcessContract if ``inheritable``; PeerDeathContract if ``inheritable`` and
    ``detects_peer_close``; ListenerContract if ``named``.
    """
    needed: set[type] = set(_ALWAYS)
    if caps.duplex:
        needed.add(DuplexContract)
    if caps.detects_peer_close:
        needed.add(PeerCloseContract)
    if caps.selectable:
        needed.add(SelectableContract)
    if caps.max_message_size is None or caps.max_message_size >= 8 * MiB:
        needed.add(LargeMessageContract)
    if caps.inheritable:
        needed.add(CrossProcessContract)
        if caps.detects_peer_close:
            needed.add(PeerDeathContract)
    if caps.named:
        needed.add(ListenerContract)
    return needed

