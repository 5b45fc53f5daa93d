"""Commits into generations (D2, D7): seq numbers under the generation lock, schema rules,
file checks, and loading into the postgres backend in the same transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from django.db import IntegrityError, connection, transaction

from apps.datasets import pg
from apps.datasets.models import Commit, Dataset, Generation
from apps.datasets.storage import FileFacts, evolve_schema, inspect_file, is_under
from apps.orgs.bulk import insert_all
from apps.orgs.compiled import load_models
from apps.orgs.errors import FieldError, NotFound, ValidationFailed
from apps.orgs.models import Org


@dataclass(frozen=True)
class CommitRequest:
    dataset_id: str
    files: list[dict[str, Any]]
    range_start: str
    range_end: str
    producer_dag: str = ""
    producer_node: str = ""
    producer_task_id: uuid.UUID | None = None
    # The Arrow schemas of the files, checked against the dataset's schema under its lock.
    schemas: tuple[pa.Schema, ...] = ()

    @property
    def rows(self) -> int:
        return sum(int(f.get("rows") or 0) for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(int(f.get("bytes") or 0) for f in self.files)


def _reserve_seqs(dataset: Dataset, count: int) -> int:
    """Hand out `count` seq numbers of the live generation; returns the last one. One
    `UPDATE … RETURNING`, whose row lock (held to the end of the transaction) serializes
    the commits of a generation, and the postgres loads into it."""
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE dataset_generations SET last_seq = last_seq + %s "
                "WHERE dataset_id = %s AND number = %s RETURNING last_seq",
                [count, dataset.pk, dataset.live_generation],
            )
            row = cursor.fetchone()
        if row is not None:
            return int(row[0])
        try:
            with transaction.atomic():
                Generation.objects.create(dataset=dataset, number=dataset.live_generation)
        except IntegrityError:
            pass  # created concurrently; the update above now waits for it
    raise RuntimeError(f"generation {dataset.live_generation} of {dataset} cannot be created")


def datasets_named(org_id: int, dataset_ids: list[str]) -> list[Dataset]:
    """The org's datasets among `dataset_ids` (one statement, compiled once per connection:
    every task-fetch and task-complete asks)."""
    if not dataset_ids:
        return []
    return load_models(
        "datasets_named",
        lambda: Dataset.objects.filter(org_id=org_id).filter(dataset_id__any=dataset_ids),
        [org_id, dataset_ids],
    )


def commits_record(org: Org, requests: list[CommitRequest]) -> list[Commit]:
    """Record commits (one per request, in order), each with the next seq of its dataset's live
    generation. Must run inside the caller's transaction."""
    if not requests:
        return []
    by_dataset: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        by_dataset.setdefault(request.dataset_id, []).append(index)
    ids = sorted(by_dataset)
    datasets = {d.dataset_id: d for d in datasets_named(org.pk, ids)}
    made: list[Commit | None] = [None] * len(requests)
    for dataset_id in ids:  # a fixed lock order, so two batches never deadlock
        dataset = datasets.get(dataset_id)
        if dataset is None:
            raise NotFound(f"No dataset {dataset_id!r}.")
        indexes = by_dataset[dataset_id]
        _evolve(dataset, [requests[i] for i in indexes])
        generation = dataset.live_generation
        first_seq = _reserve_seqs(dataset, len(indexes)) - len(indexes) + 1
        rows = []
        for seq, index in enumerate(indexes, start=first_seq):
            request = requests[index]
            commit = Commit(
                dataset=dataset,
                generation=generation,
                seq=seq,
                range_start=request.range_start,
                range_end=request.range_end,
                files=request.files,
                rows=request.rows,
                bytes=request.bytes,
                producer_dag=request.producer_dag,
                producer_node=request.producer_node,
                producer_task_id=request.producer_task_id,
            )
            rows.append(commit)
            made[index] = commit
        insert_all(Commit, rows)
        if dataset.backend == "postgres":
            _load_postgres(dataset, generation, rows)
    return [c for c in made if c is not None]


def _load_postgres(dataset: Dataset, generation: int, commits: list[Commit]) -> None:
    """Load the new commits into the generation's table (generation row locked); a `replace`
    commit then deletes the rows of the commits it supersedes."""
    for commit in commits:
        pg.load_commit(dataset, generation, commit.seq, [f["path"] for f in commit.files])
        if dataset.update_strategy == "replace":
            earlier = Commit.objects.filter(
                dataset=dataset, generation=generation, seq__lt=commit.seq, rows__gt=0
            ).only("seq", "range_start", "range_end")
            pg.delete_commits(
                dataset,
                generation,
                [c.seq for c in earlier if covers(dataset.range_type, commit, c)],
            )


def covers(range_type: str, outer: Commit, inner: Commit) -> bool:
    """Whether `inner`'s range lies inside `outer`'s; a commit without a range covers all."""
    if not outer.range_start:
        return True
    if not inner.range_start:
        return False
    if range_type == "int":
        return int(outer.range_start) <= int(inner.range_start) and int(inner.range_end) <= int(
            outer.range_end
        )
    return outer.range_start <= inner.range_start and inner.range_end <= outer.range_end


def not_superseded(dataset: Dataset, commits: list[Commit]) -> list[Commit]:
    """`replace` (D10): a commit supersedes every earlier commit whose range lies in its own."""
    kept: list[Commit] = []
    for commit in reversed(commits):  # newest first
        if not any(covers(dataset.range_type, later, commit) for later in kept):
            kept.append(commit)
    return list(reversed(kept))


def _evolve(dataset: Dataset, requests: list[CommitRequest]) -> None:
    """Apply the schema rules of D2 for the files of `requests` (dataset row locked)."""
    schema = dict(dataset.schema)
    for request in requests:
        for index, file_schema in enumerate(request.schemas):
            schema = evolve_schema(
                schema, dataset.schema_declared, file_schema, f"files[{index}].schema"
            )
    if schema != dataset.schema:
        dataset.schema = schema
        Dataset.objects.filter(pk=dataset.pk).update(schema=schema)


def inspect_outputs(files: list[dict[str, Any]], prefix: str, where: str) -> list[FileFacts]:
    """Check files a worker names before they are committed: they lie under `prefix`, exist,
    and hold the rows reported. Reads parquet footers only; call it outside transactions."""
    facts: list[FileFacts] = []
    errors: list[FieldError] = []
    for index, item in enumerate(files):
        path = f"{where}[{index}]"
        if not is_under(item["path"], prefix):
            errors.append(FieldError(f"{path}.path", f"must lie under {prefix}"))
            continue
        try:
            fact = inspect_file(item["path"])
        except (FileNotFoundError, OSError):
            errors.append(FieldError(f"{path}.path", "no parquet file there"))
            continue
        except Exception:  # pyarrow raises ArrowInvalid and friends for a bad footer
            errors.append(FieldError(f"{path}.path", "not a readable parquet file"))
            continue
        reported = item.get("rows")
        if reported is not None and int(reported) != fact.rows:
            errors.append(
                FieldError(f"{path}.rows", f"reports {reported} rows; the file holds {fact.rows}")
            )
            continue
        facts.append(fact)
    if errors:
        raise ValidationFailed("; ".join(f"{e.path}: {e.message}" for e in errors), errors=errors)
    return facts
