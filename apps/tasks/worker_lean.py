"""Task-fetch and task-complete over lean paths, single and batch forms (ADR 0013): the
issue's targets (500 tasks/s one task per call, 5,000 with the batch forms, on two cores)
leave about 4 ms and 0.4 ms of CPU per task, and the full paths spent more than that in
round trips (a transaction of six statements for one fetch, thirteen for one completion) and
in model instances.

A plain fetch — queued tasks of nodes that name no secrets, each with its dispatch's token —
is two statements in autocommit: one reads the tasks and what their lease bodies tell, the
other moves them to running only if each is still queued by the same dispatch, inserts the
attempts and reads the output datasets. A plain completion — live leases of one node and
lane, no output files (an operator that returned nothing), no range, an output that is a
parquet dataset written by appending — is two statements too: one reads which node the
leases run, the other locks the attempts and their tasks, re-checks each lease, and then
records the commits with the generation's next seqs, their data events, the lineage rows,
the tasks' moves to succeeded, the attempts' ends and the lane counter; the dispatch NOTIFY
follows its commit. Anything else answers None and takes the full path, so every error, every
repeat and every other call is still answered in one place (`worker_api`); in a batch, an
item the lean statement did not take is answered by the full path on its own.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import Callable
from typing import Any

from django.utils import timezone
from psycopg.types.json import Jsonb

from apps.dags.models import node_map_of
from apps.datasets.models import commit_version
from apps.orgs.authentication import WorkerPrincipal
from apps.orgs.ids import time_ordered_uuid
from apps.tasks.lean import ItemsStatement, lean_possible, notify_dispatchers
from apps.tasks.runtimes import dispatch_token
from apps.tasks.worker_api import (
    MAX_BATCH,
    LeasedTask,
    complete_alone,
    event_body_of,
    input_dataset_body,
    lease_body_of,
    lease_ttl_s,
    log_tail,
    output_body,
    task_fetch_many,
)

# A dispatch message names the attempt too; the fetch reads only the id and the token.
# The caller's principal, authenticated on first use (and then kept): a call the lean path
# hands to the full path before needing it is authenticated there, once.
Principal = Callable[[], WorkerPrincipal | None]

FETCH_ITEM_FIELDS = frozenset({"task_id", "dispatch_token", "attempt"})

# Everything a lease body tells of the task, its version, its input event and that event's
# commit and dataset; read without a lock: the move below is conditional on what was read.
# JSON columns come as text, decoded here (whatever loaders the connection has). Each task
# is read by its id alone (a lateral subquery, kept whole by `OFFSET 0`), so the generic plan
# kept for calls of any size reads it through the primary key.
_TASK_TO_LEASE = ItemsStatement.over(
    """
WITH item AS (
    {items}
)
SELECT x.* FROM item i CROSS JOIN LATERAL (
    SELECT t.id, t.state, t.dispatch_count, t.org_id, t.dag_version_id, t.node_id,
        t.max_attempts, t.mode, t.lane, v.config_hash, v.number, g.name,
        e.id, e.kind, e.dataset_id, e.range_start, e.range_end, e.event_time, e.mode,
        e.payload::text, c.generation, c.seq, c.files::text, d.backend, d.schema::text
    FROM tasks t
    JOIN dag_versions v ON v.id = t.dag_version_id
    JOIN dags g ON g.id = v.dag_id
    JOIN events e ON e.id = t.event_id
    LEFT JOIN dataset_commits c ON c.id = e.commit_id
    LEFT JOIN datasets d ON d.id = c.dataset_id
    WHERE t.id = i.task_id
    OFFSET 0
) x
""",
    [("task_ids", "uuid", "task_id")],
)

# queued -> running (`lifecycle.task_start_many`'s fields; both states count as in flight,
# so no lane counter moves), only for the dispatch whose token was checked; then the attempts
# and the output datasets the leases name. Items come in task id order, the order the full
# path locks them in. Each task is locked by its id alone, in a lateral subquery that the
# state checks stay out of (`OFFSET 0`), then moved by its row address: no plan can start
# from the tasks, as a generic plan made while few tasks were queued had, scanning every
# queued task at each call.
_START = ItemsStatement.over(
    """
