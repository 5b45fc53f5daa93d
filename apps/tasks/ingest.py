"""Event ingestion (D6): idempotent per (org, dataset, idempotency_key), one transaction per
batch with bulk inserts, fanned out in the same transaction, dispatched after commit."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from django.utils import timezone

from apps.datasets.models import Dataset
from apps.datasets.ranges import canonical_range, parse_timestamp
from apps.datasets.services import CommitRequest, commits_record, inspect_outputs
from apps.datasets.storage import (
    FileFacts,
    cast_rows,
    conform_table,
    filesystem_for,
    landing_prefix,
    write_table,
)
from apps.orgs.bulk import insert_new
from apps.orgs.errors import FieldError, NotFound, ValidationFailed
from apps.orgs.models import Org
from apps.tasks.fanout import fan_out, fan_out_inserted, fanned_out_stamp
from apps.tasks.lifecycle import counted_atomic
from apps.tasks.models import Event, EventKind, Mode
from apps.tasks.triggers import dispatch_after_commit

MAX_EVENTS_PER_CALL = 1000
MAX_ROWS_PER_EVENT = 10_000
EVENT_FIELDS = {
    "dataset",
    "idempotency_key",
    "range_start",
    "range_end",
    "event_time",
    "mode",
    "payload",
    "rows",
    "files",
}


@dataclass(frozen=True)
class Ingested:
    event_id: uuid.UUID
    created: bool


# Written out: every POST runs it, and building it with the ORM (a correlated EXISTS across
# four tables) took longer than running it. True when a source node of an active version
# produces the dataset aliased `d` (also part of the lean POST's statement).
SOURCE_NODE_EXISTS = (
    "EXISTS (SELECT 1 FROM dag_nodes n JOIN dag_versions v ON v.id = n.version_id "
    "JOIN dags g ON g.id = v.dag_id WHERE g.org_id = d.org_id AND v.state = 'active' "
    "AND n.kind = 'source' AND n.output_dataset = d.dataset_id)"
)
_SOURCE_DATASETS = (
    "SELECT d.* FROM datasets d WHERE d.org_id = %s AND d.dataset_id IN ({ids}) AND {exists}"
)


def source_datasets(org: Org, dataset_ids: set[str]) -> dict[str, Dataset]:
    """The datasets among `dataset_ids` that a source node of an active version produces."""
    if not dataset_ids:
        return {}
    ids = sorted(dataset_ids)
    sql = _SOURCE_DATASETS.format(ids=", ".join(["%s"] * len(ids)), exists=SOURCE_NODE_EXISTS)
    rows = Dataset.objects.raw(sql, [org.pk, *ids])
    return {d.dataset_id: d for d in rows}


@dataclass
class ParsedEvent:
    event: Event
    dataset: Dataset
    rows: pa.Table | None = None
    # The files the event's commit will name: its rows once written, or the client's own.
    landing: list[FileFacts] = field(default_factory=list)
    written_here: bool = False


def _rows_table(dataset: Dataset, rows: Any, where: str) -> pa.Table:
    """The rows cast to the dataset's schema (or, for a first commit without a declared
    schema, the schema inferred from them). A table body (Arrow or parquet) comes as a table."""
    if isinstance(rows, pa.Table):
        return conform_table(rows, dataset.schema, where)
    if not isinstance(rows, list):
        raise ValidationFailed.field(where, "must be a list of objects")
    if len(rows) > MAX_ROWS_PER_EVENT:
        raise ValidationFailed.field(where, f"at most {MAX_ROWS_PER_EVENT} rows per event")
    if dataset.schema:
        return cast_rows(rows, dataset.schema, where)
    if not all(isinstance(row, dict) for row in rows):
        raise ValidationFailed.field(where, "each row must be an object")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValidationFailed.field(where, f"cannot infer a schema from the rows: {exc}") from None


def _event(
    org: Org, item: Any, path: str, datasets: dict[str, Dataset], now: dt.datetime
) -> ParsedEvent:
    if not isinstance(item, dict):
        raise ValidationFailed.field(path or "body", "an event must be an object")
    prefix = f"{path}." if path else ""
    unknown = sorted(set(item) - EVENT_FIELDS)
    if unknown:
        errors = [FieldError(f"{prefix}{k}", f"unknown field {k!r}") for k in unknown]
        raise ValidationFailed(errors[0].message, errors=errors)
    name = item.get("dataset")
    if not isinstance(name, str) or not name:
        raise ValidationFailed.field(f"{prefix}dataset", "required: the source dataset id")
    dataset = datasets.get(name.lower())
    if dataset is None:
        raise ValidationFailed.field(
            f"{prefix}dataset",
            f"{name!r} is not a source dataset of this org (events may only be posted to "
            "datasets that a source node produces)",
        )
    key = item.get("idempotency_key", "")
    if not isinstance(key, str) or len(key) > 200:
        raise ValidationFailed.field(f"{prefix}idempotency_key", "must be a string of ≤ 200")
    mode = item.get("mode", Mode.LIVE)
    if mode not in Mode.values:
        raise ValidationFailed.field(f"{prefix}mode", "must be 'live' or 'backfill'")
    payload = item.get("payload", {})
    if not isinstance(payload, dict):
        raise ValidationFailed.field(f"{prefix}payload", "must be an object")
    start, end = canonical_range(
        dataset.range_type, item.get("range_start"), item.get("range_end"), prefix
    )
    event_time = (
        parse_timestamp(item["event_time"], f"{prefix}event_time") if "event_time" in item else now
    )
    if "rows" in item and "files" in item:
        raise ValidationFailed.field(f"{prefix}files", "give rows or files, not both")
    rows = _rows_table(dataset, item["rows"], f"{prefix}rows") if "rows" in item else None
    landed = _landed_files(dataset, item["files"], f"{prefix}files") if "files" in item else []
    event = Event(
        org=org,
        dataset_id=dataset.dataset_id,
        mode=mode,
        idempotency_key=key,
        range_start=start,
        range_end=end,
        event_time=event_time,
        payload=payload,
        created_at=now,
        fanned_out_at=fanned_out_stamp(now),
    )
    return ParsedEvent(event, dataset, rows, landed)


def _landed_files(dataset: Dataset, files: Any, where: str) -> list[FileFacts]:
    """Parquet files a client wrote under the dataset's landing prefix itself: they must be
    there, readable, and hold the rows reported (footers only; before any transaction)."""
    if not isinstance(files, list) or not files:
        raise ValidationFailed.field(where, "must be a non-empty list of {path, rows}")
    for index, item in enumerate(files):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise ValidationFailed.field(f"{where}[{index}]", "must be {path, rows}")
        rows = item.get("rows")
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 0):
            raise ValidationFailed.field(f"{where}[{index}].rows", "must be an integer ≥ 0")
    return inspect_outputs(files, landing_prefix(dataset), where)


def parse_events(org: Org, body: Any) -> list[ParsedEvent]:
    """Validate a body (one event or `{"events": [...]}`); nothing is stored on any error."""
    batch = isinstance(body, dict) and "events" in body
    items = body["events"] if batch else [body]
    if batch and (not isinstance(items, list) or not items):
        raise ValidationFailed.field("events", "must be a non-empty list")
    if len(items) > MAX_EVENTS_PER_CALL:
        raise ValidationFailed.field("events", f"at most {MAX_EVENTS_PER_CALL} events per call")
    if batch and set(body) - {"events"}:
        raise ValidationFailed.field(sorted(set(body) - {"events"})[0], "unknown field")
    names = {
        str(i.get("dataset")).lower() for i in items if isinstance(i, dict) and i.get("dataset")
    }
    datasets = source_datasets(org, names)
    now = timezone.now()
    events, errors = [], []
    for index, item in enumerate(items):
        try:
            events.append(_event(org, item, f"events[{index}]" if batch else "", datasets, now))
        except ValidationFailed as exc:
            errors.extend(exc.errors)
    if errors:
        detail = "; ".join(f"{e.path}: {e.message}" for e in errors[:10])
        raise ValidationFailed(detail, errors=errors)
    return events


def _write_landing(parsed: list[ParsedEvent]) -> None:
    """Write source rows as parquet under the live generation's landing prefix, before any
    transaction: a file nobody commits is invisible, and collected as an orphan."""
    for item in parsed:
        if item.rows is not None:
            path = f"{landing_prefix(item.dataset)}{item.event.pk}.parquet"
            item.landing, item.written_here = [write_table(item.rows, path)], True


def _commit_landed(org: Org, created: list[Event], landed: dict[uuid.UUID, ParsedEvent]) -> None:
    """Record the commits of the created events that carry rows, and point them at it."""
    with_rows = [e for e in created if e.pk in landed]
    requests = []
    for event in with_rows:
        facts = landed[event.pk].landing
        requests.append(
            CommitRequest(
                dataset_id=event.dataset_id,
                files=[{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in facts],
                range_start=event.range_start,
                range_end=event.range_end,
                producer_dag=landed[event.pk].dataset.producer_dag,
                producer_node=landed[event.pk].dataset.producer_node,
                schemas=tuple(f.schema for f in facts),
            )
        )
    for event, commit in zip(with_rows, commits_record(org, requests), strict=True):
        event.commit = commit
    Event.objects.bulk_update(with_rows, ["commit"])


def _remove_orphans(parsed: list[ParsedEvent], created_ids: set[uuid.UUID]) -> None:
    """Delete the files written for events that turned out to be repeats (never a client's)."""
    for item in parsed:
        if item.written_here and item.event.pk not in created_ids:
            for facts in item.landing:
                filesystem, path = filesystem_for(facts.path)
                filesystem.delete_file(path)


def events_ingest(org: Org, body: Any) -> list[Ingested]:
    parsed = parse_events(org, body)
    _write_landing(parsed)
    landed = {item.event.pk: item for item in parsed if item.landing}
    events = [item.event for item in parsed]
    keyed: dict[tuple[str, str], Event] = {}
    fresh: list[Event] = []
    answers: list[tuple[Event, tuple[str, str] | None]] = []
    for event in events:
        key = (event.dataset_id, event.idempotency_key) if event.idempotency_key else None
        if key is not None and key in keyed:
            answers.append((keyed[key], key))  # a repeat inside the batch
            continue
        if key is not None:
            keyed[key] = event
        fresh.append(event)
        answers.append((event, key))
    with counted_atomic():
        inserted = insert_new(Event, fresh)
        created = [e for e in fresh if e.pk in inserted]
        # Only the repeats of earlier calls need a lookup of the event they repeat.
        stored = {key: event.pk for key, event in keyed.items() if event.pk in inserted}
        stored.update(_stored_ids(org, [key for key in keyed if key not in stored]))
        _commit_landed(org, created, landed)
        fan_out_inserted(created)
        dispatch_after_commit()
    created_ids = {e.pk for e in created}
    _remove_orphans(parsed, created_ids)
    results = []
    seen: set[uuid.UUID] = set()
    for event, key in answers:
        event_id = stored.get(key, event.pk) if key else event.pk
        results.append(Ingested(event_id, event_id in created_ids and event_id not in seen))
        seen.add(event_id)
    return results


def _stored_ids(org: Org, keys: list[tuple[str, str]]) -> dict[tuple[str, str], uuid.UUID]:
    if not keys:
        return {}
    by_dataset: dict[str, list[str]] = {}
    for dataset_id, key in keys:
        by_dataset.setdefault(dataset_id, []).append(key)
    stored: dict[tuple[str, str], uuid.UUID] = {}
    for dataset_id, idempotency_keys in by_dataset.items():
        rows = Event.objects.filter(
            org=org, dataset_id=dataset_id, idempotency_key__in=idempotency_keys
        ).values_list("idempotency_key", "id")
        stored.update({(dataset_id, key): event_id for key, event_id in rows})
    return stored


def dataset_invalidate(org: Org, dataset_id: str, body: Any) -> Event:
    """`POST /v1/datasets/{id}/invalidate`: consumers recompute the range (D10). Any dataset of
    the org may be invalidated; the event starts a cascade at depth 0."""
    dataset = Dataset.objects.filter(org=org, dataset_id=dataset_id.lower()).first()
    if dataset is None:
        raise NotFound(f"No dataset {dataset_id!r}.")
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be an object {range_start, range_end}.")
    unknown = sorted(set(body) - {"range_start", "range_end", "payload"})
    if unknown:
        raise ValidationFailed.field(unknown[0], "unknown field")
    if body.get("range_start") is None or body.get("range_end") is None:
        missing = "range_start" if body.get("range_start") is None else "range_end"
        raise ValidationFailed.field(missing, "required: the range to recompute")
    start, end = canonical_range(dataset.range_type, body["range_start"], body["range_end"])
    with counted_atomic():
        event = Event.objects.create(
            org=org,
            dataset_id=dataset.dataset_id,
            kind=EventKind.INVALIDATE,
            range_start=start,
            range_end=end,
            payload=body.get("payload") or {},
            fanned_out_at=timezone.now(),
        )
        fan_out([event])
        dispatch_after_commit()
    return event
