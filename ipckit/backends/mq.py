"""``mq://`` — a duplex channel over two POSIX message queues (posix_ipc to create and open them).

Features:
    Any message size up to ``max_message_size``: the kernel's queues carry at most
    ``fs.mqueue.msgsize_max`` bytes a message (8 KiB here) and ``fs.mqueue.msg_max`` messages a
    queue (10), so messages are cut into fragments and reassembled (``common/queue.py``: the
    fragment format, bounded reassembly, interrupt safety).  One queue per direction:
    ``/ipckit.<name>`` (client to server, the *anchor*) and ``/ipckit.<name>~`` (server to
    client).  The queue descriptor is pollable, so channels have ``fileno()``.

    Lifecycle: the queues are created exclusively (``O_CREAT|O_EXCL``), mode 0600 set explicitly;
    an opener checks the owner and mode.  Each end holds an OFD lock on its own byte of the
    anchor, on a descriptor of its own; the kernel drops it when the end's process dies (also by
    SIGKILL), so a dead peer is PeerDied once its queued messages were received.  A clean close
    marks the end's outgoing queue (the owner's execute bit, which the kernel keeps after the
    process is gone) and puts a goodbye fragment, so the peer reads EndOfChannel.  The names
    exist only for the rendezvous: ``pair()`` removes them at once, a listener's go when its
    client connected (or when it closes), so a crash leaves nothing behind except a listener
    killed before its client came; that queue is recreated (never reused, so no ghost messages)
    by the next ``listen()`` of the name, or removed by ``ipckit cleanup``.

    Signals: waits use ``mq_timedsend`` / ``mq_timedreceive`` through ctypes (posix_ipc's own
    calls swallow a signal handler's exception into its SignalError), in slices of 50 ms, with
    the deadline kept across interruptions.

URL format:
    ``mq://`` for ``pair()``; ``mq://name`` (``[A-Za-z0-9._-]``, up to 200 characters) for
    ``listen``/``connect``.  A listener accepts a single peer (like ``shm://``).

Options:
    ``depth`` — kernel messages per queue (default and maximum ``fs.mqueue.msg_max``, 10 here).
    ``fragment_size`` — bytes per kernel message (default and maximum ``fs.mqueue.msgsize_max``).
    Each channel costs two queues of about ``depth * fragment_size`` bytes of the per-user
    ``RLIMIT_MSGQUEUE`` (``ulimit -q``, 800 KiB by default: four channels at the defaults;
    ``depth=2`` makes it twenty, at the price of less buffering -- a send of more than
    ``depth * (fragment_size - 20)`` bytes waits for the reader).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode``, ``trust``.

Platform notes:
    Linux.  An end passes to a child process as a ``multiprocessing.Process`` argument (fork:
    inherited; spawn/forkserver: its descriptors travel).  ``/dev/mqueue`` need not be mounted:
    the names a crash may leave are tracked in a per-user directory for ``ipckit cleanup``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import resource
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from ..backend import Backend
from ..channel import Channel, Listener
from ..cleanup import StaleObject, Sweep
from ..deadline import Deadline
from ..errors import (
    ChannelBusy,
    ChannelClosed,
    ChannelTimeout,
    ConfigurationError,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    ProtocolError,
    ResourceExhausted,
    errno_of,
    from_oserror,
)
from ..limits import KernelLimit, fmt_bytes, rlimit, sysctl
from ..options import Capabilities, Options, option
from ..url import Endpoint
from .common.paths import NAME_RE, check_mode, runtime_dir
from .common.posix import (
    MQ,
    NameSet,
    PosixName,
    check_opened,
    holding,
    import_posix_ipc,
    lock,
    lock_held,
    new_description,
    posix_error,
    reclaim_stale,
    refuse_foreign,
)
from .common.queue import HEADER, QueueChannel, QueueTransport, ReplySpin

__all__ = ["MqBackend", "MqChannel", "MqListener", "MqOptions", "live_limits"]

_PREFIX: Final = "/ipckit."
_COMPANION: Final = "~"  # not in NAME_RE: a user's name never collides with a companion
_LIVE_BYTES: Final = (0, 1)  # OFD lock bytes of the anchor: the server end, the client end
_UNLINK_BYTE: Final = 2  # ... and the mutex around removing the names
_CLOSED_BIT: Final = 0o100  # the owner's execute bit of a queue: its writer closed cleanly
_BUILD_GRACE: Final = 1.0  # a lock-less anchor without its companion this young is being built
_MQ_SYSCTL: Final = "/proc/sys/fs/mqueue"
_REGISTRY_PREFIX: Final = "ipckit-mq-"


# ----------------------------------------------------------------------------- live limits
def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def live_limits() -> dict[str, int | None]:
    """The kernel's queue limits now: ``msgsize_max``, ``msg_max``, ``queues_max`` and the
    process's ``RLIMIT_MSGQUEUE`` soft limit (None where unreadable or unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0]
    return {
        "msgsize_max": _read_int(f"{_MQ_SYSCTL}/msgsize_max"),
        "msg_max": _read_int(f"{_MQ_SYSCTL}/msg_max"),
        "queues_max": _read_int(f"{_MQ_SYSCTL}/queues_max"),
        "rlimit": None if soft == resource.RLIM_INFINITY else soft,
    }


