from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _datasets_panel(org: Any) -> dict[str, Any]:
    from apps.datasets.models import Dataset

    return {"datasets": Dataset.objects.for_org(org)}


def _check_postgres_output(node: dict[str, Any]) -> list[tuple[str, str]]:
    from apps.datasets.pg import schema_problems

    output = node.get("output")
    if not isinstance(output, dict) or output.get("backend") != "postgres":
        return []
    schema = output.get("schema")
    if not isinstance(schema, dict):
        return []
    return [
        (f"output.schema.{column}", why)
        for column, why in schema_problems(
            {k: v for k, v in schema.items() if isinstance(v, str)}
        ).items()
    ]


class DatasetsConfig(AppConfig):
    name = "apps.datasets"
    label = "datasets"

    def ready(self) -> None:
        from apps.dags import hooks
        from apps.dags.catalog import catalog_registry
        from apps.datasets.registry import RegistryCatalog
        from apps.orgs.overview import Panel, overview_panels

        catalog_registry.register(RegistryCatalog())
        hooks.node_checks.append(_check_postgres_output)
        overview_panels.register(
            "datasets", Panel("Datasets", "panels/datasets.html", _datasets_panel, order=20)
        )
