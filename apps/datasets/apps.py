from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _datasets_panel(org: Any) -> dict[str, Any]:
    from apps.datasets.models import Dataset

    return {"datasets": Dataset.objects.for_org(org)}


class DatasetsConfig(AppConfig):
    name = "apps.datasets"
    label = "datasets"

    def ready(self) -> None:
        from apps.dags.catalog import catalog_registry
        from apps.datasets.registry import RegistryCatalog
        from apps.orgs.overview import Panel, overview_panels

        catalog_registry.register(RegistryCatalog())
        overview_panels.register(
            "datasets", Panel("Datasets", "panels/datasets.html", _datasets_panel, order=20)
        )
