"""Parse ``scheme://address?option=value`` into an :class:`Endpoint`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import InvalidAddress

__all__ = ["Endpoint", "parse_url"]

_SCHEME_RE = re.compile(r"^([a-z][a-z0-9+.-]*)(?::(?://)?(.*))?$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Endpoint:
    """A parsed address: ``scheme``, the backend-specific ``address`` and the query ``options``."""

    scheme: str
    address: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def url(self) -> str:
        """The canonical URL without options."""
        return f"{self.scheme}://{self.address}"


def parse_url(url: str) -> Endpoint:
    """Split *url* into scheme, address and query options.

    A bare scheme (``"shm"``) is accepted and means "no address" (``pair()`` generates one).
    Raises:
        InvalidAddress: not a string, or not of the form ``scheme://address?k=v``.
    """
    if not isinstance(url, str):
        raise InvalidAddress(f"address must be a str like 'pipe://', got {type(url).__name__}")
    if "\x00" in url:
        raise InvalidAddress("address contains a NUL byte")
    from urllib.parse import parse_qsl, unquote  # here: urllib.parse (and ipaddress) cost `import ipckit` ~2 ms

    m = _SCHEME_RE.match(url.strip())
    if not m:
        raise InvalidAddress(f"malformed address {url!r}: expected 'scheme://address' (e.g. 'shm://jobs')")
    scheme = m.group(1).lower()
    rest = m.group(2) or ""
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    options: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            raise InvalidAddress(f"malformed query {query!r} in {url!r}: use ?name=value&name2=value2") from exc
        for key, value in pairs:
            if key in options:
                raise InvalidAddress(f"option {key!r} given twice in {url!r}")
            options[key] = value
    address = unquote(rest)
    # Checked again after unquoting: "%00" is a NUL too, and a lone surrogate ("\ud800", or what
    # "%ED%A0%80" is not: unquote replaces invalid UTF-8) has no file-system encoding, so every
    # path-based backend would fail on it with a raw ValueError / UnicodeEncodeError.
    if "\x00" in address:
        raise InvalidAddress(f"address {url!r} contains a NUL byte (%00)")
    try:
        os.fsencode(address)
    except UnicodeEncodeError as exc:
        raise InvalidAddress(f"address {url!r} has a character no file name can hold ({exc.reason}): "
                             "use valid Unicode") from None
    return Endpoint(scheme=scheme, address=address, options=options)
