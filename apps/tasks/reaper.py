"""The Reaper: bounded sweeps on partial indexes, conditional moves (STYLE.md pattern 4).

- a running attempt whose lease expired (or that never heartbeated) ends `lease_expired`;
- a running attempt past its `timeout_s` ends `timed_out`;
  either way the task goes to `retry_wait` with backoff, or `failed` when attempts are spent;
- `retry_wait` tasks whose backoff has passed go back to `pending`;
- `queued` tasks past `queued_timeout` (a lost message, or a dispatcher that died between
  commit and send) go back to `pending`.
Any number of reapers may run: rows are claimed with SKIP LOCKED and moved conditionally.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, connections
from django.db.models import Q
from django.utils import timezone

from apps.dags.models import DagVersion
from apps.tasks import lifecycle
from apps.tasks.lifecycle import counted_atomic
from apps.tasks.models import IN_FLIGHT_STATES, Attempt, AttemptOutcome, NodeLane, Task, TaskState
from apps.tasks.triggers import dispatch_after_commit

DEFAULT_LIMIT = 10_000
# Overdue attempts from which a pass is shared among SLUICE_REAPER_CONNECTIONS connections.
PARALLEL_FROM = 2_000


def _retry_configs(tasks: list[Task]) -> dict[tuple[int, str], dict[str, Any]]:
    versions = DagVersion.objects.filter(pk__in={t.dag_version_id for t in tasks}).defer(
        "config", "diff"
    )
    configs = {}
    for version in versions:
        for node_id, node in version.cached_node_map().items():
            configs[(version.pk, node_id)] = node.get("retry", {})
    return configs


def _end_running(tasks: list[Task], outcome: str, error: dict[str, str]) -> None:
    """End the current attempts of locked running tasks; retry or fail the tasks."""
    if not tasks:
        return
    now = timezone.now()
    Attempt.objects.filter(lease_token__any=[t.lease_token for t in tasks], outcome="").update(
        outcome=outcome, ended_at=now, error=error
    )
    lifecycle.task_attempts_ended_many(tasks, error=error, retry_of=_retry_configs(tasks))


_REAP_FIELDS = (
    "id",
    "state",
    "dag_version_id",
    "node_id",
    "lane",
    "attempt",
    "attempts_base",
    "max_attempts",
    "lease_token",
)


def _expired(now: dt.datetime) -> Q:
    return Q(state=TaskState.RUNNING, lease_expires_at__lt=now)


def _timed_out(now: dt.datetime) -> Q:
    return Q(state=TaskState.RUNNING, deadline_at__lt=now)


def _backoff_over(now: dt.datetime) -> Q:
    return Q(state=TaskState.RETRY_WAIT, next_attempt_at__lte=now)


def _queued_too_long(now: dt.datetime) -> Q:
    cutoff = now - dt.timedelta(seconds=settings.SLUICE_QUEUED_TIMEOUT_S)
    return Q(state=TaskState.QUEUED, queued_at__lt=cutoff)


def _locked_batch(limit: int, order: str, matching: Q) -> list[Task]:
    """Up to `limit` matching tasks, oldest first on a partial index, locked SKIP LOCKED so
    that concurrent reapers split the work instead of waiting on each other."""
    return list(
        Task.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(matching)
        .only(*_REAP_FIELDS)
        .order_by(order)[:limit]
    )


def _end_overdue(column: str, matching: Q, limit: int, outcome: str, error: dict) -> int:
    """End the attempts of running tasks past `column`, and retry or fail the tasks: one
    statement on PostgreSQL (shared among connections for a backlog), the locked rows moved
    in groups elsewhere."""
    if connection.vendor == "postgresql":

        def share(part: int) -> int:
            with counted_atomic():
                return lifecycle.task_attempts_end_overdue(
                    column, part, outcome=outcome, error=error
                )

        return _shared(share, limit, _helpers(column, matching, limit))
    with counted_atomic():
        tasks = _locked_batch(limit, column, matching)
        _end_running(tasks, outcome, error)
    return len(tasks)


def _helpers(column: str, matching: Q, limit: int) -> int:
    """How many more connections to share this pass with: none unless at least
    PARALLEL_FROM attempts are overdue (counted on the partial index, up to that many) and
    each share would be that large, and never inside a transaction, whose rows other
    connections could not see."""
    wanted = min(settings.SLUICE_REAPER_CONNECTIONS, limit // PARALLEL_FROM) - 1
    if wanted < 1 or connection.in_atomic_block:
        return 0
    overdue = Task.objects.filter(matching).order_by(column)[:PARALLEL_FROM].count()
    return wanted if overdue >= PARALLEL_FROM else 0


def _shared(share: Callable[[int], int], limit: int, helpers: int) -> int:
    """`share(limit)`, or `limit` split among this thread and `helpers` threads, each on its
    own connection in its own transaction. SKIP LOCKED keeps their rows apart, the lane
    counters are updated last in one order (no deadlock), and a share that fails leaves its
    rows for the next pass, as a failed pass does."""
    if not helpers:
        return share(limit)
    part = -(-limit // (helpers + 1))

    def on_own_connection(size: int) -> int:
        try:
            return share(size)
        finally:
            connections.close_all()  # this helper thread's, opened for this share

    with ThreadPoolExecutor(max_workers=helpers) as pool:
        others = [pool.submit(on_own_connection, part) for _ in range(helpers)]
        moved = share(limit - part * helpers)
        return moved + sum(other.result() for other in others)


def reap_expired_leases(limit: int = DEFAULT_LIMIT) -> int:
    return _end_overdue(
        "lease_expires_at",
        _expired(timezone.now()),
        limit,
        AttemptOutcome.LEASE_EXPIRED,
        {"type": "LeaseExpired", "message": "the worker stopped heartbeating"},
    )


def reap_timeouts(limit: int = DEFAULT_LIMIT) -> int:
    return _end_overdue(
        "deadline_at",
        _timed_out(timezone.now()),
        limit,
        AttemptOutcome.TIMED_OUT,
        {"type": "TimedOut", "message": "the attempt ran past the node's timeout_s"},
    )


def release_retries(limit: int = DEFAULT_LIMIT) -> int:
    with counted_atomic():
        tasks = _locked_batch(limit, "next_attempt_at", _backoff_over(timezone.now()))
        lifecycle.task_release_many(tasks)
        if tasks:
            dispatch_after_commit()
    return len(tasks)


def requeue_stale_queued(limit: int = DEFAULT_LIMIT) -> int:
    with counted_atomic():
        tasks = _locked_batch(limit, "queued_at", _queued_too_long(timezone.now()))
        lifecycle.task_requeue_many(tasks)
        if tasks:
            dispatch_after_commit()
    return len(tasks)


@dataclass
class ReapResult:
    expired: int
    timed_out: int
    released: int
    requeued: int

    @property
    def total(self) -> int:
        return self.expired + self.timed_out + self.released + self.requeued


def _waiting_work(now: dt.datetime) -> list[bool]:
    """Which of the four passes have anything to do, in one statement without a transaction
    (each part on its partial index): an idle tick is then one round trip, not four
    transactions of three."""
    parts: list[str] = []
    params: list[Any] = []
    for matching in (_expired(now), _timed_out(now), _backoff_over(now), _queued_too_long(now)):
        probe = Task.objects.filter(matching).order_by().values("pk")[:1]
        sql, part_params = probe.query.sql_with_params()
        parts.append(f"EXISTS({sql})")
        params.extend(part_params)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        row = cursor.fetchone()
    return [bool(flag) for flag in row]


def reap_once(limit: int = DEFAULT_LIMIT) -> ReapResult:
    lease_over, deadline_over, backoff_over, queued_too_long = _waiting_work(timezone.now())
    expired = reap_expired_leases(limit) if lease_over else 0
    timed_out = reap_timeouts(limit) if deadline_over else 0
    # After ending attempts, always: a task whose backoff is 0 is released in the same pass.
    released = release_retries(limit) if backoff_over or expired or timed_out else 0
    requeued = requeue_stale_queued(limit) if queued_too_long else 0
    return ReapResult(expired, timed_out, released, requeued)


def reconcile_lanes(limit: int = 1000) -> int:
    """Recount the counter rows from the tasks table: a safety net against any drift.
    Returns the number of rows corrected."""
    fixed = 0
    lanes = NodeLane.objects.order_by("id")[:limit]
    for lane in lanes:
        with counted_atomic():
            locked = (
                NodeLane.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(pk=lane.pk)
                .first()
            )
            if locked is None:
                continue
            lane_tasks = Task.objects.filter(
                dag_version_id=locked.dag_version_id, node_id=locked.node_id, lane=locked.lane
            )
            # A count per state, each on its state's partial index: pending tasks on the
            # claim index, in-flight ones (few, under the caps) on the queued and lease ones.
            counts = {
                "pending": lane_tasks.filter(state=TaskState.PENDING).count(),
                "in_flight": sum(
                    lane_tasks.filter(state=state).count() for state in sorted(IN_FLIGHT_STATES)
                ),
            }
            fields: dict[str, Any] = {}
            if (counts["pending"], counts["in_flight"]) != (locked.pending, locked.in_flight):
                fields.update(counts)
            # A floor above a pending task would leave it to the claims' fallback: lower it.
            if locked.claim_floor is not None:
                oldest = (
                    lane_tasks.filter(state=TaskState.PENDING)
                    .order_by("created_at")
                    .values_list("created_at", flat=True)
                    .first()
                )
                if oldest is not None and oldest < locked.claim_floor:
                    fields["claim_floor"] = oldest
            if fields:
                NodeLane.objects.filter(pk=locked.pk).update(**fields)
                fixed += 1
    return fixed
