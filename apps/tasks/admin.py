"""Operator admin: tasks (with attempts and logs), events, dispatch lanes, an overview, and a
lineage page per commit."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from apps.dags import services as dag_services
from apps.datasets.models import Commit
from apps.orgs.access import orgs_with_perm
from apps.orgs.admin_base import (
    ActionsOnlyAdminMixin,
    OrgScopedAdmin,
    OrgScopedInline,
    ReadOnlyAdminMixin,
)
from apps.tasks import selectors, services
from apps.tasks.models import Attempt, Event, NodeLane, Task, TaskInput


def _link(obj: Any, label: str | None = None) -> str:
    if obj is None:
        return "—"
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


class AttemptInline(ReadOnlyAdminMixin, OrgScopedInline):
    model = Attempt
    fields = (
        "number",
        "worker_id",
        "started_at",
        "heartbeat_at",
        "ended_at",
        "outcome",
        "error",
        "logs_tail",
    )
    readonly_fields = fields
    can_delete = False

    @admin.display(description="logs (last 64 KB)")
    def logs_tail(self, attempt: Attempt) -> str:
        return format_html("<pre style='max-height: 20em; overflow: auto'>{}</pre>", attempt.logs)


class TaskInputInline(ReadOnlyAdminMixin, OrgScopedInline):
    model = TaskInput
    fields = ("dataset_id", "generation", "seq_start", "seq_end", "event")
    readonly_fields = fields


@admin.register(Task)
class TaskAdmin(ActionsOnlyAdminMixin, OrgScopedAdmin):
    change_perm = "operate_tasks"
    list_display = (
        "id",
        "org",
        "dag_name",
        "node_id",
        "state",
        "lane",
        "mode",
        "attempt",
        "created_at",
        "finished_at",
    )
    list_filter = ("org", "state", "lane", "mode", "dag_version__dag", "node_id")
    search_fields = ("=id", "node_id", "=event__id")
    list_select_related = ("org", "dag_version__dag")
    readonly_fields = (
        "id",
        "org",
        "dag_version",
        "node_id",
        "state",
        "lane",
        "mode",
        "attempt",
        "max_attempts",
        "attempts_base",
        "input_event",
        "output_event_link",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
        "lease_expires_at",
        "deadline_at",
        "next_attempt_at",
        "error",
    )
    exclude = ("event", "output_event", "lease_token", "dispatch_count")
    inlines = (AttemptInline, TaskInputInline)
    actions = ("retry", "cancel", "requeue")
    date_hierarchy = None

    @admin.display(description="DAG")
    def dag_name(self, task: Task) -> str:
        return f"{task.dag_version.dag.name} v{task.dag_version.number}"

    @admin.display(description="input event")
    def input_event(self, task: Task) -> str:
        return _link(task.event)

    @admin.display(description="output event")
    def output_event_link(self, task: Task) -> str:
        return _link(task.output_event)

    def _act(self, request: HttpRequest, queryset: QuerySet[Task], call: Any, done: str) -> None:
        self.act_on(request, queryset, "operate_tasks", call, done)

    @admin.action(description="Retry the selected failed or canceled tasks")
    def retry(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._act(request, queryset, services.task_retry, "Retried")

    @admin.action(description="Cancel the selected tasks")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._act(request, queryset, services.task_cancel, "Canceled")

    @admin.action(description="Requeue the selected queued tasks (message lost)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._act(request, queryset, services.task_requeue, "Requeued")

    def get_urls(self) -> list[Any]:
        overview = self.admin_site.admin_view(self.overview_view)
        lineage = self.admin_site.admin_view(self.commit_lineage_view)
        return [
            path("overview/", overview, name="tasks_overview"),
            path("lineage/<int:commit_id>/", lineage, name="tasks_commit_lineage"),
            *super().get_urls(),
        ]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Dispatch overview",
            "overview": selectors.overview(orgs_with_perm(request.user, "view_org")),
        }
        return TemplateResponse(request, "admin/tasks/overview.html", context)

    def commit_lineage_view(self, request: HttpRequest, commit_id: int) -> HttpResponse:
        """A commit's lineage one level each way. Lives here because `datasets` cannot read
        tasks; another org's commit is a 404, as in the API."""
        commit = (
            Commit.objects.for_user(request.user, "view_org")
            .select_related("dataset__org")
            .filter(pk=commit_id)
            .first()
        )
        if commit is None:
            raise Http404("No such commit.")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Lineage of {commit}",
            "lineage": selectors.commit_lineage(commit),
        }
        return TemplateResponse(request, "admin/tasks/commit_lineage.html", context)


