"""Deprecated alias of :mod:`ipckit.backends.common.stream` (kept for one release).

The framed descriptor channels moved into the backend kits when ``ipckit.backends`` became one
module per scheme.  Import ``FdStreamChannel`` and ``DescriptorChannel`` from
``ipckit.backends.common.stream``; this module goes away in ipckit 0.3.
"""

from __future__ import annotations

import warnings

from .backends.common.stream import *  # noqa: F403 - the whole old surface, re-exported
from .backends.common.stream import __all__ as _moved

warnings.warn(
    "ipckit.fdstream moved to ipckit.backends.common.stream; import it from there "
    "(the old name goes away in ipckit 0.3)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = list(_moved)
