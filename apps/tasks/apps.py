from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _tasks_panel(org: Any) -> dict[str, Any]:
    from django.db.models import Count

    from apps.tasks.models import Task, TaskState

    counts = dict(Task.objects.for_org(org).values_list("state").annotate(n=Count("id")).order_by())
    return {"counts": [(label, counts.get(state, 0)) for state, label in TaskState.choices]}


def _commit_lineage_link(commit: Any) -> tuple[str, str]:
    from django.urls import reverse

    return ("lineage", reverse("admin:tasks_commit_lineage", args=[commit.pk]))


def _check_lambda_node(node: dict[str, Any]) -> list[tuple[str, str]]:
    if node.get("runtime") != "lambda" or not isinstance(node.get("function"), str):
        return []
    from apps.tasks.runtimes_aws import lambda_retry_problems

    problem = lambda_retry_problems(node["function"])
    return [("function", problem)] if problem else []


class TasksConfig(AppConfig):
    name = "apps.tasks"
    label = "tasks"

    def ready(self) -> None:
        from apps.dags import hooks
        from apps.datasets import hooks as dataset_hooks
        from apps.orgs.overview import Panel, overview_panels
        from apps.tasks.runtimes import runtimes
        from apps.tasks.runtimes_aws import LambdaAdapter, SqsAdapter
        from apps.tasks.services import sync_lane_pauses

        hooks.pause_changed.append(sync_lane_pauses)
        hooks.node_checks.append(_check_lambda_node)
        dataset_hooks.commit_admin_links.append(_commit_lineage_link)
        runtimes.register("ecs", SqsAdapter)
        runtimes.register("lambda", LambdaAdapter)
        overview_panels.register(
            "tasks", Panel("Tasks by state", "panels/tasks.html", _tasks_panel, order=30)
        )