WITH item AS (
    {items}
), picked AS (
    SELECT i.*, x.task_row FROM item i CROSS JOIN LATERAL (
        SELECT t.ctid AS task_row, t.state, t.dispatch_count FROM tasks t WHERE t.id = i.task_id
        OFFSET 0 FOR UPDATE
    ) x
    WHERE x.state = 'queued' AND x.dispatch_count = i.dispatch_count
), started AS (
    UPDATE tasks t SET state = 'running', attempt = t.attempt + 1, lease_token = i.lease,
        lease_expires_at = %(expires)s, deadline_at = i.deadline, started_at = %(now)s,
        error = NULL
    FROM picked i
    WHERE t.ctid = i.task_row
    RETURNING t.id, t.org_id, t.attempt, i.lease, i.output
), attempt AS (
    INSERT INTO task_attempts (task_id, number, worker_id, lease_token, started_at,
        heartbeat_at, ended_at, outcome, error, logs, metrics, progress)
    SELECT id, attempt, %(worker_id)s, lease, %(now)s, %(now)s, NULL, '', NULL, '', '{}', '{}'
    FROM started
)
SELECT s.id, s.attempt, d.id, d.backend, d.live_generation, d.schema::text, d.storage_prefix
FROM started s
LEFT JOIN datasets d ON d.org_id = s.org_id AND d.dataset_id = s.output
""",
    [
        ("task_ids", "uuid", "task_id"),
        ("dispatch_counts", "integer", "dispatch_count"),
        ("leases", "text", "lease"),
        ("deadlines", "timestamptz", "deadline"),
        ("outputs", "text", "output"),
    ],
)

LEAN_FIELDS = frozenset({"lease_token", "outputs", "logs", "metrics", "payload"})

_NODES_OF_LEASES = ItemsStatement.over(
    """
WITH item AS (
    {items}
)
SELECT x.* FROM item i CROSS JOIN LATERAL (
    SELECT a.lease_token, a.task_id, t.dag_version_id, t.node_id, t.lane, v.config_hash,
        g.name
    FROM task_attempts a
    JOIN tasks t ON t.id = a.task_id
    JOIN dag_versions v ON v.id = t.dag_version_id
    JOIN dags g ON g.id = v.dag_id
    WHERE a.lease_token = i.token
    OFFSET 0
) x
""",
    [("tokens", "text", "token")],
)

# `held` locks the attempts and their tasks (in task order; attempt and task together, the
# order the full path locks them in), each reached by its item's lease token alone (as in
# `_START`, the checks stay out of the lateral subquery), and keeps those whose lease is
# live; every write below hangs off those rows (by their row addresses), so a lease that
# is gone writes nothing. The generation's row lock serializes its commits as
# `commits_record` does (which also creates the row on a generation's first commit), and
# its seqs are handed out in the items' own order (`ord`); the lane counter is the last row
# locked, as in `counted_atomic`. The states, outcome and lane weights are the ones
# `lifecycle` moves between (running -> succeeded: one fewer in flight). The items are of
# one node and lane (one claim's).
_COMPLETE = ItemsStatement.over(
    """
