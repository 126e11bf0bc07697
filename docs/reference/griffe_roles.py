"""Griffe extension for the API reference: turn the docstrings' Sphinx roles into links.

The ipckit docstrings cite names the Sphinx way (:class:`ChannelClosed`, :meth:`Listener.accept`,
:func:`~ipckit.errors.from_oserror`) so that they read well in ``help()`` and in an editor.
Markdown has no roles, so without this the site would show the raw ``:class:`` text.  Each role
becomes an *optional* mkdocs-autorefs reference: a link when the name is rendered somewhere on
the site, plain code otherwise (a private helper, a standard-library name), never a warning.

Loaded by mkdocs.yml (``plugins.mkdocstrings.handlers.python.options.extensions``); excluded from
the built site by ``exclude_docs``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(?P<tilde>~?)(?P<name>[^`]+)`")


def _identifier(obj: griffe.Object, name: str) -> str:
    """The full dotted path of *name* as seen from *obj*'s scope, or *name* when unknown."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        return name
    return f"{path}.{rest}" if rest else path


def _rewrite(obj: griffe.Object) -> None:
    doc = obj.docstring
    if doc is None or ":" not in doc.value:
        return

    def link(m: re.Match[str]) -> str:
        name = m["name"].strip().removesuffix("()")
        shown = name.rsplit(".", 1)[-1] if m["tilde"] else name
        ident = _identifier(obj, name)
        return f'<autoref identifier="{html.escape(ident)}" optional><code>{html.escape(shown)}</code></autoref>'

    doc.value = _ROLE.sub(link, doc.value)


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    _rewrite(obj)
    for member in obj.members.values():
        if not member.is_alias:  # an alias shares its target's docstring: rewritten where it lives
            _walk(member, seen)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrite the roles once the whole package is loaded, so every import can be resolved."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
