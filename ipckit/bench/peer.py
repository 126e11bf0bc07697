"""The spawned peer process: echoes for ping-pong, drains for streaming, reports its CPU time.

Kept free of heavy imports (no numpy, rich): every subject spawns one of these.
Commands arrive on a ``multiprocessing`` control pipe, never on the measured link:

``("echo",)``  echo every message until an empty one; reply ``("done", cpu_seconds)``
``("sink",)``  receive until an empty message, then send the 12-byte ack
               ``<count u64><crc32 of the last message u32>`` on the link; reply ``("done", cpu_seconds)``
``("echo-obj",)``  the same with objects (``send_obj``/``recv_obj``) until ``None`` (or an empty
               bytes object: a raw-serializer channel carries bytes only)
``("sink-obj",)``  receive objects until that stop object, then the ack ``<count u64><0 u32>``
               on the bytes path
``("quit",)``  close the link and exit
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .subject import ChildArg

__all__ = ["peer_main", "ACK"]

ACK = struct.Struct("<QI")


def _is_stop(obj: object) -> bool:
    return obj is None or (isinstance(obj, (bytes, bytearray, memoryview)) and len(obj) == 0)


def peer_main(child_arg: ChildArg, ctrl: Connection, cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        link = child_arg.open()
    except BaseException as exc:
        ctrl.send(("error", f"peer could not open its end: {exc!r}"))
        return
    ctrl.send(("ready", os.getpid()))
    send = link.send
    recv = link.recv
    try:
        while True:
            cmd = ctrl.recv()
            op = cmd[0]
            cpu0 = time.process_time()
            if op == "echo":
                while True:
                    m = recv()
                    if not m:
                        break
                    send(m)
            elif op == "sink":
                count = 0
                last = None
                while True:
                    m = recv()
                    if not m:
                        break
                    count += 1
                    last = m
                send(ACK.pack(count, zlib.crc32(last) if last is not None else 0))
            elif op == "echo-obj":
                send_obj, recv_obj = link.send_obj, link.recv_obj  # type: ignore[attr-defined]
                while True:
                    o = recv_obj()
                    if _is_stop(o):
                        break
                    send_obj(o)
            elif op == "sink-obj":
                recv_obj = link.recv_obj  # type: ignore[attr-defined]
                count = 0
                while not _is_stop(recv_obj()):
                    count += 1
                send(ACK.pack(count, 0))  # on the bytes path: any serializer (raw too) carries it
            elif op == "quit":
                break
            else:
                ctrl.send(("error", f"unknown command {op!r}"))
                continue
            ctrl.send(("done", time.process_time() - cpu0))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception as exc:  # report, so the parent shows why this subject failed
        try:
            ctrl.send(("error", f"peer failed: {exc!r}"))
        except OSError:
            pass
    finally:
        try:
            link.close()
        except Exception:
            pass
