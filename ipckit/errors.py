"""The ipckit exception tree (docs/contract.md, section 4).

Every public method raises only these; the OS or library error that caused one is kept as
``__cause__``.  Where the meaning matches a builtin, the class also subclasses it, so
``except TimeoutError`` or ``except FileNotFoundError`` keep working.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "IPCError",
    "ChannelClosed",
    "EndOfChannel",
    "ChannelBroken",
    "PeerDied",
    "WorkerDied",
    "ChannelBusy",
    "ChannelTimeout",
    "SendTimeout",
    "RecvTimeout",
    "TaskTimeout",
    "MessageTooLarge",
    "BufferTooSmall",
    "ProtocolError",
    "SerializationError",
    "EncodeError",
    "DecodeError",
    "UnsafeSerializer",
    "UnsupportedOperation",
    "EndpointError",
    "EndpointNotFound",
    "EndpointExists",
    "ConnectFailed",
    "PermissionDenied",
    "PeerRejected",
    "IncompatibleEndpoint",
    "ResourceExhausted",
    "ConfigurationError",
    "UnknownScheme",
    "InvalidAddress",
    "BackendUnavailable",
    "SerializerUnavailable",
]
# ``SecurityWarning`` is a warning, not an error, so it stays out of ``__all__`` too (import it by name).
# ``from_oserror``, ``errno_of`` and ``again`` below are for backends (docs/writing-a-backend.md), not for
# users: importable by name, but not part of ``__all__`` (so not re-exported by ``ipckit``).


class IPCError(Exception):
    """Base of every error ipckit raises."""


class ChannelClosed(IPCError):
    """The channel was closed by this side; no operation is possible any more."""


class EndOfChannel(IPCError):
    """The peer closed cleanly and every message it sent has been received."""


class ChannelBroken(IPCError):
    """The peer or the OS failed; the channel cannot carry more messages.

    ``__cause__`` holds the underlying OS error where there is one.
    """


class PeerDied(ChannelBroken):
    """The peer ended without closing (crash, SIGKILL); messages it had fully sent were delivered first."""


class WorkerDied(PeerDied):
    """A worker process of an ``ipckit.futures`` pool ended while it ran this task.

    Only the task it was running fails with this; the pool starts a replacement and carries on.
    ``pid`` is the worker's process id, ``exitcode`` its exit status (negative: killed by signal
    ``-exitcode``; None if it could not be reaped), ``signal`` that signal's number or None.
    """

    def __init__(self, msg: str, pid: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(msg)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = -exitcode if exitcode is not None and exitcode < 0 else None

    def __reduce__(self) -> tuple[type[WorkerDied], tuple[str, int | None, int | None]]:
        # The attributes are not in args: without this, a copy (again(), pickle) would lose them.
        return type(self), (str(self), self.pid, self.exitcode)


class ChannelBusy(IPCError):
    """Two threads used one direction of the channel at once, which the channel does not allow."""


class ChannelTimeout(IPCError, TimeoutError):
    """A blocking call reached its deadline."""


class SendTimeout(ChannelTimeout):
    """``send`` reached its deadline; the message was not delivered (or the stream is now broken)."""


class RecvTimeout(ChannelTimeout):
    """``recv`` reached its deadline with no message; nothing was consumed."""


class TaskTimeout(ChannelTimeout):
    """An ``ipckit.futures`` task ran longer than its timeout; its worker was killed (and replaced).

    ``pid`` is the killed worker's process id, ``timeout`` the limit in seconds.
    """

    def __init__(self, msg: str, pid: int | None = None, timeout: float | None = None) -> None:
        super().__init__(msg)
        self.pid = pid
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[str, int | None, float | None]]:
        return type(self), (str(self), self.pid, self.timeout)


class MessageTooLarge(IPCError, ValueError):
    """A message exceeds ``max_message_size`` (or the transport's limit); the channel stays usable."""


class BufferTooSmall(MessageTooLarge):
    """``recv_bytes_into`` got a message larger than the buffer; the message is kept in ``.message``."""

    def __init__(self, msg: str, message: bytes) -> None:
        super().__init__(msg)
        self.message = message


class ProtocolError(IPCError):
    """The peer sent bytes that break the wire protocol (magic, version, length, sequence, checksum)."""


class SerializationError(IPCError):
    """A serializer failed; the channel stays usable."""


class EncodeError(SerializationError, TypeError):
    """The object could not be serialized (or is not bytes-like for ``send_bytes``); nothing was sent."""


class DecodeError(SerializationError):
    """A received message could not be deserialized; the message is consumed, the channel stays usable.

    Its message names the size and the serializer's error type, never the bytes; the serializer's
    own exception (which may quote them) is ``serializer_error``.
    """

    #: The serializer's exception (None when ipckit's own framing of the serializer refused it).
    serializer_error: BaseException | None = None


class UnsafeSerializer(IPCError):
    """pickle was asked for on a channel whose peer is not proven trusted (docs/contract.md, section 5)."""


class UnsupportedOperation(IPCError):
    """The backend does not support this operation (see ``channel.capabilities``)."""


class EndpointError(IPCError, OSError):
    """Creating, opening or connecting to a named endpoint failed."""


class EndpointNotFound(EndpointError, FileNotFoundError):
    """Nothing exists (or listens) at the address."""


class EndpointExists(EndpointError, FileExistsError):
    """A live endpoint already exists at the address; ipckit never steals it."""


class ConnectFailed(EndpointError, ConnectionError):
    """The endpoint exists but the connection could not be made."""


class PermissionDenied(EndpointError, PermissionError):
    """The OS refused access, or the object is owned by someone else."""


class PeerRejected(EndpointError):
    """The peer failed a credential or authentication check."""


class IncompatibleEndpoint(EndpointError):
    """The object at the address has another layout, version or owner, or is half made."""


class ResourceExhausted(IPCError):
    """An OS limit was reached (ENOSPC, EMFILE, queue limits); the message names the limit."""


class ConfigurationError(IPCError, ValueError):
    """An option, URL or name is invalid."""


class UnknownScheme(ConfigurationError):
    """No backend is registered for the URL scheme."""


class InvalidAddress(ConfigurationError):
    """The address is malformed, too long or unsafe."""


class BackendUnavailable(ConfigurationError):
    """The backend's dependency or OS feature is missing here; the message says how to install it."""


class SerializerUnavailable(ConfigurationError):
    """No serializer is registered under that name, or its dependency is missing."""


class SecurityWarning(UserWarning):
    """A security check was switched off on purpose (e.g. ``insecure=True`` on a non-loopback zmq+tcp bind).

    A warning, not an error: it is not in ``__all__`` (the error tree), import it from ``ipckit.errors``.
    """


_ERRNO_MAP: dict[int, type[IPCError]] = {
    _errno.ENOENT: EndpointNotFound,
    _errno.EEXIST: EndpointExists,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
    _errno.ECONNREFUSED: ConnectFailed,
    _errno.EPIPE: PeerDied,
    _errno.ECONNRESET: PeerDied,
    _errno.ENOSPC: ResourceExhausted,
    _errno.EMFILE: ResourceExhausted,
    _errno.ENFILE: ResourceExhausted,
    _errno.ENOMEM: ResourceExhausted,
    _errno.ENAMETOOLONG: InvalidAddress,
}

_HINTS: dict[int, str] = {
    _errno.EMFILE: "per-process fd limit (RLIMIT_NOFILE) reached; close unused channels or raise `ulimit -n`",
    _errno.ENFILE: "system-wide file table full (fs.file-max)",
    _errno.ENOSPC: "no space left on the device (e.g. /dev/shm is full)",
    _errno.ENOMEM: "out of kernel memory",
    _errno.EACCES: "check the owner and mode of the object",
    _errno.EPERM: "check the owner and mode of the object",
}


# C extensions (posix_ipc) raise some OSErrors *without* an errno, with fixed messages; the errno
# is recovered from the message so the limit errors below still name their limit.
_ERRNO_OF_MESSAGE: tuple[tuple[str, int], ...] = (
    ("maximum number of files open", _errno.EMFILE),
    ("total number of open files", _errno.ENFILE),
    ("Insufficient space for a new queue", _errno.ENOSPC),
)


def errno_of(exc: OSError) -> int:
    """The errno of *exc*, recovered from the message of an errno-less one a C extension raised (or 0)."""
    if exc.errno:
        return exc.errno
    text = str(exc)
    for fragment, code in _ERRNO_OF_MESSAGE:
        if fragment in text:
            return code
    return 0


def from_oserror(exc: OSError, what: str) -> IPCError:
    """Translate an ``OSError`` raised while doing *what* into the matching ipckit error.

    The caller raises the result ``from exc`` so the OS error stays visible as ``__cause__``.
    Unknown errnos become ``ChannelBroken``; the limits (EMFILE, ENFILE, ENOSPC, ENOMEM) are
    ResourceExhausted naming the limit.
    """
    code = errno_of(exc)
    cls = _ERRNO_MAP.get(code, ChannelBroken)
    hint = _HINTS.get(code)
    text = f"{what}: {exc.strerror or exc}"
    if hint:
        text += f" ({hint})"
    if issubclass(cls, OSError):
        err: IPCError = cls(code, text)
        return err
    return cls(text)


def again(err: IPCError) -> IPCError:
    """A fresh copy of a sticky error (same type, message and cause) to raise once more.

    Channels that stay broken raise the recorded error on every later call; a new instance each
    time keeps tracebacks from piling up on one object.
    """
    fresh = type(err)(*err.args)
    fresh.__cause__ = err.__cause__
    return fresh
