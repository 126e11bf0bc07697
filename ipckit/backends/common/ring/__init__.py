"""The shared-memory ring kit used by ``shm://`` and ``sysv+shm://``.

``buffer``   the single-producer/single-consumer ring in one mapped segment (the algorithm and
             every slow path)
``cursor``   the per-message hot state: the C fast path (``_ringfast``) or the pure-Python
             reference, one interface
``waiting``  the wait strategy (spin, yield, then a wake-up hint) and the wake-up protocol
``channel``  RingChannel, RingListener and RingBackend: what a ring scheme builds on; a scheme
             supplies only the segment, the semaphores and the peer-liveness check
"""
