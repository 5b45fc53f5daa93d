"""The dataset registry: physical names and the single-producer rule (DESIGN.md D2)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from django.utils import timezone

from apps.dags.catalog import DatasetEntry, OutputClaim
from apps.datasets.models import Dataset
from apps.orgs.errors import Conflict, FieldError
from apps.orgs.models import Org

PG_IDENTIFIER_BYTES = 63


def physical_names(org: Org, dataset_id: str) -> dict[str, str]:
    digest = hashlib.sha256(f"{org.pk}:{dataset_id}".encode()).hexdigest()
    view = dataset_id
    if len(view.encode()) > PG_IDENTIFIER_BYTES:
        view = f"{dataset_id[: PG_IDENTIFIER_BYTES - 9]}_{digest[:8]}"
    return {
        "storage_prefix": f"{org.slug}/{dataset_id.replace('.', '/')}",
        "pg_schema": f"org_{org.pk}",
        "pg_table_prefix": f"ds_{digest[:16]}",
        "pg_view": view,
    }


class RegistryCatalog:
    """`apps.dags.catalog.DatasetCatalog` over the `Dataset` table."""

    def lookup(self, org: Org, dataset_ids: Iterable[str]) -> dict[str, DatasetEntry]:
        rows = Dataset.objects.filter(org=org, dataset_id__in=list(dataset_ids))
        return {
            row.dataset_id: DatasetEntry(
                dataset_id=row.dataset_id,
                producer_dag=row.producer_dag or None,
                producer_node=row.producer_node or None,
                backend=row.backend,
                range_type=row.range_type,
            )
            for row in rows
        }

    def known_ids(self, org: Org) -> list[str]:
        return list(Dataset.objects.filter(org=org).values_list("dataset_id", flat=True))

    def claim(self, org: Org, dag: str, claims: list[OutputClaim]) -> None:
        ids = [claim.dataset_id for claim in claims]
        # Insert-if-absent first, so there is a row to lock even for a brand-new dataset: a
        # concurrent deploy claiming the same id waits on the unique index, then sees our
        # producer once we commit, and fails below instead of silently sharing the dataset.
        Dataset.objects.bulk_create(
            [Dataset(org=org, dataset_id=i, **physical_names(org, i)) for i in ids],
            ignore_conflicts=True,
        )
        rows = {
            row.dataset_id: row
            for row in Dataset.objects.select_for_update(of=("self",)).filter(
                org=org, dataset_id__in=ids
            )
        }
        conflicts = [
            FieldError(
                claim.path,
                f"dataset {claim.dataset_id!r} is already produced by DAG "
                f"{rows[claim.dataset_id].producer_dag!r}, node "
                f"{rows[claim.dataset_id].producer_node!r}",
            )
            for claim in claims
            if rows[claim.dataset_id].producer_dag not in ("", dag)
        ]
        if conflicts:
            raise Conflict(
                "; ".join(c.message for c in conflicts), code="producer_conflict", errors=conflicts
            )
        now = timezone.now()
        for claim in claims:
            row = rows[claim.dataset_id]
            output = claim.output
            row.producer_dag, row.producer_node = dag, claim.node_id
            row.backend = output.get("backend", "parquet")
            row.range_type = output.get("range_type", "timestamp")
            row.update_strategy = output.get("update_strategy", "append")
            row.unique_key = output.get("unique_key", [])
            row.retention = output.get("retention", {})
            if output.get("schema"):
                row.schema, row.schema_declared = output["schema"], True
            row.updated_at = now
        Dataset.objects.bulk_update(
            rows.values(),
            [
                "producer_dag",
                "producer_node",
                "backend",
                "range_type",
                "update_strategy",
                "unique_key",
                "retention",
                "schema",
                "schema_declared",
                "updated_at",
            ],
        )
        Dataset.objects.filter(org=org, producer_dag=dag).exclude(dataset_id__in=ids).update(
            producer_dag="", producer_node="", updated_at=now
        )
