"""ipckit — one Channel interface over every Linux IPC mechanism.

>>> import ipckit
>>> a, b = ipckit.pair("pipe://")
>>> a.send({"hello": "world"}); b.recv()
{'hello': 'world'}

Backends load lazily on first use of their scheme; ``import ipckit`` imports none of them.
"""

from __future__ import annotations

from . import errors
from .api import DEFAULT_CONNECT_TIMEOUT, connect, listen, pair
from .backend import Backend
from .channel import Channel, Listener
from .errors import *  # noqa: F403 - the error tree is part of the top-level API
from .options import Capabilities, Options
from .pubsub import publish, subscribe
from .registry import available_backends, register_backend
from .serializers import Serializer, register_serializer
from .waiting import wait

__version__ = "0.1.0"

__all__ = [
    "pair",
    "listen",
    "connect",
    "wait",
    "publish",
    "subscribe",
    "Channel",
    "Listener",
    "Backend",
    "Capabilities",
    "Options",
    "Serializer",
    "available_backends",
    "register_backend",
    "register_serializer",
    "errors",
    "DEFAULT_CONNECT_TIMEOUT",
    "__version__",
    *errors.__all__,
]


def __getattr__(name: str) -> object:
    # ipckit.aio loads asyncio: imported on first use, so ``import ipckit`` stays light.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module 'ipckit' has no attribute {name!r}")
