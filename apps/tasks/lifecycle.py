"""The task state machine (DESIGN.md §4), and the dispatch counters that move with it.

    pending -> queued -> running -> succeeded | retry_wait | failed | canceled
    retry_wait -> pending;  queued -> pending;  pending | queued | retry_wait -> canceled
    pending -> skipped_memoized;  failed | canceled -> pending (retry by hand)

Every transition goes through `_move` (one task, a row the caller locked) or `move_many`
(rows the caller locked, moved with a conditional UPDATE per group); the Reaper's batch of
overdue attempts, on PostgreSQL, through `task_attempts_end_overdue` (one statement that
locks its rows SKIP LOCKED and moves them only from `running`). All refuse illegal moves and
adjust the (version, node, lane) counter rows in the same transaction, so the counters and
the task states cannot drift apart; the same update moves the lane's claim floor (ADR 0015).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.orgs.bulk import Statement, execute_in_order, update_each
from apps.orgs.errors import Conflict
from apps.tasks.models import IN_FLIGHT_STATES, NodeLane, Task, TaskState

S = TaskState
ALLOWED: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELED, S.SKIPPED_MEMOIZED}),
    S.QUEUED: frozenset({S.PENDING, S.RUNNING, S.CANCELED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.RETRY_WAIT, S.FAILED, S.CANCELED}),
    S.RETRY_WAIT: frozenset({S.PENDING, S.CANCELED}),
    S.FAILED: frozenset({S.PENDING}),
    S.CANCELED: frozenset({S.PENDING}),
    S.SUCCEEDED: frozenset(),
    S.SKIPPED_MEMOIZED: frozenset(),
}


class IllegalTransition(Conflict):
    code = "illegal_transition"


def _weight(state: str) -> tuple[int, int]:
    """What a task in `state` counts for in its lane row: (pending, in_flight)."""
    return (1 if state == S.PENDING else 0, 1 if state in IN_FLIGHT_STATES else 0)


LaneKey = tuple[int, str, str]


@dataclass
class LaneDelta:
    """What one transaction changes in a lane's counter row. Besides the counts, its claim
    floor (`NodeLane.claim_floor`): a claim moves it up to where it stopped (`floor`); a
    task entering pending moves it down to that task's age (`oldest_entering`), or clears it
    when that age is not at hand (`floor_lost`). And when a dispatcher served it last
    (`served_at`, `NodeLane.dispatched_at`)."""

    pending: int = 0
    in_flight: int = 0
    floor: dt.datetime | None = None
    oldest_entering: dt.datetime | None = None
    floor_lost: bool = False
    served_at: dt.datetime | None = None

    def add(self, other: LaneDelta) -> None:
        self.pending += other.pending
        self.in_flight += other.in_flight
        self.floor = earliest(self.floor, other.floor)
        self.oldest_entering = earliest(self.oldest_entering, other.oldest_entering)
        self.floor_lost = self.floor_lost or other.floor_lost
        self.served_at = max(filter(None, (self.served_at, other.served_at)), default=None)

    def floor_change(self) -> tuple[str, list[Any]] | None:
        """The SET clause for the floor and its parameters, or None: the floor stays."""
        if self.floor_lost:
            return "claim_floor = NULL", []
        adapt = connection.ops.adapt_datetimefield_value
        if self.floor is not None:  # the claim's own scan saw every task it could
            return "claim_floor = %s", [adapt(earliest(self.floor, self.oldest_entering))]
        if self.oldest_entering is not None:  # no floor (NULL) stays none
            value = adapt(self.oldest_entering)
            return "claim_floor = CASE WHEN claim_floor > %s THEN %s ELSE claim_floor END", [
                value,
                value,
            ]
        return None


def earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    """The earlier of two times, either of which may be missing."""
    return b if a is None else a if b is None else min(a, b)


class _Ledgers(threading.local):
    def __init__(self) -> None:
        self.stack: list[dict[LaneKey, LaneDelta]] = []


_ledgers = _Ledgers()


# Written out: every transaction that moves tasks ends with these, and building the same
# `UPDATE` through the ORM cost more than running it.
_BUMP_LANE = (
    f"UPDATE {NodeLane._meta.db_table} SET pending = pending + %s, "  # noqa: S608
    "in_flight = in_flight + %s{more} WHERE dag_version_id = %s AND node_id = %s AND lane = %s"
)


def _apply(
    deltas: dict[LaneKey, LaneDelta],
    then: Sequence[Statement] = (),
    closing: Sequence[Statement] = (),
) -> list[tuple]:
    """Send the counter changes, then `then`: its rows. `closing` goes with them only when
    there are any (it saves their own round trip, not adds one)."""
    # Always in one sorted order, and as the transaction's last statements: two transactions
    # that touch the same lanes queue on them in the same order (no deadlock), and hold them
    # for microseconds, not for the whole transaction.
    statements: list[Statement] = []
    for key in sorted(deltas):
        delta, clauses, params = deltas[key], [], []
        if floor := delta.floor_change():
            clauses.append(floor[0])
            params += floor[1]
        if delta.served_at is not None:
            clauses.append("dispatched_at = %s")
            params.append(connection.ops.adapt_datetimefield_value(delta.served_at))
        if delta.pending or delta.in_flight or clauses:
            statements.append(
                (
                    _BUMP_LANE.format(more="".join(f", {clause}" for clause in clauses)),
                    [delta.pending, delta.in_flight, *params, *key],
                )
            )
    # Still one statement a lane, in the sorted order; `then` in the same round trip.
    return execute_in_order([*statements, *then, *(closing if statements else ())])


# Read at commit, so it may come last: the commit returns before its WAL reaches the disk.
_ASYNCHRONOUS_COMMIT: Statement = ("SET LOCAL synchronous_commit = off", [])
_COMMIT: Statement = ("COMMIT", [])


def _closing_statements(asynchronous_commit: bool) -> list[Statement]:
    """What follows the last counter updates of an outermost block in their round trip
    (PostgreSQL): the asynchronous commit's setting, and the `COMMIT` itself when the block
    is the one that commits. psycopg's `commit()` then finds no transaction open and sends
    nothing, and Django runs the block's commit hooks as ever; a failed `COMMIT` raises
    inside the block, which rolls back (nothing left to roll back)."""
    if connection.vendor != "postgresql":
        return []
    closing = [_ASYNCHRONOUS_COMMIT] if asynchronous_commit else []
    outermost = connection.commit_on_exit and len(connection.atomic_blocks) == 1
    if outermost and not connection.needs_rollback:
        closing.append(_COMMIT)
    return closing


@contextmanager
def counted_atomic(*, asynchronous_commit: bool = False) -> Iterator[None]:
    """`transaction.atomic()` whose lane counter changes are collected and applied, sorted,
    just before it commits. Every block that moves tasks runs in one.

    `asynchronous_commit` (PostgreSQL, outermost block): a crash of the database may lose
    the transaction whole, never in part, and never once a later durable commit has been
    made (the WAL is one sequence). Only for work the loops find again if it is lost: a
    dispatcher's fan-out and claims (ADR 0023)."""
    with transaction.atomic():
        deltas: dict[LaneKey, LaneDelta] = defaultdict(LaneDelta)
        _ledgers.stack.append(deltas)
        try:
            yield
        finally:
            _ledgers.stack.pop()
        if _ledgers.stack:  # nested: the outer block applies
            outer = _ledgers.stack[-1]
            for key, delta in deltas.items():
                outer[key].add(delta)
        elif deltas:  # with the commit where it can go in their round trip
            _apply(deltas, closing=_closing_statements(asynchronous_commit))


