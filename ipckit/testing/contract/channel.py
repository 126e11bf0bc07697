"""ChannelContract: what every channel does, on every backend (always required)."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

import ipckit

from ...channel import Channel, Listener
from ...errors import (
    BufferTooSmall,
    ChannelClosed,
    ChannelTimeout,
    DecodeError,
    EncodeError,
    IPCError,
    MessageTooLarge,
    RecvTimeout,
    UnsafeSerializer,
)
from ...options import Capabilities
from ...registry import get_backend
from .. import workers
from ..signals import signal_storm
from .boundaries import ErrorBoundaries
from .helpers import KiB, MiB, ResultThread, blob, send_each, takes_timeout, wait_until_blocked
from .interrupts import InterruptContract
from .option_rules import OptionRules
from .threads import ThreadContract

__all__ = ["ChannelContract"]


_np: Any
try:  # numpy is optional for users of the contract; the buffer tests skip without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

# Sample objects per serializer: what each can round-trip.
_SAMPLES: dict[str, list[Any]] = {
    "pickle": [None, 0, -1, 2**70, 1.5, "text ✓", b"\x00\xff", [1, [2, 3]], {"a": (1, 2), 3: {4}},
               {"nested": {"list": list(range(100))}}],
    "msgpack": [None, 0, -1, 2**63 - 1, 1.5, "text ✓", b"\x00\xff", [1, [2, 3]], {"a": [1, 2], "b": {"c": None}}],
    "json": [None, 0, -1, 1.5, "text ✓", [1, [2, 3]], {"a": [1, 2], "b": {"c": None}}, True],
    "raw": [b"", b"\x00", b"bytes" * 100],
}

_SIZES = [0, 1, 4095, 4096, 4097, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 1 * MiB]


def pickle_channel(ch: Channel) -> bytes:
    import pickle

    return pickle.dumps(ch)


class ContractFixtures:
    """The contract's per-test machinery, for any test class about one backend: ``scheme`` (and
    ``options``, ``variant_capabilities``), :meth:`make_pair` / :meth:`connect_pair` with every
    end closed after the test (:meth:`own`), :meth:`fresh_url`, and ``self.tmpdir`` (a private
    directory, checked empty and removed after the test)."""

    scheme: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    #: Capabilities of the variant under test when ``options`` change them (e.g. a seqpacket mode);
    #: None: the backend's declared capabilities.  The meta-test reads this too.
    variant_capabilities: ClassVar[Capabilities | None] = None

    tmpdir: str
    _owned: list[Channel | Listener]

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

    def connect_pair(self, lst: Listener | None = None, **options: Any) -> tuple[Channel, Channel]:
        """``(client, server)``: a connection through *lst* (a fresh listener, kept open until the
        test ends, if None)."""
        opts = {**self.options, **options}
        listener = lst if lst is not None else self.own(ipckit.listen(self.fresh_url(), **opts))
        client = ResultThread(lambda: ipckit.connect(listener.url, timeout=10.0, **opts), name="ipckit-connect")
        client.start()
        try:
            server = self.own(listener.accept(timeout=10.0))
        finally:
            client.join(15.0)
        return self.own(client.outcome()), server


class ChannelContract(ContractFixtures, OptionRules, ErrorBoundaries, InterruptContract, ThreadContract):
    """What every channel does, on every backend (the promises of docs/contract.md §3).

    Subclasses set ``scheme`` (and optionally ``options``: extra keyword options for every
    channel).  Helpers (:class:`ContractFixtures`): :meth:`make_pair` (closed automatically after
    the test), :meth:`fresh_url`, ``self.tmpdir`` (a private directory, checked empty and removed
    after the test).
    """

    #: ``max_message_size`` the size-limit tests set (kept small so they stay fast).
    limit_size: ClassVar[int] = 256 * KiB

    def limit(self, wanted: int) -> int:
        """*wanted* capped by the transport's own message limit."""
        hard = self.caps.max_message_size
        return wanted if hard is None else min(wanted, hard)

    def _expect_timeout(self, call: Callable[[], Any], timeout: float, exc: type[BaseException]) -> None:
        with takes_timeout(timeout), pytest.raises(exc):
            call()

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
            sender = ResultThread(functools.partial(a.send, {"x": arr, "tag": "t"}, timeout=10.0))
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
        data = blob(1000)
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
        data = blob(size)
        sender = ResultThread(lambda: send_each(a, [data] * 3))
        sender.start()
        for _ in range(3):
            assert b.recv_bytes(timeout=10.0) == data
        sender.outcome()

    def test_ordering_10000_messages(self) -> None:
        a, b = self.make_pair()
        n = 10_000
        sender = ResultThread(lambda: send_each(a, (i.to_bytes(4, "little") * (i % 7) for i in range(n))))
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
        exact = blob(limit)
        sender = ResultThread(lambda: a.send_bytes(exact, timeout=10.0))
        sender.start()
        assert b.recv_bytes(timeout=10.0) == exact
        sender.outcome()
        with pytest.raises(MessageTooLarge):
            a.send_bytes(blob(limit + 1), timeout=5.0)
        with pytest.raises(MessageTooLarge):
            a.send(blob(limit + 1), timeout=5.0)  # serialized form is larger still
        # Nothing of the refused messages reached the peer; the channel still works.
        with pytest.raises(RecvTimeout):
            b.recv_bytes(timeout=0)
        a.send_bytes(b"next", timeout=5.0)
        assert b.recv_bytes(timeout=5.0) == b"next"

    # ------------------------------------------------------------------ receive variants
    def test_recv_bytes_into(self) -> None:
        a, b = self.make_pair()
        data = blob(3000)
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
        data = blob(5000)
        a.send_bytes(data, timeout=5.0)
        a.send_bytes(b"second", timeout=5.0)
        view = b.recv_view(timeout=5.0)
        assert isinstance(view, memoryview) and view.readonly
        assert view.tobytes() == data
        assert bytes(b.recv_view(timeout=5.0)) == b"second"

    def test_poll_while_a_view_is_held(self) -> None:
        # The message a recv_view returned was received: poll() answers for the next one only,
        # and leaves the view valid (shm:// once answered True for the held message itself).
        a, b = self.make_pair()
        a.send_bytes(b"first", timeout=5.0)
        view = b.recv_view(timeout=5.0)
        assert not b.poll(0.0)
        assert not b.poll(0.05)
        a.send_bytes(b"second", timeout=5.0)
        assert b.poll(5.0)
        assert bytes(view) == b"first"
        assert b.recv_bytes(timeout=5.0) == b"second"

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
        waiter = ResultThread(lambda: b.recv(timeout=timeout), name="ipckit-blocked-recv")
        waiter.start()
        wait_until_blocked(waiter)
        start = time.monotonic()
        b.close()
        with pytest.raises(ChannelClosed):
            waiter.outcome()
        assert waiter.finished_at - start <= 0.5, f"woke after {waiter.finished_at - start:.3f} s"

    def test_close_from_another_thread_wakes_poll(self) -> None:
        _a, b = self.make_pair()
        waiter = ResultThread(lambda: b.poll(10.0), name="ipckit-blocked-poll")
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

        r1, r2 = ResultThread(receive, "ipckit-recv-1"), ResultThread(receive, "ipckit-recv-2")
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

        s1, s2 = ResultThread(lambda: send(0), "ipckit-send-1"), ResultThread(lambda: send(1), "ipckit-send-2")
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
        # Sends happen while nobody receives: stay within what one direction holds unread.
        room_bytes, room_messages = self.caps.buffered_bytes, self.caps.buffered_messages

        def room(queued: deque[bytes]) -> bool:
            return ((room_bytes is None or sum(map(len, queued)) + 2000 <= room_bytes)
                    and (room_messages is None or len(queued) < room_messages))

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

            @precondition(lambda self: room(self.ab))
            @rule(data=st.binary(max_size=2000))
            def send_ab(self, data: bytes) -> None:
                self.a.send_bytes(data, timeout=5.0)
                self.ab.append(data)

            @precondition(lambda self: duplex and room(self.ba))
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
        run_state_machine_as_test(Model, settings=Model.TestCase.settings)  # type: ignore[no-untyped-call,unused-ignore]
