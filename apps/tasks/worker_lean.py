"""The single task-fetch and task-complete over lean paths (ADR 0013): the issue's target of
500 tasks/s one task per call leaves two cores about 4 ms of CPU per task, and the full paths
spent more than that on one fetch and one completion (transactions of six and thirteen round
trips, each row a model instance).

A plain fetch — a queued task of a node that names no secrets, its dispatch's token — is two
statements in autocommit: one reads the task and what its lease body tells, the other moves
it to running only if it is still queued by the same dispatch, inserts the attempt and reads
the output dataset. A plain completion — a lease still live, no output files (an operator
that returned nothing), no range, a node whose output is a parquet dataset written by
appending — is two statements too: one reads which node the lease runs, the other locks the
attempt and its task, re-checks the lease, and then records the commit with the generation's
next seq, its data event, the lineage row, the task's move to succeeded, the attempt's end
and the lane counter, and sends the dispatch NOTIFY. Each does all of that or nothing;
anything else answers None and takes the full path, so every error, every repeat and every
other call is still answered in one place (`worker_api`).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from typing import Any

from django.utils import timezone
from psycopg.types.json import Jsonb

from apps.dags.models import Dag, DagVersion, node_map_of
from apps.datasets.models import Commit, Dataset
from apps.tasks.lean import lean_possible, run_statement
from apps.tasks.models import Event, Task
from apps.tasks.runtimes import dispatch_token
from apps.tasks.triggers import CHANNEL
from apps.tasks.worker_api import lease_body, lease_ttl_s, log_tail

FETCH_FIELDS = frozenset({"task_id", "dispatch_token", "worker_id"})

# Everything a lease body tells of the task, its version, its input event and that event's
# commit and dataset; read without a lock: the move below is conditional on what was read.
# JSON columns come as text, decoded here (whatever loaders the connection has).
_TASK_TO_LEASE = """
SELECT t.state, t.dispatch_count, t.org_id, t.dag_version_id, t.node_id, t.max_attempts,
    t.mode, t.lane, v.config_hash, v.number, g.name,
    e.id, e.kind, e.dataset_id, e.range_start, e.range_end, e.event_time, e.mode,
    e.payload::text, c.generation, c.seq, c.files::text, d.backend, d.schema::text
