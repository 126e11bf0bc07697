"""``mq://`` — a duplex channel over two POSIX message queues (posix_ipc to create and open them).

Features:
    Any message size up to ``max_message_size``: the kernel's queues carry at most
    ``fs.mqueue.msgsize_max`` bytes a message (8 KiB here) and ``fs.mqueue.msg_max`` messages a
    queue (10), so messages are cut into fragments and reassembled (``common/queue.py``: the
    fragment format, bounded reassembly, interrupt safety).  One queue per direction:
    ``/ipckit.<name>`` (client to server, the *anchor*) and ``/ipckit.<name>~`` (server to
    client).  The queue descriptor is pollable, so channels have ``fileno()``.

    Peer death (``fileno()``): a queue never becomes readable because its writer died, so each
    channel also has a *liveness pipe* that no data ever crosses: role 0 holds its read end, role 1
    its write end.  When the peer's process ends (SIGKILL too) or it closes, the kernel closes the
    peer's end and ours reports it -- a read end with no writer left hangs up, a write end with no
    reader left errs -- which epoll always reports.  The transport's ``fileno()`` is an epoll over
    the queue descriptor (readable) and that pipe end (hang-up/error), made on first use; the
    send/receive path never touches either, so an unwatched channel costs nothing more.  ``pair()``
    uses ``pipe()``; a named channel a FIFO in the registry directory below
    (``life.<anchor inode>.<queue name>``, unique to that queue: a late removal never hits a newer
    channel's), made and opened for reading by ``listen()`` before any client exists, opened for
    writing by the client once it claimed the channel (so a client refused or not yet there
    changes nothing, and a listener killed before ``accept()`` is seen by its client too).  The
    name goes with the queues' (connect, accept, the listener's close, a reclaim; an orphan whose
    queue went by other means is swept by ``ipckit cleanup``).  The pipe ends travel with the end
    (inherited under fork, sent under spawn), so a hand-off is no death.

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
import select
import stat
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
from .common.faults import fault
from .common.paths import NAME_RE, check_mode, runtime_dir, unlink_quiet
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
from .common.ring.doorbell import make_fifo, open_fifo

__all__ = ["MqBackend", "MqChannel", "MqListener", "MqOptions", "live_limits"]

_PREFIX: Final = "/ipckit."
_COMPANION: Final = "~"  # not in NAME_RE: a user's name never collides with a companion
_LIVE_BYTES: Final = (0, 1)  # OFD lock bytes of the anchor: the server end, the client end
_UNLINK_BYTE: Final = 2  # ... and the mutex around removing the names
_CLOSED_BIT: Final = 0o100  # the owner's execute bit of a queue: its writer closed cleanly
_BUILD_GRACE: Final = 1.0  # a lock-less anchor without its companion this young is being built
_MQ_SYSCTL: Final = "/proc/sys/fs/mqueue"
_REGISTRY_PREFIX: Final = "ipckit-mq-"
_LIFE_PREFIX: Final = "life."  # a named channel's liveness FIFO in the registry (not a tracked name)


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

    def __init__(self, inbox: int, outbox: int, role: int, size: int, life: int = -1) -> None:
        self._send, self._recv = _mq_calls()
        self.inbox = inbox
        self.outbox = outbox
        self.role = role
        #: This end's side of the channel's liveness pipe (module docstring, "Peer death"): the
        #: read end for role 0, the write end for role 1; -1 when the channel has none.
        self.life = life
        self._watch: select.epoll | None = None  # fileno(): the queue and ``life`` together
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
        """Readable while a fragment waits, and for good once the peer's end of the liveness pipe
        is closed (its process ended, by SIGKILL too, or it closed): an epoll over the queue's
        descriptor and ``life``, made on first use.  Nothing on the send/receive path touches it."""
        if self.life < 0:
            return self.inbox
        if self._watch is None:
            ep = select.epoll()
            try:
                ep.register(self.inbox, select.EPOLLIN)
                # No events asked: epoll always reports the hang-up of a read end whose writers
                # are all gone (role 0) and the error of a write end whose readers are (role 1).
                ep.register(self.life, 0)
            except BaseException:
                ep.close()
                raise
            self._watch = ep
        return self._watch.fileno()

    def handoff(self) -> tuple[Sequence[int], tuple[Any, ...]]:
        return (self.inbox, self.outbox, self.life), (self.role, self.fragment_size)

    @classmethod
    def rebuild(cls, fds: Sequence[int], state: tuple[Any, ...]) -> QueueTransport:
        role, size = state
        return cls(fds[0], fds[1], role, size, fds[2] if len(fds) > 2 else -1)

    def fork_release(self) -> None:
        self.close()  # our copies would keep the parent's liveness lock held after it died

    def close(self) -> None:
        self._addr.clear()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        for fd in (self.inbox, self.outbox, self.life):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.inbox = self.outbox = self.life = -1
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


# A named channel's liveness FIFO lives in the same private directory (module docstring, "Peer
# death"): made and opened for reading by the listener, opened for writing by its client.
def _life_path(name: str, ino: int) -> str:
    """The liveness FIFO of the channel *name* whose anchor queue is inode *ino*.  A queue is never
    reused (a new one has a new inode), so an end that removes its FIFO late never removes the
    FIFO of a channel made afterwards under the same name."""
    return os.path.join(_registry(), f"{_LIFE_PREFIX}{ino}.{name[1:]}")


def _make_life(name: str, ino: int) -> tuple[str, int]:
    """The listener's liveness FIFO and its read end; ``("", -1)`` where the registry cannot hold
    one (the channel then works, but its ``fileno()`` misses the client's death)."""
    if not _registry_ok(_registry()):  # (made by _track, private, ours: nobody else can plant a FIFO there)
        return "", -1
    path = _life_path(name, ino)
    try:
        make_fifo(path)
        return path, open_fifo(path, os.O_RDONLY)
    except OSError:
        unlink_quiet(path)
        return "", -1


def _open_life(name: str, ino: int, url: str) -> int:
    """The client's write end of its listener's liveness FIFO; -1 if the listener made none.

    Raises:
        EndpointNotFound: the FIFO has no reader: the listener's process is gone.
    """
    if not _registry_ok(_registry()):
        return -1
    try:
        return open_fifo(_life_path(name, ino), os.O_WRONLY)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise EndpointNotFound(errno.ENOENT, f"{url}: its listener is gone (it died as this client "
                                   "connected)") from exc
        return -1


def _life_files() -> list[tuple[str, int, str]]:
    """``(path, inode, queue name)`` of the liveness FIFOs in the registry."""
    path = _registry()
    if not _registry_ok(path):
        return []
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return []
    found = []
    for entry in entries:
        ino, _, rest = entry.removeprefix(_LIFE_PREFIX).partition(".")
        if entry.startswith(_LIFE_PREFIX) and ino.isdigit() and rest.startswith(_PREFIX[1:]):
            found.append((os.path.join(path, entry), int(ino), "/" + rest))
    return found


def _orphan_life(path: str, ino: int, name: str, now: float) -> bool:
    """*path* (a liveness FIFO) belongs to no queue that exists, and is past the grace of a FIFO
    being made: what a crash left where the queue's own reclaim could not see it (the queue
    removed by other means).  A FIFO whose anchor exists goes with the anchor's reclaim."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid() or now - st.st_ctime < _BUILD_GRACE:
        return False
    anchor = PosixName(MQ, name).stat()
    return anchor is None or anchor.st_ino != ino


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

    def __init__(self, name: str, role: int, *, create: bool, depth: int, size: int, mode: int,
                 life: bool = True) -> None:
        p = import_posix_ipc()
        self.name = name
        self.names = _names(name)
        self.role = role
        #: The liveness FIFO's path while its name exists (a listener's, *life*; "" for pair()).
        self.life_path = ""
        anchor = companion = life_fd = -1
        made: list[PosixName] = []
        try:
            anchor, self.size = _open_queue(p, name, create=create, depth=depth, size=size, mode=mode)
            if create:
                made.append(self.names.anchor)
                _track(name)
            if create and role == 0:
                lock(anchor, _LIVE_BYTES[0])  # before the companion: a reclaimer keeps a locked anchor
                fault("mq.after_create_before_init")
            companion, other = _open_queue(p, name + _COMPANION, create=create, depth=depth, size=self.size,
                                           mode=mode)
            if create:
                made.append(self.names.companions[0])
            elif other != self.size:
                raise IncompatibleEndpoint(errno.EPROTO, f"message queues {name} and {name}{_COMPANION} carry "
                                           f"messages of {self.size} and {other} bytes: not an ipckit endpoint")
            self.ino = os.fstat(anchor).st_ino  # (names the liveness FIFO: _life_path)
            if create and role == 0 and life:
                # After the queues and their lock: a reclaimer that finds no lock finds no FIFO
                # being made either.  Opened for reading now, before any client opens it to write.
                self.life_path, life_fd = _make_life(name, self.ino)
        except BaseException:
            for fd in (anchor, companion, life_fd):
                if fd >= 0:
                    os.close(fd)
            if self.life_path:
                unlink_quiet(self.life_path)
            for n in reversed(made):
                n.unlink()
            if made:
                _untrack(name)
            raise
        # Server: reads the anchor (client to server), writes the companion; the client the reverse.
        inbox, outbox = (anchor, companion) if role == 0 else (companion, anchor)
        self.transport = _MqTransport(inbox, outbox, role, self.size, life_fd)

    def attach_life(self, url: str) -> None:
        """The client, once it claimed the channel: hold the listener's liveness FIFO open for
        writing (its read end hangs up when this end's process dies; this end's errs when the
        listener's does).  The name stays for the listener's unlink if this client fails later.

        Raises:
            EndpointNotFound: the listener's process is gone.
        """
        self.transport.life = _open_life(self.name, self.ino, url)
        if self.transport.life >= 0:
            self.life_path = _life_path(self.name, self.ino)

    def unlink(self, *, verified: bool = False) -> None:
        """Remove the names under the removal mutex, only while they name our queues.

        *verified*: the creator, still holding its liveness lock since it created them: no
        reclaimer removed them meanwhile (it needs every lock free), so they are ours without the
        lookup (which needs a descriptor, and may run where none is left).
        """
        t = self.transport
        if self.life_path:  # (unique to our queue: no check needed; both ends open it by now)
            unlink_quiet(self.life_path)
            self.life_path = ""
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
    inodes: list[int] = []

    def ours(fd: int, st: os.stat_result) -> bool:
        inodes.append(st.st_ino)  # (its liveness FIFO's name)
        return _stale_anchor_ok(name, fd, st)

    free = reclaim_stale(_names(name), alive=_LIVE_BYTES, mutex=_UNLINK_BYTE, ours=ours)
    if free:
        for ino in inodes:  # the crashed listener's FIFO (unique to the queue just removed)
            unlink_quiet(_life_path(name, ino))
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
        for path, ino, name in _life_files():
            if sweep.wants(name[1:]) and _orphan_life(path, ino, name, sweep.now):
                found.append(StaleObject(path, "fifo", "its message queue is gone", name=name[1:]))
        return found

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        if obj.kind == "fifo":  # an orphaned liveness FIFO (find_stale): judged again, then removed
            for path, ino, queue in _life_files():
                if path == obj.path and _orphan_life(path, ino, queue, time.time()):
                    return super().remove_stale(obj)
            return False
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
    def _create(self, name: str, opts: MqOptions, *, named: bool) -> _Endpoint:
        depth, size = _geometry(opts)

        def make() -> _Endpoint:
            return _Endpoint(name, 0, create=True, depth=depth, size=size, mode=opts.mode, life=named)

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
        a_ep = self._create(name, opts, named=False)
        t = a_ep.transport
        trusted = True  # only this user can open the queues (owner-checked; the mode rule is resolve_serializer's)
        fds: list[int] = []
        try:
            # The second end gets descriptions of its own of the same queues (its own liveness
            # lock), without a lookup by name; then the names go at once: nothing can be left.
            fds.append(new_description(t.outbox))
            fds.append(new_description(t.inbox))
            # The liveness pipe needs no name either (module docstring, "Peer death").
            t.life, life_w = os.pipe()
            fds.append(life_w)
            bt = _MqTransport(fds[0], fds[1], 1, t.fragment_size, fds[2])
            bt.claim()
            fds = []  # (bt's now; the loop below closes them if the claim failed)
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
        ep = self._create(name, opts, named=True)
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
            ep.attach_life(url)  # after the claim: a client refused above never touches the FIFO
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
            # Inside the guard: an exception a signal handler raises here must not leave a live,
            # unreturned channel holding the session open (FS09).
            ep.unlink()  # both ends are in place: nothing can be left behind from now on
        except BaseException:
            ch._abandon()
            raise
        return ch