def apply_counted(then: Statement | None = None) -> list[tuple]:
    """Apply the counter changes the current `counted_atomic` has collected so far, for the
    rest of its transaction to read, then run `then` (the same round trip): its rows. The
    lanes stay locked until it commits: only a block whose later statements lock lanes with
    SKIP LOCKED, or those it holds, may call this, so lanes are still waited for in one
    sorted order."""
    deltas = _ledgers.stack[-1]
    rows = _apply(deltas, [then] if then else [])
    deltas.clear()
    return rows


def bump_lane(version_id: int, node_id: str, lane: str, delta: LaneDelta) -> None:
    if _ledgers.stack:
        _ledgers.stack[-1][(version_id, node_id, lane)].add(delta)
    else:
        _apply({(version_id, node_id, lane): delta})


def _count_moves(
    key: LaneKey,
    from_state: str,
    to: str,
    tasks: list[Task] | int,
    *,
    floor: dt.datetime | None = None,
    floor_lost: bool = False,
) -> None:
    """Adjust one lane's counters for its `tasks` (or that many) moved `from_state` -> `to`.
    Tasks entering pending lower the claim floor to the oldest of them (or clear it, when
    their ages are not loaded); a claim passes its own change of the floor."""
    count = tasks if isinstance(tasks, int) else len(tasks)
    before, after = _weight(from_state), _weight(to)
    delta = LaneDelta(
        (after[0] - before[0]) * count,
        (after[1] - before[1]) * count,
        floor=floor,
        floor_lost=floor_lost,
    )
    if to == S.PENDING:
        ages = [] if isinstance(tasks, int) else [_loaded_age(task) for task in tasks]
        if ages and None not in ages:
            delta.oldest_entering = min(age for age in ages if age is not None)
        else:
            delta.floor_lost = True
    bump_lane(*key, delta)


