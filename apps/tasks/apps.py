from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _tasks_panel(org: Any) -> dict[str, Any]:
    from django.db.models import Count

    from apps.tasks.models import Task, TaskState

    counts = dict(Task.objects.for_org(org).values_list("state").annotate(n=Count("id")).order_by())
    return {"counts": [(label, counts.get(state, 0)) for state, label in TaskState.choices]}


class TasksConfig(AppConfig):
    name = "apps.tasks"
    label = "tasks"

    def ready(self) -> None:
        from apps.dags import hooks
        from apps.orgs.overview import Panel, overview_panels
        from apps.tasks.services import sync_lane_pauses

        hooks.pause_changed.append(sync_lane_pauses)
        overview_panels.register(
            "tasks", Panel("Tasks by state", "panels/tasks.html", _tasks_panel, order=30)
        )
