"""The shared-memory ring kit used by ``shm://`` and ``sysv+shm://``.

``protocol`` the region's layout and the wake-up protocol, defined once (the C fast path reports
             its own copy of the layout, checked against it)
``buffer``   the single-producer/single-consumer ring in one mapped segment (the algorithm and
             every slow path)
``cursor``   the per-message hot state: the C fast path (``_ringfast``) or the pure-Python
             reference, one interface
``waiting``  the wait strategy (spin, yield, then a wake-up hint): every receive, poll, full-ring
             send and accept waits through it
``channel``  RingChannel, RingListener and RingBackend: what a ring scheme builds on; a scheme
             supplies only the segment, the semaphores and the peer-liveness check
"""