def _loaded_age(task: Task) -> dt.datetime | None:
    return None if "created_at" in task.get_deferred_fields() else task.created_at


def _check(task: Task, to: str) -> None:
    if to not in ALLOWED[task.state]:
        raise IllegalTransition(f"Task {task.id} cannot go from {task.state} to {to}.")


def _move(task: Task, to: str, **fields: Any) -> Task:
    """Move one locked task; `fields` are set with the state."""
    _check(task, to)
    updated = Task.objects.filter(pk=task.pk, state=task.state).update(state=to, **fields)
    if updated != 1:  # the caller did not hold the lock: never overwrite a concurrent move
        raise IllegalTransition(f"Task {task.id} changed state concurrently.")
    _count_moves((task.dag_version_id, task.node_id, task.lane), task.state, to, [task])
    task.state = to
    for name, value in fields.items():
        setattr(task, name, value)
    return task


def move_many(tasks: Iterable[Task], to: str, **fields: Any) -> list[Task]:
    """Move locked tasks in bulk: one conditional UPDATE and one counter bump per group."""
    return _move_groups(tasks, to, fields, None)


def move_each(tasks: list[Task], to: str, fields_of: Callable[[Task], dict[str, Any]]) -> None:
    """`move_many` where each task gets values of its own (lease tokens, output events): one
    conditional `update_each` per group."""
    _move_groups(tasks, to, {}, fields_of)


def _move_groups(
    tasks: Iterable[Task],
    to: str,
    shared: dict[str, Any],
    fields_of: Callable[[Task], dict[str, Any]] | None,
) -> list[Task]:
    groups: dict[tuple[str, int, str, str], list[Task]] = {}
    for task in tasks:
        _check(task, to)
        groups.setdefault((task.state, task.dag_version_id, task.node_id, task.lane), []).append(
            task
        )
    moved: list[Task] = []
    for (state, version_id, node_id, lane), members in groups.items():
        own = {task.pk: fields_of(task) for task in members} if fields_of else {}
        ids = [task.pk for task in members]
        if own:
            updated = update_each(Task, own, shared={**shared, "state": to}, where={"state": state})
        else:
            updated = Task.objects.filter(pk__any=ids, state=state).update(state=to, **shared)
        if updated != len(ids):
            raise IllegalTransition("Tasks changed state concurrently; the move was refused.")
        _count_moves((version_id, node_id, lane), state, to, members)
        for task in members:
            task.state = to
            for name, value in {**shared, **own.get(task.pk, {})}.items():
                setattr(task, name, value)
        moved.extend(members)
    return moved


# A node's `retry` defaults (DESIGN.md), for `backoff_delay` and the reaper's statement.
DEFAULT_BACKOFF_S = 5.0
DEFAULT_MAX_BACKOFF_S = 300.0


def backoff_delay(task: Task, retry: dict[str, Any]) -> dt.timedelta:
    """Exponential backoff with jitter: base·2^(n-1), capped, times a random 0.5-1.0."""
    base = float(retry.get("backoff_s", DEFAULT_BACKOFF_S))
    cap = float(retry.get("max_backoff_s", DEFAULT_MAX_BACKOFF_S))
    exponent = max(task.attempts_used - 1, 0)
    delay = min(cap, base * (2**exponent))
    return dt.timedelta(seconds=delay * random.uniform(0.5, 1.0))  # noqa: S311 (jitter)


