from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.utils import timezone

from apps.orgs.fields import OrderedJSONField
from apps.orgs.models import Org, OrgScopedQuerySet


class Dataset(models.Model):
    """The per-org registry row of a dataset (DESIGN.md D2), written at deploy.

    The producer is recorded as plain identifiers (dag name, node id): `datasets` sits above
    `dags` in the layering, and a dataset outlives the DAG that produced it.
    """

    org_path: ClassVar[str] = "org"

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="datasets")
    dataset_id = models.CharField(max_length=128)
    backend = models.CharField(max_length=16, default="parquet")
    schema = OrderedJSONField(default=dict, blank=True, help_text="{column: Arrow type}")
    schema_declared = models.BooleanField(default=False)
    range_type = models.CharField(max_length=16, default="timestamp")
    # Empty when no DAG produces the dataset (any more): its data stays, unclaimed.
    producer_dag = models.CharField(max_length=63, blank=True, default="")
    producer_node = models.CharField(max_length=63, blank=True, default="")
    live_generation = models.PositiveIntegerField(default=1)
    update_strategy = models.CharField(max_length=16, default="append")
    unique_key = models.JSONField(default=list, blank=True)
    retention = models.JSONField(default=dict, blank=True)
    # Physical names, recorded here and never derived at read time (D2).
    storage_prefix = models.CharField(max_length=512)
    pg_schema = models.CharField(max_length=63)
    pg_table_prefix = models.CharField(max_length=40)
    pg_view = models.CharField(max_length=63)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "datasets"
        constraints = [
            models.UniqueConstraint(fields=["org", "dataset_id"], name="dataset_id_per_org"),
        ]
        indexes = [models.Index(fields=["org", "producer_dag"], name="dataset_producer_idx")]
        ordering = ["org_id", "dataset_id"]

    def __str__(self) -> str:
        return self.dataset_id

    @property
    def producer(self) -> dict[str, str] | None:
        if not self.producer_dag:
            return None
        return {"dag": self.producer_dag, "node": self.producer_node}

    def pg_table(self, generation: int) -> str:
        return f"{self.pg_table_prefix}_g{generation}"


class Generation(models.Model):
    """One physical materialization of a dataset, built by one DAG version (D2)."""

    org_path: ClassVar[str] = "dataset__org"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="generations")
    number = models.PositiveIntegerField()
    dag_version_id = models.BigIntegerField(null=True, blank=True, help_text="Built by (plain id).")
    last_seq = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "dataset_generations"
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="generation_number"),
        ]
        ordering = ["dataset_id", "-number"]

    def __str__(self) -> str:
        return f"{self.dataset.dataset_id} g{self.number}"


def commit_version(generation: int, seq: int) -> str:
    """A commit's version as events carry it (D2): "<generation>.<seq>"."""
    return f"{generation}.{seq}"


class Commit(models.Model):
    """One write into a generation, numbered `seq` 1, 2, 3…; may hold 0 rows (D7).

    The producing task is recorded by plain identifiers: tasks live in a higher layer.
    """

    org_path: ClassVar[str] = "dataset__org"

    # Indexed by the (dataset, generation, seq) constraint: every task writes a commit, and
    # a second index starting with the same column would only cost it a write.
    dataset = models.ForeignKey(
        Dataset, on_delete=models.CASCADE, related_name="commits", db_index=False
    )
    generation = models.PositiveIntegerField()
    seq = models.PositiveBigIntegerField()
    range_start = models.CharField(max_length=64, blank=True)
    range_end = models.CharField(max_length=64, blank=True)
    files = models.JSONField(default=list, blank=True)
    rows = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    producer_dag = models.CharField(max_length=63, blank=True)
    producer_node = models.CharField(max_length=63, blank=True)
    producer_task_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "dataset_commits"
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "generation", "seq"], name="commit_seq_per_generation"
            ),
        ]
        ordering = ["dataset_id", "generation", "seq"]

    def __str__(self) -> str:
        return f"{self.dataset.dataset_id}@{self.version}"

    @property
    def version(self) -> str:
        return commit_version(self.generation, self.seq)
