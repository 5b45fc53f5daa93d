"""Event ingestion (D6): idempotent per (org, dataset, idempotency_key), one transaction per
batch with bulk inserts, fanned out in the same transaction, dispatched after commit."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.dags.models import DagNode, VersionState
from apps.datasets.models import Dataset
from apps.datasets.ranges import canonical_range, parse_timestamp
from apps.orgs.errors import FieldError, ValidationFailed
from apps.orgs.models import Org
from apps.tasks.fanout import fan_out
from apps.tasks.models import Event, Mode
from apps.tasks.triggers import dispatch_after_commit

MAX_EVENTS_PER_CALL = 1000
EVENT_FIELDS = {
    "dataset",
    "idempotency_key",
    "range_start",
    "range_end",
    "event_time",
    "mode",
    "payload",
}


@dataclass(frozen=True)
class Ingested:
    event_id: uuid.UUID
    created: bool


def source_datasets(org: Org, dataset_ids: set[str]) -> dict[str, Dataset]:
    """The datasets among `dataset_ids` that a source node of an active version produces."""
    sources = set(
        DagNode.objects.filter(
            version__dag__org=org,
            version__state=VersionState.ACTIVE,
            kind="source",
            output_dataset__in=dataset_ids,
        ).values_list("output_dataset", flat=True)
    )
    return {d.dataset_id: d for d in Dataset.objects.filter(org=org, dataset_id__in=sources)}


def _event(org: Org, item: Any, path: str, datasets: dict[str, Dataset], now: dt.datetime) -> Event:
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
    return Event(
        org=org,
        dataset_id=dataset.dataset_id,
        mode=mode,
        idempotency_key=key,
        range_start=start,
        range_end=end,
        event_time=event_time,
        payload=payload,
        created_at=now,
        fanned_out_at=now,
    )


def parse_events(org: Org, body: Any) -> list[Event]:
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


def events_ingest(org: Org, body: Any) -> list[Ingested]:
    events = parse_events(org, body)
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
    with transaction.atomic():
        Event.objects.bulk_create(fresh, ignore_conflicts=True)
        stored = _stored_ids(org, list(keyed))
        created = [
            e
            for e in fresh
            if not e.idempotency_key or stored.get((e.dataset_id, e.idempotency_key)) == e.pk
        ]
        fan_out(created, mark=False)
        dispatch_after_commit()
    created_ids = {e.pk for e in created}
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
