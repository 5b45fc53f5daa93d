"""The task state machine refuses every move §4 does not list, and keeps the counters right."""

from __future__ import annotations

import itertools

import pytest

from apps.tasks import lifecycle
from apps.tasks.models import NodeLane, Task, TaskState
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.smoke

LEGAL = {
    ("pending", "queued"),
    ("queued", "running"),
    ("running", "succeeded"),
    ("running", "retry_wait"),
    ("running", "failed"),
    ("running", "canceled"),
    ("retry_wait", "pending"),
    ("queued", "pending"),
    ("pending", "canceled"),
    ("queued", "canceled"),
    ("retry_wait", "canceled"),
    ("pending", "skipped_memoized"),
    ("failed", "pending"),
    ("canceled", "pending"),
}


def test_the_table_in_code_matches_the_design():
    assert {(a, b) for a, targets in lifecycle.ALLOWED.items() for b in targets} == LEGAL


@pytest.mark.parametrize(
    ("start", "target"), list(itertools.product(TaskState.values, TaskState.values))
)
def test_every_move(world: World, recorder: RecordingAdapter, start: str, target: str):
    deploy(world.acme, chain_config())
    world["operator"].client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    task = Task.objects.get(node_id="op1")
    Task.objects.filter(pk=task.pk).update(state=start)
    lane = NodeLane.objects.get(node_id="op1", lane="live")
    weight = lifecycle._weight(start)
    NodeLane.objects.filter(pk=lane.pk).update(pending=weight[0], in_flight=weight[1])
    task.refresh_from_db()
    if (start, target) in LEGAL:
        lifecycle._move(task, target)
        assert Task.objects.get(pk=task.pk).state == target
        lane.refresh_from_db()
        assert (lane.pending, lane.in_flight) == lifecycle._weight(target)
    else:
        with pytest.raises(lifecycle.IllegalTransition):
            lifecycle._move(task, target)
        assert Task.objects.get(pk=task.pk).state == start


def test_a_stale_row_cannot_overwrite_a_concurrent_move(world: World, recorder):
    deploy(world.acme, chain_config())
    world["operator"].client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    stale = Task.objects.get(node_id="op1")
    Task.objects.filter(pk=stale.pk).update(state="canceled")
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.task_queue_many([stale])
    assert Task.objects.get(pk=stale.pk).state == "canceled"