WITH item AS (
    {items}
), held AS (
    SELECT i.*, x.attempt_row, x.task_row, x.task_id, x.org_id, x.mode,
        x.input_id, x.input_dataset, x.range_start, x.range_end, x.input_generation,
        x.input_seq
    FROM item i CROSS JOIN LATERAL (
        SELECT a.ctid AS attempt_row, a.outcome, t.ctid AS task_row,
            t.id AS task_id, t.org_id, t.mode, t.state, t.lease_token, t.lease_expires_at,
            t.dag_version_id, t.node_id, t.lane, e.id AS input_id,
            e.dataset_id AS input_dataset, e.range_start, e.range_end,
            c.generation AS input_generation, c.seq AS input_seq
        FROM task_attempts a
        JOIN tasks t ON t.id = a.task_id
        JOIN events e ON e.id = t.event_id
        LEFT JOIN dataset_commits c ON c.id = e.commit_id
        WHERE a.lease_token = i.token
        OFFSET 0 FOR UPDATE OF a, t
    ) x
    WHERE x.outcome = '' AND x.state = 'running' AND x.lease_token = i.token
        AND x.lease_expires_at > %(now)s AND x.dag_version_id = %(version_id)s
        AND x.node_id = %(node_id)s AND x.lane = %(lane)s
        AND (%(org_id)s::bigint IS NULL OR x.org_id = %(org_id)s::bigint)
), output AS (
    SELECT d.id, d.live_generation, (SELECT count(*) FROM held) AS n FROM datasets d
    WHERE d.org_id = (SELECT org_id FROM held LIMIT 1) AND d.dataset_id = %(output)s
        AND d.backend = 'parquet'
), seq AS (
    INSERT INTO dataset_generations AS g (dataset_id, number, dag_version_id, last_seq,
        created_at)
    SELECT o.id, o.live_generation, NULL, o.n, %(now)s FROM output o
    ON CONFLICT (dataset_id, number) DO UPDATE SET last_seq = g.last_seq + EXCLUDED.last_seq
    RETURNING g.dataset_id, g.number, g.last_seq
), numbered AS (
    SELECT h.*, s.dataset_id AS output_id, s.number AS generation,
        s.last_seq - (SELECT count(*) FROM held) + row_number() OVER (ORDER BY h.ord) AS seq
    FROM held h CROSS JOIN seq s
), committed AS (
    INSERT INTO dataset_commits (dataset_id, generation, seq, range_start, range_end, files,
        rows, bytes, producer_dag, producer_node, producer_task_id, created_at)
    SELECT n.output_id, n.generation, n.seq, n.range_start, n.range_end, '[]', 0, 0,
        %(dag)s, %(node_id)s, n.task_id, %(now)s
    FROM numbered n ORDER BY n.ord
    RETURNING id, producer_task_id
), emitted AS (
    INSERT INTO events (id, org_id, dataset_id, kind, mode, idempotency_key, range_start,
        range_end, event_time, payload, commit_id, producer_task_id, checkpoint_n, origin_id,
        depth, created_at, fanned_out_at)
    SELECT n.event_id, n.org_id, %(output)s, 'data', n.mode, '', n.range_start, n.range_end,
        %(now)s, n.payload, c.id, n.task_id, 0, NULL, 0, %(now)s, NULL
    FROM numbered n JOIN committed c ON c.producer_task_id = n.task_id
    ORDER BY n.ord
    RETURNING id, producer_task_id
), lineage AS (
    INSERT INTO task_inputs (task_id, dataset_id, generation, seq_start, seq_end, event_id)
    SELECT n.task_id, n.input_dataset, n.input_generation, n.input_seq, n.input_seq, n.input_id
    FROM numbered n WHERE n.input_generation IS NOT NULL
), succeeded AS (
    UPDATE tasks t SET state = 'succeeded', lease_token = NULL, lease_expires_at = NULL,
        deadline_at = NULL, finished_at = %(now)s, output_event_id = n.event_id
    FROM numbered n WHERE t.ctid = n.task_row
    RETURNING t.id
), ended AS (
    UPDATE task_attempts a SET outcome = 'succeeded', ended_at = %(now)s, logs = n.logs,
        metrics = n.metrics
    FROM numbered n WHERE a.ctid = n.attempt_row
), counted AS (
    UPDATE node_lanes l SET in_flight = l.in_flight - (SELECT count(*) FROM succeeded)
    WHERE l.dag_version_id = %(version_id)s AND l.node_id = %(node_id)s AND l.lane = %(lane)s
        AND EXISTS (SELECT 1 FROM succeeded)
)
SELECT n.token, n.task_id FROM numbered n
""",
    [
        ("tokens", "text", "token"),
        ("event_ids", "uuid", "event_id"),
        ("payloads", "jsonb", "payload"),
        ("logs", "text", "logs"),
        ("metrics", "jsonb", "metrics"),
        ("positions", "integer", "ord"),
    ],
)


def lean_task_fetch(principal: Principal, body: bytes) -> dict[str, Any] | None:
    """`POST /internal/task-fetch`'s answer for `body` (the single or the batch form), or
    None: take the full path. In a batch, a task leased by another fetch between the lean
    path's two statements is answered by the full path."""
    if not lean_possible():
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    worker_id = parsed.get("worker_id") or ""
    if not isinstance(worker_id, str):
        return None
    if "tasks" not in parsed:
        item = {k: v for k, v in parsed.items() if k != "worker_id"}
        leased = _lease_plain(principal, [item], worker_id)
        return leased[0][0] if leased and leased[0] else None
    items = parsed["tasks"]
    if not parsed.keys() <= {"tasks", "worker_id"} or not isinstance(items, list):
        return None
    if not 0 < len(items) <= MAX_BATCH:
        return None
    leased = _lease_plain(principal, items, worker_id)
    if leased is None:
        return None
    bodies, leftovers, caller = leased
    results = task_fetch_many(caller, leftovers, worker_id) if leftovers else []
    return {
        "leases": bodies + [r for r in results if "code" not in r],
        "refused": [
            {"task_id": r.get("task_id"), "code": r["code"]} for r in results if "code" in r
        ],
    }