FROM tasks t
JOIN dag_versions v ON v.id = t.dag_version_id
JOIN dags g ON g.id = v.dag_id
JOIN events e ON e.id = t.event_id
LEFT JOIN dataset_commits c ON c.id = e.commit_id
LEFT JOIN datasets d ON d.id = c.dataset_id
WHERE t.id = %(task_id)s
"""

# queued -> running (`lifecycle.task_start_many`'s fields; both states count as in flight,
# so no lane counter moves), only for the dispatch whose token was checked; then the attempt
# and the output dataset the lease names.
_START = """
WITH started AS (
    UPDATE tasks SET state = 'running', attempt = attempt + 1, lease_token = %(lease)s,
        lease_expires_at = %(expires)s, deadline_at = %(deadline)s, started_at = %(now)s,
        error = NULL
    WHERE id = %(task_id)s AND state = 'queued' AND dispatch_count = %(dispatch_count)s
    RETURNING id, attempt
), attempt AS (
    INSERT INTO task_attempts (task_id, number, worker_id, lease_token, started_at,
        heartbeat_at, ended_at, outcome, error, logs, metrics, progress)
    SELECT id, attempt, %(worker_id)s, %(lease)s, %(now)s, %(now)s, NULL, '', NULL, '', '{}',
        '{}'
    FROM started
)
SELECT s.attempt, d.id, d.backend, d.live_generation, d.schema::text, d.storage_prefix
FROM started s
LEFT JOIN datasets d ON d.org_id = %(org_id)s AND d.dataset_id = %(output)s
"""

LEAN_FIELDS = frozenset({"lease_token", "outputs", "logs", "metrics", "payload"})

_NODE_OF_LEASE = """
SELECT t.dag_version_id, t.node_id, v.config_hash, g.name
FROM task_attempts a
JOIN tasks t ON t.id = a.task_id
JOIN dag_versions v ON v.id = t.dag_version_id
JOIN dags g ON g.id = v.dag_id
WHERE a.lease_token = %(token)s
"""

# `held` locks the attempt and its task (in that order, as the full path does) only while the
# lease is live; every write below hangs off it, so a lease that is gone writes nothing. The
# generation's row lock serializes its commits as `commits_record` does (which also creates
# the row on a generation's first commit); the lane counter is
# the last row locked, as in `counted_atomic`. The states, outcome and lane weights are the
# ones `lifecycle` moves between (running -> succeeded: in flight one fewer).
_COMPLETE = """
WITH held AS (
    SELECT a.id AS attempt_id, t.id AS task_id, t.org_id, t.mode, e.id AS input_id,
        e.dataset_id AS input_dataset, e.range_start, e.range_end,
        c.generation AS input_generation, c.seq AS input_seq
    FROM task_attempts a
    JOIN tasks t ON t.id = a.task_id
    JOIN events e ON e.id = t.event_id
    LEFT JOIN dataset_commits c ON c.id = e.commit_id
    WHERE a.lease_token = %(token)s AND a.outcome = '' AND t.state = 'running'
        AND t.lease_token = a.lease_token AND t.lease_expires_at > %(now)s
        AND t.dag_version_id = %(version_id)s AND t.node_id = %(node_id)s
        AND (%(org_id)s::bigint IS NULL OR t.org_id = %(org_id)s::bigint)
    FOR UPDATE OF a, t
), output AS (
    SELECT d.id, d.live_generation FROM datasets d JOIN held h ON d.org_id = h.org_id
    WHERE d.dataset_id = %(output)s AND d.backend = 'parquet'
), seq AS (
    INSERT INTO dataset_generations AS g (dataset_id, number, dag_version_id, last_seq,
        created_at)
    SELECT o.id, o.live_generation, NULL, 1, %(now)s FROM output o
    ON CONFLICT (dataset_id, number) DO UPDATE SET last_seq = g.last_seq + 1
    RETURNING g.dataset_id, g.number, g.last_seq
), committed AS (
    INSERT INTO dataset_commits (dataset_id, generation, seq, range_start, range_end, files,
        rows, bytes, producer_dag, producer_node, producer_task_id, created_at)
    SELECT s.dataset_id, s.number, s.last_seq, h.range_start, h.range_end, '[]', 0, 0,
        %(dag)s, %(node_id)s, h.task_id, %(now)s
    FROM seq s CROSS JOIN held h
    RETURNING id
), emitted AS (
    INSERT INTO events (id, org_id, dataset_id, kind, mode, idempotency_key, range_start,
        range_end, event_time, payload, commit_id, producer_task_id, checkpoint_n, origin_id,
        depth, created_at, fanned_out_at)
    SELECT %(event_id)s, h.org_id, %(output)s, 'data', h.mode, '', h.range_start, h.range_end,
        %(now)s, %(payload)s, c.id, h.task_id, 0, NULL, 0, %(now)s, NULL
    FROM committed c CROSS JOIN held h
    RETURNING id
), lineage AS (
    INSERT INTO task_inputs (task_id, dataset_id, generation, seq_start, seq_end, event_id)
    SELECT h.task_id, h.input_dataset, h.input_generation, h.input_seq, h.input_seq, h.input_id
    FROM held h CROSS JOIN emitted
    WHERE h.input_generation IS NOT NULL
), succeeded AS (
    UPDATE tasks t SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
        deadline_at = NULL, finished_at = %(now)s, output_event_id = m.id
    FROM emitted m, held h
    WHERE t.id = h.task_id AND t.state = 'running'
    RETURNING t.id, t.dag_version_id, t.node_id, t.lane
), ended AS (
    UPDATE task_attempts a SET outcome = 'succeeded', ended_at = %(now)s, logs = %(logs)s,
        metrics = %(metrics)s
    FROM held h, succeeded s
    WHERE a.id = h.attempt_id
), counted AS (
    UPDATE node_lanes l SET in_flight = l.in_flight - 1 FROM succeeded s
    WHERE l.dag_version_id = s.dag_version_id AND l.node_id = s.node_id AND l.lane = s.lane
)
SELECT s.id, pg_notify(%(channel)s, '') IS NOT NULL FROM succeeded s
"""


def single_task_fetch(org_id: int | None, body: bytes) -> dict[str, Any] | None:
    """`task_fetch`'s lease body for `body` by a worker acting for `org_id` (None: the pool),
    or None: take the full path."""
    if not lean_possible():
        return None
    try:
        item = json.loads(body)
        task_id = uuid.UUID(item["task_id"])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    token, worker_id = item.get("dispatch_token"), item.get("worker_id") or ""
    if not item.keys() <= FETCH_FIELDS or not isinstance(token, str):
        return None
    if not isinstance(worker_id, str):
        return None
    row = run_statement(_TASK_TO_LEASE, {"task_id": task_id})
    if row is None:
        return None
    state, dispatch_count, task_org, version_id, node_id, *rest = row
    if state != "queued" or (org_id is not None and org_id != task_org):
        return None
    if not secrets.compare_digest(token, dispatch_token(task_id, dispatch_count)):
        return None
    max_attempts, mode, lane, config_hash, number, dag, *event_row = rest
    node = node_map_of(version_id, config_hash)[node_id]
    if node.get("secrets"):  # each handout is audited: the full path's
        return None
    now = timezone.now()
    lease = secrets.token_urlsafe(32)
    expires = now + dt.timedelta(seconds=lease_ttl_s())
    started = run_statement(
        _START,
        {
            "task_id": task_id,
            "dispatch_count": dispatch_count,
            "lease": lease,
            "expires": expires,
            "deadline": now + dt.timedelta(seconds=float(node.get("timeout_s", 3600))),
            "now": now,
            "worker_id": worker_id[:200],
            "org_id": task_org,
            "output": (node.get("output") or {}).get("dataset"),
        },
    )
    if started is None:  # fetched meanwhile by another worker: the full path answers 409
        return None
    new_attempt, *output_row = started
    task = Task(
        id=task_id,
        org_id=task_org,
        node_id=node_id,
        attempt=new_attempt,
        max_attempts=max_attempts,
        mode=mode,
        lane=lane,
        lease_token=lease,
        lease_expires_at=expires,
    )
    task.dag_version = DagVersion(id=version_id, number=number, config_hash=config_hash)
    task.dag_version.dag = Dag(name=dag)
    task.event = _input_event(*event_row)
    output = None
    if output_row[0] is not None:
        output_id, backend, generation, schema, prefix = output_row
        output = Dataset(
            id=output_id,
            org_id=task_org,
            dataset_id=node["output"]["dataset"],
            backend=backend,
            live_generation=generation,
            schema=json.loads(schema),
            storage_prefix=prefix,
        )
    return lease_body(task, node, {}, output)


def _input_event(
    event_id: uuid.UUID,
    kind: str,
    dataset_id: str,
    range_start: str,
    range_end: str,
    event_time: dt.datetime,
    mode: str,
    payload: str,
    generation: int | None,
    seq: int | None,
    files: str | None,
    backend: str | None,
    schema: str | None,
) -> Event:
    event = Event(
        id=event_id,
        kind=kind,
        dataset_id=dataset_id,
        range_start=range_start,
        range_end=range_end,
        event_time=event_time,
        mode=mode,
        payload=json.loads(payload),
    )
    event.commit = None
    if generation is not None and seq is not None and files and backend and schema:
        event.commit = Commit(generation=generation, seq=seq, files=json.loads(files))
        event.commit.dataset = Dataset(
            dataset_id=dataset_id, backend=backend, schema=json.loads(schema)
        )
    return event


def single_task_complete(org_id: int | None, body: bytes) -> dict[str, Any] | None:
    """`task_complete`'s answer for `body` by a worker acting for `org_id` (None: the pool),
    or None: take the full path."""
    if not lean_possible():
        return None
    try:
        item = json.loads(body)
    except ValueError:
        return None
    if not isinstance(item, dict) or not item.keys() <= LEAN_FIELDS:
        return None
    token, logs = item.get("lease_token"), item.get("logs")
    payload, metrics = item.get("payload") or {}, item.get("metrics") or {}
    if not (isinstance(token, str) and token and isinstance(logs, str | None)):
        return None
    if item.get("outputs") not in (None, []) or not isinstance(payload, dict):
        return None
    if not isinstance(metrics, dict):
        return None
    lease = run_statement(_NODE_OF_LEASE, {"token": token})
    if lease is None:
        return None
    version_id, node_id, config_hash, dag = lease
    output = node_map_of(version_id, config_hash)[node_id].get("output") or {}
    if not output.get("dataset") or output.get("update_strategy") == "replace":
        return None
    event_id = uuid.uuid4()
    done = run_statement(
        _COMPLETE,
        {
            "token": token,
            "now": timezone.now(),
            "version_id": version_id,
            "node_id": node_id,
            "org_id": org_id,
            "output": output["dataset"],
            "dag": dag,
            "event_id": event_id,
            "payload": Jsonb(payload),
            "logs": log_tail(logs),
            "metrics": Jsonb(metrics),
            "channel": CHANNEL,
        },
    )
    if done is None:
        return None
    return {"task_id": str(done[0]), "state": "succeeded", "event": {"id": str(event_id)}}