def _queue_cost(depth: int, size: int) -> int:
    """What one queue counts against RLIMIT_MSGQUEUE (the kernel's formula, mq_attr plus its
    per-message bookkeeping of about 48 + 40 bytes)."""
    return depth * (size + 88)


# ----------------------------------------------------------------------------- ctypes mq calls
class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_mq() -> tuple[Any, Any]:
    """``mq_timedsend`` and ``mq_timedreceive`` (libc since glibc 2.34, librt before)."""
    for lib in (None, "librt.so.1"):
        try:
            so = ctypes.CDLL(lib, use_errno=True)
            send, recv = so.mq_timedsend, so.mq_timedreceive
        except (OSError, AttributeError):
            continue
        send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_void_p]
        send.restype = ctypes.c_int
        recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
        recv.restype = ctypes.c_ssize_t
        return send, recv
    raise ImportError("mq_timedsend/mq_timedreceive are not in libc or librt")


try:
    from .common import _queuefast as _fast
except ImportError:  # not built (no compiler at install time): ctypes does the same calls
    _fast = None  # type: ignore[assignment]
if os.environ.get("IPCKIT_PURE_PYTHON", "") not in ("", "0"):
    _fast = None  # type: ignore[assignment]  # (as for the ring: measure and test the fallback)

_MQ_CALLS: tuple[Any, Any] | None = None
_ZERO = _Timespec(0, 0)  # an absolute time long past: "do not wait"
_RETRY: Final = frozenset((errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN))


def _mq_calls() -> tuple[Any, Any]:
    global _MQ_CALLS
    if _MQ_CALLS is None:
        _MQ_CALLS = _load_mq()
    return _MQ_CALLS