@admin.register(Event)
class EventAdmin(ActionsOnlyAdminMixin, OrgScopedAdmin):
    list_display = (
        "id",
        "org",
        "dataset_id",
        "kind",
        "mode",
        "version",
        "range_start",
        "range_end",
        "event_time",
        "created_at",
    )
    list_filter = ("org", "kind", "mode")
    search_fields = ("=id", "dataset_id", "idempotency_key")
    list_select_related = ("org", "commit")
    readonly_fields = (
        "id",
        "org",
        "dataset_id",
        "kind",
        "mode",
        "idempotency_key",
        "version",
        "range_start",
        "range_end",
        "event_time",
        "payload",
        "commit_link",
        "producer_task_link",
        "checkpoint_n",
        "created_at",
        "fanned_out_at",
        "tasks_links",
    )
    exclude = ("commit", "producer_task")

    @admin.display(description="commit")
    def commit_link(self, event: Event) -> str:
        return _link(event.commit)

    @admin.display(description="producing task")
    def producer_task_link(self, event: Event) -> str:
        return _link(event.producer_task)

    @admin.display(description="tasks")
    def tasks_links(self, event: Event) -> str:
        links = [_link(t, f"{t.node_id} ({t.state})") for t in event.tasks.all()[:50]]
        return format_html("<br>".join(["{}"] * len(links)), *links) if links else "—"


@admin.register(NodeLane)
class NodeLaneAdmin(ActionsOnlyAdminMixin, OrgScopedAdmin):
    """The dispatch counters: what waits, what runs, what is paused or blocked."""

    change_perm = "pause_dags"
    list_display = (
        "node_id",
        "lane",
        "dag_version",
        "runtime",
        "pending",
        "in_flight",
        "cap",
        "paused",
        "blocked",
        "runnable",
        "dispatched_at",
    )
    list_filter = ("lane", "paused", "dag_version__dag")
    list_select_related = ("dag_version__dag",)
    readonly_fields = (
        "dag_version",
        "node_id",
        "lane",
        "runtime",
        "pending",
        "in_flight",
        "cap",
        "paused",
        "blocked",
        "dispatched_at",
        "claim_floor",
    )
    exclude = ("priority",)
    actions = ("pause_node_lane", "resume_node_lane", "pause_node", "resume_node")

    def _pause(
        self, request: HttpRequest, queryset: QuerySet[NodeLane], paused: bool, whole_node: bool
    ) -> None:
        call = dag_services.dag_pause if paused else dag_services.dag_resume
        self.act_on(
            request,
            queryset.select_related("dag_version__dag"),
            "pause_dags",
            lambda lane: call(
                dag=lane.dag_version.dag, node=lane.node_id, lane=None if whole_node else lane.lane
            ),
            "Paused" if paused else "Resumed",
        )

    @admin.action(description="Pause the selected node lanes")
    def pause_node_lane(self, request: HttpRequest, queryset: QuerySet[NodeLane]) -> None:
        self._pause(request, queryset, True, whole_node=False)

    @admin.action(description="Resume the selected node lanes")
    def resume_node_lane(self, request: HttpRequest, queryset: QuerySet[NodeLane]) -> None:
        self._pause(request, queryset, False, whole_node=False)

    @admin.action(description="Pause the selected nodes (both lanes)")
    def pause_node(self, request: HttpRequest, queryset: QuerySet[NodeLane]) -> None:
        self._pause(request, queryset, True, whole_node=True)

    @admin.action(description="Resume the selected nodes (both lanes)")
    def resume_node(self, request: HttpRequest, queryset: QuerySet[NodeLane]) -> None:
        self._pause(request, queryset, False, whole_node=True)
