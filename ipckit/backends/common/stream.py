"""Framed message channels over file descriptors (pipes, FIFOs, stream sockets).

One implementation of framing, buffering, waiting and close semantics that the pipe, FIFO and
Unix-socket backends share; they only open the descriptors (and may override the raw read and
write calls).

Why it looks like this:

* Descriptors are non-blocking and every wait is a ``poll`` on the data fd plus an eventfd that
  ``close()`` signals, so a deadline is exact and ``close()`` from another thread wakes a blocked
  caller at once (a plain ``close(fd)`` does not wake a thread blocked in ``read``).
* Reads go through a 256 KiB read-ahead buffer: a small message costs one ``read`` and
  ``writev`` sends header and payload in one system call.
* A receive that times out consumes nothing: a partly received message stays buffered and the
  next call resumes it.  A send cut after part of its frame left (a timeout, close(), a signal
  handler's exception) aborts the message instead: a frame a write may split (over
  ``_ATOMIC_FRAME``) ends with a commit byte (``FLAG_TRAILER``: 1 delivers, 0 discards), and what
  the peer still needs to read the cut frame as discarded (the rest of the header, zeros up to and
  including the commit byte) is written by the next send or by ``close()`` before anything else
  (``_write_trailed``, ``_write_tail``).  Smaller frames leave whole or not at all, so they carry no
  trailer and the hot path no extra step.  Receiving (``recv``, ``poll``) does not write the
  tail: it would need the send lock and write from a receive; until this end sends again or
  closes (also at exit), its peer waits as for a message that was not sent, which is the truth.
* An exception a signal handler raises (KeyboardInterrupt, an alarm's timeout) can come out of any
  call, also right after a ``read``/``write`` returned and before its count was stored.  Writes of
  a trailed frame and of an abort tail record their count from C (``_writes``), so a cut there is
  always exact and aborts the message; only a small frame's one write can lose its count, and that
  breaks the send side for good (ChannelBroken) and shuts it, so the peer reads the end of the
  stream after the last whole message (``_break_send``).  A receive it cuts in a wait keeps the
  partial frame buffered and resumes next time, one it cuts with a read whose count was lost
  breaks the receive side (the bytes are gone from the kernel).  The blocking socket read, where
  a signal usually lands, records its count from C (see ``_read_blocking``) so an interrupted wait
  there resumes too.  State that must change together (read position and sequence number; an
  abort's tail and the send side's state) is updated with no call in between: a handler only runs
  at calls and loop edges.
* ``poll()`` runs under the receive lock: it shares the poll set (``select.poll`` objects are not
  thread-safe) and the read-ahead buffer with ``recv``.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import select
import socket
import stat
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ipckit.channel import Channel
from ipckit.deadline import Deadline, poll_ms, remaining
from ipckit.errors import (
    ChannelBroken,
    ChannelClosed,
    EndOfChannel,
    IPCError,
    MessageTooLarge,
    PeerDied,
    PeerRejected,
    ProtocolError,
    RecvTimeout,
    SendTimeout,
    again,
    from_oserror,
)
from ipckit.framing import (
    FLAG_CHECKSUM,
    FLAG_GOODBYE,
    FLAG_HELLO,
    FLAG_REJECTED,
    FLAG_TRAILER,
    HEADER,
    HEADER_SIZE,
    HELLO_MAX,
    MAGIC,
    VERSION,
    crc32,
    decode_header,
    decode_hello,
    encode_hello,
    hello_payload,
)
from ipckit.options import Options, option
from ipckit.serializers import Buffer

__all__ = ["DescriptorChannel", "FdStreamChannel", "READ_BUFFER", "StreamOptions", "grow_pipe", "publish_limits",
           "published_limit"]


@dataclass
class StreamOptions(Options):
    """Options of the framed descriptor streams (pipes, FIFOs).

    ``pipe_size``: requested kernel buffer per pipe or FIFO (capped by pipe-max-size).
    ``checksum``: CRC32 over every payload.
    """

    pipe_size: int = option(1024 * 1024, minimum=1)
    checksum: bool = False


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass
class PipeOptions(Options):
    pipe_size: int = 1024 * 1024
    checksum: bool = False


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024 * 1024


def grow_pipe(fd: int, size: int) -> None:
    """Raise the kernel buffer of the pipe or FIFO *fd* towards *size* (capped by pipe-max-size)."""
    # Best effort: an unprivileged user over pipe-user-pages-soft gets EPERM; the pipe still works.
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, min(size, _pipe_max_size()))
    except OSError:
        pass


READ_BUFFER = 256 * 1024
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_SEQ_MASK = 0xFFFFFFFF
_GOODBYE_LINGER = 0.1  # seconds close() may wait to fit the goodbye frame into a full pipe
#: Largest frame (header included) sent without a commit trailer: one write delivers it whole or
#: not at all.  A non-blocking write of at most PIPE_BUF bytes to a pipe or FIFO is atomic (all of
#: it or EAGAIN), and on a Unix stream socket it is one skb (the kernel cuts a write at
#: SO_SNDBUF/2 - 64 bytes, 36,544 here; over 4096 for every send buffer of 8320 bytes up, and the
#: default is 212,992), allocated whole or EAGAIN.  A small frame split anyway is finished by the
#: send, or breaks the send side (``_write_rest``), as before trailers.
_ATOMIC_FRAME = select.PIPE_BUF
_COMMIT = memoryview(b"\x01")  # the last byte of a trailed frame that delivers it
_ZEROS = memoryview(bytes(256 * 1024))  # an abort tail is written from here: no copy of any payload
_EMPTY = memoryview(b"")
_ONE = 1
_NO_FD = frozenset({-1})  # never passed to closerange: (-1, 0) would close every descriptor
_TAIL_LINGER = 2.0  # seconds close() may spend finishing an aborted frame (then its goodbye)...
_TAIL_IDLE = 0.25  # ...as long as each wait finds room within this (the peer reads)
_pack = HEADER.pack
# The header read as (u64 magic|version|flags|sequence, u64 length, u32 crc) for the fast path.
_FAST_HEADER = struct.Struct("<QQI").unpack_from
_SEQ_ONE = 1 << 32
_U64_MASK = (1 << 64) - 1


def _head_word(seq: int) -> int:
    """The first 8 header bytes of an unflagged frame with sequence *seq*, as a little-endian u64."""
    return int.from_bytes(MAGIC + bytes((VERSION, 0)) + (seq & _SEQ_MASK).to_bytes(4, "little"), "little")


def rejection_error(url: str, reason: bytes) -> PeerRejected:
    """The PeerRejected a client raises for the server's REJECTED frame (or packet) on *url*."""
    text = reason.decode("utf-8", "replace") or "no reason given"
    return PeerRejected(errno.EACCES, f"the server of {url} refused this connection: {text}")


