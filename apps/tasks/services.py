"""Operator actions on tasks and lanes: cancel, retry, requeue, pause sync. The API and the
admin call these."""

from __future__ import annotations

from apps.dags.models import Dag
from apps.orgs.errors import Conflict
from apps.tasks import lifecycle
from apps.tasks.lifecycle import counted_atomic
from apps.tasks.models import OPEN_STATES, AttemptOutcome, NodeLane, Task, TaskState
from apps.tasks.triggers import dispatch_after_commit


def _locked(task: Task) -> Task:
    return Task.objects.select_for_update(of=("self",)).get(pk=task.pk)


def task_cancel(task: Task) -> Task:
    """Cancel an open task. A running attempt is told at its next heartbeat and its late
    complete is refused."""
    with counted_atomic():
        locked = _locked(task)
        if locked.state == TaskState.CANCELED:
            return locked
        if locked.state not in OPEN_STATES:
            raise Conflict(f"A {locked.state} task cannot be canceled.", code="not_cancelable")
        lease = locked.lease_token
        lifecycle.task_cancel(locked)
        if lease:
            locked.attempts.filter(lease_token=lease, outcome="").update(
                outcome=AttemptOutcome.CANCELED
            )
    return locked


def task_retry(task: Task) -> Task:
    """A failed or canceled task runs again as a new attempt, with its attempts counted afresh."""
    with counted_atomic():
        locked = _locked(task)
        if locked.state not in (TaskState.FAILED, TaskState.CANCELED):
            raise Conflict(
                f"Only failed or canceled tasks can be retried; this one is {locked.state}.",
                code="not_retryable",
            )
        lifecycle.task_retry_by_hand(locked)
        dispatch_after_commit()
    return locked


def task_requeue(task: Task) -> Task:
    """A queued task whose message is believed lost goes back to pending at once."""
    with counted_atomic():
        locked = _locked(task)
        if locked.state != TaskState.QUEUED:
            raise Conflict(
                f"Only queued tasks can be requeued; this one is {locked.state}.",
                code="not_requeueable",
            )
        lifecycle.task_requeue_many([locked])
        dispatch_after_commit()
    return locked


def sync_lane_pauses(dag: Dag) -> None:
    """Mirror the DAG's pauses onto its counter rows (runs inside the pause transaction)."""
    lanes = NodeLane.objects.filter(dag_version__dag=dag).only("id", "node_id", "lane", "paused")
    to_pause: list[int] = []
    to_resume: list[int] = []
    for lane in lanes:
        paused = dag.is_paused(lane.node_id, lane.lane)
        if paused != lane.paused:
            (to_pause if paused else to_resume).append(lane.pk)
    NodeLane.objects.filter(pk__in=to_pause).update(paused=True)
    NodeLane.objects.filter(pk__in=to_resume).update(paused=False)
    if to_resume:
        dispatch_after_commit()
