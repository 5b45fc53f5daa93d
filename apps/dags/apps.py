from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _dags_panel(org: Any) -> dict[str, Any]:
    from apps.dags.models import Dag

    return {"dags": Dag.objects.for_org(org).select_related("active_version")}


class DagsConfig(AppConfig):
    name = "apps.dags"
    label = "dags"
    verbose_name = "DAGs"

    def ready(self) -> None:
        from apps.dags.services import secret_references
        from apps.orgs.overview import Panel, overview_panels
        from apps.secrets.services import reference_finders

        reference_finders.append(secret_references)
        overview_panels.register("dags", Panel("DAGs", "panels/dags.html", _dags_panel, order=10))
