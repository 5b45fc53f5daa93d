from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html_join

from apps.datasets import hooks
from apps.datasets.models import Commit, Dataset, Generation
from apps.orgs.admin_base import NoAddDeleteMixin, OrgScopedAdmin, ReadOnlyAdminMixin


def _live_total(aggregate: Any) -> Coalesce:
    """`aggregate` over the commits of the row's live generation, as a correlated subquery:
    evaluated only for the rows of the page shown, on the (dataset, generation, seq) index."""
    live = (
        Commit.objects.filter(dataset=OuterRef("pk"), generation=OuterRef("live_generation"))
        .order_by()
        .values("dataset")
        .annotate(total=aggregate)
        .values("total")
    )
    return Coalesce(Subquery(live), 0)


@admin.register(Dataset)
class DatasetAdmin(NoAddDeleteMixin, OrgScopedAdmin):
    """The registry: written by deploys, read here. Physical names are never edited by hand."""

    change_perm = "deploy_dags"
    list_display = (
        "dataset_id",
        "org",
        "producer",
        "backend",
        "live_generation",
        "live_commits",
        "live_rows",
        "live_bytes",
        "range_type",
        "update_strategy",
        "updated_at",
    )
    list_filter = ("org", "backend", "range_type", "update_strategy")
    search_fields = ("dataset_id", "producer_dag")
    list_select_related = ("org",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Dataset]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                live_commit_count=_live_total(Count("pk")),
                live_row_count=_live_total(Sum("rows")),
                live_byte_count=_live_total(Sum("bytes")),
            )
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Dataset._meta.fields]

    @admin.display(description="producer", ordering="producer_dag")
    def producer(self, dataset: Dataset) -> str:
        if not dataset.producer_dag:
            return "—"
        return f"{dataset.producer_dag} / {dataset.producer_node}"

    @admin.display(description="commits (live)", ordering="live_commit_count")
    def live_commits(self, dataset: Any) -> int:
        return int(dataset.live_commit_count)

    @admin.display(description="rows (live)", ordering="live_row_count")
    def live_rows(self, dataset: Any) -> int:
        return int(dataset.live_row_count)

    @admin.display(description="bytes (live)", ordering="live_byte_count")
    def live_bytes(self, dataset: Any) -> str:
        return str(filesizeformat(dataset.live_byte_count))


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
        "pages",
    )
    list_filter = ("dataset__org",)
    list_select_related = ("dataset",)
    search_fields = ("dataset__dataset_id", "=producer_task_id")
    readonly_fields = ("pages",)

    @admin.display(description="lineage")
    def pages(self, commit: Commit) -> str:
        links = hooks.commit_links(commit)
        if not links:
            return "—"
        return format_html_join(" · ", '<a href="{}">{}</a>', ((u, lbl) for lbl, u in links))
