"""Hooks that higher apps register at start-up (DESIGN.md §1: lower layers own the registry).

`dags` cannot import `tasks`; when a pause changes, the dispatcher's counter rows must follow
in the same transaction, so `tasks` registers a handler here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

pause_changed: list[Callable[[Any], None]] = []


def notify_pause_changed(dag: Any) -> None:
    for handler in pause_changed:
        handler(dag)


# Checks of single nodes that need a higher layer (e.g. the AWS runtimes): node -> problems as
# (field, message) pairs; the field is relative to the node, e.g. "function".
node_checks: list[Callable[[dict[str, Any]], list[tuple[str, str]]]] = []