def _lease_plain(
    principal: Principal, items: list[Any], worker_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], WorkerPrincipal] | None:
    """Lease the tasks of `items` (each plain, queued, of the caller's orgs, its token the
    dispatch's, its node naming no secrets; else None): their lease bodies, the items whose
    task another fetch moved meanwhile, and the caller."""
    wanted: dict[uuid.UUID, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or not item.keys() <= FETCH_ITEM_FIELDS:
            return None
        try:
            task_id = uuid.UUID(item["task_id"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if task_id in wanted or not isinstance(item.get("dispatch_token"), str):
            return None
        wanted[task_id] = item
    rows = _TASK_TO_LEASE.rows({"task_ids": list(wanted)})
    caller = principal()
    if rows is None or len(rows) != len(wanted) or caller is None:
        return None
    tasks: dict[uuid.UUID, tuple[Any, ...]] = {}
    for row in rows:
        task_id, state, dispatch_count, task_org = row[:4]
        if state != "queued" or (caller.org is not None and caller.org.pk != task_org):
            return None
        token = wanted[task_id]["dispatch_token"]
        if not secrets.compare_digest(token, dispatch_token(task_id, dispatch_count)):
            return None
        tasks[task_id] = row
    nodes = {task_id: node_map_of(row[4], row[9])[row[5]] for task_id, row in tasks.items()}
    if any(node.get("secrets") for node in nodes.values()):  # each handout is audited
        return None
    now = timezone.now()
    expires = now + dt.timedelta(seconds=lease_ttl_s())
    order = sorted(tasks)
    leases = {task_id: secrets.token_urlsafe(32) for task_id in order}
    started = _START.rows(
        {
            "task_ids": order,
            "dispatch_counts": [tasks[t][2] for t in order],
            "leases": [leases[t] for t in order],
            "deadlines": [
                now + dt.timedelta(seconds=float(nodes[t].get("timeout_s", 3600))) for t in order
            ],
            "outputs": [(nodes[t].get("output") or {}).get("dataset") for t in order],
        },
        {"expires": expires, "now": now, "worker_id": worker_id[:200]},
    )
    if started is None:
        return None
    outputs = {row[0]: row[1:] for row in started}
    bodies = [
        _lease_body_from_rows(
            tasks[task_id], nodes[task_id], leases[task_id], expires, outputs[task_id]
        )
        for task_id in wanted
        if task_id in outputs
    ]
    return bodies, [item for task_id, item in wanted.items() if task_id not in outputs], caller


def _lease_body_from_rows(
    row: tuple[Any, ...],
    node: dict[str, Any],
    lease: str,
    expires: dt.datetime,
    started: tuple[Any, ...],
) -> dict[str, Any]:
    """The full path's lease body (`lease_body_of`), from the rows the two statements read."""
    (task_id, _, _, _, _, node_id, max_attempts, mode, lane, _, number, dag) = row[:12]
    (event_id, kind, dataset_id, range_start, range_end, event_time, event_mode, payload) = row[
        12:20
    ]
    generation, seq, files, backend, schema = row[20:]
    new_attempt, output_id, output_backend, output_generation, output_schema, prefix = started
    version = None
    input_datasets = []
    if generation is not None and seq is not None and files and backend and schema:
        version = commit_version(generation, seq)
        input_datasets.append(
            input_dataset_body(dataset_id, version, backend, json.loads(schema), json.loads(files))
        )
    event = event_body_of(
        event_id,
        kind,
        dataset_id,
        version,
        range_start,
        range_end,
        event_time,
        event_mode,
        json.loads(payload),
    )
    output = None
    if output_id is not None:
        output = output_body(
            node["output"]["dataset"],
            output_backend,
            output_generation,
            json.loads(output_schema),
            prefix,
            task_id,
            new_attempt,
        )
    leased = LeasedTask(
        task_id, new_attempt, max_attempts, mode, lane, lease, expires, dag, number, node_id
    )
    return lease_body_of(leased, node, event, input_datasets, output, {})


def lean_task_complete(principal: Principal, body: bytes) -> Any:
    """`POST /internal/task-complete`'s answer for `body` (the single or the batch form), or
    None: take the full path. In a batch, an item the lean statement did not complete (its
    lease is not live, or it is a repeat) is answered by the full path on its own."""
    if not lean_possible():
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    if "items" not in parsed:
        done = _complete_plain(principal, [parsed])
        return done.get(0) if done else None
    items = parsed["items"]
    if parsed.keys() != {"items"} or not isinstance(items, list):
        return None
    if not 0 < len(items) <= MAX_BATCH:
        return None
    done = _complete_plain(principal, items)
    caller = principal() if done is not None else None  # authenticated by then (and kept)
    if done is None or caller is None:
        return None
    return {
        "results": [
            done[index] if index in done else complete_alone(caller, item, index)
            for index, item in enumerate(items)
        ]
    }


def _complete_plain(principal: Principal, items: list[Any]) -> dict[int, Any] | None:
    """Complete the plain items (all of them plain, of one node and lane; else None): the
    answers of those completed, by index, or None when none was."""
    plains = []
    for item in items:
        plain = _plain_completion(item)
        if plain is None:
            return None
        plains.append(plain)
    caller = principal()  # only now: a call the full path takes is authenticated there, once
    tokens = [plain[0] for plain in plains]
    if len(set(tokens)) != len(tokens) or caller is None:
        return None
    leases = _NODES_OF_LEASES.rows({"tokens": tokens})
    if not leases or len(leases) != len(tokens) or len({row[2:] for row in leases}) != 1:
        return None  # an unknown token, or more than one node or lane: the full path
    _, _, version_id, node_id, lane, config_hash, dag = leases[0]
    output = node_map_of(version_id, config_hash)[node_id].get("output") or {}
    if not output.get("dataset") or output.get("update_strategy") == "replace":
        return None
    # The statement locks the items' rows in the order they come: task order, as elsewhere.
    task_of = {row[0]: row[1] for row in leases}
    order = sorted(range(len(plains)), key=lambda index: task_of[plains[index][0]])
    ordered = [plains[index] for index in order]
    tokens = [token for token, _, _, _ in ordered]
    event_ids = [time_ordered_uuid() for _ in tokens]
    completed = _COMPLETE.rows(
        {
            "tokens": tokens,
            "event_ids": event_ids,
            "payloads": [Jsonb(payload) for _, payload, _, _ in ordered],
            "logs": [log_tail(logs) for _, _, logs, _ in ordered],
            "metrics": [Jsonb(metrics) for _, _, _, metrics in ordered],
            "positions": order,  # the items' own order, which hands out the seqs
        },
        {
            "now": timezone.now(),
            "version_id": version_id,
            "node_id": node_id,
            "lane": lane,
            "org_id": None if caller.org is None else caller.org.pk,
            "output": output["dataset"],
            "dag": dag,
        },
    )
    if not completed:  # none was live, or the output is not what the statement writes
        return None  # (a postgres dataset): the full path takes the whole call, in bulk
    notify_dispatchers()  # their events wait for fan-out, their lanes have room
    index_of = {plain[0]: index for index, plain in enumerate(plains)}
    event_of = dict(zip(tokens, event_ids, strict=True))
    return {
        index_of[token]: {
            "task_id": str(task_id),
            "state": "succeeded",
            "event": {"id": str(event_of[token])},
        }
        for token, task_id in completed
    }


def _plain_completion(item: Any) -> tuple[str, dict, str | None, dict] | None:
    """(lease token, payload, logs, metrics) of a completion the lean path may record."""
    if not isinstance(item, dict) or not item.keys() <= LEAN_FIELDS:
        return None
    token, logs = item.get("lease_token"), item.get("logs")
    payload, metrics = item.get("payload") or {}, item.get("metrics") or {}
    if not (isinstance(token, str) and token and isinstance(logs, str | None)):
        return None
    if item.get("outputs") not in (None, []):
        return None
    if not (isinstance(payload, dict) and isinstance(metrics, dict)):
        return None
    return token, payload, logs, metrics
