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

from django.utils import timezone

from apps.dags.models import DagVersion
from apps.tasks import lifecycle
from apps.tasks.lifecycle import counted_atomic
from apps.tasks.models import NodeLane, Task, TaskState
from apps.tasks.runtimes import Dispatched, dispatch_token, runtimes

logger = logging.getLogger(__name__)

DEFAULT_LANES_PER_TICK = 20
DEFAULT_BATCH = 100


@dataclass
class Claim:
    version_id: int
    node_id: str
    runtime: str
    tasks: list[Dispatched] = field(default_factory=list)


def claim(lanes_per_tick: int = DEFAULT_LANES_PER_TICK, batch: int = DEFAULT_BATCH) -> list[Claim]:
    """One claiming transaction. Returns what to send once it has committed."""
    claims: list[Claim] = []
    with counted_atomic():
        lanes = list(
            NodeLane.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(runnable=True)
            .order_by("priority", "dispatched_at", "id")[:lanes_per_tick]
        )
        for lane in lanes:
            room = min(batch, lane.cap - lane.in_flight)
            tasks = list(
                Task.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(
                    dag_version_id=lane.dag_version_id,
                    node_id=lane.node_id,
                    lane=lane.lane,
                    state=TaskState.PENDING,
                )
                .order_by("created_at")
                .only(
                    "id", "state", "dag_version_id", "node_id", "lane", "attempt", "dispatch_count"
                )[:room]
            )
            NodeLane.objects.filter(pk=lane.pk).update(dispatched_at=timezone.now())
            if not tasks:
                continue
            # The rows are locked, so the queued dispatch count is exactly one more.
            counts = {task.pk: task.dispatch_count + 1 for task in tasks}
            lifecycle.task_queue_many(tasks)
            claim_ = Claim(lane.dag_version_id, lane.node_id, lane.runtime)
            claim_.tasks = [
                Dispatched(task.pk, task.attempt + 1, dispatch_token(task.pk, counts[task.pk]))
                for task in tasks
            ]
            claims.append(claim_)
    return claims


def send(claims: list[Claim]) -> int:
    """Send claimed tasks to their runtimes (outside any transaction); return how many went."""
    sent = 0
    versions = {v.pk: v for v in DagVersion.objects.filter(pk__in={c.version_id for c in claims})}
    failed_ids: set = set()
    for claim_ in claims:
        adapter = runtimes.get(claim_.runtime)
        node = versions[claim_.version_id].node_map()[claim_.node_id]
        if adapter is None:
            failed_ids |= {t.task_id for t in claim_.tasks}
            continue
        failed = adapter.send(node, claim_.tasks)
        failed_ids |= failed
        sent += len(claim_.tasks) - len(failed)
    if failed_ids:
        requeue_failed_sends(failed_ids)
    return sent


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
