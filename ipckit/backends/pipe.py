"""``pipe://`` — an anonymous pipe pair, one pipe per direction.

Features:
    Duplex, framed, ordered, reliable; detects a clean close (EndOfChannel) and a crash
    (PeerDied).  Descriptors are close-on-exec.  Pipe buffers are raised with ``F_SETPIPE_SZ``
    (up to ``/proc/sys/fs/pipe-max-size``) so large messages move in fewer system calls.  An end
    passes to a ``multiprocessing`` child like a ``multiprocessing.Connection``: inherited under
    fork, duplicated under spawn/forkserver.  pickle is the default serializer: both ends come
    from one process tree, so the peer is the same user.

URL format:
    ``pipe://`` (``pair()`` only; there is nothing to name).

Options:
    ``pipe_size`` — requested kernel buffer per pipe (default 1 MiB; capped by the system limit).
    ``checksum`` — CRC32 over every payload (default off: the kernel does not corrupt pipe data).
    Common options: ``serializer``, ``max_message_size``, ``default_timeout``, ``trust``.

Platform notes:
    Linux.  Close the end you hand to a child in the parent as well, or the parent never sees
    the child's end close (the same rule as ``multiprocessing.Pipe``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, final

from .. import _handoff
from ..backend import Backend
from ..channel import Channel
from ..limits import KernelLimit, sysctl
from ..options import Capabilities, Options
from ..url import Endpoint
from .common.stream import FdStreamChannel, StreamOptions, grow_pipe

__all__ = ["PipeBackend", "PipeChannel", "PipeOptions"]


@dataclass
class PipeOptions(StreamOptions):
    """``pipe_size`` and ``checksum`` plus the common options."""

_CAPS = Capabilities(
    duplex=True,
    message_oriented=False,
    selectable=True,
    detects_peer_close=True,
    named=False,
    anonymous_pair=True,
    inheritable=True,
    proves_same_user=True,
)


@final
class PipeChannel(FdStreamChannel):
    """One end of a ``pipe://`` pair."""

    capabilities: ClassVar[Capabilities] = _CAPS

    def __reduce__(self) -> Any:
        return _handoff.reduce_fds(
            self, _rebuild_pipe_channel, (self._rfd, self._wfd),
            (self._url, self._options, self._handoff_state(), self._checksum),
            refuse="a pipe:// channel can only be passed to a child process as an argument of "
                   "multiprocessing.Process (it travels as duplicated descriptors); it cannot be pickled otherwise")


def _rebuild_pipe_channel(handed: _handoff.HandedFds, url: str, options: Options,
                          resume: tuple[Any, ...], checksum: bool) -> PipeChannel:
    rfd, wfd = _handoff.take_fds(handed)
    ch = PipeChannel(url, options, rfd=rfd, wfd=wfd, peer_trusted=True, checksum=checksum)
    ch._resume(*resume)
    return ch


@final
class PipeBackend(Backend):
    scheme: ClassVar[str] = "pipe"
    capabilities: ClassVar[Capabilities] = _CAPS
    options_class: ClassVar[type[Options]] = PipeOptions

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        # FIFO buffers are pipe buffers too: these rows are fifo://'s limits as well.
        return [
            sysctl("/proc/sys/fs/pipe-max-size",
                   "largest pipe buffer an unprivileged F_SETPIPE_SZ may ask for (bytes)"),
            sysctl("/proc/sys/fs/pipe-user-pages-soft", "pipe pages per user before new pipes shrink to one page"),
        ]

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        opts: PipeOptions = options
        fds: list[int] = []  # the descriptors no channel owns yet: closed here if anything fails
        a: PipeChannel | None = None
        try:
            fds += os.pipe2(os.O_CLOEXEC)
            fds += os.pipe2(os.O_CLOEXEC)
            r1, w1, r2, w2 = fds
            grow_pipe(w1, opts.pipe_size)
            grow_pipe(w2, opts.pipe_size)
            a = PipeChannel("pipe://", opts, rfd=r1, wfd=w2, peer_trusted=True, checksum=opts.checksum)
            fds = [r2, w1]
            b = PipeChannel("pipe://", opts, rfd=r2, wfd=w1, peer_trusted=True, checksum=opts.checksum)
            # One options set, so no hello: each end learns the other's (equal) limit directly.
            a._learn_peer_limit(b.max_message_size)
            b._learn_peer_limit(a.max_message_size)
        except BaseException:
            if a is not None:
                a.close()
            for fd in fds:
                os.close(fd)
            raise
        return a, b