# ----------------------------------------------------------------------------- the transport
class _MqTransport(QueueTransport):
    """One end's two queue descriptors; its liveness lock is on its own anchor descriptor."""

    def __init__(self, inbox: int, outbox: int, role: int, size: int) -> None:
        self._send, self._recv = _mq_calls()
        self.inbox = inbox
        self.outbox = outbox
        self.role = role
        self.fragment_size = size
        self._anchor = inbox if role == 0 else outbox
        self._ts = _Timespec(0, 0)
        self._ts_ref = ctypes.byref(self._ts)
        self._zero_ref = ctypes.byref(_ZERO)
        self._addr: dict[int, tuple[bytearray, Any]] = {}
        if _fast is not None:
            self.put = functools.partial(_fast.put, outbox)  # type: ignore[method-assign]
            self._get = functools.partial(_fast.get, inbox)
            self.get = self._get_spinning  # type: ignore[method-assign]
            self._spin = ReplySpin()
            self._peek: functools.partial[int] | None = None  # get(rx, 0.0), made once

    def claim(self) -> bool:
        """Take this end's liveness byte; False if another end holds it."""
        return lock(self._anchor, _LIVE_BYTES[self.role])

    def _address(self, buf: bytearray) -> int:
        # The kit passes its own two fragment buffers, whose storage never moves (they stay
        # exported here, so they cannot be resized): their address is taken once.
        entry = self._addr.get(id(buf))
        if entry is None or entry[0] is not buf:
            arr = (ctypes.c_char * len(buf)).from_buffer(buf)
            entry = (buf, arr)
            self._addr[id(buf)] = entry
        return ctypes.addressof(entry[1])

    def _when(self, timeout: float) -> Any:
        if timeout <= 0.0:
            return self._zero_ref
        when = time.time() + timeout  # mq_timed* take an absolute CLOCK_REALTIME time
        sec = int(when)
        ts = self._ts
        ts.tv_sec = sec
        ts.tv_nsec = min(int((when - sec) * 1e9), 999_999_999)
        return self._ts_ref

    # put()/get() go through ctypes unless the C module is there (then __init__ replaces them
    # with its two calls, bound to this end's descriptors: see _queuefast.c for why).
    def put(self, buf: bytearray, n: int, timeout: float) -> bool:
        if self._send(self.outbox, self._address(buf), n, 0, self._when(timeout)) == 0:
            return True
        code = ctypes.get_errno()
        if code in _RETRY:
            return False
        raise OSError(code, f"mq_timedsend: {os.strerror(code)}")

    def get(self, buf: bytearray, timeout: float) -> int:
        n = int(self._recv(self.inbox, self._address(buf), len(buf), None, self._when(timeout)))
        if n >= 0:
            return n
        code = ctypes.get_errno()
        if code in _RETRY:
            return -1
        raise OSError(code, f"mq_timedreceive: {os.strerror(code)}")

    def _get_spinning(self, buf: bytearray, timeout: float) -> int:
        """get() with the C call: when nothing is there, the kit's short look again
        (:class:`ReplySpin`) before the wait in the kernel."""
        get = self._get
        n = get(buf, 0.0)
        if n >= 0 or timeout <= 0.0:
            return n
        peek = self._peek
        if peek is None or peek.args[0] is not buf:  # (the kit passes its one receive buffer)
            peek = self._peek = functools.partial(get, buf, 0.0)
        n = self._spin.look(peek, timeout)
        if n >= 0:
            return n
        return get(buf, timeout)

    def peer_alive(self) -> bool:
        return lock_held(self._anchor, _LIVE_BYTES[1 - self.role])

    def mark_closed(self) -> None:
        mode = os.fstat(self.outbox).st_mode & 0o777
        os.fchmod(self.outbox, mode | _CLOSED_BIT)

    def peer_closed(self) -> bool:
        return bool(os.fstat(self.inbox).st_mode & _CLOSED_BIT)

    def fileno(self) -> int:
        return self.inbox

    def handoff(self) -> tuple[Sequence[int], tuple[Any, ...]]:
        return (self.inbox, self.outbox), (self.role, self.fragment_size)

    @classmethod
    def rebuild(cls, fds: Sequence[int], state: tuple[Any, ...]) -> QueueTransport:
        role, size = state
        return cls(fds[0], fds[1], role, size)

    def fork_release(self) -> None:
        self.close()  # our copies would keep the parent's liveness lock held after it died

    def close(self) -> None:
        self._addr.clear()
        for fd in (self.inbox, self.outbox):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.inbox = self.outbox = -1
        if _fast is not None:  # (the bound calls must not keep using numbers the OS may reuse)
            self.put = functools.partial(_fast.put, -1)  # type: ignore[method-assign]
            self._get = functools.partial(_fast.get, -1)
            self._peek = None


