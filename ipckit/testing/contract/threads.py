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
        polled = threading.Event()  # the first poll ran: the sender starts then (a fast ring could
        done = threading.Event()    # otherwise deliver all n before the poller thread is scheduled)

        def poller() -> int:
            polls = 0
            receiving.wait(10.0)
            while not done.is_set():
                # Alternate an instant check with a short wait, so both paths meet the receiver.
                b.poll(0.001 if polls & 1 else 0.0)
                polls += 1
                polled.set()
            return polls

        def send_all() -> None:
            assert polled.wait(10.0), "the poller never polled"
            send_each(a, (workers.make_payload(i, i % 700) for i in range(n)))

        watcher = ResultThread(poller, name="ipckit-poller")
        watcher.start()
        sender = ResultThread(send_all, name="ipckit-send")
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
