"""Hooks that higher apps register at start-up (DESIGN.md §1: lower layers own the registry).

`datasets` cannot import `tasks`, yet a commit's admin pages link to its lineage, which only
`tasks` can read: `tasks` registers the link here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# commit -> (label, url) of a page about that commit, or None when there is none.
commit_admin_links: list[Callable[[Any], tuple[str, str] | None]] = []


def commit_links(commit: Any) -> list[tuple[str, str]]:
    return [link for hook in commit_admin_links if (link := hook(commit)) is not None]
