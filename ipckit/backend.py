"""Backend: the factory for one URL scheme.

A backend declares its ``scheme``, its channels' :class:`~ipckit.options.Capabilities` and its
``options_class`` (a dataclass deriving from :class:`~ipckit.options.Options`), probes the OS in
``is_available()``, and makes channels with ``pair()``, ``listen()`` and ``connect()``.

The ``ipckit`` command asks the backend class, never a module by name, about the rest:
``notes()`` for ``ipckit backends``, ``kernel_limits()`` for ``ipckit limits``, and
``reserved_names()`` / ``find_stale()`` / ``remove_stale()`` for ``ipckit cleanup``.  All
default to "nothing", so a backend that leaves nothing behind after a crash writes none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .errors import UnsupportedOperation
from .options import DEFAULT_MAX_MESSAGE_SIZE, Capabilities, Options, parse_options, parse_size

if TYPE_CHECKING:
    from .channel import Channel, Listener
    from .cleanup import StaleObject, Sweep
    from .deadline import Deadline
    from .limits import KernelLimit
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

    # ----------------------------------------------------------------- for the ipckit command
    # Classmethods: the command asks without making channels, also where is_available() is
    # false (limits and leftovers are facts of the machine, not of a working backend).

    @classmethod
    def notes(cls) -> list[str]:
        """One-line facts about how this scheme runs here, printed under ``ipckit backends``
        (e.g. which fast path is in use and how to get a faster one).

        Identical lines from several backends (two schemes on one kit) are printed once.
        Default: none.
        """
        return []

    @classmethod
    def kernel_limits(cls) -> list[KernelLimit]:
        """The live kernel limits this scheme runs into, as rows of ``ipckit limits``.

        Read them on every call (administrators change sysctls) with the helpers of
        :mod:`ipckit.limits` (``sysctl``, ``rlimit``, ``fmt_bytes``); an unreadable limit is a
        row with the value ``n/a``, not an exception.  Do not need the scheme's optional
        dependency: the rows describe the kernel, which is there even where the library is not.
        A row whose name another backend already gave (a kit's limit) is shown once.  Limits of
        every channel (``RLIMIT_NOFILE``, ``fs.file-max``) are ipckit's, not the backend's.
        Default: none.
        """
        return []

    @classmethod
    def reserved_names(cls) -> tuple[str, ...]:
        """Name prefixes (each starting with ``ipckit``) of temp-dir, ``/dev/shm`` or
        ``/dev/mqueue`` entries whose staleness only this backend can judge.

        The shared file sweeps of the other backends skip them (for example a directory of
        records whose liveness lives in SysV semaphores, which no ``/proc`` holder scan sees);
        this backend's own ``find_stale`` must then cover them.  Default: none.
        """
        return ()

    @classmethod
    def find_stale(cls, sweep: Sweep) -> list[StaleObject]:
        """The objects this scheme created that a crashed process left behind, for ``ipckit cleanup``.

        Read-only: change nothing (no unlink, no removal, no lock kept) -- ``--dry-run`` is
        exactly this call.  Report only objects of the current user whose ipckit name passes
        ``sweep.wants(name)`` (prefix, reserved names) and that no live end uses: for files, no
        process holds them (``sweep.unheld_file``, ``sweep.unheld_entries``, or a kit's sweep
        such as :func:`ipckit.backends.common.paths.stale_private_entries`); otherwise by the
        scheme's own liveness rule.  Set ``name`` to the ipckit name the prefix rule applies
        to, and ``label`` when the path alone does not say what the object is.  The sweep
        applies the prefix and own-user rules again and reports each path once.
        Default: none.
        """
        return []

    @classmethod
    def remove_stale(cls, obj: StaleObject) -> bool:
        """Remove one object this backend's ``find_stale`` reported.

        Time has passed since the report: where a new endpoint may have taken the name
        meanwhile, check again under the lock that guards it and remove only what is still
        stale.  Return True if removed, False if it is gone or in use after all; raise
        :class:`OSError` if it could not be removed.  Default: unlink the file (``rmdir`` a
        directory), which suits objects the ``/proc`` holder scan judged.
        """
        from .cleanup import remove_file

        return remove_file(obj)

    def pair(self, endpoint: Endpoint, options: Any) -> tuple[Channel, Channel]:
        """Two connected channels (the address may be empty: generate one)."""
        raise UnsupportedOperation(f"{self.scheme}:// has no anonymous pair(); use listen()/connect()")

    def listen(self, endpoint: Endpoint, options: Any) -> Listener:
        """Create and own the named endpoint."""
        raise UnsupportedOperation(f"{self.scheme}:// cannot listen(); use pair()")

    def connect(self, endpoint: Endpoint, options: Any, deadline: Deadline) -> Channel:
        """Connect to a listening endpoint before *deadline*."""
        raise UnsupportedOperation(f"{self.scheme}:// cannot connect(); use pair()")
