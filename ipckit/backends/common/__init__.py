"""The kits the scheme modules share.

``ipckit.backends`` holds one module per URL scheme and nothing else; what two schemes share
lives here, so a new scheme builds on a kit instead of importing a sibling scheme:

``stream``   framed channels over descriptors (pipes, FIFOs, stream sockets), ``grow_pipe``
``ring``     the shared-memory ring: buffer, cursors (C fast path and pure-Python reference),
             the ring channel and listener, the wait strategy
``posix``    POSIX object names (ownership check, stale reclaim), OFD-lock liveness, the
             posix_ipc error map
``sysv``     SysV semaphores with ``semtimedop``, random keys with IPC_CREAT|IPC_EXCL,
             SEM_UNDO liveness, rendezvous records, the sysv_ipc error map
``paths``    safe filesystem names (private directories, ownership checks, owner-only files)
``auth``     peer credentials and the optional shared-secret handshake
``faults``   kill points for the crash tests (``IPCKIT_FAULT``), one convention for every backend
"""