def publish_limits(lock_fd: int, max_message_size: int) -> None:
    """Write a listener's limits (its hello payload) into the lock file it holds for its lifetime.

    A client may connect and send before the server accepts, so it cannot wait for the server's
    hello to learn the server's limit: it reads them here at connect (:func:`published_limit`).
    Written before the endpoint can be connected to.
    """
    data = hello_payload(max_message_size)
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, data, 0)


def published_limit(lock_path: str) -> int | None:
    """The ``max_message_size`` the listener published in *lock_path*; None when nothing there is
    to be trusted (no file, a symlink, not a regular file of ours, or no valid hello in it): the
    client then learns the limit from the server's hello frame when it arrives."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        data = os.pread(fd, HELLO_MAX, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return decode_hello(data, "the listener")
    except IPCError:
        return None


#: How long (at most, and within its deadline) a send that found the peer's end closed waits for
#: the rest of the peer's stream, to tell its close from a crash: a peer closing cleanly may shut
#: its receive side before it writes its goodbye (unix:// wakes a blocked reader that way), and
#: then waits up to 2 s for its own blocked threads before the goodbye goes out.
_PEER_CLOSE_WAIT = 2.5
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_SPLICE_F_NONBLOCK = 2
_tee: Callable[[int, int, int, int], int] | None = None


def bytes_waiting(fd: int) -> int:
    """How many bytes a read of the pipe, FIFO or stream socket *fd* would find (FIONREAD)."""
    got = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", got)[0])


def peek_pipe(fd: int) -> bytes | None:
    """The bytes waiting in the pipe or FIFO *fd*, read without consuming them; None if they cannot
    all be looked at.

    A pipe has no MSG_PEEK: ``tee(2)`` copies its contents into a pipe of our own, which is read.
    None when libc has no tee, a descriptor is missing (the limit), or the copy cannot hold it all
    (a user over ``pipe-user-pages-soft`` cannot grow the look-aside pipe to the size of *fd*).
    """
    global _tee
    if _tee is None:
        import ctypes

        tee = getattr(ctypes.CDLL(None, use_errno=True), "tee", None)
        if tee is None:
            return None
        tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
        tee.restype = ctypes.c_ssize_t
        _tee = tee
    try:
        waiting = bytes_waiting(fd)
        if waiting <= 0:
            return b""
        size = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if fcntl.fcntl(w, _F_GETPIPE_SZ) < waiting:
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, size)
            except OSError:
                pass
        n = _tee(fd, w, waiting, _SPLICE_F_NONBLOCK)
        if n < waiting:
            return None
        chunks = []
        while n > 0:
            chunk = os.read(r, n)
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(r)
        os.close(w)


def write_with_linger(fd: int, write: Callable[[], int], linger: float = _GOODBYE_LINGER) -> int:
    """Run the non-blocking *write* once; if *fd* is full, wait up to *linger* s for room and retry.

    For close(): a last word to the peer must not block a close for long, nor fail only because
    the buffer is momentarily full.  Returns bytes written (0 if it never fit or the peer is gone).
    """
    try:
        try:
            return write()
        except BlockingIOError:
            poller = select.poll()
            poller.register(fd, _POLLOUT)
            return write() if poller.poll(int(linger * 1000)) else 0
    except OSError:
        return 0  # the peer is gone already; nothing to tell it


class DescriptorChannel(Channel):
    """What channels over descriptors share (FdStreamChannel, unix seqpacket).

    An eventfd that ``close()`` rings, poll sets for reading and writing that include it, the wait
    for readability, and the error a send reports when the peer's end is gone: the server's
    rejection if one is waiting (``_pending_rejection``), else a clean close or a crash.
    """

    _wake = -1  # until _watch(): close() may run on a half-made end
    _send_error: IPCError | None
    _recv_error: IPCError | None

    def _watch(self, rfd: int, wfd: int) -> None:
        self._watched = (rfd, wfd)
        try:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            # A half-made end (the descriptor limit): its maker still owns rfd/wfd and closes them;
            # marked closed, this end never closes them a second time from __del__.
            self._closed = True
            raise
        self._rpoll = select.poll()
        self._rpoll.register(rfd, _POLLIN)
        self._rpoll.register(self._wake, _POLLIN)
        self._wpoll = select.poll()
        self._wpoll.register(wfd, _POLLOUT)
        self._wpoll.register(self._wake, _POLLIN)

    def _wakeup(self) -> None:
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def _poll(self, deadline: Deadline) -> bool:
        # Under the receive lock: a poll shares the poll set (not thread-safe) and, on streams,
        # the read-ahead buffer with a recv in another thread; and close() then waits for it.
        lock = self._recv_lock
        held: list[bool] = []
        try:
            # Stored from C, so an interrupt as acquire() returns never leaves the lock taken.
            held.extend(map(lock.acquire, (True,), (-1 if deadline is None else remaining(deadline) or 0.0,)))
            if not held[0]:
                return False  # another thread is receiving: whatever arrives is its message
            if self._closed:
                raise ChannelClosed(f"channel {self._url} was closed while polling")
            return self._poll_locked(deadline)
        finally:
            if held and held[0]:
                lock.release()

    def _poll_locked(self, deadline: Deadline) -> bool:
        """``_poll`` with the receive lock held."""
        raise NotImplementedError

    def _wait_readable(self, deadline: Deadline) -> None:
        events = self._rpoll.poll(poll_ms(deadline))
        if self._closed:
            raise ChannelClosed(f"channel {self._url} was closed while receiving")
        if not events:
            raise RecvTimeout(f"no message on {self._url} before the timeout")

    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        # New poll sets and a new wake eventfd, for two reasons.  A poll object copied while a
        # parent thread was inside its poll() raises "concurrent poll() invocation" for good.  And
        # the eventfd is a kernel object the parent's copy shares: its close (the parent lets go of
        # a handed end at once) would wake this process's waits for good -- the count stays, so
        # every poll returns at once -- and this end's close would wake the parent's.
        old = self._wake
        try:
            self._watch(*self._watched)
        except OSError:  # no descriptor left: keep the inherited ones, which still work
            self._closed = False
            return
        os.close(old)

    def _pending_rejection(self) -> PeerRejected | None:
        """A REJECTED frame or packet waiting to be read, if the transport can look without consuming."""
        return None

    def _peer_gone(self, deadline: Deadline = 0.0) -> IPCError:
        """The (sticky) error of a send that found the peer's end closed (EPIPE, ECONNRESET).

        The server's rejection if one is waiting; EndOfChannel if the peer closed cleanly (its
        goodbye follows its last message: :meth:`_peer_said_goodbye`), else PeerDied.
        """
        err: IPCError
        if isinstance(self._recv_error, PeerRejected):
            err = self._recv_error
        elif (rejected := self._pending_rejection()) is not None:
            err = rejected
        elif self._peer_said_goodbye(deadline):
            err = EndOfChannel(f"the peer closed {self._url}; it receives nothing more (what it sent is "
                               "still received)")
        else:
            err = PeerDied(f"the peer of {self._url} is gone (its end closed without a goodbye)")
        self._send_error = err
        return err

    def _peer_said_goodbye(self, deadline: Deadline) -> bool:
        """Did the peer whose end a send found closed say goodbye?  The goodbye travels in the
        receive direction, after the peer's last message, so this looks there without consuming
        anything (:meth:`_goodbye_after_unread`): every message stays for ``recv``.

        Under the receive lock (a receiving thread owns the buffers meanwhile; one blocked in recv
        returns as the peer's stream ends).  Until the stream ends (hang-up) a goodbye may still
        come, so this waits for it, up to ``_PEER_CLOSE_WAIT`` within *deadline*; a peer that never
        hangs up in that time is taken for dead.
        """
        limit = time.monotonic() + _PEER_CLOSE_WAIT
        if deadline is not None:
            limit = min(limit, deadline)
        lock = self._recv_lock
        held: list[bool] = []
        try:
            held.extend(map(lock.acquire, (True,), (max(0.0, limit - time.monotonic()),)))  # (see _poll)
            if not held[0]:
                return isinstance(self._recv_error, EndOfChannel)
            incoming = self._watched[0]
            hangup = select.poll()
            hangup.register(incoming, 0)  # POLLHUP and POLLERR only: unread data does not wake it
            hangup.register(self._wake, _POLLIN)
            while True:
                if self._recv_error is not None:
                    return isinstance(self._recv_error, EndOfChannel)
                # Hang-up first: seen before the look, it means the look saw the whole stream.
                ended = any(fd == incoming and ev & (select.POLLHUP | select.POLLERR) for fd, ev in hangup.poll(0))
                verdict = self._goodbye_after_unread()
                if verdict is not None:
                    return verdict
                left = limit - time.monotonic()
                if ended or left <= 0 or self._closed:
                    return False
                hangup.poll(max(1, min(50, int(left * 1000))))
        finally:
            if held and held[0]:
                lock.release()

    def _goodbye_after_unread(self) -> bool | None:
        """With the receive lock held: True when the peer's goodbye follows the messages not yet
        received, False when the stream cannot end in one (it broke the protocol, or it ended
        without), None when no goodbye is there (yet).  Looks without consuming anything."""
        return None


class _AbortedFrame(IPCError):
    """Never raised: what ``_send_error`` holds while the tail of an aborted frame waits to be
    written (the next send or ``close()`` writes it first), so the hot path's one check covers it."""


_TAIL_PENDING = _AbortedFrame("an aborted frame's tail is waiting to be written")


class FdStreamChannel(DescriptorChannel):
    """A framed duplex channel over a read descriptor and a write descriptor (may be the same)."""

    def __init__(self, url: str, options: Options, *, rfd: int, wfd: int, peer_trusted: bool,
                 checksum: bool = False) -> None:
        self._rfd = -1
        self._wfd = -1
        super().__init__(url, options, peer_trusted=peer_trusted)
        self._rfd = rfd
        self._wfd = wfd
        if not self._blocking_reads:
            os.set_blocking(rfd, False)
            if wfd != rfd:
                os.set_blocking(wfd, False)
        self._checksum = checksum
        self._blocked = False  # a thread is inside _read_blocking
        self._watch(rfd, wfd)
        self._rbuf = bytearray(READ_BUFFER)
        self._rmv = memoryview(self._rbuf)
        self._rpos = 0
        self._rend = 0
        self._read_first = False  # last read filled the buffer: more is probably waiting
        self._sseq = 0
        self._frame_sent = 0  # bytes of a frame in _write_rest that left; -1 while a write's count is unknown
        self._counts: list[int] = []  # the count of a blocking read, stored from C (_read_blocking)
        # Payloads up to this size go out as one unflagged frame on the hot path (-1 with checksums:
        # those take _send_flagged); larger ones carry the commit trailer.
        self._plain_max = -1 if checksum else _ATOMIC_FRAME - HEADER_SIZE
        self._wcounts: list[int] = []  # write counts stored from C (_writes)
        # An aborted frame's tail still to write (while _send_error is _TAIL_PENDING): the rest
        # of its header, then this many zero bytes (the rest of the payload and the 0 commit byte).
        self._tail_head = _EMPTY
        self._tail_zeros = 0
        self._rseq = 0
        self._expect_head = _head_word(0)
        self._send_error: IPCError | None = None
        self._recv_error: IPCError | None = None
        # A large message being received straight into its own buffer: [buffer, received, crc].
        self._pending: list[Any] | None = None
        self._ready_fd = -1
        self._epoll: select.epoll | None = None

    # ---------------------------------------------------------------- raw I/O (overridable)
    def _raw_writev(self, bufs: list[memoryview]) -> int:
        return os.writev(self._wfd, bufs)

    def _raw_readinto(self, view: memoryview) -> int:
        return os.readv(self._rfd, [view])

    def _reads(self, view: memoryview) -> Iterator[int]:
        """The read ``_raw_readinto(view)`` makes, as a lazy iterator of its one count.

        Nothing is read until the iterator is consumed, which the slow paths do from C
        (``list.extend``): the count is then stored before a signal handler can run.  Return a
        ``map`` over a C-level callable, never a generator (its Python frame reopens the window).
        """
        return map(os.readv, (self._rfd,), ([view],))

    def _writes(self, bufs: list[memoryview]) -> Iterator[int]:
        """The write ``_raw_writev(bufs)`` makes, as a lazy iterator of its one count (as ``_reads``:
        a ``map`` over a C-level callable, so the slow paths store the count from C)."""
        return map(os.writev, (self._wfd,), (bufs,))

    def _ended(self) -> bool:
        """A read returned 0: True if that is the end of the stream (a FIFO: not before a writer opened)."""
        return True

    #: Subclasses whose reads can block and still be woken by close() set this, set
    #: ``_recv_blocking`` and implement ``_unblock_reader`` (sockets: shutdown(SHUT_RD)).  Pipes
    #: cannot: nothing but the peer wakes a blocked read on a pipe, so they always wait in poll().
    _blocking_reads = False

    #: The blocking read ``(view) -> count`` (ConnectionResetError counts as the end of the
    #: stream).  It must be a C-level callable, e.g. ``socket.recv_into``, never a Python
    #: function: ``_read_blocking`` calls it from C so that its count is stored before a signal
    #: handler can run.
    _recv_blocking: Callable[[memoryview], int]

    def _unblock_reader(self) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- sending
    def _send_message(self, view: memoryview, deadline: Deadline) -> None:
        if self._send_error is not None:
            self._send_blocked(deadline)
        n = view.nbytes
        if n <= self._plain_max:
            header = _pack(MAGIC, VERSION, 0, self._sseq & _SEQ_MASK, n, 0)
            self._write_frame([memoryview(header), view], HEADER_SIZE + n, deadline)
        else:
            self._send_flagged([view], n, deadline)

    def _send_parts(self, views: list[memoryview], total: int, deadline: Deadline) -> None:
        if self._send_error is not None:
            self._send_blocked(deadline)
        if total <= self._plain_max:
            header = _pack(MAGIC, VERSION, 0, self._sseq & _SEQ_MASK, total, 0)
            self._write_frame([memoryview(header), *views], HEADER_SIZE + total, deadline)
        else:
            self._send_flagged(views, total, deadline)

    def _send_blocked(self, deadline: Deadline) -> None:
        """The send side's one check found something: raise its sticky error, or first finish the
        frame an earlier cut send aborted (within this send's *deadline*)."""
        err = self._send_error
        if err is None:
            return
        if err is not _TAIL_PENDING:
            raise again(err)
        if not self._write_tail(self._wpoll, deadline):
            raise SendTimeout(f"send timed out on {self._url} while finishing the message an earlier send "
                              "aborted (the peer is not reading); nothing of this message was sent")

    def _send_flagged(self, views: list[memoryview], n: int, deadline: Deadline) -> None:
        """A frame off the hot path: with a checksum, or one a write may split (the commit trailer)."""
        flags = crc = 0
        if self._checksum:
            flags = FLAG_CHECKSUM
            for v in views:
                crc = crc32(v, crc)
        if HEADER_SIZE + n <= _ATOMIC_FRAME:
            header = _pack(MAGIC, VERSION, flags, self._sseq & _SEQ_MASK, n, crc)
            self._write_frame([memoryview(header), *views], HEADER_SIZE + n, deadline)
            return
        header = _pack(MAGIC, VERSION, flags | FLAG_TRAILER, self._sseq & _SEQ_MASK, n, crc)
        self._write_trailed([memoryview(header), *views, _COMMIT], HEADER_SIZE + n + 1, deadline)

    def _write_frame(self, bufs: list[memoryview], total: int, deadline: Deadline) -> None:
        """Write a frame of at most ``_ATOMIC_FRAME`` bytes: one write, whole or nothing (hot path)."""
        try:
            written = self._raw_writev(bufs)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise self._send_failed(exc, 0, deadline) from exc
        except BaseException as exc:
            # A signal handler's exception, raised as the write returned: whether the frame left
            # is lost with the return value, so the stream can no longer be trusted.
            self._send_interrupted(exc, -1, total)
            raise
        if written == total:
            self._sseq += 1
            return
        self._frame_sent = written
        try:
            self._write_rest(bufs, written, total, deadline)
        except BaseException as exc:
            # _write_rest keeps _frame_sent current: 0 means nothing of the frame left (or all of
            # it did, and it was counted), so the channel stays usable.
            if not isinstance(exc, IPCError) and self._frame_sent != 0:
                self._send_interrupted(exc, self._frame_sent, total)
            raise

    def _write_rest(self, bufs: list[memoryview], written: int, total: int, deadline: Deadline) -> None:
        """Write the rest of a small frame *written* bytes into it, waiting for room (slow path).

        Mostly nothing left at all (the kernel takes a small frame whole or not), then this waits
        and writes it at once.  A frame without a trailer cannot be aborted, so one the kernel did
        split and that is then cut breaks the send side (:meth:`_break_send`).  ``_frame_sent``
        tracks what left for ``_write_frame``'s interrupt handling: the count so far, -1 while a
        write is in flight, 0 once the whole frame left (``_sseq`` advanced).
        """
        done = written
        while True:
            # Drop what has been written from the front of the buffer list.
            while written and bufs:
                first = bufs[0].nbytes
                if written >= first:
                    written -= first
                    bufs.pop(0)
                else:
                    bufs[0] = bufs[0][written:]
                    written = 0
            events = self._wpoll.poll(poll_ms(deadline))
            if self._closed:
                if done:
                    self._break_send("the channel was closed while a send was part-way through a message")
                raise ChannelClosed(f"channel {self._url} was closed while sending")
            if not events:
                if done:
                    self._break_send("a send timed out part-way through a message")
                    raise SendTimeout(f"send timed out after {done} of {total} bytes of the frame; "
                                      "the stream is now broken")
                raise SendTimeout(f"send timed out on {self._url}: the peer is not reading; nothing was sent")
            self._frame_sent = -1
            try:
                written = self._raw_writev(bufs[:512])
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._frame_sent = done
                raise self._send_failed(exc, done, deadline) from exc
            done += written
            if done == total:  # counted before any call, so an interrupt after it sees a whole frame
                self._sseq += 1
                self._frame_sent = 0
                return
            self._frame_sent = done

    def _write_trailed(self, bufs: list[memoryview], total: int, deadline: Deadline) -> None:
        """Write a frame that ends with its commit byte; a cut after part of it left aborts it.

        Every write's count is stored from C (:meth:`_writes`) and added to *done* with no call in
        between, so whatever cuts the send (its deadline, close(), a signal handler's exception)
        knows exactly what left: nothing (the message was not sent, the stream is as it was), or
        part of the frame, which is then aborted (see the ``except`` clause): the message counts
        as not sent, and the next send or close() first writes what the peer needs to read the
        frame as discarded.
        """
        header = bufs[0]
        done = 0
        counts = self._wcounts
        try:
            while True:
                got = 0
                try:
                    counts.extend(self._writes(bufs[:512]))
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise self._send_failed(exc, 0, deadline) from exc
                finally:
                    if counts:
                        got = counts[0]
                        del counts[0]
                        done += got
                if done == total:
                    self._sseq += 1
                    return
                while got and bufs:  # drop what left from the front of the buffer list
                    first = bufs[0].nbytes
                    if got >= first:
                        got -= first
                        bufs.pop(0)
                    else:
                        bufs[0] = bufs[0][got:]
                        got = 0
                events = self._wpoll.poll(poll_ms(deadline))
                if self._closed:
                    raise ChannelClosed(f"channel {self._url} was closed while sending")
                if not events:
                    if done:
                        raise SendTimeout(
                            f"send timed out on {self._url} after {done} of {total} bytes of the message's frame "
                            "had left (the peer is not reading): the message was not sent, the peer will discard "
                            "the part it gets, and the channel stays usable")
                    raise SendTimeout(f"send timed out on {self._url}: the peer is not reading; nothing was sent")
        except BaseException:
            if done == total:  # the exception came as the last write returned: the message left whole
                self._sseq += 1
            elif done and self._send_error is None:
                # Abort the message; no call until all of this is recorded, so no handler can run
                # in between.  What the peer still needs: the rest of the header if the cut was in
                # it, then zeros for the rest of the payload and the 0 commit byte.  The frame
                # keeps its sequence number (the peer counts the discarded frame too).
                self._tail_head = header[done:] if done < HEADER_SIZE else _EMPTY
                self._tail_zeros = total - (done if done > HEADER_SIZE else HEADER_SIZE)
                self._sseq += 1
                self._send_error = _TAIL_PENDING
            raise

    def _write_tail(self, poller: select.poll, deadline: Deadline, idle: float | None = None) -> bool:
        """Write what is left of the aborted frame (``_tail_head``, ``_tail_zeros`` zero bytes).

        True once all of it left (the send side is clear again); False if *deadline* passed first,
        or (*idle*) a wait for room found none that long.  *poller* waits for room: the send
        poll set (close() wakes it) or, from close() itself, one on the write descriptor alone
        (then a failed write is False too: close() holds the receive lock that telling a clean
        close from a crash needs, and does not care).
        Each count is stored from C and applied with no call in between, so an interrupt anywhere
        leaves exactly the rest pending.
        """
        counts = self._wcounts
        chunk = 8 * _ZEROS.nbytes
        while True:
            head = self._tail_head
            zeros = self._tail_zeros
            if not zeros:
                if self._send_error is _TAIL_PENDING:
                    self._send_error = None
                return True
            bufs = [head] if head.nbytes else []
            full, part = divmod(zeros if zeros < chunk else chunk, _ZEROS.nbytes)
            bufs += [_ZEROS] * full
            if part:
                bufs.append(_ZEROS[:part])
            have = head.nbytes
            try:
                counts.extend(self._writes(bufs))
            except BlockingIOError:
                pass
            except OSError as exc:
                if poller is not self._wpoll:
                    return False
                raise self._send_failed(exc, 0, deadline) from exc
            finally:
                if counts:
                    got = counts[0]
                    del counts[0]
                    if got < have:
                        self._tail_head = head[got:]
                    else:
                        self._tail_head = _EMPTY
                        self._tail_zeros = zeros - (got - have)
            if not self._tail_zeros:
                continue
            events = poller.poll(poll_ms(deadline, idle))
            if poller is self._wpoll and self._closed:
                raise ChannelClosed(f"channel {self._url} was closed while sending")
            if not events:
                return False

    def _finish_tail_closing(self) -> None:
        """close(): write the aborted frame's tail so the goodbye can follow it, within
        ``_TAIL_LINGER`` and as long as the peer makes room (a wait of ``_TAIL_IDLE`` finding none
        ends it).  If it cannot (or the peer is gone), the peer reads the end of the stream in the
        middle of the frame: PeerDied after its last whole message."""
        poller = select.poll()
        poller.register(self._wfd, _POLLOUT)
        self._write_tail(poller, time.monotonic() + _TAIL_LINGER, _TAIL_IDLE)

    def _send_interrupted(self, exc: BaseException, done: int, total: int) -> None:
        """*exc* cut an untrailed frame (*done* bytes of *total* left; -1: unknown): the send side breaks."""
        sent = "an unknown part" if done < 0 else f"{done} of {total} bytes"
        self._break_send(f"a send was interrupted by {type(exc).__name__} (raised by a signal handler) "
                         f"after {sent} of its frame had left")

    def _break_send(self, why: str) -> None:
        """The send side can no longer be trusted (*why*): ChannelBroken on every later send, and
        the write direction is shut, so the peer reads the end of the stream after the last whole
        message (PeerDied), never waits in the middle of a frame for bytes that cannot come."""
        if self._send_error is not None and self._send_error is not _TAIL_PENDING:
            return
        self._send_error = ChannelBroken(
            f"{why}; the peer can no longer find message boundaries on {self._url}, so this end sends no "
            "more: close the channel and open a new one")
        self._shut_writes()

    def _shut_writes(self) -> None:
        """End the write direction for the peer without closing the descriptor (it stays ours)."""
        fd = self._wfd
        if fd < 0:
            return
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                sock = socket.socket(fileno=fd)
                try:
                    sock.shutdown(socket.SHUT_WR)
                finally:
                    sock.detach()
                return
            # A pipe or FIFO cannot be half-closed: our write end is replaced by one of a pipe
            # without a reader, so the peer sees the end once no other process holds the old
            # one, and any later write (a hand-off's too) fails as to a gone peer.
            r, w = os.pipe2(os.O_CLOEXEC)
            os.close(r)
            try:
                os.dup2(w, fd, inheritable=False)
            finally:
                os.close(w)
        except OSError:
            pass  # best effort (the descriptor limit): every later send raises ChannelBroken anyway

    def _send_failed(self, exc: OSError, done: int, deadline: Deadline = 0.0) -> IPCError:
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return self._peer_gone(deadline)
        failure = from_oserror(exc, f"send on {self._url}")
        if done:
            self._break_send(f"a send failed part-way through a message ({exc})")
        return failure

    # ---------------------------------------------------------------- receiving
    def _recv_message(self, deadline: Deadline) -> Buffer:
        if self._recv_error is not None or self._pending is not None:
            return self._recv_checked(deadline)
        if self._rend - self._rpos < HEADER_SIZE:
            self._fill(HEADER_SIZE, deadline)
        pos = self._rpos
        # Fast path: magic, version, no flags and the expected sequence number compare as one
        # 64-bit word; anything else (flags, goodbye, errors) takes the fully checked path.
        head, n, _ = _FAST_HEADER(self._rbuf, pos)
        if head != self._expect_head or n > self._max:
            return self._recv_checked(deadline)
        start = pos + HEADER_SIZE
        end = start + n
        if end > self._rend:
            if HEADER_SIZE + n > READ_BUFFER:
                return self._recv_checked(deadline)
            self._fill(HEADER_SIZE + n, deadline)
            start = self._rpos + HEADER_SIZE
            end = start + n
        data = bytes(self._rmv[start:end])
        self._rpos = end
        self._rseq += 1
        self._expect_head = (self._expect_head + _SEQ_ONE) & _U64_MASK
        if self._epoll is not None:
            self._sync_ready()
        return data

    def _recv_checked(self, deadline: Deadline) -> Buffer:
        """The fully checked path: the next message, skipping frames a cut send aborted (all
        within *deadline*, so a receive that times out after skipping one consumed only that)."""
        while True:
            data = self._recv_frame(deadline)
            if data is not None:
                return data

    def _recv_frame(self, deadline: Deadline) -> Buffer | None:
        """The next frame's message, or None for a frame whose sender aborted it (discarded)."""
        if self._recv_error is not None:
            raise again(self._recv_error)
        if self._pending is not None:
            return self._finish_large(deadline)
        if self._rend - self._rpos < HEADER_SIZE:
            self._fill(HEADER_SIZE, deadline)
        pos = self._rpos
        flags, n, crc = self._header(pos)
        if flags & FLAG_TRAILER:
            return self._recv_trailed(n, crc, flags, deadline)
        start = pos + HEADER_SIZE
        end = start + n
        if end > self._rend:
            if HEADER_SIZE + n > READ_BUFFER:
                return self._start_large(n, crc, flags, deadline)
            self._fill(HEADER_SIZE + n, deadline)
            start = self._rpos + HEADER_SIZE
            end = start + n
        data = bytes(self._rmv[start:end])
        if flags & FLAG_REJECTED:
            self._recv_error = rejection_error(self._url, data)  # before the frame is consumed
            if self._send_error is None:  # refused: later sends say so too (the server may not
                self._send_error = self._recv_error  # have closed the connection yet)
            self._rpos = end
            self._rseq += 1
            raise again(self._recv_error)
        if flags & FLAG_HELLO:
            self._rpos = end  # outside the sequence: _rseq stays
            self._take_hello(data)
            return self._recv_message(deadline)
        # Position and sequence number move together (no call in between: see the module docstring);
        # a stale _expect_head only sends the next message down this checked path.
        self._rpos = end
        self._rseq += 1
        self._expect_head = _head_word(self._rseq)
        if flags & FLAG_CHECKSUM and crc32(data) != crc:
            raise self._break(ProtocolError(f"checksum mismatch in message {self._rseq - 1} on {self._url}"))
        if self._epoll is not None:
            self._sync_ready()
        return data

    # ---------------------------------------------------------------- the hello (framing docstring)
    #: True on a connected client until the server's hello was read: it is then the first frame.
    _hello_due = False

    def _say_hello(self) -> None:
        """Write this end's hello, the first frame of its direction (at connect or accept).

        The stream is fresh, so the small frame fits at once.  A peer already gone is not an
        error here: the next send or receive reports it (a refused client's, the server's reason).
        """
        frame = memoryview(encode_hello(self._max))
        try:
            written = self._raw_writev([frame])
        except (BrokenPipeError, ConnectionResetError):
            return
        except OSError as exc:
            raise from_oserror(exc, f"sending the hello on {self._url}") from exc
        if written != frame.nbytes:
            self._send_error = ChannelBroken(f"the hello on {self._url} did not fit the fresh stream; "
                                             "close the channel and connect again")
            raise again(self._send_error)

    def _take_hello(self, payload: bytes) -> None:
        """The peer's hello arrived (receive lock held, frame consumed): learn its limit."""
        if not self._hello_due:
            raise self._break(ProtocolError(f"an unexpected hello frame on {self._url} (it is only valid "
                                            "as the server's first frame)"))
        try:
            peer_max = decode_hello(payload, f"the peer of {self._url}")
        except IPCError as exc:
            raise self._break(exc) from None
        self._hello_due = False
        self._learn_peer_limit(peer_max)

    def _skip_buffered_hello(self) -> None:
        """poll(): take a whole hello waiting in the read-ahead buffer, so it reports messages only."""
        pos = self._rpos
        if self._rend - pos < HEADER_SIZE:
            return
        try:
            flags, n, _ = decode_header(self._rbuf, pos, self._rseq, self._max)
        except IPCError:
            return  # recv will raise the protocol error
        if flags & FLAG_HELLO and self._rend - pos >= HEADER_SIZE + n:
            self._rpos = pos + HEADER_SIZE + n
            try:
                self._take_hello(bytes(self._rmv[pos + HEADER_SIZE : self._rpos]))
            except IPCError:
                pass  # recorded as the receive error: poll reports it, recv raises it

    def _header(self, pos: int) -> tuple[int, int, int]:
        try:
            flags, n, crc = decode_header(self._rbuf, pos, self._rseq, self._max)
        except (ProtocolError, MessageTooLarge) as exc:
            raise self._break(exc) from None
        if flags & FLAG_GOODBYE:
            end = EndOfChannel(f"the peer closed {self._url} and every message was received")
            self._rpos = pos + HEADER_SIZE
            self._rseq += 1
            self._recv_error = end
            if self._epoll is not None:
                self._sync_ready()
            raise again(self._recv_error)
        return flags, n, crc

    def _break(self, exc: IPCError) -> IPCError:
        if self._recv_error is None:
            self._recv_error = ChannelBroken(f"the stream on {self._url} is broken: {exc}")
        return exc

    def _start_large(self, n: int, crc: int, flags: int, deadline: Deadline) -> Buffer | None:
        # The message does not fit the read-ahead buffer: receive it straight into its own buffer
        # (with a trailed frame's commit byte at its end, dropped before it is returned).
        trailed = bool(flags & FLAG_TRAILER)
        out = bytearray(n + 1 if trailed else n)
        start = self._rpos + HEADER_SIZE
        have = self._rend - start
        out[:have] = self._rmv[start : self._rend]
        self._rpos = self._rend = 0
        self._pending = [out, have, crc if flags & FLAG_CHECKSUM else None, trailed]
        return self._finish_large(deadline)

    def _finish_large(self, deadline: Deadline) -> Buffer | None:
        """Receive the rest of the pending large message; None if its sender aborted it."""
        assert self._pending is not None
        out: bytearray = self._pending[0]
        have: int = self._pending[1]
        crc: int | None = self._pending[2]
        view = memoryview(out)
        n = len(out)
        pending = self._pending
        counts = self._counts
        while have < n:
            # The slow path can afford to record each read's count from C (see _reads): an
            # interrupt anywhere here leaves the message pending with an exact count, resumable.
            got = -1
            try:
                counts.extend(self._reads(view[have:]))
            except BlockingIOError:
                pass
            except ConnectionResetError:
                got = 0  # a socket peer closed with unread data: the end of the stream
            finally:
                if counts:
                    got = counts[0]
                    del counts[0]
                    have += got
                    pending[1] = have
            if got < 0 or (got == 0 and not self._ended()):
                self._wait_readable(deadline)
                continue
            if got == 0:
                self._pending = None
                raise self._eof(f"the peer ended in the middle of a {n}-byte message ({have} bytes received)")
        self._pending = None
        self._rseq += 1
        self._expect_head = _head_word(self._rseq)
        data: Buffer = out
        if pending[3]:
            commit = out[-1]
            if commit != 1:
                if commit:
                    raise self._break(ProtocolError(self._bad_commit(commit)))
                return None  # aborted by a cut send: discarded, its checksum unchecked
            # Without the commit byte, and no copy (nor a resize: a view of an interrupted read
            # may still hold the buffer).
            data = view[:-1]
        if crc is not None and crc32(data) != crc:
            raise self._break(ProtocolError(f"checksum mismatch in message {self._rseq - 1} on {self._url}"))
        return data

    def _recv_trailed(self, n: int, crc: int, flags: int, deadline: Deadline) -> Buffer | None:
        """A frame with a commit byte after its *n*-byte payload (at ``_rpos``): its message if the
        byte is 1, None if it is 0 (a cut send aborted it: the frame is consumed and discarded)."""
        if HEADER_SIZE + n + 1 > READ_BUFFER:
            return self._start_large(n, crc, flags, deadline)
        if self._rend - self._rpos < HEADER_SIZE + n + 1:
            self._fill(HEADER_SIZE + n + 1, deadline)
        start = self._rpos + HEADER_SIZE
        end = start + n
        commit = self._rbuf[end]
        if commit > 1:
            raise self._break(ProtocolError(self._bad_commit(commit)))
        data = bytes(self._rmv[start:end]) if commit else None
        # Position and sequence number move together (see the module docstring).
        self._rpos = end + 1
        self._rseq += 1
        self._expect_head = _head_word(self._rseq)
        if data is not None and flags & FLAG_CHECKSUM and crc32(data) != crc:
            raise self._break(ProtocolError(f"checksum mismatch in message {self._rseq - 1} on {self._url}"))
        if self._epoll is not None:
            self._sync_ready()
        return data

    def _bad_commit(self, commit: int) -> str:
        return (f"frame {self._rseq - 1} on {self._url} ends with commit byte {commit} (1 delivers, 0 discards): "
                "the stream is corrupt")

    def _fill(self, need: int, deadline: Deadline) -> None:
        """Read until at least *need* bytes are buffered from ``_rpos``."""
        if self._rpos + need > READ_BUFFER:
            have = self._rend - self._rpos
            self._rmv[:have] = self._rmv[self._rpos : self._rend]
            self._rpos = 0
            self._rend = have
        read_first = self._read_first
        while self._rend - self._rpos < need:
            if deadline is None and self._blocking_reads:
                got = self._read_blocking()
            else:
                if not read_first:
                    self._wait_readable(deadline)  # an exception here leaves the buffer as it was
                read_first = False
                try:
                    got = self._raw_readinto(self._rmv[self._rend :])
                except BlockingIOError:
                    continue
                except OSError:
                    raise
                except BaseException:
                    self._read_interrupted()
                    raise
                self._rend += got
            if got == 0:
                partial = self._rend - self._rpos
                if partial:
                    raise self._eof(f"the peer ended in the middle of a message ({partial} bytes of a frame)")
                raise self._eof(f"the peer of {self._url} ended without closing the channel")
            self._read_first = self._rend == READ_BUFFER

    def _read_blocking(self) -> int:
        """Read into the buffer at ``_rend`` with one blocking call and advance ``_rend``; the count.

        One system call instead of poll + read.  close() from another thread sees _blocked and
        wakes the call with _unblock_reader(); the closed/blocked checks on both sides are
        ordered by the GIL, so one of them always sees the other.
        """
        counts = self._counts
        self._blocked = True
        try:
            if self._closed:
                raise ChannelClosed(f"channel {self._url} was closed while receiving")
            # A signal usually lands while this call blocks: the read then fails with EINTR and
            # the handler's exception comes out of it, nothing read.  But one that lands as the
            # read returns would lose its count, and the bytes with it.  Here map() calls the read
            # from C and list.extend stores the count before any Python code (or handler) runs,
            # and the finally clause below accounts for it either way.
            counts.extend(map(self._recv_blocking, (self._rmv[self._rend :],)))
        except ConnectionResetError:
            pass  # the peer closed with unread data: end of stream (without goodbye: PeerDied)
        finally:
            self._blocked = False
            got = 0
            if counts:
                got = counts[0]
                del counts[0]
                self._rend += got
        if self._closed:
            raise ChannelClosed(f"channel {self._url} was closed while receiving")
        return got

    def _read_interrupted(self) -> None:
        """Break the receive side: an exception came out of a read whose count (and bytes) it lost."""
        if self._recv_error is None:
            self._recv_error = ChannelBroken(
                f"a receive on {self._url} was interrupted by an exception (raised by a signal handler) "
                "as a read returned, so the bytes it read are lost and the stream lost its message "
                "boundaries: close the channel and open a new one")

    def _eof(self, why: str) -> IPCError:
        self._recv_error = PeerDied(why)
        return again(self._recv_error)

    def _poll_locked(self, deadline: Deadline) -> bool:
        while True:
            if self._hello_due:
                self._skip_buffered_hello()
            if self._recv_error is not None or self._pending is not None:
                return True
            if self._frame_buffered():
                return True
            events = self._rpoll.poll(poll_ms(deadline))
            if self._closed:
                raise ChannelClosed(f"channel {self._url} was closed while polling")
            if not events:
                return False
            # Pull what is there into the buffer and check for a whole frame (or end of stream).
            if self._rpos:
                have = self._rend - self._rpos
                self._rmv[:have] = self._rmv[self._rpos : self._rend]
                self._rpos, self._rend = 0, have
            try:
                got = self._raw_readinto(self._rmv[self._rend :])
            except BlockingIOError:
                continue
            except OSError:
                raise
            except BaseException:
                self._read_interrupted()
                raise
            if got == 0:
                return True  # end of stream: recv will raise at once
            self._rend += got
            if self._rend == READ_BUFFER and self._frame_buffered():
                # A frame larger than the buffer is arriving (recv streams it); not when the full
                # buffer only held aborted frames, now skipped: then the loop reads on.
                return True
            if remaining(deadline) == 0.0:
                return self._frame_buffered()

    def _frame_buffered(self) -> bool:
        """A whole frame (or an error) is buffered, so recv returns at once.  Aborted frames
        there are consumed on the way (receive lock held), as recv would: they are no message."""
        while True:
            pos = self._rpos
            have = self._rend - pos
            if have < HEADER_SIZE:
                return False
            try:
                flags, n, _ = decode_header(self._rbuf, pos, self._rseq, self._max)
            except IPCError:
                return True  # recv will raise the protocol error at once
            if not flags & FLAG_TRAILER:
                return have >= HEADER_SIZE + n or HEADER_SIZE + n > READ_BUFFER
            size = HEADER_SIZE + n + 1
            if size > READ_BUFFER:
                return True  # recv streams it (and only then sees whether it delivers)
            if have < size or self._rbuf[pos + size - 1]:
                return have >= size  # incomplete, or delivers (a bad commit byte: recv raises)
            self._rpos = pos + size
            self._rseq += 1
            self._expect_head = _head_word(self._rseq)

    # ---------------------------------------------------------------- selectable
    def _fileno(self) -> int:
        # Read-ahead can hold whole messages the kernel no longer reports, so the readiness
        # descriptor is an epoll set over the data fd plus an eventfd raised while data is buffered.
        if self._epoll is None:
            self._ready_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            ep = select.epoll()
            ep.register(self._rfd, select.EPOLLIN)
            ep.register(self._ready_fd, select.EPOLLIN)
            self._epoll = ep
            self._sync_ready()
        return self._epoll.fileno()

    def _sync_ready(self) -> None:
        buffered = self._rend > self._rpos or self._recv_error is not None
        try:
            if buffered:
                os.eventfd_write(self._ready_fd, 1)
            else:
                os.eventfd_read(self._ready_fd)
        except BlockingIOError:
            pass

    # ---------------------------------------------------------------- closing
    def _wakeup(self) -> None:
        super()._wakeup()
        if self._blocked:
            self._unblock_reader()

    def _close(self) -> None:
        try:
            if self._wfd >= 0 and not self._handed_off:
                if self._send_error is _TAIL_PENDING:
                    self._finish_tail_closing()  # a cut send's aborted frame first, then the goodbye
                if self._send_error is None:
                    self._say_goodbye()
        finally:
            self._release_fds()

    def _say_goodbye(self) -> None:
        frame = memoryview(_pack(MAGIC, VERSION, FLAG_GOODBYE, self._sseq & _SEQ_MASK, 0, 0))
        # A goodbye cut short leaves the peer a truncated frame: PeerDied, the honest answer.
        write_with_linger(self._wfd, lambda: self._raw_writev([frame]))

    def _release_fds(self) -> None:
        fds = {self._rfd, self._wfd, self._wake, self._ready_fd} - _NO_FD
        self._rfd = self._wfd = self._wake = self._ready_fd = -1
        epoll, self._epoll = self._epoll, None
        try:
            if epoll is not None:
                epoll.close()
        finally:
            # All closed in one call from C (closerange ignores errors), so a signal handler's
            # exception cannot stop the release half-way; a set, so no number is closed twice.
            collections.deque(map(os.closerange, fds, map(_ONE.__add__, fds)), 0)

    # ---------------------------------------------------------------- hand-off
    def _fork_adopt(self) -> None:
        super()._fork_adopt()
        self._blocked = False  # a parent thread's blocking read: no thread of this process is in one
        # fileno()'s epoll set and readiness eventfd are shared with the parent's copy too (and
        # _sync_ready writes the eventfd): drop this process's handles; fileno() makes new ones.
        epoll, self._epoll = self._epoll, None
        ready, self._ready_fd = self._ready_fd, -1
        if epoll is not None:
            epoll.close()
        if ready >= 0:
            os.close(ready)

    # ---------------------------------------------------------------- the peer's goodbye, unread
    def _peek_incoming(self) -> bytes | None:
        """What the kernel holds unread in the receive direction, without consuming it (None:
        cannot look).  Pipes and FIFOs: :func:`peek_pipe`; sockets override with MSG_PEEK."""
        return peek_pipe(self._rfd)

    def _goodbye_after_unread(self) -> bool | None:
        # The unread stream: the rest of a large message being received, the read-ahead buffer
        # (empty while a large message is pending), then what the kernel holds.  Frame by frame
        # from there, with the sequence numbers recv will expect.
        kernel = self._peek_incoming()
        if kernel is None:
            return None
        seq = self._rseq
        pos = 0
        if self._pending is not None:
            pos = len(self._pending[0]) - self._pending[1]
            seq += 1
        data = bytes(self._rmv[self._rpos : self._rend]) + kernel
        while pos + HEADER_SIZE <= len(data):
            try:
                flags, n, _ = decode_header(data, pos, seq, self._max)
            except IPCError:
                return False
            if flags & FLAG_GOODBYE:
                return True
            pos += HEADER_SIZE + n + (1 if flags & FLAG_TRAILER else 0)
            if not flags & FLAG_HELLO:  # the hello is outside the sequence
                seq += 1
        return None

    def _handoff_state(self) -> tuple[int, int, bytes, bool, int | None, bytes, int]:
        """Sequence numbers, read-ahead bytes, the hello's state (still due; the peer's limit) and
        an aborted frame's tail still to write (:meth:`_tail_state`) a process taking this end over
        must continue from."""
        return (self._sseq, self._rseq, bytes(self._rmv[self._rpos : self._rend]), self._hello_due, self._peer_max,
                *self._tail_state())

    def _tail_state(self) -> tuple[bytes, int]:
        """The rest of an aborted frame's header and its zero count, if one is pending (else b"", 0)."""
        if self._send_error is _TAIL_PENDING:
            return bytes(self._tail_head), self._tail_zeros
        return b"", 0

    def _resume_tail(self, head: bytes, zeros: int) -> None:
        """Take over an aborted frame's tail from :meth:`_tail_state`: the first send writes it."""
        if zeros:
            self._tail_head = memoryview(head)
            self._tail_zeros = zeros
            self._send_error = _TAIL_PENDING

    def _fork_release(self, multiprocessing_child: bool) -> None:
        # Any forked child drops the parent's other ends without a word (and without the locks: a
        # parent thread may have held them at the fork), so the peer still sees the parent's EOF.
        self._release_fds()

    def _resume(self, sseq: int, rseq: int, buffered: bytes, hello_due: bool = False,
                peer_max: int | None = None, tail_head: bytes = b"", tail_zeros: int = 0) -> None:
        self._resume_tail(tail_head, tail_zeros)
        self._hello_due = hello_due
        if peer_max is not None:
            self._learn_peer_limit(peer_max)
        self._sseq = sseq
        self._rseq = rseq
        self._expect_head = _head_word(rseq)
        self._rmv[: len(buffered)] = buffered
        self._rend = len(buffered)
