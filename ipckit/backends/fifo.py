"""``fifo://`` — a duplex single-peer channel over two named pipes (FIFOs).

Features:
    Framed, ordered, reliable; a clean close (EndOfChannel) is told apart from a crash
    (PeerDied); selectable.  The endpoint is a private directory (0700, set explicitly) holding
    ``c2s`` and ``s2c`` FIFOs (0600) and two lock files; everything found there is ``lstat``-ed,
    owner-checked and opened ``O_NOFOLLOW``, so a planted symlink, file or another user's
    directory is refused (PermissionDenied), never followed.  pickle is the default serializer:
    only the owner can open the FIFOs.

    * ``listen()`` creates the endpoint and holds an ``flock`` on its ``lock`` file for its
      lifetime.  An endpoint whose lock is free belongs to a creator that died (SIGKILL): its
      FIFOs are removed and recreated; a live one raises EndpointExists.
    * ``connect()`` never hangs on an absent peer: opens are non-blocking and retried (ENXIO: no
      reader yet) until the deadline.  Connecting does not need the server to be in ``accept()``
      for the first peer, so one thread may ``connect()`` and then ``accept()``; a client may
      also send and close before ``accept()``, and its messages are still delivered.
    * The client's first frame is its hello (``ipckit.framing``), read by ``accept()``, which
      returns only a peer whose hello arrived: a writer below ipckit that sends garbage, or does
      not complete its hello within ``handshake_timeout``, is dropped and ``accept()`` waits for
      the next (one that writes nothing holds nothing: the next client's hello comes through).  The
      server's hello is the first frame the client reads; the client knows the server's limit
      before that already, from the listener's ``lock`` file (written at ``listen()``).
    * One writer per direction: a client holds an ``flock`` on ``peer.lock`` while connected; a
      second client gets EndpointExists at once, so frames are never interleaved.  The listener
      serves one peer at a time; ``accept()`` for the next peer waits until the previous one left.
    * A reader opened before any writer sees ``read() == 0`` but no POLLHUP; that is "not
      connected yet", never end of channel.
    * ``pair()`` builds an endpoint in a fresh private directory, connects, and removes the
      directory at once (the open descriptors keep working).

URL format:
    ``fifo:///abs/dir/name`` — the endpoint directory (created by ``listen()``; its parent must
    exist).  ``fifo://`` with ``listen()`` or ``pair()`` uses a new ``ipckit-*`` directory in
    ``$XDG_RUNTIME_DIR`` or the temp dir.

Options:
    ``pipe_size`` — requested kernel buffer per FIFO (default 1 MiB; capped by the system limit).
    ``checksum`` — CRC32 over every payload (default off).
    ``handshake_timeout`` — seconds a client has to complete its hello, from its first byte (default 5).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``mode`` (of the
    FIFOs; default 0600 — a wider mode also opens the directory and drops the same-user proof,
    so pickle then needs ``trust=True``), ``trust``.

Platform notes:
    Linux.  Channel ends pass to ``multiprocessing`` children as duplicated descriptors (like
    ``pipe://``); they cannot be pickled otherwise (the endpoint has a single peer).  A FIFO has
    no credential check of its own: the directory and file modes are the access control.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, final

from .. import _handoff
from ..backend import Backend
from ..channel import Channel, Listener
from ..cleanup import StaleObject, Sweep
from ..deadline import MAX_WAIT, Backoff, Deadline, poll_ms, remaining
from ..errors import (
    ChannelBusy,
    ChannelClosed,
    ChannelTimeout,
    EndpointExists,
    EndpointNotFound,
    IncompatibleEndpoint,
    InvalidAddress,
    IPCError,
    MessageTooLarge,
    PermissionDenied,
    ProtocolError,
    from_oserror,
)
from ..framing import FLAG_HELLO, HEADER_SIZE, decode_header, decode_hello
from ..options import Capabilities, Options, option
from ..url import Endpoint
from .common import paths as _paths
from .common.stream import (
    FdStreamChannel,
    StreamOptions,
    bytes_waiting,
    grow_pipe,
    publish_limits,
    published_limit,
)

__all__ = ["FifoBackend", "FifoChannel", "FifoOptions"]

_C2S = "c2s"
_S2C = "s2c"
_LOCK = "lock"
_PEER_LOCK = "peer.lock"
_OPEN_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


@dataclass
class FifoOptions(StreamOptions):
    """``pipe://``'s options (``pipe_size``, ``checksum``) and ``handshake_timeout``."""

    handshake_timeout: float = option(5.0, above=0, maximum=MAX_WAIT)


