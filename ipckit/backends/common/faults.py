"""Kill points for the crash tests: one hook, one convention for every backend.

A backend marks the places where a crash matters (between two steps of building an object,
for instance) with ``fault("<scheme>.<point>")``.  Unless that point is armed, the call is one
string comparison, so the hook stays in place in production code; kill points are never put on
a send/receive path (tests reach those by driving the ring directly).

Arming a point:

* ``IPCKIT_FAULT=<scheme>.<point>`` in the environment of a new process, read once when this
  module is imported (e.g. ``IPCKIT_FAULT=shm.after_create_before_init python -c ...``);
* :func:`arm` in a process that is already running, typically a forked test child just before
  it calls into the backend; ``arm(None)`` disarms.

At an armed point the process sends itself ``SIGKILL``: no ``finally`` clause, ``atexit``
handler or destructor runs, exactly as when the machine takes the process away.

Point names in use (the scheme's URL scheme, a dot, the point):

``shm.after_create_before_init``
    the segment exists under its temporary name with the creator's lock held, not yet sized.
``sysv+shm.after_create_before_init``
    the manifest records the semaphore set and the segment, the segment is not initialised.
``mq.after_create_before_init``
    the listener's anchor queue exists and is locked by its creator; the companion queue and the
    liveness FIFO are not made yet.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "arm", "armed", "fault"]

#: The environment variable naming the armed point.
ENV = "IPCKIT_FAULT"

_armed: str = os.environ.get(ENV, "")


def fault(point: str) -> None:
    """Die by ``SIGKILL`` here if *point* (``"<scheme>.<point>"``) is the armed one."""
    if point == _armed:
        os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str | None) -> None:
    """Arm *point* in this process (replacing any other); ``None`` disarms."""
    global _armed
    _armed = point or ""


def armed() -> str | None:
    """The armed point, or None."""
    return _armed or None
