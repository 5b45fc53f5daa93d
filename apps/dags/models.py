from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.orgs.fields import OrderedJSONField
from apps.orgs.models import Org, OrgScopedQuerySet


class VersionState(models.TextChoices):
    VALIDATED = "validated", "Validated"
    BUILDING = "building", "Building"
    ACTIVE = "active", "Active"
    FAILED = "failed", "Failed"
    ABANDONED = "abandoned", "Abandoned"
    SUPERSEDED = "superseded", "Superseded"
    RETIRED = "retired", "Retired"


# Versions whose nodes receive events: the active one, and one being built beside it.
LIVE_VERSION_STATES = frozenset({VersionState.BUILDING, VersionState.ACTIVE})


class Lane(models.TextChoices):
    LIVE = "live", "Live"
    BACKFILL = "backfill", "Backfill"


class Dag(models.Model):
    org_path: ClassVar[str] = "org"

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="dags")
    name = models.CharField(max_length=63)
    active_version = models.OneToOneField(
        "DagVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    paused = models.BooleanField(default=False, help_text="Pauses dispatch of every node.")
    # [{"node": id | None, "lane": "live" | "backfill" | None}, ...]: narrower pauses.
    pauses = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "dags"
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="dag_name_per_org")]
        ordering = ["org_id", "name"]
        verbose_name = "DAG"

    def __str__(self) -> str:
        return f"{self.org.slug}/{self.name}" if self.org_id else self.name

    def is_paused(self, node_id: str | None = None, lane: str | None = None) -> bool:
        if self.paused:
            return True
        for pause in self.pauses:
            if pause.get("node") in (None, node_id) and pause.get("lane") in (None, lane):
                return True
        return False


class DagVersion(models.Model):
    """Immutable once stored: the config and hashes never change, only the state does."""

    org_path: ClassVar[str] = "dag__org"

    dag = models.ForeignKey(Dag, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    config = OrderedJSONField()
    config_hash = models.CharField(max_length=64)
    state = models.CharField(
        max_length=16, choices=VersionState.choices, default=VersionState.VALIDATED
    )
    diff = models.JSONField(default=dict, help_text="Against the version active at deploy.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    activated_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "dag_versions"
        constraints = [
            models.UniqueConstraint(fields=["dag", "number"], name="dag_version_number"),
            # At most one active version per DAG, whatever the code does.
            models.UniqueConstraint(
                fields=["dag"],
                condition=models.Q(state="active"),
                name="dag_one_active_version",
            ),
        ]
        ordering = ["dag_id", "-number"]
        verbose_name = "DAG version"

    def __str__(self) -> str:
        return f"{self.dag.name} v{self.number} ({self.state})"

    def node_map(self) -> dict[str, dict[str, Any]]:
        return {node["id"]: node for node in self.config["nodes"]}

    def cached_node_map(self) -> dict[str, dict[str, Any]]:
        """`node_map()`, parsed once per process and version, also for a version loaded without
        its config (`defer("config")`): the hot paths read one node of a whole DAG's config.
        Keyed by id and content hash (SQLite may reuse an id); treat the result as read-only."""
        config = None if "config" in self.get_deferred_fields() else self.config
        return node_map_of(self.pk, self.config_hash, config)


_NODE_MAPS: dict[tuple[int, str], dict[str, dict[str, Any]]] = {}
_NODE_MAPS_SIZE = 1024


def node_map_of(
    version_id: int, config_hash: str, config: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The node map of a version known by id and content hash, parsed once per process: the
    config is read (unless given) only the first time. Treat the result as read-only."""
    key = (version_id, config_hash)
    nodes = _NODE_MAPS.get(key)
    if nodes is None:
        if config is None:
            config = DagVersion.objects.values_list("config", flat=True).get(pk=version_id)
        if len(_NODE_MAPS) >= _NODE_MAPS_SIZE:
            _NODE_MAPS.clear()
        nodes = _NODE_MAPS[key] = {node["id"]: node for node in config["nodes"]}
    return nodes


class DagNode(models.Model):
    """One node of one version, with the hashes that drive rebuilds and memoization."""

    org_path: ClassVar[str] = "version__dag__org"

    version = models.ForeignKey(DagVersion, on_delete=models.CASCADE, related_name="nodes")
    node_id = models.CharField(max_length=63)
    kind = models.CharField(max_length=16)
    runtime = models.CharField(max_length=16, blank=True)
    config = OrderedJSONField()
    own_hash = models.CharField(max_length=64)
    node_hash = models.CharField(max_length=64)
    inputs = models.JSONField(default=list, help_text="Node ids of this DAG it reads.")
    external_inputs = models.JSONField(default=list, help_text="Dataset ids of other DAGs.")
    output_dataset = models.CharField(max_length=128, blank=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "dag_nodes"
        constraints = [
            models.UniqueConstraint(fields=["version", "node_id"], name="dag_node_per_version"),
        ]
        ordering = ["version_id", "id"]

    def __str__(self) -> str:
        return self.node_id