# ----------------------------------------------------------------------------- options, names
@dataclass
class MqOptions(Options):
    """``depth`` (kernel messages per queue; 0: ``fs.mqueue.msg_max``) and ``fragment_size``
    (bytes per kernel message; 0: ``fs.mqueue.msgsize_max``), within the live kernel limits, plus
    the common options."""

    depth: int = option(0, minimum=0, maximum=65536)
    fragment_size: int = option(0, minimum=0, maximum=16 * 1024 * 1024)

    def validate(self) -> None:
        super().validate()
        limits = live_limits()
        msg_max, size_max = limits["msg_max"], limits["msgsize_max"]
        if msg_max is not None and self.depth > msg_max:
            raise ConfigurationError(
                f"depth={self.depth} exceeds the kernel's fs.mqueue.msg_max={msg_max} "
                f"({_MQ_SYSCTL}/msg_max); pass a smaller depth or raise the sysctl")
        if self.fragment_size and self.fragment_size < 64:
            raise ConfigurationError(f"fragment_size={self.fragment_size} is too small (at least 64 bytes, or 0 "
                                     "for the kernel's msgsize_max)")
        if size_max is not None and self.fragment_size > size_max:
            raise ConfigurationError(
                f"fragment_size={self.fragment_size} exceeds the kernel's fs.mqueue.msgsize_max={size_max} "
                f"({_MQ_SYSCTL}/msgsize_max); pass a smaller fragment_size or raise the sysctl")


def _geometry(opts: MqOptions) -> tuple[int, int]:
    """``(depth, fragment_size)`` of the queues to create: the options, or the live kernel limits."""
    limits = live_limits()
    return (opts.depth or limits["msg_max"] or 10), (opts.fragment_size or limits["msgsize_max"] or 8192)


def _names(name: str) -> NameSet:
    return NameSet(PosixName(MQ, name), (PosixName(MQ, name + _COMPANION),))


def _check_name(address: str) -> str:
    name = address.strip("/")
    if not NAME_RE.match(name):
        raise InvalidAddress(f"mq name {address!r} must match [A-Za-z0-9._-]{{1,200}}")
    return _PREFIX + name


# ----------------------------------------------------------------------------- tracked names
# /dev/mqueue is often not mounted (it is not here), so the queue names a crash may leave are
# recorded as empty files in a private per-user directory, for ``ipckit cleanup`` to find.
def _registry() -> str:
    return os.path.join(runtime_dir(), f"{_REGISTRY_PREFIX}{os.geteuid()}")


