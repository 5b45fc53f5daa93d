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
from django.db.models import F, Q, Value
from django.db.models.functions import Least
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
        lanes = NodeLane.objects.select_for_update(skip_locked=True, of=("self",)).filter(
            runnable=True
        )
        if settings.SLUICE_DISPATCH_PACING:
            lanes = lanes.filter(_ready_for_a_message(batch))
        lanes = lanes.order_by("priority", "dispatched_at", "id")[:lanes_per_tick]
        for lane in lanes:
            room = min(batch, lane.cap - lane.in_flight)
            tasks = lifecycle.task_claim_pending(lane.dag_version_id, lane.node_id, lane.lane, room)
            NodeLane.objects.filter(pk=lane.pk).update(dispatched_at=timezone.now())
            if not tasks:
                continue
            claim_ = Claim(lane.dag_version_id, lane.node_id, lane.runtime)
            claim_.tasks = [
                Dispatched(task.id, task.attempt + 1, dispatch_token(task.id, task.dispatch_count))
                for task in tasks
            ]
            claims.append(claim_)
    return claims


def _ready_for_a_message(batch: int) -> Q:
    """Pacing: a lane with tasks in flight waits until as many are pending as are in flight
    (or a full batch, or all its room). An idle lane is served at once; a busy one sends ever
    larger messages instead of one message per task, so a backlog waits in `pending`, where
    it can still be batched, and not in the queue one task per message. Completions wake the
    loops, so a waiting lane is looked at again as soon as its workers finish something."""
    wanted = Least(F("in_flight"), Value(batch), F("cap") - F("in_flight"))
    return Q(in_flight=0) | Q(pending__gte=wanted)


def send(claims: list[Claim]) -> int:
    """Send claimed tasks to their runtimes (outside any transaction); return how many went."""
    sent = 0
    nodes = _node_maps({c.version_id for c in claims})
    failed_ids: set = set()
    for claim_ in claims:
        adapter = runtimes.get(claim_.runtime)
        node = nodes[claim_.version_id][claim_.node_id]
        if adapter is None:
            failed_ids |= {t.task_id for t in claim_.tasks}
            continue
        failed = adapter.send(node, claim_.tasks)
        failed_ids |= failed
        sent += len(claim_.tasks) - len(failed)
    if failed_ids:
        requeue_failed_sends(failed_ids)
    return sent


def _node_maps(version_ids: set[int]) -> dict[int, dict[str, dict]]:
    """Node configs by version (each parsed once per process; see `cached_node_map`)."""
    versions = DagVersion.objects.filter(pk__in=version_ids).defer("config", "diff")
    return {version.pk: version.cached_node_map() for version in versions}


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
