"""The ipckit subjects: every registered scheme, opened the way its capabilities allow.

The shapes (:class:`Subject`, :class:`Prepared`, :class:`Link`) are in :mod:`.subject`; the
baselines the channels are compared against are in :mod:`.baselines`.  A channel's link is a
:class:`~.subject.ConnLink` over the channel, so the measurement loops call
``Channel.send_bytes`` / ``Channel.recv_bytes`` directly: the harness adds nothing per message.

Subjects are derived from the registry and each backend's :class:`~ipckit.Capabilities` only —
a new or third-party backend is measured with no code here:

* ``anonymous_pair`` and ``inheritable``: ``ipckit.pair(url)``; one end goes to the peer as a
  ``multiprocessing.Process`` argument.
* else ``named``: ``ipckit.listen()`` on a generated address, the peer ``connect()``s.  The
  address is ``scheme:///<private tmpdir>/ipckit-bench-<rand>`` (path-like schemes); if the backend
  refuses it as an address, ``scheme://ipckit-bench-<rand>`` (name-like schemes), else ``scheme://``
  (schemes that choose their own address, e.g. an ephemeral port).  ``--url`` overrides.
* otherwise the scheme is skipped, with the reason.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ipckit
from ipckit import registry
from ipckit.errors import ChannelTimeout, InvalidAddress, IPCError

# The shapes are re-exported: callers named them ``ipckit.bench.links.*`` before they moved.
from .subject import SPAWN, ChildArg, ConnLink, CrossProcessUnsupported, Link, Prepared, SkippedSubject, Subject

__all__ = [
    "IpckitSubject",
    "ipckit_subjects",
    "CONNECT_TIMEOUT",
    "Link",
    "ChildArg",
    "Prepared",
    "Subject",
    "SkippedSubject",
    "CrossProcessUnsupported",
    "SPAWN",
]

#: How long a peer waits for a named endpoint.  In-process-only backends (memory://) fail here, so
#: keep it short: it is the whole cost of finding out that a scheme cannot cross processes.
CONNECT_TIMEOUT = 3.0


# An ipckit channel has the same send_bytes/recv_bytes/close surface as a Connection, so its link
# binds Channel.send_bytes / Channel.recv_bytes directly.
_ChannelLink = ConnLink


@dataclass
class _PairChild:
    channel: ipckit.Channel

    def open(self) -> Link:
        return _ChannelLink(self.channel)


@dataclass
class _ConnectChild:
    url: str
    scheme: str
    backend: Any  # the Backend class, registered in the peer if the peer does not know the scheme

    def open(self) -> Link:
        if not registry.is_registered(self.scheme):
            ipckit.register_backend(self.scheme, self.backend)
        return _ChannelLink(ipckit.connect(self.url, timeout=CONNECT_TIMEOUT))


def _with_address(url: str, address: str) -> str:
    scheme, _, rest = url.partition("://")
    query = rest.partition("?")[2]
    return f"{scheme}://{address}" + (f"?{query}" if query else "")


@dataclass
class IpckitSubject(Subject):
    """An ipckit channel, opened the way its capabilities allow (see the module docstring)."""

    url: str = ""
    scheme: str = ""
    method: str = "pair"  # "pair" or "listen"
    _tmpdir: str | None = field(default=None, repr=False)

    def prepare(self) -> Prepared:
        if self.method == "pair":
            a, b = ipckit.pair(self.url)
            parent = _ChannelLink(a)
            # The parent keeps its copy of the child's end open until cleanup (after its own end is
            # closed): closing it right after Process.start() makes pipe:// write a goodbye frame into
            # the parent's own receive stream (EndOfChannel) — reported to the pipe backend's owner.
            return Prepared(_PairChild(b), lambda _t, _g: parent, cleanup=b.close)
        return self._prepare_named()

    def _candidate_urls(self) -> list[str]:
        address = self.url.partition("://")[2].partition("?")[0]
        if address:
            return [self.url]
        tmpdir = tempfile.mkdtemp(prefix="ipckit-bench-")
        self._tmpdir = tmpdir
        tag = f"ipckit-bench-{secrets.token_hex(4)}"
        # Last, the bare URL: a scheme that picks its own address on listen() (zmq+tcp://: an
        # ephemeral loopback port) takes neither a path nor a name.
        return [_with_address(self.url, f"{tmpdir}/{tag}"), _with_address(self.url, tag), self.url]

    def _prepare_named(self) -> Prepared:
        listener: ipckit.Listener | None = None
        url = ""
        last: Exception | None = None
        for url in self._candidate_urls():
            try:
                listener = ipckit.listen(url)
                break
            except InvalidAddress as exc:
                last = exc
        if listener is None:
            self._remove_tmpdir()
            raise last or RuntimeError(f"cannot listen on {self.url}")
        lst = listener
        # This link's own directory: the pool prepares one link per worker from one subject, and
        # each call of _candidate_urls makes a new one (self._tmpdir only keeps the last).
        tmpdir, self._tmpdir = self._tmpdir, None

        def complete(timeout: float, peer_gone: Callable[[], str | None]) -> Link:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    return _ChannelLink(lst.accept(timeout=0.05))
                except ChannelTimeout:
                    gone = peer_gone()
                    if gone is not None:
                        raise CrossProcessUnsupported(gone) from None
                    if time.monotonic() > deadline:
                        raise

        def cleanup() -> None:
            lst.close()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)

        if url == self.url and not url.partition("://")[2].partition("?")[0]:
            # The scheme chose the address itself: the peer dials what the listener says.
            url = _with_address(self.url, lst.url.partition("://")[2])
        child = _ConnectChild(url, self.scheme, registry.get_backend(self.scheme))
        return Prepared(child, complete, cleanup=cleanup)

    def _remove_tmpdir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def ipckit_subjects(backends: list[str] | None = None,
                    urls: dict[str, str] | None = None) -> tuple[list[IpckitSubject], list[SkippedSubject]]:
    """One subject per available scheme (or per ``--url`` label), and the skipped ones with reasons.

    *backends*: scheme names (or ``--url`` labels) to keep; None keeps every registered scheme.
    *urls*: ``label -> URL`` overrides/additions; the scheme comes from the URL.
    """
    urls = dict(urls or {})
    labels: dict[str, str] = {}
    for scheme in registry.schemes():
        labels[scheme] = urls.pop(scheme, f"{scheme}://")
    labels.update(urls)
    if backends is not None:
        unknown = [b for b in backends if b not in labels]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(sorted(labels))}")
        labels = {k: v for k, v in labels.items() if k in backends}
    subjects: list[IpckitSubject] = []
    skipped: list[SkippedSubject] = []
    for label, url in labels.items():
        scheme = url.partition("://")[0].partition(":")[0].lower()
        ok, reason = registry.availability(scheme)
        if not ok:
            skipped.append(SkippedSubject(label, f"not available here: {reason}"))
            continue
        try:
            caps = registry.get_backend(scheme).capabilities
        except IPCError as exc:
            skipped.append(SkippedSubject(label, str(exc)))
            continue
        if not getattr(caps, "cross_process", True):
            skipped.append(SkippedSubject(label, "in-process only (capabilities.cross_process is False)"))
            continue
        if not caps.proves_same_user and "trust=" not in url.partition("?")[2]:
            # The harness runs both ends itself, so it trusts its peer: without this a transport that
            # proves no user (zmq+tcp://) could not carry the pickle cells or the numpy objects.
            url += ("&" if "?" in url else "?") + "trust=true"
        has_address = bool(url.partition("://")[2].partition("?")[0])
        if caps.anonymous_pair and caps.inheritable and not has_address:
            method = "pair"
        elif caps.named:
            method = "listen"
        else:
            why = "no anonymous pair" if not caps.anonymous_pair else "channel ends are not inheritable"
            skipped.append(SkippedSubject(label, f"cannot reach another process ({why}, not named)"))
            continue
        subjects.append(IpckitSubject(label, "ipckit", note=method, url=url, scheme=scheme, method=method))
    return subjects, skipped


