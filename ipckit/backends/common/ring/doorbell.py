"""The ring's doorbell: a FIFO a receiving end sleeps on in ``ipckit.wait()`` / ``ipckit.aio``.

A ring has no descriptor: data arrives by a store into shared memory.  The kit's own waits block
on a semaphore, which no selector can watch.  So a receiving end that is about to sleep in
``ipckit.wait`` (or an asyncio reader) *arms* its doorbell: it raises its ring's
``reader_sleeping`` word to :data:`BELL` (2; the kit's own waits store 1).  The writer already
loads that word after every commit and calls its wake-up only when it is non-zero (protocol.py,
``publish_write_pos``, also in ``_ringfast.c``); the wake-up (``RingChannel._wake_reader``) then
also rings the bell when the word says :data:`BELL`.  Nobody waiting: the word is 0, the writer
makes no call at all, so the fast path costs nothing more than before.

The bell is a FIFO, not an eventfd, because the writer is usually another process that never
shared a descriptor with us: it opens the FIFO by name (derived from the segment's own name by
the provider), non-blocking, once, and keeps it.  The reader holds it open ``O_RDWR`` (so it never
reads EOF, and the writer's open never fails with ENXIO while the reader lives), drains it on
disarm, and removes the name when it closes.

Lost rings: arm is a store followed by a load of the ring counter, publish a store followed by a
load of the flag; x86 may reorder each pair (protocol.py), so a ring can be lost in a window of
nanoseconds.  The waits that arm a bell sleep in bounded slices (``ipckit.waiting``), so a lost
ring costs one slice, never a hang.

The helpers at the end (:func:`make_fifo`, :func:`open_fifo`, :func:`drain_fd`, :func:`ring_fd`,
:class:`BellFlags`) are shared with ``sysv+mq://``, whose queue has no shared memory for the
sleeping word (sysv_mq.py: the flags live in a small mapped file; its FIFOs also hang up when
the peer's process ends).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["BELL", "FifoBell", "ring_fifo", "ring_once", "bell_path", "make_fifo", "open_fifo", "drain_fd", "ring_fd",
           "BellFlags"]

#: The ``reader_sleeping`` value of a reader sleeping in ``ipckit.wait`` (the kit's waits use 1).
BELL: Final = 2
#: Where the FIFOs live: tmpfs, beside the segments, with the same ``ipckit.`` prefix so that a
#: leak is seen by the same checks.
BELL_DIR: Final = "/dev/shm"


def bell_path(name: str, role: int) -> str:
    """The FIFO of end *role* of the channel whose segment is called *name*."""
    return os.path.join(BELL_DIR, f"ipckit.bell.{name}.{role}")


class FifoBell:
    """One receiving end's bell (``fileno``/``arm``/``disarm``: :class:`ipckit.waiting.Doorbell`).

    *set_flag*: a callable storing this end's ring's ``reader_sleeping`` word (0, 1 or BELL).
    """

    def __init__(self, path: str, set_flag: Callable[[int], None]) -> None:
        self.path = path
        self._set_flag = set_flag
        self._fd = -1
        self._made = False
        # Waits between arm and disarm.  close() from another thread must not close the descriptor
        # under them (a reused number would then be drained or polled): the last disarm does.
        self._users = 0
        self._closing = False
        #: Set by the channel's fileno(): a selector watches the FIFO, so it stays armed for good
        #: and the receive paths keep its level (``settle``).
        self.sticky = False
        self._lock = threading.Lock()

    def fileno(self) -> int:
        if self._closing:  # never made again once the end closed (it would leak)
            raise OSError(errno.EBADF, f"the doorbell {self.path} is closed")
        if self._fd < 0:
            self._fd = self._open()
        return self._fd

    def _open(self) -> int:
        self._made = make_fifo(self.path)
        return open_fifo(self.path, os.O_RDWR)

    def arm(self) -> None:
        with self._lock:
            if self._closing:
                return
            self.fileno()  # the FIFO exists before any writer is told to ring it
            self._users += 1
        self._set_flag(BELL)

    def disarm(self) -> None:
        self._set_flag(BELL if self.sticky else 0)
        with self._lock:
            if self._users:
                self._users -= 1
            if self._closing:
                if not self._users:
                    self._release()
                return
            if not self.sticky:  # (sticky: the receive paths drain, keeping the level right)
                self.drain()

    def stick(self) -> int:
        """Arm for good (a selector watches the FIFO from now on); return its descriptor."""
        with self._lock:
            fd = self.fileno()
            self.sticky = True
        self._set_flag(BELL)
        return fd

    def settle(self, pending: Callable[[], bool]) -> None:
        """Sticky mode, after a receive: make the FIFO readable exactly when *pending()* (a
        message or the end waits).  Drained first, then asked, then rung again if something is
        left, so a commit racing with the drain is never lost (its ring lands after the drain, or
        *pending()* sees it)."""
        with self._lock:
            if self._fd < 0 or self._closing:
                return
            self.drain()
            if pending():
                try:
                    os.write(self._fd, b"\0")
                except BlockingIOError:
                    pass

    def drain(self) -> None:
        if self._fd >= 0:
            drain_fd(self._fd)

    def close(self, unlink: bool) -> None:
        """Release the FIFO; *unlink*: this process owns the end (not a handed-over copy).

        The name goes at once; the descriptor when the last wait using it disarms."""
        with self._lock:
            self._closing = True
            if unlink and (self._made or self._fd >= 0):
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            if not self._users:
                self._release()

    def _release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def ring_fifo(path: str, fd: int) -> int:
    """Ring the FIFO at *path* (kept open in *fd*, -1: open it now); return the descriptor to keep.

    Never blocks and never raises for a missing or full FIFO: a full one is rung already, a
    missing one has nobody sleeping on it.
    """
    if fd < 0:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return -1
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):  # never write into a file put under the name
            os.close(fd)
            return -1
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass
    except OSError:  # the reader's FIFO went away (EPIPE): open it afresh next time
        os.close(fd)
        return -1
    return fd


def ring_once(path: str) -> None:
    """Ring the FIFO at *path* without keeping a descriptor (a close waking a wait elsewhere)."""
    fd = ring_fifo(path, -1)
    if fd >= 0:
        os.close(fd)


# --------------------------------------------------------------------------- shared pieces
# Also used by sysv+mq:// (its queue has no shared memory for the sleeping word: BellFlags).
def make_fifo(path: str) -> bool:
    """Make the FIFO *path* (0600) unless it exists; True if this call made it."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        return False  # an earlier holder of this end (handed over to us) made it
    return True


