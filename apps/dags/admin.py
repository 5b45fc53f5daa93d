from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Max, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from apps.dags import services
from apps.dags.models import Dag, DagNode, DagVersion
from apps.orgs.admin_base import (
    NoAddDeleteMixin,
    OrgScopedAdmin,
    OrgScopedInline,
    ReadOnlyAdminMixin,
)
from apps.orgs.api import acting_user


def pretty_json(value: Any) -> str:
    return format_html("<pre style='white-space: pre-wrap'>{}</pre>", json.dumps(value, indent=2))


@admin.register(Dag)
class DagAdmin(NoAddDeleteMixin, OrgScopedAdmin):
    """DAGs are deployed through the API or `manage.py deploy_dag`, and retired through
    DELETE /v1/dags/{name}; here operators pause, resume and roll back."""

    change_perm = "deploy_dags"
    list_display = ("name", "org", "active_number", "state", "paused", "pauses", "last_deploy")
    list_filter = ("org", "paused")
    search_fields = ("name",)
    list_select_related = ("org", "active_version")
    readonly_fields = (
        "org",
        "name",
        "active_version",
        "paused",
        "pauses",
        "created_at",
        "updated_at",
        "retired_at",
    )
    actions = ("pause", "resume", "rollback")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Dag]:
        return super().get_queryset(request).annotate(last_deploy_at=Max("versions__created_at"))

    @admin.display(description="active version")
    def active_number(self, dag: Dag) -> int | None:
        return dag.active_version.number if dag.active_version else None

    @admin.display(description="state")
    def state(self, dag: Dag) -> str:
        return dag.active_version.state if dag.active_version else "retired"

    @admin.display(description="last deploy", ordering="last_deploy_at")
    def last_deploy(self, dag: Any) -> Any:
        return dag.last_deploy_at

    @admin.action(description="Pause the selected DAGs")
    def pause(self, request: HttpRequest, queryset: QuerySet[Dag]) -> None:
        self.act_on(request, queryset, "pause_dags", lambda d: services.dag_pause(dag=d), "Paused")

    @admin.action(description="Resume the selected DAGs")
    def resume(self, request: HttpRequest, queryset: QuerySet[Dag]) -> None:
        self.act_on(
            request, queryset, "pause_dags", lambda d: services.dag_resume(dag=d), "Resumed"
        )

    @admin.action(description="Roll back to the previous version")
    def rollback(self, request: HttpRequest, queryset: QuerySet[Dag]) -> None:
        self.act_on(
            request,
            queryset,
            "deploy_dags",
            lambda d: services.dag_rollback(dag=d, version=None, actor=acting_user(request)),
            "Rolled back",
        )


class DagNodeInline(ReadOnlyAdminMixin, OrgScopedInline):
    model = DagNode
    fields = ("node_id", "kind", "runtime", "output_dataset", "inputs", "node_hash")
    readonly_fields = fields


@admin.register(DagVersion)
class DagVersionAdmin(ReadOnlyAdminMixin, OrgScopedAdmin):
    list_display = ("dag", "number", "state", "created_by", "created_at", "activated_at")
    list_filter = ("state", "dag__org")
    search_fields = ("dag__name",)
    list_select_related = ("dag", "dag__org", "created_by")
    fields = (
        "dag",
        "number",
        "state",
        "config_hash",
        "created_by",
        "created_at",
        "activated_at",
        "deactivated_at",
        "diff_vs_previous",
        "config_pretty",
    )
    readonly_fields = fields
    inlines = (DagNodeInline,)

    @admin.display(description="config")
    def config_pretty(self, version: DagVersion) -> str:
        return pretty_json(version.config)

    @admin.display(description="diff against the previous version")
    def diff_vs_previous(self, version: DagVersion) -> str:
        return pretty_json(services.version_diff(version))
