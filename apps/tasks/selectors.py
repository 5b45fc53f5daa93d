"""Read-side queries for operators (the admin overview and lineage pages, the lineage API)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from apps.datasets.models import Commit
from apps.orgs.models import Org
from apps.tasks.models import Attempt, Event, Task, TaskInput, TaskState

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


MAX_LINEAGE_DEPTH = 20


def _commit_ref(commit: Commit) -> dict[str, Any]:
    return {
        "dataset": commit.dataset.dataset_id,
        "version": commit.version,
        "task": str(commit.producer_task_id) if commit.producer_task_id else None,
        "range_start": commit.range_start or None,
        "range_end": commit.range_end or None,
    }


def lineage(commit: Commit, depth: int = MAX_LINEAGE_DEPTH) -> dict[str, Any]:
    """The commits `commit` was computed from (upstream) and those computed from it
    (downstream), walked through the tasks' lineage rows, each side breadth-first."""
    return {
        "commit": _commit_ref(commit),
        "upstream": _walk(commit, depth, up=True),
        "downstream": _walk(commit, depth, up=False),
    }


def _walk(start: Commit, depth: int, up: bool) -> list[dict[str, Any]]:
    seen = {start.pk}
    frontier = [start]
    found: list[dict[str, Any]] = []
    for level in range(1, depth + 1):
        following: list[Commit] = []
        for commit in frontier:
            for other in _inputs_of(commit) if up else _outputs_of(commit):
                if other.pk not in seen:
                    seen.add(other.pk)
                    following.append(other)
                    found.append({**_commit_ref(other), "level": level})
        if not following:
            break
        frontier = following
    return found


def _input_commits(org_id: int, row: TaskInput) -> QuerySet[Commit]:
    """The commits one lineage row covers."""
    return Commit.objects.select_related("dataset").filter(
        dataset__org_id=org_id,
        dataset__dataset_id=row.dataset_id,
        generation=row.generation,
        seq__gte=row.seq_start,
        seq__lte=row.seq_end,
    )


def _consuming_task_ids(commit: Commit) -> QuerySet[TaskInput, Any]:
    """The tasks whose lineage rows cover `commit`."""
    return TaskInput.objects.filter(
        task__org_id=commit.dataset.org_id,
        dataset_id=commit.dataset.dataset_id,
        generation=commit.generation,
        seq_start__lte=commit.seq,
        seq_end__gte=commit.seq,
    ).values_list("task_id", flat=True)


def _inputs_of(commit: Commit) -> list[Commit]:
    if commit.producer_task_id is None:
        return []
    rows = TaskInput.objects.filter(task_id=commit.producer_task_id)
    commits: list[Commit] = []
    for row in rows:
        commits.extend(_input_commits(commit.dataset.org_id, row))
    return commits


def _outputs_of(commit: Commit) -> list[Commit]:
    task_ids = _consuming_task_ids(commit)
    return list(Commit.objects.select_related("dataset").filter(producer_task_id__in=task_ids))


@dataclass
class InputLineage:
    row: TaskInput
    commits: list[Commit]


@dataclass
class ConsumerLineage:
    task: Task
    commits: list[Commit]


@dataclass
class CommitLineage:
    """One level of lineage each way around a commit, as model rows (the admin page)."""

    commit: Commit
    task: Task | None
    attempts: list[Attempt]
    inputs: list[InputLineage]
    events: list[Event]
    consumers: list[ConsumerLineage]


CONSUMERS_SHOWN = 100


def commit_lineage(commit: Commit) -> CommitLineage:
    """The task that produced `commit` with its attempts, the input commits it read (per
    lineage row), the commit's events with the tasks they triggered, and the tasks that read
    the commit with the commits they produced."""
    org_id = commit.dataset.org_id
    task = None
    if commit.producer_task_id is not None:
        task = (
            Task.objects.select_related("dag_version__dag", "event")
            .filter(pk=commit.producer_task_id, org_id=org_id)
            .first()
        )
    attempts = list(task.attempts.order_by("number")) if task else []
    inputs = []
    if task is not None:
        for row in task.inputs.select_related("event").order_by("dataset_id", "generation"):
            commits = list(_input_commits(org_id, row).order_by("seq"))
            inputs.append(InputLineage(row, commits))
    events = list(
        Event.objects.filter(org_id=org_id, commit=commit)
        .prefetch_related("tasks")
        .order_by("created_at")
    )
    consumers_ids = _consuming_task_ids(commit)
    consuming = list(
        Task.objects.select_related("dag_version__dag")
        .filter(pk__in=consumers_ids)
        .order_by("created_at")[:CONSUMERS_SHOWN]
    )
    produced: dict[Any, list[Commit]] = {t.pk: [] for t in consuming}
    outputs = Commit.objects.select_related("dataset").filter(producer_task_id__in=list(produced))
    for output in outputs.order_by("dataset__dataset_id", "generation", "seq"):
        produced[output.producer_task_id].append(output)
    consumers = [ConsumerLineage(t, produced[t.pk]) for t in consuming]
    return CommitLineage(commit, task, attempts, inputs, events, consumers)
