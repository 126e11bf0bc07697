"""Channel and Listener: the public methods, written once.

The contract lives here, in prose.  Backends implement a few private hooks that take bytes and an
absolute monotonic deadline; everything else — state checks, ``timeout`` → deadline, the
serializer, thread safety, translation of OS errors — is done once, in these base classes.

Hooks a backend writes (see the docstrings of each); the four required ones are abstract, so a
channel class that misses one raises TypeError when it is instantiated:

``_send_message(view, deadline)``  deliver one whole message
``_recv_message(deadline)``        return one whole message as a buffer the caller may keep
``_poll(deadline)``                True when a message (or end of channel) is waiting
``_close()``                       release everything (called once, with no caller blocked)
optional: ``_send_parts``, ``_recv_message_into``, ``_recv_view``, ``_wakeup``, ``_fileno``,
``_doorbell`` (what ``ipckit.wait`` / ``ipckit.aio`` sleep on where there is no descriptor:
``ipckit.waiting.Doorbell``; docs/aio.md)
hand-off to a child process (``ipckit._handoff`` drives them): ``__reduce__`` for spawn and
forkserver (built with ``_handoff.reduce_fds`` / ``reduce_for_spawn``), and for fork
``_fork_handed`` / ``_fork_adopt`` / ``_fork_release``

A Listener's required hooks, ``_accept(deadline)`` and ``_close()``, are abstract too.
"""

from __future__ import annotations

import atexit
import os
import struct
import threading
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final

from . import _handoff
from .deadline import Deadline, deadline_from, remaining
from .errors import (
    BufferTooSmall,
    ChannelClosed,
    ChannelTimeout,
    ConfigurationError,
    DecodeError,
    EncodeError,
    EndOfChannel,
    IPCError,
    MessageTooLarge,
    ProtocolError,
    RecvTimeout,
    ResourceExhausted,
    SendTimeout,
    UnsafeSerializer,
    UnsupportedOperation,
    from_oserror,
)
from .options import Capabilities, Options
from .serializers import Buffer, Serializer, decoder, encoder, get_serializer

__all__ = ["Channel", "Listener", "resolve_serializer", "as_byte_view", "USE_DEFAULT"]

#: Sentinel meaning "use the channel's ``default_timeout`` option".
USE_DEFAULT: Any = type("UseDefault", (), {"__repr__": lambda self: "USE_DEFAULT"})()

_live_channels: weakref.WeakSet[Channel] = weakref.WeakSet()
_CLOSE_WAIT = 2.0  # seconds close() waits for a blocked caller to leave before releasing anyway


def resolve_serializer(options: Options, peer_trusted: bool) -> Serializer:
    """Pick the serializer for a channel and apply the trust rule of docs/contract.md §5.

    *peer_trusted*: the backend proved the peer is the same user.  For most schemes that proof is
    only that nobody else can open the channel's objects (owner-only modes, owner-checked on
    open), so a ``mode`` that grants group or other bits voids it, on every end of the channel: a
    member of the group could map or open the objects and write into the channel (issue 10, B.9).
    A scheme that proves each peer's uid by other means (unix://: ``SO_PEERCRED``) declares
    ``mode_voids_trust = False`` on its options class; every other one, present or future, gets
    the safe reading.  This function is the one place the rule lives: the factories call it
    before any OS object exists (so the refusal leaves nothing behind), every channel when it is
    built.

    Default: pickle where the peer is proven trusted (or ``trust=True``), else msgpack.
    Raises:
        UnsafeSerializer: an untrusted serializer (pickle) on a channel whose peer is not trusted.
        SerializerUnavailable / ConfigurationError: unknown name or bad object.
    """
    why = "this channel's peer is not proven to be the same user"
    if peer_trusted and options.mode & 0o077 and getattr(options, "mode_voids_trust", True):
        peer_trusted = False
        why = (f"mode={options.mode:#o} lets other users open this channel's objects, so its peer is not proven "
               "to be the same user")
    trusted = peer_trusted or options.trust
    spec = options.serializer
    if spec is None:
        spec = "pickle" if trusted else "msgpack"
    ser = get_serializer(spec)
    if not getattr(ser, "trusted", False) and not trusted:
        raise UnsafeSerializer(
            f"serializer {getattr(ser, 'name', ser)!r} can run code on receive, and {why}; use "
            "serializer='msgpack' or 'json', authenticate the peer, or pass trust=True if you trust it"
        )
    return ser