# --- named transitions --------------------------------------------------------------------------


def task_queue_many(tasks: list[Task]) -> list[Task]:
    """pending -> queued, at dispatch. Each queueing gets a new dispatch count (and token)."""
    now = timezone.now()
    return move_many(tasks, S.QUEUED, queued_at=now, dispatch_count=F("dispatch_count") + 1)


# A CTE, not `id IN (SELECT … LIMIT n)`: PostgreSQL may run such a subquery more than once
# and move more than n rows.
# The states are literals: a prepared statement's generic plan can then use the claim index.
_CLAIM = (
    "WITH picked AS (SELECT id FROM tasks WHERE dag_version_id = %s AND node_id = %s "  # noqa: S608
    f"AND lane = %s AND state = '{S.PENDING}'{{floor}} ORDER BY created_at LIMIT %s{{locked}}"
    f") UPDATE tasks SET state = '{S.QUEUED}', queued_at = %s, "
    "dispatch_count = dispatch_count + 1 "
    f"FROM picked WHERE tasks.id = picked.id AND tasks.state = '{S.PENDING}' "
    "RETURNING tasks.id, tasks.attempt, tasks.dispatch_count, {created_at}"
)
# psycopg's loader of zoned timestamps as Django registers it runs in Python (~2.7 µs a
# value, half the cost of reading a claim's rows); a UTC wall time loads in C.
_UTC_WALL_TIME = {"postgresql": "tasks.created_at AT TIME ZONE 'UTC'"}


@dataclass(frozen=True)
class ClaimedTask:
    id: uuid.UUID
    attempt: int
    dispatch_count: int


def task_claim_pending(
    version_id: int,
    node_id: str,
    lane: str,
    limit: int,
    *,
    floor: dt.datetime | None = None,
    pending: int | None = None,
) -> list[ClaimedTask]:
    """pending -> queued for up to `limit` oldest pending tasks of one lane, in one statement:
    the rows are locked (SKIP LOCKED, so concurrent dispatchers split the work) and moved
    only from `pending`, the one state this transition leaves. The caller holds the lane's
    counter row, whose `pending` and `claim_floor` it passes.

    The scan starts at the floor, not at the lane's first entry in the claim index: tasks
    that left pending stay there, dead, until a vacuum, and a drained backlog would be
    walked again by every claim. Should the floored scan find fewer tasks than `pending`
    promises (a task below the floor that no counter change lowered it for), the rest are
    claimed from the start and the floor is cleared; otherwise it moves up to the newest
    task claimed."""
    assert S.QUEUED in ALLOWED[S.PENDING]
    claimed, newest = _claim(version_id, node_id, lane, limit, floor)
    short = floor is not None and len(claimed) < min(limit, limit if pending is None else pending)
    if short:
        claimed += _claim(version_id, node_id, lane, limit - len(claimed), None)[0]
    _count_moves(
        (version_id, node_id, lane),
        S.PENDING,
        S.QUEUED,
        len(claimed),
        floor=None if short else newest,
        floor_lost=short,
    )
    return claimed


def _claim(
    version_id: int, node_id: str, lane: str, limit: int, floor: dt.datetime | None
) -> tuple[list[ClaimedTask], dt.datetime | None]:
    """The tasks claimed, and the creation time of the newest."""
    statement = _CLAIM.format(
        floor=" AND created_at >= %s" if floor is not None else "",
        # SQLite: one writer at a time, nothing to skip.
        locked=" FOR UPDATE SKIP LOCKED"
        if connection.features.has_select_for_update_skip_locked
        else "",
        created_at=_UTC_WALL_TIME.get(connection.vendor, "tasks.created_at"),
    )
    adapt = connection.ops.adapt_datetimefield_value
    bounds = [adapt(floor)] if floor is not None else []
    now = adapt(timezone.now())
    rows = execute_in_order([(statement, [version_id, node_id, lane, *bounds, limit, now])])
    id_field = Task._meta.pk
    assert id_field is not None
    claimed = [ClaimedTask(id_field.to_python(row[0]), int(row[1]), int(row[2])) for row in rows]
    # Raw values compare as the times do: UTC wall times, or SQLite's UTC text.
    newest = max((row[3] for row in rows), default=None)
    return claimed, None if newest is None else database_time(newest)


