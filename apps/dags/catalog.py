"""The seam between deploys and the dataset registry (which lives in the higher `datasets` app).

`dags` owns this interface; `datasets` registers its implementation at start-up, so a deploy
can check and claim its output datasets in its own transaction without importing upward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from apps.orgs.models import Org


@dataclass(frozen=True)
class DatasetEntry:
    dataset_id: str
    producer_dag: str | None
    producer_node: str | None
    backend: str
    range_type: str


@dataclass(frozen=True)
class OutputClaim:
    """A node's output, as a deploy declares it (normalized config of `output`)."""

    dag: str
    node_id: str
    dataset_id: str
    output: dict[str, Any]
    path: str = ""  # where the config declares it, e.g. nodes[2].output.dataset


class DatasetCatalog(Protocol):
    def lookup(self, org: Org, dataset_ids: Iterable[str]) -> dict[str, DatasetEntry]:
        """Registered datasets among `dataset_ids` (no locks)."""

    def known_ids(self, org: Org) -> list[str]:
        """Every dataset id of the org, for "did you mean" hints."""

    def claim(self, org: Org, dag: str, claims: list[OutputClaim]) -> None:
        """Make `dag` the producer of each claimed dataset and release its other datasets,
        under row locks, inside the caller's transaction. Raises `Conflict` with code
        `producer_conflict` when another DAG produces one of them."""


class _Registry:
    def __init__(self) -> None:
        self._catalog: DatasetCatalog | None = None

    def register(self, catalog: DatasetCatalog) -> None:
        self._catalog = catalog

    def get(self) -> DatasetCatalog:
        if self._catalog is None:
            raise RuntimeError("no dataset catalog registered (is apps.datasets installed?)")
        return self._catalog


catalog_registry = _Registry()
