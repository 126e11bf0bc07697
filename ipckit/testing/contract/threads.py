"""ThreadContract: calls from several threads on one end stay correct (part of
:class:`ChannelContract`: every backend).

``poll()`` may run in one thread while another receives (a common shape: a watcher thread asks
"anything there?" while a worker drains the channel).  Neither call may raise anything but its
documented errors, and every message reaches the receiving thread whole and in order — ``poll``
never consumes or splits what ``recv`` needs (docs/contract.md, "Threads").
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ...channel import Channel
from .. import workers
from .helpers import ResultThread, send_each

__all__ = ["ThreadContract"]


class ThreadContract:
    """poll() in one thread while another thread receives: no error, every message whole and in order."""

    make_pair: Callable[..., tuple[Channel, Channel]]

    def test_poll_while_another_thread_receives(self) -> None:
        a, b = self.make_pair()
        n = 10_000
        receiving = threading.Event()
        done = threading.Event()

        def poller() -> int:
            polls = 0
            receiving.wait(10.0)
            while not done.is_set():
                # Alternate an instant check with a short wait, so both paths meet the receiver.
                b.poll(0.001 if polls & 1 else 0.0)
                polls += 1
            return polls

        watcher = ResultThread(poller, name="ipckit-poller")
        watcher.start()
        sender = ResultThread(lambda: send_each(a, (workers.make_payload(i, i % 700) for i in range(n))),
                              name="ipckit-send")
        sender.start()
        got: list[int] = []
        try:
            receiving.set()
            for _ in range(n):
                got.append(workers.check_payload(b.recv_bytes(timeout=10.0)))
        finally:
            done.set()
        assert got == list(range(n))
        sender.outcome(30.0)
        assert watcher.outcome(30.0) > 0