def database_time(value: dt.datetime | str) -> dt.datetime:
    """A DateTimeField's value as a raw query returns it (aware on PostgreSQL, or its UTC
    wall time; UTC text on SQLite), aware."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=dt.UTC)


def task_requeue_many(tasks: list[Task]) -> list[Task]:
    """queued -> pending: the send failed, the message was lost, or an operator requeued."""
    return move_many(tasks, S.PENDING, queued_at=None)


def _ended(**fields: Any) -> dict[str, Any]:
    return {"lease_token": None, "lease_expires_at": None, "deadline_at": None, **fields}


def task_start_many(
    tasks: list[Task],
    *,
    leases: dict[Any, str],
    lease_ttl_s: float,
    timeout_of: Callable[[Task], float],
) -> None:
    """queued -> running for a batch of fetched tasks, each with its own lease token."""
    now = timezone.now()
    move_each(
        tasks,
        S.RUNNING,
        lambda task: {
            "attempt": task.attempt + 1,
            "lease_token": leases[task.pk],
            "lease_expires_at": now + dt.timedelta(seconds=lease_ttl_s),
            "deadline_at": now + dt.timedelta(seconds=timeout_of(task)),
            "started_at": now,
            "error": None,
        },
    )


def task_succeed_many(tasks: list[Task], *, output_event_ids: dict[Any, Any]) -> None:
    now = timezone.now()
    move_each(
        tasks,
        S.SUCCEEDED,
        lambda task: _ended(finished_at=now, output_event_id=output_event_ids.get(task.pk)),
    )


def task_succeed(task: Task, *, output_event_id: Any) -> Task:
    return _move(
        task, S.SUCCEEDED, **_ended(finished_at=timezone.now(), output_event_id=output_event_id)
    )


def _retries_left(task: Task, retryable: bool = True) -> bool:
    return retryable and task.attempts_used < task.max_attempts


def task_attempt_failed(
    task: Task, *, error: dict[str, Any], retryable: bool, retry: dict[str, Any]
) -> Task:
    """running -> retry_wait while attempts remain (and the error is retryable), else failed."""
    if _retries_left(task, retryable):
        next_at = timezone.now() + backoff_delay(task, retry)
        return _move(task, S.RETRY_WAIT, **_ended(error=error, next_attempt_at=next_at))
    return _move(task, S.FAILED, **_ended(error=error, finished_at=timezone.now()))


def task_attempts_ended_many(
    tasks: list[Task], *, error: dict[str, Any], retry_of: dict[tuple[int, str], dict[str, Any]]
) -> None:
    """The bulk form of `task_attempt_failed` for the Reaper (expired leases, timeouts):
    `retry_of` maps (version id, node id) to the node's retry config."""
    now = timezone.now()
    move_many(
        [t for t in tasks if not _retries_left(t)],
        S.FAILED,
        **_ended(error=error, finished_at=now),
    )
    waiting: dict[tuple[int, str, int], list[Task]] = defaultdict(list)
    for task in tasks:
        if _retries_left(task):
            waiting[(task.dag_version_id, task.node_id, task.attempts_used)].append(task)
    for (version_id, node_id, _), group in waiting.items():
        delay = backoff_delay(group[0], retry_of.get((version_id, node_id), {}))
        move_many(group, S.RETRY_WAIT, **_ended(error=error, next_attempt_at=now + delay))