_CAPS = Capabilities(
    duplex=True,
    message_oriented=False,
    selectable=True,
    detects_peer_close=True,
    named=True,
    anonymous_pair=True,
    inheritable=True,
    multi_client=False,
    proves_same_user=True,
)


def _dir_mode(mode: int) -> int:
    return 0o700 | (0o050 if mode & 0o060 else 0) | (0o005 if mode & 0o006 else 0)


def _open_fifo(path: str, flags: int) -> int:
    """Open an existing FIFO without following symlinks; refuse anything else or a foreign one."""
    fd = os.open(path, flags | _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            raise PermissionDenied(errno.EPERM, f"{path!r} is not a FIFO; refusing to use it")
        _paths.check_owned(path, st, "FIFO")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_endpoint_dir(path: str, mode: int) -> None:
    _paths.check_dir(path, "a fifo:// endpoint directory", private=False)
    _check_dir_mode(path, os.lstat(path), mode)


def _check_dir_mode(path: str, st: os.stat_result, mode: int) -> None:
    # No wider than this end's mode allows (S5): its serializer was chosen from its mode.
    _paths.check_mode(f"fifo:// endpoint directory {path!r}", st.st_mode, mode, allowed=_dir_mode(mode))


def _translate(exc: OSError, what: str) -> IPCError:
    if exc.errno == errno.ELOOP:
        return PermissionDenied(errno.ELOOP, f"{what}: a symlink is in the way; refusing to follow it")
    if exc.errno == errno.ENOTDIR:
        return PermissionDenied(errno.ENOTDIR, f"{what}: not a fifo:// endpoint directory")
    return from_oserror(exc, what)


@final
class FifoChannel(FdStreamChannel):
    """One end of a ``fifo://`` channel."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __init__(self, url: str, options: Options, *, rfd: int, wfd: int, peer_trusted: bool,
                 checksum: bool = False, lock_fd: int = -1) -> None:
        self._lock_fd = lock_fd
        super().__init__(url, options, rfd=rfd, wfd=wfd, peer_trusted=peer_trusted, checksum=checksum)
        self._trusted = peer_trusted
        self._hup_poll = select.poll()
        self._hup_poll.register(rfd, select.POLLIN)

    def _raw_readinto(self, view: memoryview) -> int:
        got = os.readv(self._rfd, [view])
        if got == 0 and not self._ended():
            raise BlockingIOError(errno.EAGAIN, "no writer yet")
        return got

    def _ended(self) -> bool:
        # No writer has opened the FIFO yet (no POLLHUP): a 0 read is "not connected yet", not EOF.
        return any(ev & select.POLLHUP for _, ev in self._hup_poll.poll(0))

    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        # A poll object copied while a parent thread was inside its poll() would refuse to poll.
        self._hup_poll = select.poll()
        self._hup_poll.register(self._rfd, select.POLLIN)

    def _release_fds(self) -> None:
        lock, self._lock_fd = self._lock_fd, -1
        try:
            super()._release_fds()
        finally:
            if lock >= 0:
                os.close(lock)

    def __reduce__(self) -> Any:
        return _handoff.reduce_fds(
            self, _rebuild_fifo_channel, (self._rfd, self._wfd, self._lock_fd),
            (self._url, self._options, self._trusted, self._handoff_state(), self._checksum),
            refuse=f"a fifo:// channel ({self._url}) can only be passed to a child process as an argument of "
                   "multiprocessing.Process (it travels as duplicated descriptors); a FIFO endpoint has a "
                   "single peer, so it cannot be re-attached by URL while this end is open")


def _rebuild_fifo_channel(handed: _handoff.HandedFds, url: str, options: Options, trusted: bool,
                          resume: tuple[Any, ...], checksum: bool) -> FifoChannel:
    rfd, wfd, lock = _handoff.take_fds(handed)
    ch = FifoChannel(url, options, rfd=rfd, wfd=wfd, peer_trusted=trusted, checksum=checksum, lock_fd=lock)
    ch._resume(*resume)
    return ch


@final
class _FifoListener(Listener):
    def __init__(self, url: str, opts: FifoOptions, path: str, lock_fd: int, peer_lock_fd: int,
                 c2s_fd: int) -> None:
        super().__init__(url, opts)
        self._path = path
        self._lock_fd = lock_fd
        self._peer_lock_fd = peer_lock_fd
        self._c2s = c2s_fd  # read end waiting for the next peer (-1 once handed out)
        self._s2c = -1  # write end towards the next peer, once it opened its read end
        # What accept() read of the next client's hello, and since when the client is known.
        self._hello = bytearray()
        self._hello_len = -1
        self._came: float | None = None
        self._hello_poll = select.poll()
        self._forget_client()
        #: pair() makes both ends from one options set: no server hello (its client learns the limit
        #: from the lock file), so the client's descriptor is readable only for messages.
        self._greets = True
        self._last: weakref.ref[FifoChannel] | None = None
        # Only this user can open the FIFOs; a wider mode voids that (resolve_serializer's rule).
        self._trusted = True

    @property
    def path(self) -> str:
        return self._path

    def _file(self, name: str) -> str:
        return os.path.join(self._path, name)

    def _accept(self, deadline: Deadline) -> Channel:
        opts: FifoOptions = self._options  # type: ignore[assignment]
        backoff = Backoff(0.0005, 0.02)
        if self._c2s < 0:
            last = self._last() if self._last is not None else None
            if last is not None and not last.closed:
                raise ChannelBusy(f"{self._url} serves one peer at a time; close the previous channel first")
            self._reopen(deadline, backoff)
        peer_max = self._await_hello(deadline, backoff)
        rfd, self._c2s = self._c2s, -1
        wfd, self._s2c = self._s2c, -1
        self._forget_client()
        if wfd < 0:
            # The client sent its hello (and maybe messages and its goodbye) and left before this
            # accept: its messages are still delivered, and sends report its close (EndOfChannel,
            # or PeerDied) through a pipe without a reader.
            try:
                reader, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            except BaseException:
                os.close(rfd)
                raise
            os.close(reader)
        try:
            grow_pipe(wfd, opts.pipe_size)
            ch = FifoChannel(self._url, opts, rfd=rfd, wfd=wfd, peer_trusted=self._trusted, checksum=opts.checksum)
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        try:
            ch._learn_peer_limit(peer_max)
            if self._greets:
                ch._say_hello()
        except BaseException:
            ch.close()
            raise
        self._last = weakref.ref(ch)
        return ch

    def _await_hello(self, deadline: Deadline, backoff: Backoff) -> int:
        """Read the next client's hello from ``c2s`` (exactly its bytes: what follows stays for the
        channel) and open ``s2c`` towards it; the client's ``max_message_size``.

        A FIFO tells little about its writers: a read of 0 is "no writer yet" until POLLHUP says
        one came and left, and a writer that says nothing holds nothing of ours (the next
        client's hello arrives all the same).  From its first byte a client has
        ``handshake_timeout`` to complete its hello and open ``s2c`` (opening our write side then
        succeeds).  One that fails (garbage, leaves early, too slow) is dropped: a fresh ``c2s``
        read end, and the wait goes on.  What was read of a hello is kept across accepts.
        ``self._s2c`` stays -1 when the client left already (its hello and messages are there).
        """
        opts: FifoOptions = self._options  # type: ignore[assignment]
        while True:
            if self._closed:
                raise ChannelClosed(f"listener {self._url} was closed while accepting")
            try:
                peer_max = self._read_hello()
            except (ProtocolError, IncompatibleEndpoint, MessageTooLarge):
                self._drop_client(deadline, backoff)
                continue
            gone = self._writer_left()
            if peer_max is not None:
                if self._s2c < 0:
                    try:
                        self._s2c = _open_fifo(self._file(_S2C), os.O_WRONLY)
                    except OSError as exc:
                        if exc.errno != errno.ENXIO:
                            raise _translate(exc, f"accept on {self._url}") from exc
                if self._s2c >= 0 or gone:
                    return peer_max
            elif gone and not self._more_to_read():
                self._drop_client(deadline, backoff)  # it left before its hello was whole (or said nothing)
                continue
            if self._came is not None and time.monotonic() - self._came > opts.handshake_timeout:
                self._drop_client(deadline, backoff)  # too slow: the next client may be waiting
                continue
            if remaining(deadline) == 0.0:
                raise ChannelTimeout(f"no peer attached to {self._url} before the timeout")
            if peer_max is None:
                # Woken by the client's bytes; the open of s2c and close() are looked at every 20 ms.
                self._hello_poll.poll(poll_ms(deadline, 0.02))
            else:
                backoff.sleep(deadline)  # a hello, and its client has not opened s2c yet

    def _read_hello(self) -> int | None:
        """Read on towards a whole hello, never past it; the client's limit once it is whole."""
        buf = self._hello
        while True:
            if self._hello_len >= 0 and len(buf) == HEADER_SIZE + self._hello_len:
                return decode_hello(bytes(buf[HEADER_SIZE:]), f"a client of {self._url}")
            need = HEADER_SIZE if self._hello_len < 0 else HEADER_SIZE + self._hello_len
            try:
                chunk = os.read(self._c2s, need - len(buf))
            except BlockingIOError:
                return None
            if not chunk:
                return None
            self._client_seen()
            buf += chunk
            if len(buf) == HEADER_SIZE and self._hello_len < 0:
                flags, n, _ = decode_header(buf, 0, 0, 0)
                if not flags & FLAG_HELLO:
                    raise ProtocolError(f"a client of {self._url} did not start with an ipckit hello")
                self._hello_len = n

    def _writer_left(self) -> bool:
        """A writer opened ``c2s`` since our read end was opened, and none is left (POLLHUP)."""
        return any(ev & select.POLLHUP for _, ev in self._hello_poll.poll(0))

    def _more_to_read(self) -> bool:
        try:
            return bytes_waiting(self._c2s) > 0
        except OSError:
            return False

    def _client_seen(self) -> None:
        if self._came is None:
            self._came = time.monotonic()

    def _forget_client(self) -> None:
        """Start over for the next client: no hello bytes, no timer, a poll set on ``c2s``."""
        self._hello = bytearray()
        self._hello_len = -1
        self._came = None
        if self._c2s >= 0:
            self._hello_poll = select.poll()
            self._hello_poll.register(self._c2s, select.POLLIN)

    def _drop_client(self, deadline: Deadline, backoff: Backoff) -> None:
        """Let go of a client that failed its hello: our ``s2c`` write end, and a fresh ``c2s``."""
        if self._s2c >= 0:
            os.close(self._s2c)
            self._s2c = -1
        os.close(self._c2s)
        self._c2s = -1
        self._forget_client()
        self._reopen(deadline, backoff)

    def _reopen(self, deadline: Deadline, backoff: Backoff) -> None:
        """Open a fresh read end once the previous peer has let go of ``peer.lock``.

        While no read end is open no new client can open the write end (ENXIO), so once the lock
        is free nobody can be writing into the FIFO we open next.
        """
        while not _paths.try_lock(self._peer_lock_fd):
            if self._closed:
                raise ChannelClosed(f"listener {self._url} was closed while accepting")
            if not backoff.sleep(deadline):
                raise ChannelTimeout(f"the previous peer of {self._url} is still attached")
        _paths.release_lock(self._peer_lock_fd)
        try:
            self._c2s = _open_fifo(self._file(_C2S), os.O_RDONLY)
        except OSError as exc:
            raise _translate(exc, f"accept on {self._url}") from exc
        self._forget_client()

    def _close(self) -> None:
        for fd in (self._c2s, self._s2c):
            if fd >= 0:
                os.close(fd)
        self._c2s = self._s2c = -1
        for name in (_C2S, _S2C, _PEER_LOCK, _LOCK):
            _paths.unlink_quiet(self._file(name))
        _paths.rmdir_quiet(self._path)
        for fd in (self._peer_lock_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._peer_lock_fd = self._lock_fd = -1


@final
class FifoBackend(Backend):
    scheme: ClassVar[str] = "fifo"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = FifoOptions

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if not hasattr(os, "mkfifo"):
            return False, "needs os.mkfifo (POSIX)"
        return True, ""

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        # FIFOs and lock files in ipckit-* private directories: the sweep of every file-endpoint scheme.
        return _paths.stale_private_entries(sweep)

    @staticmethod
    def _path(endpoint: Endpoint) -> str:
        if not endpoint.address:
            raise InvalidAddress("fifo:// needs an endpoint path to connect to, e.g. fifo:///run/app/jobs")
        return os.path.abspath(endpoint.address)

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        opts: FifoOptions = options
        what = "a fifo:// endpoint directory"
        made_dir = True  # this call made the directory: a failure below removes it (empty by then)
        if endpoint.address:
            path = self._path(endpoint)
            _paths.check_parent_dir(path)
            try:
                # The mode goes on through a descriptor of the directory made, never by a path
                # that could have been swapped for a symlink meanwhile (issue 10, B.10).
                _paths.make_dir(path, _dir_mode(opts.mode), what)
            except FileExistsError:
                made_dir = False  # checked below: ours and private, or refused
            except OSError as exc:
                if isinstance(exc, IPCError):
                    raise
                raise _translate(exc, f"creating {path!r}") from exc
        else:
            path = _paths.make_private_dir()
            if _dir_mode(opts.mode) != 0o700:
                try:
                    _paths.set_dir_mode(path, _dir_mode(opts.mode), what)
                except BaseException:
                    _paths.rmdir_quiet(path)
                    raise
        try:
            return self._listen_in(path, opts)
        except BaseException:
            if made_dir:  # _listen_in removed what it made in it; with no descriptor left it made nothing
                _paths.rmdir_quiet(path)
            raise

    def _listen_in(self, path: str, opts: FifoOptions) -> _FifoListener:
        url = f"fifo://{path}"
        fds: list[int] = []
        made: list[str] = []
        dir_fd = -1
        try:
            try:
                _check_endpoint_dir(path, opts.mode)
                # The FIFOs are made and chmod-ed relative to this descriptor of the (checked) endpoint
                # directory: a directory swapped on the path meanwhile cannot redirect them.
                dir_fd = _paths.open_dir(path, "a fifo:// endpoint directory")
                _check_dir_mode(path, os.fstat(dir_fd), opts.mode)
            except FileNotFoundError as exc:
                raise EndpointNotFound(errno.ENOENT, f"{path!r} vanished while creating the endpoint") from exc
            lock_path = os.path.join(path, _LOCK)
            lock_fd = _paths.lock_path_exclusively(lock_path)
            fds.append(lock_fd)
            publish_limits(lock_fd, opts.max_message_size)  # what a client reads at connect
            # We hold the lock: whatever FIFOs are here belong to a creator that died.  Recreate them.
            for name in (_C2S, _S2C):
                fpath = os.path.join(path, name)
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    if not stat.S_ISFIFO(st.st_mode):
                        raise PermissionDenied(errno.EPERM, f"{fpath!r} is not a FIFO; refusing to replace it")
                    _paths.check_owned(fpath, st, "FIFO")
                    os.unlink(name, dir_fd=dir_fd)
                os.mkfifo(name, 0o600, dir_fd=dir_fd)
                made.append(fpath)
                os.chmod(name, opts.mode, dir_fd=dir_fd)
            peer_lock_fd = _paths.open_lock(os.path.join(path, _PEER_LOCK))
            fds.append(peer_lock_fd)
            c2s = _open_fifo(os.path.join(path, _C2S), os.O_RDONLY)
            fds.append(c2s)
            return _FifoListener(url, opts, path, lock_fd, peer_lock_fd, c2s)
        except BaseException as exc:
            for fd in reversed(fds):
                os.close(fd)
            for fpath in made:
                _paths.unlink_quiet(fpath)
            if fds:  # we held the lock: the directory is ours to remove
                _paths.unlink_quiet(os.path.join(path, _PEER_LOCK))
                _paths.unlink_quiet(os.path.join(path, _LOCK))
                _paths.rmdir_quiet(path)
            if isinstance(exc, OSError) and not isinstance(exc, IPCError):
                raise _translate(exc, f"listen on {url}") from exc
            raise
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        opts: FifoOptions = options
        path = self._path(endpoint)
        url = f"fifo://{path}"
        backoff = Backoff(0.0005, 0.02)
        rfd = wfd = lock_fd = -1
        try:
            while True:
                try:
                    _check_endpoint_dir(path, opts.mode)
                    if rfd < 0:
                        rfd = _open_fifo(os.path.join(path, _S2C), os.O_RDONLY)
                    wfd = _open_fifo(os.path.join(path, _C2S), os.O_WRONLY)
                    break
                except FileNotFoundError as exc:
                    if not backoff.sleep(deadline):
                        raise EndpointNotFound(errno.ENOENT, f"no fifo:// endpoint at {path!r}") from exc
                except OSError as exc:
                    if isinstance(exc, IPCError):
                        raise
                    if exc.errno != errno.ENXIO:
                        raise _translate(exc, f"connect to {url}") from exc
                    if not backoff.sleep(deadline):
                        raise ChannelTimeout(
                            f"no listener is accepting at {url} (it is not in accept() for a new peer, or it "
                            "died)"
                        ) from exc
            lock_fd = _paths.open_lock(os.path.join(path, _PEER_LOCK))
            if not _paths.try_lock(lock_fd):
                raise EndpointExists(
                    errno.EBUSY,
                    f"{url} already has a peer; a FIFO endpoint takes one writer per direction",
                )
            grow_pipe(wfd, opts.pipe_size)
            ch = FifoChannel(url, opts, rfd=rfd, wfd=wfd, peer_trusted=True,
                             checksum=opts.checksum, lock_fd=lock_fd)
        except BaseException:
            for fd in (rfd, wfd, lock_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        try:
            # The server's limit holds from here on, before any accept (the listener published
            # it); our hello is the first frame it reads, the server's the first we read.
            limit = published_limit(os.path.join(path, _LOCK))
            if limit is not None:
                ch._learn_peer_limit(limit)
            ch._hello_due = True
            ch._say_hello()
        except BaseException:
            ch.close()
            raise
        return ch

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: FifoOptions = options
        if endpoint.address:
            raise InvalidAddress("fifo:// pair() takes no address (use listen()/connect() for a named endpoint)")
        path = _paths.make_private_dir()
        try:
            listener = self._listen_in(path, opts)
        except BaseException:
            _paths.rmdir_quiet(path)  # _listen_in removed what it made in it
            raise
        listener._greets = False  # one options set: the client learnt the limit from the lock file
        try:
            client = self.connect(Endpoint("fifo", path), opts, None)
            assert isinstance(client, FifoChannel)
            client._hello_due = False
            try:
                server = listener.accept(timeout=5.0)
            except BaseException:
                client.close()
                raise
        finally:
            listener.close()  # removes the directory; the open descriptors keep working
        client._url = server._url = "fifo://"
        return server, client
