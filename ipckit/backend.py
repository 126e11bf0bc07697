"""Backend: the factory for one URL scheme.

A backend declares its ``scheme``, its channels' :class:`~ipckit.options.Capabilities` and its
``options_class`` (a dataclass deriving from :class:`~ipckit.options.Options`), probes the OS in
``is_available()``, and makes channels with ``pair()``, ``listen()`` and ``connect()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .errors import UnsupportedOperation
from .options import DEFAULT_MAX_MESSAGE_SIZE, Capabilities, Options, parse_options, parse_size

if TYPE_CHECKING:
    from .channel import Channel, Listener
    from .deadline import Deadline
    from .url import Endpoint

# Capabilities, Options and the parsers live in ipckit.options; the names stay importable from
# here because third-party backends were told to import them from ipckit.backend.
__all__ = ["Backend", "Capabilities", "Options", "parse_options", "parse_size", "DEFAULT_MAX_MESSAGE_SIZE"]


class Backend:
    """A factory for one URL scheme.

    Subclasses set ``scheme``, ``capabilities`` and ``options_class`` and override the factory
    methods they support; the others raise :class:`UnsupportedOperation`.
    """

    scheme: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    options_class: ClassVar[type[Options]] = Options

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """Probe the OS for real: ``(True, "")`` or ``(False, reason)``."""
        return True, ""

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        """Two connected channels (the address may be empty: generate one)."""
        raise UnsupportedOperation(f"{self.scheme}:// has no anonymous pair(); use listen()/connect()")

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        """Create and own the named endpoint."""
        raise UnsupportedOperation(f"{self.scheme}:// cannot listen(); use pair()")

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        """Connect to a listening endpoint before *deadline*."""
        raise UnsupportedOperation(f"{self.scheme}:// cannot connect(); use pair()")