# `task_attempts_ended_many` for a whole reaper batch as one statement (PostgreSQL): lock up
# to `limit` running tasks past `{column}` (SKIP LOCKED), end their current attempts, and move
# each to retry_wait with its node's backoff (base·2^(n-1), capped, times a random 0.5-1.0,
# per task) or to failed when its attempts are spent. The retry config is read from the
# version's node list (DESIGN.md's `retry`, with `backoff_delay`'s defaults). Answers how many
# left each lane's in-flight count.
_END_RUNNING = """
WITH picked AS (
    SELECT id, ctid AS task_row, lease_token, dag_version_id, node_id, lane,
        attempt - attempts_base AS used, max_attempts
    FROM tasks WHERE state = 'running' AND {column} < %(now)s
    ORDER BY {column} LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), retry AS MATERIALIZED (  -- once per (version, node), not once per task
    SELECT pair.dag_version_id, pair.node_id,
        COALESCE((node.spec->'retry'->>'backoff_s')::float8, %(backoff_s)s) AS base,
        COALESCE((node.spec->'retry'->>'max_backoff_s')::float8, %(max_backoff_s)s) AS cap
    FROM (SELECT DISTINCT dag_version_id, node_id FROM picked) pair
    JOIN dag_versions v ON v.id = pair.dag_version_id
    LEFT JOIN LATERAL (
        SELECT n AS spec FROM json_array_elements(v.config->'nodes') n
        WHERE n->>'id' = pair.node_id LIMIT 1
    ) node ON true
), ended AS (
    UPDATE task_attempts a SET outcome = %(outcome)s, ended_at = %(now)s,
        error = %(error)s::jsonb
    FROM picked p WHERE a.lease_token = p.lease_token AND a.outcome = ''
), moved AS (
    UPDATE tasks t SET
        state = CASE WHEN p.used < p.max_attempts THEN 'retry_wait' ELSE 'failed' END,
        lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL,
        error = %(error)s::jsonb,
        next_attempt_at = CASE WHEN p.used < p.max_attempts
            THEN %(now)s + make_interval(secs => LEAST(r.cap, r.base * power(2, GREATEST(
                p.used - 1, 0))) * (0.5 + random() * 0.5))
            ELSE t.next_attempt_at END,
        finished_at = CASE WHEN p.used < p.max_attempts THEN t.finished_at ELSE %(now)s END
    FROM picked p JOIN retry r ON r.dag_version_id = p.dag_version_id AND r.node_id = p.node_id
    WHERE t.ctid = p.task_row AND t.state = 'running'  -- the locked row, by its address
    RETURNING p.dag_version_id, p.node_id, p.lane
)
SELECT dag_version_id, node_id, lane, count(*) FROM moved GROUP BY 1, 2, 3
"""


def task_attempts_end_overdue(
    column: str, limit: int, *, outcome: str, error: dict[str, Any]
) -> int:
    """running -> retry_wait | failed for up to `limit` tasks whose `column` (the lease's or
    the attempt's deadline) has passed, with their attempts ended as `outcome`, in one
    statement (PostgreSQL; the caller holds a `counted_atomic`). Returns how many moved."""
    assert column in ("lease_expires_at", "deadline_at")
    assert {S.RETRY_WAIT, S.FAILED} <= ALLOWED[S.RUNNING]
    with connection.cursor() as cursor:
        cursor.execute(
            _END_RUNNING.format(column=column),
            {
                "now": timezone.now(),
                "limit": limit,
                "outcome": outcome,
                "error": json.dumps(error),
                "backoff_s": DEFAULT_BACKOFF_S,
                "max_backoff_s": DEFAULT_MAX_BACKOFF_S,
            },
        )
        moved = cursor.fetchall()
    assert _weight(S.FAILED) == _weight(S.RETRY_WAIT)  # either way, the same counts
    for version_id, node_id, lane, count in moved:
        _count_moves((version_id, node_id, lane), S.RUNNING, S.RETRY_WAIT, count)
    return sum(row[3] for row in moved)


def task_release_many(tasks: list[Task]) -> list[Task]:
    """retry_wait -> pending, once the backoff has passed."""
    return move_many(tasks, S.PENDING, next_attempt_at=None)


def task_cancel(task: Task) -> Task:
    """Cancel an open task. A running one learns it at its next heartbeat."""
    return _move(
        task,
        S.CANCELED,
        **_ended(finished_at=timezone.now(), next_attempt_at=None),
    )


def task_skip_memoized_many(tasks: list[Task]) -> list[Task]:
    """pending -> skipped_memoized: their memo key already succeeded (D9)."""
    return move_many(tasks, S.SKIPPED_MEMOIZED, finished_at=timezone.now())


def task_retry_by_hand(task: Task) -> Task:
    """failed | canceled -> pending, with max_attempts counted afresh."""
    return _move(
        task,
        S.PENDING,
        attempts_base=task.attempt,
        error=None,
        finished_at=None,
        next_attempt_at=None,
    )