def open_fifo(path: str, flags: int) -> int:
    """Open the FIFO *path* non-blocking with *flags* (``O_RDWR``, ``O_RDONLY``), never through a
    symlink, and only if it is this user's FIFO.

    Raises:
        PermissionError: something else is under the name.
        OSError: the kernel's (FileNotFoundError: no such FIFO).
    """
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)  # someone else's object under our name: never read or trust it
        raise PermissionError(errno.EPERM, f"{path} is not this user's FIFO")
    return fd


def drain_fd(fd: int) -> None:
    """Read every pending ring of the FIFO *fd* (non-blocking)."""
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def ring_fd(fd: int) -> None:
    """One ring into the FIFO *fd*; a full FIFO is rung already."""
    try:
        os.write(fd, b"\0")
    except (BlockingIOError, InterruptedError):
        pass


class BellFlags:
    """The sleeping words of a channel's two ends in a small shared file (``mmap``): for a
    transport with no shared memory of its own (sysv+mq://).  Word *role* is BELL while that end
    is armed; its peer loads the word after each send (a memory load: no system call) and rings
    only then.  *create*: make the file (exclusive, 0600); else open the existing one (checked:
    this user's regular file, not a symlink)."""

    SIZE: Final = 8

    def __init__(self, path: str, create: bool) -> None:
        import mmap

        self.path = path
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | ((os.O_CREAT | os.O_EXCL) if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise PermissionError(errno.EPERM, f"{path} is not this user's file")
            if create:
                # Reserve the page, not only the size: on a full /dev/shm (tmpfs) ftruncate succeeds
                # and the first store through the mapping is SIGBUS; this is ENOSPC now instead.
                os.posix_fallocate(fd, 0, self.SIZE)
            elif st.st_size < self.SIZE:
                raise PermissionError(errno.EPERM, f"{path} is not a doorbell flags file")
            self.words = mmap.mmap(fd, self.SIZE)
        except BaseException:
            os.close(fd)
            if create:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            raise
        os.close(fd)

    def close(self) -> None:
        try:
            self.words.close()
        except (BufferError, ValueError):
            pass