def _registry_ok(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return os.path.isdir(path) and not os.path.islink(path) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _track(name: str) -> None:
    """Record *name* (best effort: a registry we cannot use only costs ``ipckit cleanup`` its view)."""
    path = _registry()
    for _ in range(3):  # another process may remove the emptied directory in between
        try:
            if not os.path.lexists(path):
                os.mkdir(path, 0o700)
                os.chmod(path, 0o700)
            if not _registry_ok(path):
                return
            fd = os.open(os.path.join(path, name.lstrip("/")),
                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
            return
        except FileExistsError:
            continue
        except FileNotFoundError:
            continue
        except OSError:
            return


def _untrack(name: str) -> None:
    path = _registry()
    try:
        os.unlink(os.path.join(path, name.lstrip("/")))
    except OSError:
        return
    try:
        os.rmdir(path)  # only when empty: nothing of ours stays in the temp dir
    except OSError:
        pass


def _tracked() -> list[str]:
    path = _registry()
    if not _registry_ok(path):
        return []
    try:
        return ["/" + e for e in sorted(os.listdir(path)) if e.startswith(_PREFIX[1:])]
    except OSError:
        return []


# ----------------------------------------------------------------------------- queues
def _open_queue(p: Any, name: str, *, create: bool, depth: int, size: int, mode: int) -> tuple[int, int]:
    """A descriptor of the queue *name* (created exclusively, or opened), owner- and mode-checked,
    and the queue's message size."""
    what = f"message queue {name}"
    try:
        if create:
            q = p.MessageQueue(name, p.O_CREX, mode=mode, max_messages=depth, max_message_size=size)
        else:
            q = p.MessageQueue(name, 0)
    except (p.Error, OSError, ValueError, MemoryError) as exc:
        err = posix_error(exc, f"{'create' if create else 'open'} {what}", kind=MQ, creating=create)
        if isinstance(err, ResourceExhausted):
            code = errno_of(exc) if isinstance(exc, OSError) else None
            err = _exhausted(err, depth, size, code=code, action=f"{'create' if create else 'open'} {what}",
                             nofile=code == errno.EMFILE and _descriptors_full())
        raise err from exc
    try:
        fd = os.dup(q.mqd)
        attrs = (q.max_messages, q.max_message_size)
    except OSError as exc:
        if create:  # made by this call and known to no one yet
            q.unlink()
        raise from_oserror(exc, f"keep the descriptor of {what}") from exc
    finally:
        q.close()
    try:
        if create:
            os.fchmod(fd, mode)  # independent of the umask
        else:
            check_opened(fd, what)
            check_mode(what, os.fstat(fd).st_mode, mode)
            if attrs[1] < 64 or attrs[1] > 16 * 1024 * 1024:
                raise IncompatibleEndpoint(errno.EPROTO, f"{what} carries {attrs[1]}-byte messages: not ipckit's")
    except BaseException:
        os.close(fd)
        raise
    return fd, int(attrs[1])


def _descriptors_full() -> bool:
    """True if this process has no descriptor free (RLIMIT_NOFILE), the other reason mq_open(3)
    gives EMFILE besides the user's queue memory (RLIMIT_MSGQUEUE)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return soft != resource.RLIM_INFINITY and len(os.listdir("/proc/self/fd")) >= soft
    except OSError:
        return True  # no descriptor left even for the listing


def _exhausted(err: IPCError, depth: int, size: int, *, action: str, code: int | None,
               nofile: bool = False) -> ResourceExhausted:
    if nofile:
        return ResourceExhausted(f"{err}: this process has every descriptor its RLIMIT_NOFILE allows open "
                                 "(an mq:// end holds three); close unused channels or files, or raise "
                                 "`ulimit -n`")
    limits = live_limits()
    cost = _queue_cost(depth, size)
    rl = limits["rlimit"]
    # mq_open(3) says EMFILE ("too many open files") for the user's queue memory too, and the
    # descriptor table was ruled out above: the message names the limit that was hit, not that.
    channel = (f"each mq:// channel needs two queues of about {fmt_bytes(cost)} each (depth={depth} x "
               f"fragment_size={size})")
    if code == errno.EMFILE:
        return ResourceExhausted(
            f"{action}: this user's POSIX message queue memory is used up (RLIMIT_MSGQUEUE="
            f"{'unlimited' if rl is None else fmt_bytes(rl)}, `ulimit -q`; every queue of the user counts); "
            f"{channel}: close unused channels, pass a smaller depth or fragment_size, or raise `ulimit -q`")
    if code == errno.ENOSPC:
        return ResourceExhausted(
            f"{action}: the system's POSIX message queues are used up (fs.mqueue.queues_max="
            f"{limits['queues_max']}, {_MQ_SYSCTL}/queues_max; two per mq:// channel): close unused channels, "
            "or raise the sysctl")
    return ResourceExhausted(
        f"{err}. Each mq:// channel needs two queues of about {fmt_bytes(cost)} each (depth={depth} x "
        f"fragment_size={size}) counted against this user's RLIMIT_MSGQUEUE "
        f"({'unlimited' if rl is None else fmt_bytes(rl)}; `ulimit -q`), and the system allows "
        f"fs.mqueue.queues_max={limits['queues_max']} queues ({_MQ_SYSCTL}/queues_max): close unused "
        "channels, pass a smaller depth or fragment_size, or raise those limits")


class _Endpoint:
    """The queue pair of one mq:// channel as one end opened it."""

    def __init__(self, name: str, role: int, *, create: bool, depth: int, size: int, mode: int) -> None:
        p = import_posix_ipc()
        self.name = name
        self.names = _names(name)
        self.role = role
        anchor = companion = -1
        made: list[PosixName] = []
        try:
            anchor, self.size = _open_queue(p, name, create=create, depth=depth, size=size, mode=mode)
            if create:
                made.append(self.names.anchor)
                _track(name)
            if create and role == 0:
                lock(anchor, _LIVE_BYTES[0])  # before the companion: a reclaimer keeps a locked anchor
            companion, other = _open_queue(p, name + _COMPANION, create=create, depth=depth, size=self.size,
                                           mode=mode)
            if create:
                made.append(self.names.companions[0])
            elif other != self.size:
                raise IncompatibleEndpoint(errno.EPROTO, f"message queues {name} and {name}{_COMPANION} carry "
                                           f"messages of {self.size} and {other} bytes: not an ipckit endpoint")
        except BaseException:
            for fd in (anchor, companion):
                if fd >= 0:
                    os.close(fd)
            for n in reversed(made):
                n.unlink()
            if made:
                _untrack(name)
            raise
        # Server: reads the anchor (client to server), writes the companion; the client the reverse.
        inbox, outbox = (anchor, companion) if role == 0 else (companion, anchor)
        self.transport = _MqTransport(inbox, outbox, role, self.size)

    def unlink(self, *, verified: bool = False) -> None:
        """Remove the names under the removal mutex, only while they name our queues.

        *verified*: the creator, still holding its liveness lock since it created them: no
        reclaimer removed them meanwhile (it needs every lock free), so they are ours without the
        lookup (which needs a descriptor, and may run where none is left).
        """
        t = self.transport
        anchor = t.inbox if self.role == 0 else t.outbox
        if anchor < 0:
            return
        try:
            with holding(anchor, _UNLINK_BYTE):
                if verified:
                    self.names.unlink()
                    _untrack(self.name)
                elif self.names.unlink_if_ours(anchor):
                    _untrack(self.name)
        except OSError:
            if verified:
                self.names.unlink()
                _untrack(self.name)


# ----------------------------------------------------------------------------- channel
def _default_buffering() -> tuple[int, int]:
    """Payload bytes and messages one direction holds unread at the default geometry (the live
    limits): every message, however small, takes one of the queue's ``msg_max`` places, one of
    which a control message (hello, close mark) may hold."""
    limits = live_limits()
    places = limits["msg_max"] or 10
    return places * ((limits["msgsize_max"] or 8192) - HEADER.size), places - 1


_CAPS: Final = Capabilities(message_oriented=True, selectable=True, named=True,
                            buffered_bytes=_default_buffering()[0],
                            buffered_messages=_default_buffering()[1])


@final
class MqChannel(QueueChannel):
    """One end of an ``mq://`` channel."""

    capabilities: ClassVar[Capabilities] = _CAPS


def _stale_anchor_ok(name: str, fd: int, st: os.stat_result) -> bool:
    """The lock-less anchor *name* is stale, not one a creator is building (it locks the anchor
    before it creates the companion)."""
    if PosixName(MQ, name + _COMPANION).stat() is not None:
        return True
    return time.time() - st.st_ctime >= _BUILD_GRACE


def _own_or_absent(n: PosixName) -> bool:
    """*n* names no queue, or one of this user's (not a squatter's, which is never touched)."""
    st = n.stat()
    return st is None or st.st_uid == os.geteuid()


def _reclaim(name: str) -> bool:
    """Remove *name*'s queues if they are ours and no end lives; True if the name is free now."""
    free = reclaim_stale(_names(name), alive=_LIVE_BYTES, mutex=_UNLINK_BYTE,
                         ours=lambda fd, st: _stale_anchor_ok(name, fd, st))
    if free:
        companion = PosixName(MQ, name + _COMPANION)
        if not _own_or_absent(companion):
            return False  # another user's queue under our companion's name: refused by the caller
        companion.unlink()  # a companion whose anchor went first (a crash)
        _untrack(name)
    return free


def _stale(name: str) -> bool:
    """What :func:`_reclaim` would decide, read-only (the dry run)."""
    try:
        fd = PosixName(MQ, name).open()
    except FileNotFoundError:
        companion = PosixName(MQ, name + _COMPANION)
        return companion.stat() is not None and _own_or_absent(companion)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_uid == os.geteuid() and _stale_anchor_ok(name, fd, st)
                and not any(lock_held(fd, b) for b in _LIVE_BYTES))
    finally:
        os.close(fd)


@final
class MqListener(Listener):
    """Owns ``mq://name`` until its one peer connected (then the names are removed)."""

    def __init__(self, url: str, options: MqOptions, ep: _Endpoint) -> None:
        super().__init__(url, options)
        self._ep: _Endpoint | None = ep
        self._ch: MqChannel | None = MqChannel(url, options, ep.transport, peer_trusted=True)
        self._ch._say_hello(time.monotonic() + 1.0)  # the client reads it at connect: our limit

    def _accept(self, deadline: Deadline) -> Channel:
        ch, ep = self._ch, self._ep
        if ch is None or ep is None:
            raise ChannelBusy(f"{self._url} accepts a single peer, and it already connected")
        while True:
            try:
                ch._await_hello(deadline, lambda: self._closed)
                break
            except ProtocolError:
                continue  # not an ipckit client (garbage put below ipckit): keep waiting
            except ChannelTimeout as exc:
                raise ChannelTimeout(f"no peer connected to {self._url} before the deadline") from exc
            except ChannelClosed as exc:
                raise ChannelClosed(f"accept on closed listener {self._url}") from exc
        ep.unlink()  # the client removes them as it connects; this covers one that left at once
        self._ch = self._ep = None
        return ch

    def _close(self) -> None:
        ch, ep = self._ch, self._ep
        self._ch = self._ep = None
        if ep is not None:
            ep.unlink()
        if ch is not None:
            ch.close()


# ----------------------------------------------------------------------------- backend
@final
class MqBackend(Backend):
    scheme: ClassVar[str] = "mq"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = MqOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            p = import_posix_ipc()
        except ImportError:
            return False, "pip install posix_ipc"
        if not getattr(p, "MESSAGE_QUEUES_SUPPORTED", False):
            return False, "posix_ipc was built without message queue support"
        try:
            _mq_calls()
        except ImportError as exc:
            return False, str(exc)
        return True, ""

    @classmethod
    def notes(cls) -> list[str]:
        lim = live_limits()
        return [f"mq:// fragments messages into kernel messages of fs.mqueue.msgsize_max={lim['msgsize_max']} "
                f"bytes, at most fs.mqueue.msg_max={lim['msg_max']} per queue (option depth)"]

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        return [
            sysctl(f"{_MQ_SYSCTL}/msgsize_max", "largest POSIX queue message: mq:// fragment size"),
            sysctl(f"{_MQ_SYSCTL}/msg_max", "messages per POSIX queue: mq:// depth at most"),
            sysctl(f"{_MQ_SYSCTL}/queues_max", "POSIX queues system-wide (two per mq:// channel)"),
            rlimit("RLIMIT_MSGQUEUE", "bytes of POSIX queues per user (ulimit -q)"),
        ]

    @classmethod
    def reserved_names(cls) -> tuple[str, ...]:
        # The registry of tracked names: its entries' liveness is in OFD locks on the queues,
        # which the /proc holder scan of the file sweeps cannot see.
        return (_REGISTRY_PREFIX,)

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        found = []
        for name in _tracked():
            if not sweep.wants(name[1:]):
                continue
            try:
                import_posix_ipc()
                stale = _stale(name)
            except (ImportError, OSError):
                continue
            if stale:
                found.append(StaleObject(os.path.join(_registry(), name[1:]), "message queue",
                                         "no live end holds its lock", name=name[1:],
                                         label=f"POSIX message queues {name} and {name}{_COMPANION}"))
        return found

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        name = "/" + obj.ipckit_name
        try:
            import_posix_ipc()
        except ImportError:
            return False
        if not _stale(name):
            if PosixName(MQ, name).stat() is None and PosixName(MQ, name + _COMPANION).stat() is None:
                _untrack(name)  # gone meanwhile: only the record was left
            return False
        return _reclaim(name)

    # -- factories -----------------------------------------------------------------------------
    def _create(self, name: str, opts: MqOptions) -> _Endpoint:
        depth, size = _geometry(opts)

        def make() -> _Endpoint:
            return _Endpoint(name, 0, create=True, depth=depth, size=size, mode=opts.mode)

        try:
            return make()
        except EndpointExists:
            if not _reclaim(name):  # a crashed run's queues (ours, no live end)? never reused
                for n in (PosixName(MQ, name), PosixName(MQ, name + _COMPANION)):
                    refuse_foreign(n)
                raise
            return make()

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: MqOptions = options
        name = _PREFIX + secrets.token_hex(16)
        a_ep = self._create(name, opts)
        t = a_ep.transport
        trusted = True  # only this user can open the queues (owner-checked; the mode rule is resolve_serializer's)
        fds: list[int] = []
        try:
            # The second end gets descriptions of its own of the same queues (its own liveness
            # lock), without a lookup by name; then the names go at once: nothing can be left.
            fds.append(new_description(t.outbox))
            fds.append(new_description(t.inbox))
            bt = _MqTransport(fds[0], fds[1], 1, t.fragment_size)
            fds = []
            bt.claim()
        except BaseException as exc:
            for fd in fds:
                os.close(fd)
            a_ep.unlink(verified=True)
            t.close()
            if isinstance(exc, OSError) and not isinstance(exc, IPCError):
                # Opening an existing queue again charges no queue memory: the limit is RLIMIT_NOFILE.
                raise from_oserror(exc, f"open the second end of {name}") from exc
            raise
        a_ep.unlink(verified=True)
        try:
            a = MqChannel("mq://", opts, t, peer_trusted=trusted, peer_max=opts.max_message_size)
        except BaseException:
            t.close()
            bt.close()
            raise
        try:
            b = MqChannel("mq://", opts, bt, peer_trusted=trusted, peer_max=opts.max_message_size)
        except BaseException:
            a.close()
            bt.close()
            raise
        return a, b

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: MqOptions = options
        name = _check_name(endpoint.address)
        ep = self._create(name, opts)
        try:
            return MqListener(f"mq://{name[len(_PREFIX):]}", opts, ep)
        except BaseException:
            ep.unlink()
            ep.transport.close()
            raise

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts: MqOptions = options
        name = _check_name(endpoint.address)
        url = f"mq://{name[len(_PREFIX):]}"
        while True:
            try:
                ep = _Endpoint(name, 1, create=False, depth=0, size=0, mode=opts.mode)
                break
            except EndpointNotFound:
                # Not there (yet), or half made: wait for it within the deadline, never past it.
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
        t = ep.transport
        try:
            if not t.claim():
                raise EndpointExists(errno.EEXIST, f"{url} already has a peer")
            if not t.peer_alive():
                raise EndpointNotFound(errno.ENOENT, f"{url}: its listener is gone (a crashed run's queues; "
                                       "`ipckit cleanup` removes them, the next listen() recreates them)")
            ch = MqChannel(url, opts, t, peer_trusted=True)
        except BaseException:
            t.close()
            raise
        try:
            # Last, so that nothing fails after the listener's hello was taken: a client that
            # failed earlier left the endpoint as it found it.
            try:
                ch._await_hello(time.monotonic())  # put at listen(): the server's limit, from now on
            except (ProtocolError, ChannelTimeout) as exc:
                raise IncompatibleEndpoint(errno.EPROTO, f"{url}: the listener's hello is missing (another client "
                                           f"took it, or this is not an ipckit endpoint): {exc}") from exc
            ch._say_hello(deadline)
        except BaseException:
            ch._abandon()
            raise
        ep.unlink()  # both ends are in place: nothing can be left behind from now on
        return ch
