"""Fan-out (D6): each event becomes exactly one task per consuming node, in every active DAG
version of the org that consumes the event's dataset."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.dags.models import LIVE_VERSION_STATES, Dag, DagNode, DagVersion, VersionState
from apps.datasets.models import Commit, commit_version
from apps.orgs.bulk import Statement, execute_in_order, joins_statements
from apps.orgs.compiled import load_models
from apps.orgs.ids import time_ordered_uuid
from apps.tasks import lifecycle
from apps.tasks.lifecycle import (
    LaneDelta,
    LaneKey,
    bump_lane,
    counted_atomic,
    earliest,
)
from apps.tasks.models import Event, EventKind, Mode, NodeLane, Task, TaskState
from apps.tasks.runtimes import runtime_of, runtimes

# Nodes that never run as tasks: sources have no inputs; virtual sql is inlined by queries.
_DATA_PRODUCERS = {"source", "operator", "sql"}


@dataclass(frozen=True)
class Consumer:
    version_id: int
    node_id: str
    node: dict[str, Any]
    node_hash: str


_CONSUMER_INDEX: dict[tuple[int, str], dict[str, tuple[Consumer, ...]]] = {}
_CONSUMER_INDEX_SIZE = 4096


def _consumers_by_dataset(version: DagVersion) -> dict[str, tuple[Consumer, ...]]:
    """dataset id -> consuming nodes of one version, cached: versions are immutable.

    Keyed by id *and* content hash: an id can come back (SQLite reuses rowids after a
    rollback); a content hash cannot point at other nodes."""
    key = (version.pk, version.config_hash)
    index = _CONSUMER_INDEX.get(key)
    if index is None:
        if len(_CONSUMER_INDEX) >= _CONSUMER_INDEX_SIZE:
            _CONSUMER_INDEX.clear()
        hashes = dict(DagNode.objects.filter(version=version).values_list("node_id", "node_hash"))
        index = _CONSUMER_INDEX[key] = _consumer_index(version.pk, version.config, hashes)
    return index


def _consumer_index(
    version_id: int, config: dict[str, Any], hashes: dict[str, str]
) -> dict[str, tuple[Consumer, ...]]:
    nodes = {node["id"]: node for node in config["nodes"]}
    index: dict[str, list[Consumer]] = {}
    for node in nodes.values():
        if node["kind"] == "sql" and not node.get("materialize"):
            continue
        for ref in node.get("inputs", []):
            if "." in ref:
                dataset = ref
            else:
                upstream = nodes[ref]
                if upstream["kind"] not in _DATA_PRODUCERS or "output" not in upstream:
                    continue  # manifests of control nodes are routed by those nodes
                dataset = upstream["output"]["dataset"]
            index.setdefault(dataset, []).append(
                Consumer(version_id, node["id"], node, hashes.get(node["id"], ""))
            )
    return {dataset: tuple(consumers) for dataset, consumers in index.items()}


class FanOutEvent(Protocol):
    """What fan-out reads of an event: an `Event`, or a `WaitingEvent` read without a model."""

    @property
    def pk(self) -> uuid.UUID: ...
    @property
    def org_id(self) -> int: ...
    @property
    def dataset_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def range_start(self) -> str: ...
    @property
    def range_end(self) -> str: ...
    @property
    def version(self) -> str | None: ...


class WaitingEvent(NamedTuple):
    """An event waiting for fan-out, as the dispatcher reads it: plain values (building the
    event and commit models was a third of the dispatcher's time)."""

    pk: uuid.UUID
    org_id: int
    dataset_id: str
    kind: str
    mode: str
    range_start: str
    range_end: str
    version: str | None  # its commit's, "<generation>.<seq>"


def memo_key(consumer: Consumer, event: FanOutEvent) -> str:
    """D9: the same node (by hash, so the same code and upstream) on the same input commit
    computes the same thing. Invalidations and events without a commit never memoize."""
    if event.kind != EventKind.DATA or not consumer.node_hash:
        return ""
    version = event.version
    if version is None:
        return ""
    parts = [
        consumer.node_hash,
        event.kind,
        event.range_start,
        event.range_end,
        f"{event.dataset_id}@{version}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


# Written out on PostgreSQL: building the queryset cost Django four times what running it did.
_MEMOIZED = (
    f"SELECT memo_key FROM {Task._meta.db_table} WHERE memo_key = ANY(%s) "  # noqa: S608
    f"AND state = '{TaskState.SUCCEEDED}' AND memo_key <> ''"
)


def memoized(keys: Iterable[str]) -> set[str]:
    """The keys among `keys` that a succeeded task computed already, read on the memo index.
    `memo_key <> ''` is spelled out: it is the index's predicate, which PostgreSQL cannot
    prove from a list of more than 100 keys (it scanned the whole table instead)."""
    wanted = sorted(keys)
    if connection.vendor != "postgresql":
        done = Task.objects.filter(memo_key__any=wanted, state=TaskState.SUCCEEDED)
        return set(done.exclude(memo_key="").values_list("memo_key", flat=True))
    return {key for (key,) in execute_in_order([(_MEMOIZED, [wanted])])}


def _insert_finding_memoized(tasks: list[NewTask]) -> set[str]:
    """Insert new tasks; the memo keys among theirs that a succeeded task computed already
    (on PostgreSQL read in the insert's round trip, when it is an `INSERT`)."""
    keys = {t.memo_key for t in tasks if t.memo_key}
    if keys and connection.vendor == "postgresql":
        return {key for (key,) in insert_tasks(tasks, then=(_MEMOIZED, [sorted(keys)]))}
    insert_tasks(tasks)
    return memoized(keys) if keys else set()


def _skip_memoized(tasks: list[NewTask], done: set[str]) -> None:
    """New tasks whose memo key already succeeded end as skipped_memoized, without running."""
    if not done:
        return
    repeats = [t.id for t in tasks if t.memo_key in done]
    if repeats:  # rare: load the rows the move needs
        lifecycle.task_skip_memoized_many(list(Task.objects.filter(pk__in=repeats)))


def versions_stamp(versions: Iterable[DagVersion]) -> str:
    """What fan-out reads of an org's live versions that can change: which they are, and
    their states (`_TAKE_WAITING_EVENTS` computes the same in SQL)."""
    return ",".join(f"{v.pk}:{v.state}" for v in sorted(versions, key=lambda v: v.pk))


# An org's live versions as last read, under their stamp. A version's id, content hash and
# DAG never change; its state is in the stamp; its DAG's pauses are read again where they
# count (`ensure_lanes`).
_LIVE_VERSIONS: dict[int, tuple[str, list[DagVersion]]] = {}
_LIVE_VERSIONS_SIZE = 4096


def _live_versions(org_ids: list[int], stamps: dict[int, str]) -> list[DagVersion]:
    """The live versions of `org_ids`, by id. An org whose stamp was read with its events
    and matches the one kept costs no query (a dispatcher step's statement fewer)."""
    versions: list[DagVersion] = []
    missing = []
    for org_id in org_ids:
        kept = _LIVE_VERSIONS.get(org_id)
        if kept is not None and org_id in stamps and kept[0] == stamps[org_id]:
            versions += kept[1]
        else:
            missing.append(org_id)
    if missing:
        states = sorted(LIVE_VERSION_STATES)
        # The config is read only when a version's consumer index is not cached yet.
        loaded = load_models(
            ("fan_out_versions", len(missing)),  # one placeholder per org
            lambda: (
                DagVersion.objects.filter(dag__org_id__in=missing, state__any=states)
                .select_related("dag")
                .defer("config", "diff")
                .order_by("pk")
            ),
            [*missing, states],
        )
        versions += loaded
        if len(_LIVE_VERSIONS) >= _LIVE_VERSIONS_SIZE:
            _LIVE_VERSIONS.clear()
        for org_id in missing:
            own = [v for v in loaded if v.dag.org_id == org_id]
            # Kept only as the stamp read with the events describes them: a version that
            # changed in between is read again at the next step.
            if org_id in stamps and versions_stamp(own) == stamps[org_id]:
                _LIVE_VERSIONS[org_id] = (stamps[org_id], own)
    return sorted(versions, key=lambda v: v.pk)


def _lane(event: FanOutEvent, version_state: str) -> str:
    if event.mode == Mode.BACKFILL or version_state == VersionState.BUILDING:
        return Mode.BACKFILL
    return Mode.LIVE


# Counter rows known to exist, by version (id and creation time: SQLite may hand a deleted
# version's id to a new one), so a fan-out into them needs no query. Rows are never deleted
# while their version can receive events: they go with the version.
_KNOWN_LANES: dict[tuple[int, dt.datetime], set[tuple[str, str]]] = {}
_KNOWN_LANES_SIZE = 4096


def _remember_lanes(key: tuple[int, dt.datetime], lanes: set[tuple[str, str]]) -> None:
    if key not in _KNOWN_LANES and len(_KNOWN_LANES) >= _KNOWN_LANES_SIZE:
        _KNOWN_LANES.clear()
    _KNOWN_LANES.setdefault(key, set()).update(lanes)


def ensure_lanes(version: DagVersion, pairs: Iterable[tuple[str, str]]) -> None:
    """Create missing counter rows for (node, lane) pairs, with cap, runtime and pause state.

    A plain SELECT first: an `INSERT … ON CONFLICT` on a row that another open transaction
    has updated would wait for that transaction, on every fan-out."""
    known = _KNOWN_LANES.get((version.pk, version.created_at), set())
    wanted = set(pairs) - known
    if not wanted:
        return
    existing = set(
        NodeLane.objects.filter(
            dag_version=version, node_id__in={n for n, _ in wanted}
        ).values_list("node_id", "lane")
    )
    # Only once committed: rows seen by a transaction that rolls back may not exist.
    key = (version.pk, version.created_at)
    transaction.on_commit(lambda: _remember_lanes(key, existing))
    missing = wanted - existing
    if not missing:
        return
    dag = Dag.objects.get(pk=version.dag_id)  # its pauses now: a kept version's may be old
    nodes = version.cached_node_map()
    rows = []
    for node_id, lane in sorted(missing):
        node = nodes[node_id]
        runtime = runtime_of(node)
        rows.append(
            NodeLane(
                dag_version=version,
                node_id=node_id,
                lane=lane,
                priority=0 if lane == Mode.LIVE else 1,
                runtime=runtime,
                cap=int(node.get("concurrency", {}).get(lane, 32)),
                paused=dag.is_paused(node_id, lane),
                blocked="" if runtime in runtimes.names() else f"no runtime {runtime!r} installed",
            )
        )
    NodeLane.objects.bulk_create(rows, ignore_conflicts=True)


class NewTask(NamedTuple):
    """A task as fan-out inserts it, column by column; every other column starts NULL (a
    test checks this against the model). Plain rows, not model instances: building a `Task`
    (every field's default) was two fifths of a fan-out's time."""

    id: uuid.UUID
    org_id: int
    dag_version_id: int
    node_id: str
    event_id: uuid.UUID
    state: str
    lane: str
    mode: str
    attempt: int
    attempts_base: int
    max_attempts: int
    dispatch_count: int
    created_at: dt.datetime
    memo_key: str


_COPY_TASKS = f"COPY {Task._meta.db_table} ({', '.join(NewTask._fields)}) FROM STDIN"
_INSERT_TASKS = f"INSERT INTO {Task._meta.db_table} ({', '.join(NewTask._fields)}) VALUES "  # noqa: S608
_TASK_VALUES = f"({', '.join(['%s'] * len(NewTask._fields))})"
# Up to this many tasks go in one `INSERT`, sent with the statement after it in one round
# trip; more go by `COPY` (two round trips, but its rows are formatted in C).
INSERT_JOINED_AT_MOST = 20


def insert_tasks(tasks: list[NewTask], then: Statement | None = None) -> list[tuple]:
    """Insert new tasks, then run `then`: its rows. On PostgreSQL a few tasks go in one
    `INSERT` in `then`'s round trip; more by `COPY`, whose rows psycopg formats in C (column
    arrays spent a third of an insert dumping each element in Python; `bulk_create` half of a
    fan-out). A conflict is a bug here (see `fan_out`), so it is not skipped."""
    after = [then] if then else []
    if not tasks:
        return execute_in_order(after)
    if connection.vendor != "postgresql":
        Task.objects.bulk_create([Task(**task._asdict()) for task in tasks])
        return execute_in_order(after)
    if len(tasks) <= INSERT_JOINED_AT_MOST and joins_statements():
        rows = [_TASK_VALUES] * len(tasks)
        insert = (_INSERT_TASKS + ", ".join(rows), [value for task in tasks for value in task])
        return execute_in_order([insert, *after])
    # Errors as Django's (a duplicate is an IntegrityError), as from any other statement.
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.copy(_COPY_TASKS) as copy,
    ):
        for task in tasks:
            copy.write_row(task)
    return execute_in_order(after)


def fan_out(events: Sequence[FanOutEvent], stamps: dict[int, str] | None = None) -> list[NewTask]:
    """Create the tasks of `events`, in the caller's transaction, which marks the events
    fanned out (ingestion inserts them so, `fan_out_waiting` takes them so). `stamps`: each
    org's `versions_stamp` as read with the events, when it was."""
    if not events:
        return []
    versions = _live_versions(sorted({e.org_id for e in events}), stamps or {})
    tasks: list[NewTask] = []
    lanes: dict[int, set[tuple[str, str]]] = {}
    for event in events:
        if event.kind == EventKind.MANIFEST:
            continue  # routed by the aggregator and splitter nodes that emit them
        for version in versions:
            if version.dag.org_id != event.org_id:
                continue
            for consumer in _consumers_by_dataset(version).get(event.dataset_id, ()):
                lane = _lane(event, version.state)
                retry = consumer.node.get("retry", {})
                tasks.append(
                    NewTask(
                        id=time_ordered_uuid(),
                        org_id=event.org_id,
                        dag_version_id=version.pk,
                        node_id=consumer.node_id,
                        event_id=event.pk,
                        state=TaskState.PENDING,
                        lane=lane,
                        mode=event.mode,
                        attempt=0,
                        attempts_base=0,
                        max_attempts=int(retry.get("max_attempts", 3)),
                        dispatch_count=0,
                        created_at=timezone.now(),  # distinct, in event order: FIFO claims
                        memo_key=memo_key(consumer, event),
                    )
                )
                lanes.setdefault(version.pk, set()).add((consumer.node_id, lane))
    by_id = {v.pk: v for v in versions}
    for version_id, pairs in lanes.items():
        ensure_lanes(by_id[version_id], pairs)
    # No ignore_conflicts: callers fan out only events not yet fanned out, under a lock, so a
    # duplicate here is a bug, and the unique constraint makes it fail loudly instead.
    done = _insert_finding_memoized(tasks)
    # Each lane's count, and its oldest new task: a fan-out that commits after a claim went
    # past its tasks' ages lowers the lane's claim floor to them.
    entering: dict[LaneKey, LaneDelta] = {}
    for task in tasks:
        key = (task.dag_version_id, task.node_id, task.lane)
        if (delta := entering.get(key)) is None:
            entering[key] = LaneDelta(pending=1, oldest_entering=task.created_at)
        else:
            delta.pending += 1
            delta.oldest_entering = earliest(delta.oldest_entering, task.created_at)
    for key, delta in entering.items():
        bump_lane(*key, delta)
    _skip_memoized(tasks, done)
    return tasks


def deferred() -> bool:
    """With the notify trigger, requests leave fan-out to the dispatcher loops their commit
    wakes: a loop fans out every waiting event in one transaction, then claims."""
    return settings.SLUICE_DISPATCH_TRIGGER == "notify"


def fanned_out_stamp(now: dt.datetime) -> dt.datetime | None:
    """`fanned_out_at` of an event about to be inserted and passed to `fan_out_inserted`."""
    return None if deferred() else now


def fan_out_inserted(events: list[Event]) -> None:
    """Fan out events just inserted with `fanned_out_stamp`, unless that is deferred."""
    if not deferred():
        fan_out(events)


# What fan-out and memo keys read of a waiting event (its payload can be large), oldest first.
_WAITING_EVENTS = (
    "SELECT e.id, e.org_id, e.dataset_id, e.kind, e.mode, e.range_start, e.range_end, "  # noqa: S608
    f"c.generation, c.seq FROM {Event._meta.db_table} e "
    f"LEFT JOIN {Commit._meta.db_table} c ON c.id = e.commit_id "
    "WHERE e.fanned_out_at IS NULL ORDER BY e.created_at LIMIT %s"
)
# The same on PostgreSQL, the events locked and marked fanned out in the one statement.
_TAKE_WAITING_EVENTS = (
    f"WITH picked AS (SELECT id FROM {Event._meta.db_table} WHERE fanned_out_at IS NULL "  # noqa: S608
    "ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED), "
    f"marked AS (UPDATE {Event._meta.db_table} e SET fanned_out_at = %s FROM picked "
    "WHERE e.id = picked.id RETURNING e.id, e.org_id, e.dataset_id, e.kind, e.mode, "
    "e.range_start, e.range_end, e.commit_id, e.created_at), "
    # Each org's `versions_stamp`, read in the statement that takes its events; once per org
    # (inlined into the join, the stamp was computed again for each of a batch's events).
    "stamps AS MATERIALIZED (SELECT o.org_id, (SELECT "
    "COALESCE(string_agg(v.id || ':' || v.state, ',' ORDER BY v.id), '') "
    f"FROM {DagVersion._meta.db_table} v "
    f"JOIN {Dag._meta.db_table} d ON d.id = v.dag_id WHERE d.org_id = o.org_id "
    f"AND v.state IN ({', '.join(repr(str(s)) for s in sorted(LIVE_VERSION_STATES))})) "
    "AS stamp FROM (SELECT DISTINCT org_id FROM marked) o) "
    "SELECT m.id, m.org_id, m.dataset_id, m.kind, m.mode, m.range_start, m.range_end, "
    f"c.generation, c.seq, s.stamp FROM marked m LEFT JOIN {Commit._meta.db_table} c "
    "ON c.id = m.commit_id JOIN stamps s ON s.org_id = m.org_id ORDER BY m.created_at"
)

_NO_BITMAP_SCAN = "SET LOCAL enable_bitmapscan = off"


def _take_waiting_events(limit: int) -> tuple[list[WaitingEvent], dict[int, str]]:
    """Lock up to `limit` events waiting for fan-out (SKIP LOCKED: other dispatchers take
    others) and mark them fanned out, in the caller's transaction, which inserts their tasks
    (D6); on PostgreSQL in one statement, which also reads their orgs' `versions_stamp`.

    Every fanned-out event leaves a dead entry in `event_unfanned_idx` until a vacuum, in
    front of the events still waiting. The bitmap scan PostgreSQL picks when its statistics
    say few events wait visits each of them in the heap, at every fan-out; an index scan marks
    the dead ones as it passes, and later scans skip them in the index (ADR 0017)."""
    now = timezone.now()
    if connection.vendor == "postgresql":  # one round trip: the setting, then the statement
        rows = execute_in_order([(_NO_BITMAP_SCAN, []), (_TAKE_WAITING_EVENTS, [limit, now])])
    else:  # SQLite: one writer at a time, nothing to skip
        with connection.cursor() as cursor:
            cursor.execute(_WAITING_EVENTS, [limit])
            rows = cursor.fetchall()
        Event.objects.filter(pk__in=[row[0] for row in rows]).update(fanned_out_at=now)
    event_id = Event._meta.pk.to_python  # SQLite returns the ids as text
    waiting, stamps = [], {}
    for id_, org_id, dataset_id, kind, mode, start, end, generation, seq, *stamp in rows:
        version = None if generation is None else commit_version(generation, seq)
        waiting.append(
            WaitingEvent(event_id(id_), org_id, dataset_id, kind, mode, start, end, version)
        )
        if stamp:
            stamps[org_id] = stamp[0]
    return waiting, stamps


def fan_out_pending_events(limit: int = 1000) -> int:
    """Fan out events stored without it (deferred, or left by a crash). Returns how many."""
    with counted_atomic():
        return fan_out_waiting(limit)


def fan_out_waiting(limit: int = 1000) -> int:
    """`fan_out_pending_events` in the caller's `counted_atomic`."""
    events, stamps = _take_waiting_events(limit)
    fan_out(events, stamps)
    return len(events)
