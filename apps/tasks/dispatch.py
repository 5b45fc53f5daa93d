"""The Dispatcher (D11): stateless ticks that claim pending tasks and hand them to runtimes.

Any number of dispatchers may run at once. A tick locks runnable (version, node, lane) counter
rows with SKIP LOCKED (live lanes first, least recently served first), claims up to the cap's
room of that lane's oldest pending tasks, also SKIP LOCKED, marks them queued and commits.
Only then does it send: a failed send puts the tasks back to pending, and a crash between
commit and send is recovered by the reaper's queued_timeout. A double send is harmless
because a fetch leases an attempt once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.dags.models import DagVersion, node_map_of
from apps.orgs.bulk import Statement, execute_in_order
from apps.tasks import fanout, lifecycle
from apps.tasks.lifecycle import LaneDelta, counted_atomic
from apps.tasks.models import NodeLane, Task, TaskState
from apps.tasks.runtimes import Dispatched, dispatch_token, runtimes, send_all

logger = logging.getLogger(__name__)

DEFAULT_LANES_PER_TICK = 20
DEFAULT_BATCH = 100


@dataclass
class Claim:
    version_id: int
    node_id: str
    runtime: str
    config_hash: str
    tasks: list[Dispatched] = field(default_factory=list)


# The lane query, written out (the ORM spent longer building it than PostgreSQL running it):
# runnable lanes (the generated column), live before backfill, least recently served first,
# each with its room under the cap, what it has pending and from where (its claim floor), and
# its version's content hash (to find its node map).
_LANES = (
    "SELECT l.dag_version_id, l.node_id, l.lane, l.runtime, l.cap - l.in_flight, "  # noqa: S608
    f"l.pending, l.claim_floor, v.config_hash FROM {NodeLane._meta.db_table} l "
    f"JOIN {DagVersion._meta.db_table} v ON v.id = l.dag_version_id WHERE l.runnable {{paced}}"
    "ORDER BY l.priority, l.dispatched_at, l.id LIMIT %s"
)
# Pacing: a lane with tasks in flight waits until as many are pending as are in flight (or a
# full batch, or all its room): pending >= LEAST(in_flight, batch, room), spelled out so that
# SQLite runs it too. An idle lane is served at once; a busy one sends ever larger messages
# instead of one message per task, so a backlog waits in `pending`, where it can still be
# batched, and not in the queue one task per message. Completions wake the loops, so a
# waiting lane is looked at again as soon as its workers finish something.
_PACED = (
    "AND (l.in_flight = 0 OR l.pending >= l.in_flight OR l.pending >= %s "
    "OR l.pending >= l.cap - l.in_flight) "
)


def _runnable_lanes(lanes_per_tick: int, batch: int) -> Statement:
    """The statement that locks up to `lanes_per_tick` runnable lanes (SKIP LOCKED: other
    dispatchers take others)."""
    paced = settings.SLUICE_DISPATCH_PACING
    sql = _LANES.format(paced=_PACED if paced else "")
    if connection.features.has_select_for_update_skip_locked:
        sql += " FOR UPDATE OF l SKIP LOCKED"
    return sql, [batch, lanes_per_tick] if paced else [lanes_per_tick]


def claim(lanes_per_tick: int = DEFAULT_LANES_PER_TICK, batch: int = DEFAULT_BATCH) -> list[Claim]:
    """One claiming transaction. Returns what to send once it has committed."""
    with counted_atomic(asynchronous_commit=True):
        return _claim_lanes(execute_in_order([_runnable_lanes(lanes_per_tick, batch)]), batch)


def fan_out_and_claim(
    lanes_per_tick: int = DEFAULT_LANES_PER_TICK, batch: int = DEFAULT_BATCH, events: int = 1000
) -> tuple[int, list[Claim]]:
    """A dispatcher loop's transaction: fan out up to `events` waiting events, then claim,
    tasks just fanned out included. One commit where there were two, and no wait between them
    for the loop's next step. Returns the events fanned out and what to send once committed."""
    with counted_atomic(asynchronous_commit=True):
        fanned = fanout.fan_out_waiting(events)
        # The claim reads the lanes' counters. Locking the fan-out's lanes now (sorted, as
        # ever) is safe: the claim locks lanes only with SKIP LOCKED, or those it holds.
        lanes = lifecycle.apply_counted(then=_runnable_lanes(lanes_per_tick, batch))
        return fanned, _claim_lanes(lanes, batch)


def _claim_lanes(lanes: list[tuple], batch: int) -> list[Claim]:
    """Claim from the runnable lanes just locked, in the caller's `counted_atomic`."""
    claims: list[Claim] = []
    served = LaneDelta(served_at=timezone.now())
    for version_id, node_id, lane, runtime, room, pending, floor, config_hash in lanes:
        lifecycle.bump_lane(version_id, node_id, lane, served)  # with its counts, at the end
        tasks = lifecycle.task_claim_pending(
            version_id,
            node_id,
            lane,
            min(batch, room),
            pending=pending,
            floor=None if floor is None else lifecycle.database_time(floor),
        )
        if tasks:
            claim_ = Claim(version_id, node_id, runtime, config_hash)
            claim_.tasks = [
                Dispatched(t.id, t.attempt + 1, dispatch_token(t.id, t.dispatch_count))
                for t in tasks
            ]
            claims.append(claim_)
    return claims


def send(claims: list[Claim]) -> int:
    """Send claimed tasks to their runtimes (outside any transaction); return how many went.
    Each runtime gets all of its claims in one `send_all`."""
    by_runtime: dict[str, list[Claim]] = {}
    for claim_ in claims:
        by_runtime.setdefault(claim_.runtime, []).append(claim_)
    failed_ids: set = set()
    for runtime, runtime_claims in by_runtime.items():
        adapter = runtimes.get(runtime)
        if adapter is None:
            failed_ids |= {t.task_id for claim_ in runtime_claims for t in claim_.tasks}
            continue
        sends = [
            (node_map_of(c.version_id, c.config_hash)[c.node_id], c.tasks) for c in runtime_claims
        ]
        failed_ids |= send_all(adapter, sends)
    if failed_ids:
        requeue_failed_sends(failed_ids)
    return sum(len(claim_.tasks) for claim_ in claims) - len(failed_ids)


def requeue_failed_sends(task_ids: set) -> None:
    with counted_atomic():
        tasks = list(
            Task.objects.select_for_update(skip_locked=True, of=("self",)).filter(
                pk__in=task_ids, state=TaskState.QUEUED
            )
        )
        lifecycle.task_requeue_many(tasks)
    logger.warning("requeued %d task(s) whose send failed", len(tasks))


def dispatch_once(lanes_per_tick: int = DEFAULT_LANES_PER_TICK, batch: int = DEFAULT_BATCH) -> int:
    """One tick: claim, commit, send. Returns the number of tasks sent."""
    return send(claim(lanes_per_tick, batch))


def dispatch_until_idle(max_ticks: int = 100) -> int:
    total = 0
    for _ in range(max_ticks):
        claims = claim()
        if not claims:
            break
        total += send(claims)
    return total
