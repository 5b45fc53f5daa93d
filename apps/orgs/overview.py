"""The org overview page is assembled from panels that each app registers at start-up.

`orgs` is the lowest layer and cannot import the apps that own DAGs, datasets or tasks, so
those apps register a panel here in their `AppConfig.ready()` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apps.orgs.models import Org


@dataclass(frozen=True)
class Panel:
    title: str
    template: str
    context: Callable[[Org], dict[str, Any]]
    order: int = 100


@dataclass
class PanelRegistry:
    panels: dict[str, Panel] = field(default_factory=dict)

    def register(self, key: str, panel: Panel) -> None:
        self.panels[key] = panel

    def render_context(self, org: Org) -> list[dict[str, Any]]:
        ordered = sorted(self.panels.values(), key=lambda p: (p.order, p.title))
        return [{"title": p.title, "template": p.template, **p.context(org)} for p in ordered]


overview_panels = PanelRegistry()
