"""SecurityContract: what a named endpoint promises about other users (``capabilities.named``).

The promises of docs/contract.md §5 (the trust rule) and S4/S5 of docs/design.md, as they apply to
every named backend, present and future (issue 10, B.9 and B.10).  The attacks themselves, run as
another uid, are in the project's ``tests/backends/test_security.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

import ipckit

from ...channel import Channel
from ...errors import PermissionDenied, UnsafeSerializer
from ...options import Capabilities

__all__ = ["SecurityContract"]

#: The widened mode the tests use: group read/write, which every backend can create and open.
WIDE = 0o660


class SecurityContract:
    """A widened ``mode`` drops the same-user proof; an opener accepts no wider object; path
    endpoints are never created where another user could swap them (``capabilities.named``).

    Subclasses may set:

    ``mode_is_the_proof``
        True (the default, and the safe reading) where the only proof that the peer is this user
        is that nobody else can open the channel's objects: a mode granting group bits then
        voids it on both ends.  False where the backend proves each peer's uid itself (unix://:
        ``SO_PEERCRED``), so a same-user peer stays trusted whatever the mode.
    ``url_in(directory)``
        a listen address inside *directory*, for schemes whose endpoints are paths (default
        None: names, not paths).
    """

    mode_is_the_proof: ClassVar[bool] = True
    tmpdir: str
    options: ClassVar[dict[str, Any]]
    own: Callable[[Any], Any]
    make_pair: Callable[..., tuple[Channel, Channel]]
    connect_pair: Callable[..., tuple[Channel, Channel]]
    fresh_url: Callable[[], str]

    if TYPE_CHECKING:
        @property
        def caps(self) -> Capabilities: ...  # ChannelContract's

    def url_in(self, directory: str) -> str | None:
        """A listen address inside *directory* (None: this scheme's endpoints are not paths)."""
        return None

    def _makers(self) -> list[Callable[..., tuple[Channel, Channel]]]:
        return [self.connect_pair, self.make_pair] if self.caps.anonymous_pair else [self.connect_pair]

    def test_widened_mode_voids_the_same_user_proof(self) -> None:
        """issue 10, B.9: a group member could write into the channel, so pickle is refused unless
        ``trust=True`` and the default serializer is not pickle -- on both ends, for pair() and
        listen()/connect() alike -- except where each peer's uid is proven (unix://)."""
        for make in self._makers():
            if not self.mode_is_the_proof:
                a, b = make(mode=WIDE)
                assert a.serializer.name == b.serializer.name == "pickle"
                self._close_owned()
                continue
            with pytest.raises(UnsafeSerializer, match="mode=0o660"):
                make(mode=WIDE, serializer="pickle")
            a, b = make(mode=WIDE)
            assert "pickle" not in (a.serializer.name, b.serializer.name)
            a.send({"k": [1, 2]}, timeout=5.0)
            assert b.recv(timeout=5.0) == {"k": [1, 2]}
            self._close_owned()
            a, b = make(mode=WIDE, serializer="pickle", trust=True)  # the user's own risk
            a.send({1, 2}, timeout=5.0)
            assert b.recv(timeout=5.0) == {1, 2}
            self._close_owned()

    def _close_owned(self) -> None:
        """Close what the test made so far (a path-based fresh_url may be the same address each time)."""
        owned: list[Any] = getattr(self, "_owned", [])
        while owned:
            owned.pop().close()

    def test_opener_refuses_an_endpoint_wider_than_its_mode(self) -> None:
        """S5: a connecting end with an owner-only mode (so it would trust its peer) refuses an
        endpoint created with group bits, rather than trusting what the group may write."""
        if not self.mode_is_the_proof:
            pytest.skip("each peer's uid is proven per connection; the mode does not carry the proof")
        lst = self.own(ipckit.listen(self.fresh_url(), mode=WIDE, **self.options))
        with pytest.raises(PermissionDenied, match="open to more users than this end"):
            ipckit.connect(lst.url, timeout=5.0, **self.options)

    def test_listen_refuses_a_parent_directory_others_can_swap(self) -> None:
        """issue 10, B.10 (S6): never create an endpoint where another user could replace it
        between two calls: not in a world-writable directory without the sticky bit, nor in one
        owned by another user (as root only).  Nothing is left in the directory."""
        base = os.path.join(self.tmpdir, "unsafe")
        os.mkdir(base)
        try:
            url = self.url_in(base)
            if url is None:
                pytest.skip("this scheme's endpoints are names, not paths")
            os.chmod(base, 0o777)
            with pytest.raises(PermissionDenied):
                ipckit.listen(url, **self.options)
            assert os.listdir(base) == []
            if os.geteuid() == 0:
                os.chmod(base, 0o755)
                os.chown(base, 65534, 65534)
                with pytest.raises(PermissionDenied):
                    ipckit.listen(url, **self.options)
                assert os.listdir(base) == []
        finally:
            os.rmdir(base)
