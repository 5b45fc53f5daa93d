from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.datasets.models import Commit, Dataset, Generation
from apps.orgs.admin_base import NoAddDeleteMixin, OrgScopedAdmin, ReadOnlyAdminMixin


@admin.register(Dataset)
class DatasetAdmin(NoAddDeleteMixin, OrgScopedAdmin):
    """The registry: written by deploys, read here. Physical names are never edited by hand."""

    change_perm = "deploy_dags"
    list_display = (
        "dataset_id",
        "org",
        "producer_dag",
        "producer_node",
        "backend",
        "live_generation",
        "range_type",
        "update_strategy",
        "updated_at",
    )
    list_filter = ("org", "backend", "range_type", "update_strategy")
    search_fields = ("dataset_id", "producer_dag")
    list_select_related = ("org",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Dataset._meta.fields]


@admin.register(Generation)
class GenerationAdmin(ReadOnlyAdminMixin, OrgScopedAdmin):
    list_display = ("dataset", "number", "last_seq", "dag_version_id", "created_at")
    list_filter = ("dataset__org",)
    list_select_related = ("dataset",)
    search_fields = ("dataset__dataset_id",)


@admin.register(Commit)
class CommitAdmin(ReadOnlyAdminMixin, OrgScopedAdmin):
    list_display = (
        "dataset",
        "version",
        "range_start",
        "range_end",
        "rows",
        "bytes",
        "producer_dag",
        "producer_node",
        "producer_task_id",
        "created_at",
    )
    list_filter = ("dataset__org",)
    list_select_related = ("dataset",)
    search_fields = ("dataset__dataset_id", "=producer_task_id")
