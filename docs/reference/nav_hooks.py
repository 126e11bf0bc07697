"""mkdocs hook: put docs/reliability.md in the nav as "Reliability" once the page exists.

The reliability page is written by the reliability work (issue 15), which may land before or
after this site.  Every page must be in the nav (``validation.omitted_files`` under ``--strict``),
and a nav entry for a page that does not exist fails the build as well, so neither a static
entry nor its absence is right in both cases.  When mkdocs.yml names the page itself, this does
nothing.  Loaded by mkdocs.yml (``hooks:``); excluded from the built site by ``exclude_docs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAGE = "reliability.md"
AFTER = "benchmarks.md"  # next to the other page of measured figures


def _names(nav: list[Any]) -> set[str]:
    found: set[str] = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, list):
                found |= _names(value)
            elif isinstance(value, str):
                found.add(value)
    return found


def on_config(config: Any, **kwargs: Any) -> Any:
    nav = config.get("nav")
    if not nav or not (Path(config["docs_dir"]) / PAGE).is_file() or PAGE in _names(nav):
        return config
    at = next((i + 1 for i, item in enumerate(nav) if isinstance(item, dict) and AFTER in item.values()), len(nav))
    nav.insert(at, {"Reliability": PAGE})
    return config