def as_byte_view(data: Any) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer.

    Raises:
        EncodeError (a TypeError): *data* is not a contiguous bytes-like object.
    """
    try:
        view = memoryview(data)
    except TypeError as exc:
        raise EncodeError(
            f"send_bytes needs a bytes-like object (bytes, bytearray, memoryview, numpy array), "
            f"not {type(data).__name__}; use send() to serialize other objects"
        ) from exc
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.c_contiguous:
        raise EncodeError("send_bytes needs a C-contiguous buffer; copy it first (e.g. numpy.ascontiguousarray)")
    return view.cast("B")


def _nbytes(parts: Sequence[Buffer]) -> int:
    return sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)


#: ``blocking=True`` for the lock acquisitions stored from C (``map(lock.acquire, _BLOCK, (timeout,))``).
_BLOCK: Final = (True,)
#: ``threading.Lock.acquire`` unbound, to take several locks in one C-level ``map``.
_lock_acquire: Final = type(threading.Lock()).acquire


class Channel(ABC):
    """A connected endpoint that carries whole messages in both directions (if duplex).

    Semantics every backend keeps (docs/contract.md §3; how each is kept: docs/design.md §1):

    * ``recv`` returns exactly one whole message the peer sent, byte-identical, or raises; never a
      partial, merged or stale one.  ``b""`` is a real empty message.
    * Messages from one sender arrive in send order, none lost or duplicated, while both live.
    * Every blocking call takes ``timeout``: ``None`` waits forever, ``0`` polls, ``> 0`` is seconds;
      it becomes one monotonic deadline that signals and retries never extend.  Without a
      ``timeout`` argument the channel's ``default_timeout`` option applies.
    * ``close()`` is idempotent, releases everything and wakes callers blocked in other threads,
      which then raise :class:`ChannelClosed`.
    * One thread may send while another receives.  Two threads sending (or receiving) at once are
      serialised; neither corrupts a message.
    * Only ipckit errors leave these methods; the OS or library error is kept as ``__cause__``.
    * A forked process uses the ends it was handed as ``multiprocessing.Process`` arguments; on any
      other end it inherited, every call raises :class:`UnsupportedOperation` and ``close()`` is
      silent, so the parent's channel is never touched (``ipckit._handoff``).

    Channels are made by :func:`ipckit.pair`, :func:`ipckit.connect` and
    :meth:`Listener.accept`, never constructed directly.
    """

    #: What this channel can do; set by each backend's channel class.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, options: Options, *, peer_trusted: bool) -> None:
        self._closed = True  # stays true until fully built, so __del__ of a half-made channel is quiet
        self._url = url
        self._options = options
        ser = resolve_serializer(options, peer_trusted)
        self._serializer = ser
        # One call each way (serializers.encoder / decoder): an object costs its serializer's time.
        self._encode = encoder(ser)
        self._decode = decoder(ser)
        self._max = options.max_message_size
        # What a send may carry: our own limit, lowered to the peer's once its hello told us
        # (issue 10, A.3), so an oversized message is refused here and never breaks the receiver.
        self._send_max = self._max
        self._peer_max: int | None = None
        self._default_timeout = options.default_timeout
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._pid = os.getpid()
        # True once this end was handed to a child process: closing this process's copy then only
        # releases it; saying goodbye to the peer is the new owner's job.
        self._handed_off = False
        self._closed = False
        _live_channels.add(self)

    # ------------------------------------------------------------------ properties
    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def url(self) -> str:
        """The address of this channel (without options)."""
        return self._url

    @property
    def serializer(self) -> Serializer:
        """The serializer ``send``/``recv`` use."""
        return self._serializer

    @property
    def max_message_size(self) -> int:
        """Largest message this channel sends or accepts, in bytes."""
        return self._max

    # ------------------------------------------------------------------ sending
    def send(self, obj: Any, timeout: float | None = USE_DEFAULT) -> None:
        """Serialize *obj* and deliver it as one message.

        Raises:
            ChannelClosed: this side was closed.
            EncodeError: the serializer failed; nothing was sent, the channel stays usable.
            MessageTooLarge: the encoded message exceeds ``max_message_size``; nothing was sent.
            SendTimeout: the deadline passed; the message was not delivered.
            PeerDied / ChannelBroken / EndOfChannel: the peer is gone.
        """
        if self._closed:
            raise self._closed_error("send")
        try:
            data = self._encode(obj)
        except IPCError:
            raise
        except Exception as exc:
            raise self._encode_error(obj, exc) from exc
        if type(data) is list:
            self._send_encoded_parts(data, timeout)
        else:
            self._send_one(data, timeout)  # the path send_bytes takes, fast path included

    def _encode_error(self, obj: Any, exc: Exception) -> EncodeError:
        return EncodeError(f"cannot serialize {type(obj).__name__} with {self._serializer.name}: {exc}")

    def _send_encoded_parts(self, parts: list[Any], timeout: float | None) -> None:
        """Send a message of several buffers (pickle 5 out-of-band) as one, without joining them."""
        views = [as_byte_view(p) for p in parts]
        total = _nbytes(views)
        if total > self._send_max:
            raise MessageTooLarge(self._too_large(total))
        self._locked_send(views, total, timeout)

    def send_bytes(self, data: Any, timeout: float | None = USE_DEFAULT) -> None:
        """Deliver the bytes of *data* (any C-contiguous buffer) as one message, unserialized.

        Raises:
            ChannelClosed, MessageTooLarge, SendTimeout, PeerDied, ChannelBroken: as :meth:`send`.
            EncodeError: *data* is not a contiguous bytes-like object (also a ``TypeError``).
        """
        if self._closed:
            raise self._closed_error("send")
        self._send_one(data, timeout)

    def _send_one(self, data: Any, timeout: float | None) -> None:
        """Send one buffer as a message: what :meth:`send` (one serialized part) and
        :meth:`send_bytes` both call, so the object path and the bytes path are one path.

        A backend with a per-message fast path overrides this (falling back to this method for
        anything its fast path does not take).
        """
        self._send_view(memoryview(data) if type(data) is bytes else as_byte_view(data), timeout)

    def _too_large(self, n: int) -> str:
        if n > self._max or self._peer_max is None:
            return (f"message of {n} bytes exceeds max_message_size={self._max} on {self._url}; "
                    "raise max_message_size on both ends or send smaller messages")
        return (f"message of {n} bytes exceeds the peer's max_message_size={self._peer_max} on {self._url} "
                f"(this end allows {self._max}); nothing was sent: raise max_message_size on the "
                "receiving end or send smaller messages")

    def _learn_peer_limit(self, peer_max: int) -> None:
        """Record the peer's ``max_message_size`` from its hello; sends above it are then refused."""
        self._peer_max = peer_max
        self._send_max = min(self._max, peer_max)

    def _send_view(self, view: memoryview, timeout: float | None) -> None:
        n = view.nbytes
        if n > self._send_max:
            raise MessageTooLarge(self._too_large(n))
        self._locked_send(view, n, timeout)

    def _locked_send(self, payload: memoryview | list[memoryview], n: int, timeout: float | None) -> None:
        """Run the send hook under the send lock: one view (``_send_message``) or parts (``_send_parts``)."""
        if timeout is USE_DEFAULT:
            timeout = self._default_timeout
        lock = self._send_lock
        deadline = None if timeout is None else deadline_from(timeout)  # None also beyond deadline.MAX_WAIT
        held: list[bool] = []
        try:
            # The lock's answer is stored from C (list.extend over a map): an exception a signal
            # handler raises as acquire() returns then never leaves the lock taken with nobody to
            # release it (every later send would wait for "another sending thread").
            held.extend(map(lock.acquire, _BLOCK, (-1 if deadline is None else remaining(deadline) or 0.0,)))
            if not held[0]:
                raise SendTimeout(f"send timed out after {timeout} s waiting for another sending thread")
            if self._closed:
                raise self._closed_error("send")
            if type(payload) is list:
                self._send_parts(payload, n, deadline)
            else:
                self._send_message(payload, deadline)  # type: ignore[arg-type]
        except IPCError:
            raise
        except OSError as exc:
            raise from_oserror(exc, f"send on {self._url}") from exc
        except MemoryError as exc:
            raise ResourceExhausted(f"out of memory sending {n} bytes on {self._url}") from exc
        finally:
            if held and held[0]:
                lock.release()

    # ------------------------------------------------------------------ receiving
    def recv(self, timeout: float | None = USE_DEFAULT) -> Any:
        """Receive one message and deserialize it.

        Raises:
            ChannelClosed: this side was closed (also when closed by another thread while waiting).
            EndOfChannel: the peer closed cleanly and every message was received.
            PeerDied: the peer crashed; the messages it fully sent were received first.
            RecvTimeout: no message before the deadline; nothing was consumed.
            DecodeError: the message could not be deserialized; it is consumed, the channel stays usable.
            MessageTooLarge / ProtocolError / ChannelBroken: the peer broke the protocol.
        """
        data = self._recv_payload(timeout)
        try:
            return self._decode(data)
        except IPCError:
            raise
        except Exception as exc:
            raise self._decode_error(data, exc) from None

    def _decode_error(self, data: Any, exc: Exception) -> DecodeError:
        """The DecodeError for *exc*, the serializer's own error: its message and the printed chain
        carry the size and the error's type only, since serializers quote the bytes they choked on
        (msgpack's ExtraData, UnicodeDecodeError) and a payload must never reach a log; the error
        itself stays reachable as ``.serializer_error`` (callers raise it ``from None``)."""
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        err = DecodeError(f"cannot decode a {n}-byte message with {self._serializer.name}: {type(exc).__name__} "
                          "(do both ends use the same serializer? the serializer's own error, which may quote "
                          "the message, is in .serializer_error)")
        err.serializer_error = exc
        return err

    def recv_bytes(self, timeout: float | None = USE_DEFAULT) -> bytes:
        """Receive one message as ``bytes``, unserialized. Raises as :meth:`recv` (but never DecodeError)."""
        data = self._recv_payload(timeout)
        return data if type(data) is bytes else bytes(data)

    def _recv_payload(self, timeout: float | None) -> Any:
        """One whole message (bytes, bytearray or a memoryview the caller may keep): what
        :meth:`recv` deserializes and :meth:`recv_bytes` returns, so both take one path.

        A backend with a per-message fast path overrides this (falling back to this method).
        """
        return self._locked_recv(timeout, None)

    def recv_bytes_into(self, buf: Any, timeout: float | None = USE_DEFAULT) -> int:
        """Receive one message into the writable buffer *buf*; return its length.

        Copy-free where the backend allows.

        Raises:
            BufferTooSmall: the message is larger than *buf*; it is kept in the error's ``message``.
            TypeError: *buf* is not a writable contiguous buffer.
            ChannelClosed, EndOfChannel, PeerDied, RecvTimeout, ChannelBroken: as :meth:`recv_bytes`.
        """
        try:
            view = memoryview(buf)
        except TypeError:
            raise TypeError(f"recv_bytes_into needs a writable buffer, not {type(buf).__name__}") from None
        if view.readonly:
            raise TypeError("recv_bytes_into needs a writable buffer (bytearray, numpy array, ...)")
        if not (view.format == "B" and view.ndim == 1):
            if not view.c_contiguous:
                raise TypeError("recv_bytes_into needs a C-contiguous buffer")
            view = view.cast("B")
        return int(self._locked_recv(timeout, view))

    def recv_view(self, timeout: float | None = USE_DEFAULT) -> memoryview:
        """Receive one message as a read-only memoryview, copy-free where the backend allows.

        The view is valid until the next receive on this channel (or close); copy what you keep.
        Raises as :meth:`recv_bytes`.
        """
        result = self._locked_recv(timeout, _VIEW)
        view = result if isinstance(result, memoryview) else memoryview(result)
        return view.toreadonly()

    def _locked_recv(self, timeout: float | None, into: Any) -> Any:
        if self._closed:
            raise self._closed_error("recv")
        if timeout is USE_DEFAULT:
            timeout = self._default_timeout
        lock = self._recv_lock
        deadline = None if timeout is None else deadline_from(timeout)  # None also beyond deadline.MAX_WAIT
        held: list[bool] = []
        try:
            held.extend(map(lock.acquire, _BLOCK, (-1 if deadline is None else remaining(deadline) or 0.0,)))
            if not held[0]:  # (stored from C: see _locked_send)
                raise RecvTimeout(f"recv timed out after {timeout} s waiting for another receiving thread")
            if self._closed:
                raise self._closed_error("recv")
            if into is None:
                return self._recv_message(deadline)
            if into is _VIEW:
                return self._recv_view(deadline)
            return self._recv_message_into(into, deadline)
        except IPCError:
            raise
        except OSError as exc:
            raise from_oserror(exc, f"recv on {self._url}") from exc
        except struct.error as exc:
            raise ProtocolError(f"malformed data from the peer on {self._url}: {exc}") from exc
        except MemoryError as exc:
            raise ResourceExhausted(f"out of memory receiving on {self._url}") from exc
        finally:
            if held and held[0]:
                lock.release()

    def poll(self, timeout: float | None = 0.0) -> bool:
        """True if :meth:`recv` would return (or raise EndOfChannel / PeerDied) without blocking.

        Waits up to *timeout* seconds (``None``: until something arrives).

        Raises:
            ChannelClosed: this side was closed.
        """
        if self._closed:
            raise self._closed_error("poll")
        deadline = deadline_from(timeout)
        try:
            return self._poll(deadline)
        except IPCError:
            raise
        except OSError as exc:
            raise from_oserror(exc, f"poll on {self._url}") from exc

    def fileno(self) -> int:
        """A descriptor that selectors / asyncio report readable when :meth:`poll` would be true.

        Raises:
            UnsupportedOperation: the backend has no such descriptor (``capabilities.selectable``).
            ChannelClosed: this side was closed.
        """
        if self._closed:
            raise self._closed_error("fileno")
        return self._fileno()

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close this end: idempotent, always releases, wakes callers blocked in other threads.

        The peer then receives :class:`EndOfChannel` after the messages already sent.
        """
        if self._closed:
            return
        self._closed = True
        _live_channels.discard(self)
        try:
            self._wakeup()
        except Exception:  # waking is best effort; releasing below is not
            pass
        # Wait (bounded) for callers blocked in other threads to leave, so _close never pulls a
        # resource out from under a running syscall.
        # (The answers are stored from C, as in _locked_send: an interrupt never leaves one taken.)
        got: list[bool] = []
        try:
            got.extend(map(_lock_acquire, (self._send_lock, self._recv_lock), _BLOCK * 2, (_CLOSE_WAIT,) * 2))
            self._close()
        except IPCError:
            raise
        except OSError as exc:
            raise from_oserror(exc, f"close of {self._url}") from exc
        finally:
            if len(got) > 1 and got[1]:
                self._recv_lock.release()
            if got and got[0]:
                self._send_lock.release()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        """Yield received messages until the peer closes (EndOfChannel ends the loop)."""
        while True:
            try:
                yield self.recv()
            except EndOfChannel:
                return

    def __del__(self) -> None:
        # A forked child that never took the channel over must not close the parent's
        # (that would tell the peer "closed"); its descriptors go with the process.
        if getattr(self, "_closed", True) or self._pid != os.getpid():
            return
        # Close first: under -W error the warning raises, and must not keep the resources open.
        try:
            self.close()
        except Exception:
            pass
        warnings.warn(f"unclosed ipckit channel {self._url}", ResourceWarning, stacklevel=2, source=self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._url} {state} serializer={self._serializer.name}>"

    def __reduce__(self) -> Any:
        # Backends that can travel override this with ipckit._handoff.reduce_fds / reduce_for_spawn.
        raise TypeError(_handoff.refusal(self))

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        """Deliver *view* as one whole message before *deadline* (None = no limit).

        Called with the send lock held, the size already checked.  Raise SendTimeout if the deadline
        passes (after marking the channel broken if part of the message left), PeerDied /
        EndOfChannel if the peer is gone, ChannelClosed if woken by close().
        """

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        """Deliver several buffers as one message; override to avoid joining them."""
        self._send_message(memoryview(b"".join(views)), deadline)

    @abstractmethod
    def _recv_message(self, deadline: Deadline) -> Buffer:
        """Return the next whole message as a buffer the caller may keep (bytes, bytearray, ...).

        Raise RecvTimeout at the deadline (consuming nothing), EndOfChannel after a clean close,
        PeerDied after a crash, ChannelClosed if woken by close().
        """

    def _recv_message_into(self, view: memoryview, deadline: Deadline) -> int:
        """Receive into *view*; override to avoid the intermediate copy."""
        data = self._recv_message(deadline)
        n = len(data)
        if n > view.nbytes:
            raise BufferTooSmall(
                f"message of {n} bytes does not fit the {view.nbytes}-byte buffer; it is in .message",
                bytes(data),
            )
        view[:n] = data
        return n

    def _recv_view(self, deadline: Deadline) -> Buffer:
        """Return the next message, possibly as a view valid until the next receive."""
        return self._recv_message(deadline)

    @abstractmethod
    def _poll(self, deadline: Deadline) -> bool:
        """True when a message or end-of-channel is waiting; may wait until *deadline*."""

    def _wakeup(self) -> None:  # noqa: B027 - optional hook, doing nothing by default
        """Wake threads blocked in hooks so they see ``_closed`` (default: hooks wait in slices)."""

    @abstractmethod
    def _close(self) -> None:
        """Release every resource; called once, after blocked callers left (or 2 s passed)."""

    def _fileno(self) -> int:
        raise UnsupportedOperation(f"{self._url} has no selectable descriptor")

    # ------------------------------------------------------------------ forked copies
    # ipckit._handoff's at-fork handler calls _fork_handed, _fork_adopt and _disown_after_fork
    # (spawn and forkserver pickle instead: see __reduce__).  A forked process uses only the ends
    # it was handed; every other copy it inherited is disowned here, once, for every backend.

    #: True in a forked process for an end it inherited without a hand-off: every call raises
    #: UnsupportedOperation (through the closed checks: nothing is added to the hot paths).
    _fork_copy = False

    def _closed_error(self, call: str) -> IPCError:
        """The error of *call* on an end that is not open in this process."""
        if self._fork_copy:
            return UnsupportedOperation(
                f"{call} on {self._url} in process {os.getpid()}: this end was inherited through fork without "
                "being handed over; pass it as an argument of multiprocessing.Process, or connect to its URL")
        return ChannelClosed(f"{call} on closed channel {self._url}")

    def _fork_handed(self) -> None:
        """Parent, before a fork: this end is an argument of the multiprocessing child being started."""
        self._handed_off = True

    def _fork_adopt(self) -> None:
        """Child, after a fork: this end was handed over and is now this process's to use and close.

        The locks are new: a parent thread may have been inside a send or receive at the fork, and
        no thread of this process will ever release what it held.  Backends that keep more
        per-process state extend this (calling it first).
        """
        self._handed_off = False
        self._pid = os.getpid()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()

    def _disown_after_fork(self, multiprocessing_child: bool) -> None:
        """Child, after a fork: this end was not handed over.  From now on every call raises
        UnsupportedOperation and ``close()`` does nothing (no goodbye: the parent's channel is not
        this process's to end); then the backend drops this process's copies (``_fork_release``)."""
        self._fork_copy = True
        self._handed_off = True
        self._closed = True
        try:
            self._fork_release(multiprocessing_child)
        except Exception:  # dropping a copy is best effort; the child must start regardless
            pass

    def _fork_release(self, multiprocessing_child: bool) -> None:  # noqa: B027 - optional hook, doing nothing by default
        """Child, after a fork, for an end it was not handed (already marked closed): drop this
        process's copies of what the end holds, silently, so the peer still sees the parent's close
        or death.  Called with no lock (a parent thread may have held them at the fork); must never
        write to the channel.  Default: nothing (the copies go with the process)."""


_VIEW = object()


class Listener(ABC):
    """Owns a named endpoint (creates it, later removes it) and hands out one channel per peer.

    ``accept`` blocks until a peer connects; ``close`` removes the endpoint (only the owner ever
    removes it, once) and wakes a blocked ``accept``.

    Threads: accepts are serialised by one lock (a second thread waits, within its own deadline),
    as sends and receives are on a Channel.  ``close()`` marks the listener closed, wakes a
    blocked accept (``_wakeup``), waits up to 2 s for it to leave and only then runs ``_close``,
    so no accept runs on resources being released.
    """

    def __init__(self, url: str, options: Options) -> None:
        self._closed = False
        self._url = url
        self._options = options
        self._accept_lock = threading.Lock()
        # Channels accepted by ipckit.wait()'s probe of a listener without a descriptor
        # (waiting.ready_now): the next accept() hands them out first, so a probe loses nothing.
        self._accepted: list[Channel] = []

    @property
    def url(self) -> str:
        """The address peers connect to."""
        return self._url

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def accept(self, timeout: float | None = USE_DEFAULT) -> Channel:
        """Wait for the next peer and return a channel to it.

        Raises:
            ChannelClosed: the listener was closed.
            ChannelTimeout: no peer before the deadline.
            PeerRejected: a peer failed the credential or authentication check (the listener
                stays usable).
        """
        if self._closed:
            raise ChannelClosed(f"accept on closed listener {self._url}")
        if self._accepted:
            return self._accepted.pop(0)
        if timeout is USE_DEFAULT:
            timeout = self._options.default_timeout
        deadline = deadline_from(timeout)
        left = remaining(deadline)
        held: list[bool] = []
        try:
            held.extend(map(self._accept_lock.acquire, _BLOCK, (-1 if left is None else left,)))  # (see Channel)
            if not held[0]:
                raise ChannelTimeout(f"accept on {self._url} timed out waiting for another accepting thread")
            if self._closed:
                raise ChannelClosed(f"accept on closed listener {self._url}")
            return self._accept(deadline)
        except IPCError:
            raise
        except OSError as exc:
            raise from_oserror(exc, f"accept on {self._url}") from exc
        finally:
            if held and held[0]:
                self._accept_lock.release()

    def fileno(self) -> int:
        """Descriptor that is readable when ``accept`` would not block, where the backend has one."""
        if self._closed:
            raise ChannelClosed(f"fileno on closed listener {self._url}")
        return self._fileno()

    def _stash(self, ch: Channel) -> None:
        """Keep *ch*, accepted by a readiness probe, for the next :meth:`accept`."""
        self._accepted.append(ch)

    def close(self) -> None:
        """Stop listening and remove the endpoint; idempotent."""
        if self._closed:
            return
        self._closed = True
        for ch in self._accepted:  # probed but never taken: nobody else will close them
            try:
                ch.close()
            except Exception:
                pass
        self._accepted.clear()
        got: list[bool] = []
        try:
            self._wakeup()
            got.extend(map(self._accept_lock.acquire, _BLOCK, (2.0,)))  # (stored from C: see Channel)
            self._close()
        except IPCError:
            raise
        except OSError as exc:
            raise from_oserror(exc, f"close of listener {self._url}") from exc
        finally:
            if got and got[0]:
                self._accept_lock.release()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:  # close first: under -W error the warning raises
            self.close()
        except Exception:
            pass
        warnings.warn(f"unclosed ipckit listener {self._url}", ResourceWarning, stacklevel=2, source=self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._url} {'closed' if self._closed else 'listening'}>"

    def __reduce__(self) -> Any:
        raise TypeError(f"a Listener ({self._url}) cannot be pickled; connect to its URL from the other process")

    @abstractmethod
    def _accept(self, deadline: Deadline) -> Channel:
        """Wait for the next peer (called with the accept lock held; ``_closed`` was False)."""

    def _wakeup(self) -> None:  # noqa: B027 - optional hook, doing nothing by default
        """Wake an ``_accept`` blocked in another thread (it then sees ``_closed``); default: none."""

    @abstractmethod
    def _close(self) -> None:
        """Release the endpoint (after a blocked accept left, or 2 s passed)."""

    def _fileno(self) -> int:
        raise UnsupportedOperation(f"{self._url} has no selectable descriptor")


def _close_all_at_exit() -> None:
    # A process that exits normally closes its channels cleanly, so peers see EndOfChannel
    # rather than PeerDied.  A forked process holds only what it created or adopted here (the
    # at-fork handler empties the set in the child).
    for ch in list(_live_channels):
        try:
            ch.close()
        except Exception:
            pass


atexit.register(_close_all_at_exit)


# The fork/spawn hand-off lives in ``_handoff``; it gets the live set and the close-all from here
# (no import cycle).  _handoff also runs the close-all at the end of multiprocessing children, which
# end with os._exit under fork and forkserver (no atexit there).
_handoff.install(_live_channels, Channel, _close_all_at_exit)

_ = ConfigurationError  # re-exported for backends
