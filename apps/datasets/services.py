"""Commits into generations (D2, D7). Storage checks and loading come with the backends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from apps.datasets.models import Commit, Dataset, Generation
from apps.orgs.errors import NotFound
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

    @property
    def rows(self) -> int:
        return sum(int(f.get("rows") or 0) for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(int(f.get("bytes") or 0) for f in self.files)


def _locked_live_generation(dataset: Dataset) -> Generation:
    """The live generation's row, locked: seq numbers are handed out under this lock."""
    generation = (
        Generation.objects.select_for_update()
        .filter(dataset=dataset, number=dataset.live_generation)
        .first()
    )
    if generation is None:
        try:
            with transaction.atomic():
                Generation.objects.create(dataset=dataset, number=dataset.live_generation)
        except IntegrityError:
            pass  # created concurrently; the lock below waits for it
        generation = Generation.objects.select_for_update().get(
            dataset=dataset, number=dataset.live_generation
        )
    return generation


def commits_record(org: Org, requests: list[CommitRequest]) -> list[Commit]:
    """Record commits (one per request, in order), each with the next seq of its dataset's live
    generation. Must run inside the caller's transaction."""
    by_dataset: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        by_dataset.setdefault(request.dataset_id, []).append(index)
    datasets = {d.dataset_id: d for d in Dataset.objects.filter(org=org, dataset_id__in=by_dataset)}
    made: list[Commit | None] = [None] * len(requests)
    for dataset_id in sorted(by_dataset):  # a fixed lock order, so two batches never deadlock
        dataset = datasets.get(dataset_id)
        if dataset is None:
            raise NotFound(f"No dataset {dataset_id!r}.")
        generation = _locked_live_generation(dataset)
        rows = []
        for index in by_dataset[dataset_id]:
            request = requests[index]
            generation.last_seq += 1
            commit = Commit(
                dataset=dataset,
                generation=generation.number,
                seq=generation.last_seq,
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
        Commit.objects.bulk_create(rows)
        Generation.objects.filter(pk=generation.pk).update(last_seq=generation.last_seq)
    return [c for c in made if c is not None]
