"""Read-side queries for operators (the admin overview)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from apps.orgs.models import Org
from apps.tasks.models import Task, TaskState

THROUGHPUT_WINDOW = dt.timedelta(minutes=5)


def overview(orgs: QuerySet[Org]) -> dict[str, Any]:
    """Counts by state, oldest pending age and 5-minute throughput per node."""
    now = timezone.now()
    tasks = Task.objects.filter(org__in=orgs)
    by_state = dict(tasks.values_list("state").annotate(n=Count("id")).order_by())
    nodes: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row(org: str, dag: str, node: str) -> dict[str, Any]:
        return nodes.setdefault(
            (org, dag, node),
            {
                "org": org,
                "dag": dag,
                "node": node,
                "pending": 0,
                "in_flight": 0,
                "oldest_pending_s": None,
                "done_5m": 0,
                "failed_5m": 0,
            },
        )

    open_rows = (
        tasks.filter(state__in=[TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING])
        .values("org__slug", "dag_version__dag__name", "node_id", "state")
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .order_by()
    )
    for item in open_rows:
        entry = row(item["org__slug"], item["dag_version__dag__name"], item["node_id"])
        if item["state"] == TaskState.PENDING:
            entry["pending"] += item["n"]
            entry["oldest_pending_s"] = round((now - item["oldest"]).total_seconds(), 1)
        else:
            entry["in_flight"] += item["n"]
    recent = (
        tasks.filter(finished_at__gte=now - THROUGHPUT_WINDOW)
        .values("org__slug", "dag_version__dag__name", "node_id", "state")
        .annotate(n=Count("id"))
        .order_by()
    )
    for item in recent:
        entry = row(item["org__slug"], item["dag_version__dag__name"], item["node_id"])
        if item["state"] == TaskState.SUCCEEDED:
            entry["done_5m"] += item["n"]
        elif item["state"] == TaskState.FAILED:
            entry["failed_5m"] += item["n"]
    for entry in nodes.values():
        entry["per_minute"] = round(entry["done_5m"] / 5, 1)
    return {
        "states": [(label, by_state.get(state, 0)) for state, label in TaskState.choices],
        "nodes": sorted(nodes.values(), key=lambda e: (e["org"], e["dag"], e["node"])),
        "window_minutes": int(THROUGHPUT_WINDOW.total_seconds() // 60),
    }
