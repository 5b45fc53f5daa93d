"""Events, tasks, attempts, lineage and the dispatch counters.

The keys that every task writes (an event's org, commit and producer; a task's org, version,
event and output event; an attempt's task; an input's task and event) are Django relations
without a database constraint (ADR 0012): each constraint costs every insert a lookup and a
row lock on the parent (the org and version rows locked by every task), and 10,000 inserts
with three of them took ten times as long as without. Nothing deletes these parents but
Django's own cascade, which follows the relations all the same.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from apps.dags.models import DagVersion
from apps.datasets.models import Commit
from apps.orgs.ids import time_ordered_uuid
from apps.orgs.models import Org, OrgScopedQuerySet


class EventKind(models.TextChoices):
    DATA = "data", "Data"
    MANIFEST = "manifest", "Manifest"
    INVALIDATE = "invalidate", "Invalidate"


class Mode(models.TextChoices):
    LIVE = "live", "Live"
    BACKFILL = "backfill", "Backfill"


class TaskState(models.TextChoices):
    PENDING = "pending", "Pending"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    RETRY_WAIT = "retry_wait", "Waiting to retry"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"
    SKIPPED_MEMOIZED = "skipped_memoized", "Skipped (memoized)"


# Groups of states (STYLE.md pattern 2).
IN_FLIGHT_STATES = frozenset({TaskState.QUEUED, TaskState.RUNNING})
OPEN_STATES = frozenset(
    {TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING, TaskState.RETRY_WAIT}
)


class AttemptOutcome(models.TextChoices):
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    LEASE_EXPIRED = "lease_expired", "Lease expired"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELED = "canceled", "Canceled"


class Event(models.Model):
    """Notice of a commit (`data`), a batch (`manifest`) or an invalidation on a dataset."""

    org_path: ClassVar[str] = "org"

    id = models.UUIDField(primary_key=True, default=time_ordered_uuid, editable=False)
    # Indexed by event_dataset_idx; the other keys below are mostly empty, so their indexes
    # are partial (or the unique constraint's): a source event writes into few indexes.
    org = models.ForeignKey(
        Org, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False
    )
    dataset_id = models.CharField(max_length=128)
    kind = models.CharField(max_length=16, choices=EventKind.choices, default=EventKind.DATA)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.LIVE)
    idempotency_key = models.CharField(max_length=200, blank=True)
    range_start = models.CharField(max_length=64, blank=True)
    range_end = models.CharField(max_length=64, blank=True)
    event_time = models.DateTimeField(default=timezone.now)
    payload = models.JSONField(default=dict, blank=True)
    commit = models.ForeignKey(
        Commit,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="events",
        db_index=False,
        db_constraint=False,
    )
    producer_task = models.ForeignKey(
        "Task",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="emitted_events",
        db_index=False,
        db_constraint=False,
    )
    # Checkpoint number within the producing task (D7); 0 for the task's final event.
    checkpoint_n = models.PositiveIntegerField(null=True, blank=True)
    # Invalidations (D10): the event a cascade started from, and how far down it has come.
    origin = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    depth = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    fanned_out_at = models.DateTimeField(null=True, blank=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "events"
        constraints = [
            models.UniqueConstraint(
                fields=["org", "dataset_id", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="event_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["producer_task", "checkpoint_n"],
                condition=Q(producer_task__isnull=False),
                name="event_one_per_task_checkpoint",
            ),
        ]
        indexes = [
            models.Index(fields=["org", "dataset_id", "-created_at"], name="event_dataset_idx"),
            models.Index(
                fields=["created_at"],
                condition=Q(fanned_out_at__isnull=True),
                name="event_unfanned_idx",
            ),
            models.Index(
                fields=["commit"], condition=Q(commit__isnull=False), name="event_commit_idx"
            ),
            models.Index(
                fields=["origin"], condition=Q(origin__isnull=False), name="event_origin_idx"
            ),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.dataset_id} {self.id}"

    @property
    def version(self) -> str | None:
        return self.commit.version if self.commit_id and self.commit else None


class Task(models.Model):
    """One execution of one node for one event; the attempts are its history."""

    org_path: ClassVar[str] = "org"

    id = models.UUIDField(primary_key=True, default=time_ordered_uuid, editable=False)
    # Every index costs each state change a write (a state change is never a HOT update), so
    # none of the keys has an index of its own: task_org_recent_idx starts with the org, the
    # unique constraint with the event, and the claim index with the version. Nothing looks
    # up all the tasks of a version but the cascade of deleting one.
    org = models.ForeignKey(
        Org, on_delete=models.CASCADE, related_name="tasks", db_index=False, db_constraint=False
    )
    dag_version = models.ForeignKey(
        DagVersion,
        on_delete=models.CASCADE,
        related_name="tasks",
        db_index=False,
        db_constraint=False,
    )
    node_id = models.CharField(max_length=63)
    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="tasks", db_index=False, db_constraint=False
    )
    state = models.CharField(max_length=16, choices=TaskState.choices, default=TaskState.PENDING)
    lane = models.CharField(max_length=16, choices=Mode.choices, default=Mode.LIVE)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.LIVE)
    attempt = models.PositiveIntegerField(default=0, help_text="Number of the latest attempt.")
    attempts_base = models.PositiveIntegerField(
        default=0, help_text="Attempts before the last retry by hand; max_attempts counts after."
    )
    max_attempts = models.PositiveIntegerField(default=3)
    dispatch_count = models.PositiveIntegerField(default=0)
    # NULL when unleased. Not indexed: a token is looked up on its attempt, whose unique
    # constraint also keeps two leases from sharing one (both are written together).
    lease_token = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Attempt timeout.")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    output_event = models.ForeignKey(
        Event,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    memo_key = models.CharField(max_length=64, blank=True, help_text="D9; empty: never memoized")

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "tasks"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "dag_version", "node_id"], name="task_one_per_node_event"
            ),
        ]
        indexes = [
            # Claims walk pending tasks of one (version, node, lane), oldest first.
            models.Index(
                fields=["dag_version", "node_id", "lane", "created_at"],
                condition=Q(state="pending"),
                name="task_claimable_idx",
            ),
            models.Index(
                fields=["lease_expires_at"], condition=Q(state="running"), name="task_lease_idx"
            ),
            models.Index(
                fields=["deadline_at"], condition=Q(state="running"), name="task_deadline_idx"
            ),
            models.Index(
                fields=["next_attempt_at"], condition=Q(state="retry_wait"), name="task_retry_idx"
            ),
            models.Index(fields=["queued_at"], condition=Q(state="queued"), name="task_queued_idx"),
            models.Index(fields=["org", "-created_at"], name="task_org_recent_idx"),
            # Without the succeeded tasks, nearly all of them (a list of an org's succeeded
            # tasks walks task_org_recent_idx), nor the passing states that have their own
            # partial index and last a bounded time (queued and running under the lane's
            # cap, retry_wait up to the node's max backoff): a claim, a fetch and a reaped
            # lease write no entry here.
            models.Index(
                fields=["org", "state", "-created_at"],
                condition=~Q(state__in=["succeeded", "queued", "running", "retry_wait"]),
                name="task_org_state_idx",
            ),
            # Partial wherever the column is mostly empty: a state change then writes no
            # entry into these indexes.
            models.Index(
                fields=["finished_at"],
                condition=Q(finished_at__isnull=False),
                name="task_finished_idx",
            ),
            models.Index(
                fields=["output_event"],
                condition=Q(output_event__isnull=False),
                name="task_output_event_idx",
            ),
            models.Index(
                fields=["memo_key"],
                condition=Q(state="succeeded") & ~Q(memo_key=""),
                name="task_memo_idx",
            ),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.node_id} {self.id}"

    @property
    def attempts_used(self) -> int:
        return self.attempt - self.attempts_base


class Attempt(models.Model):
    org_path: ClassVar[str] = "task__org"

    # Indexed by the (task, number) constraint.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="attempts", db_index=False, db_constraint=False
    )
    number = models.PositiveIntegerField()
    worker_id = models.CharField(max_length=200, blank=True)
    lease_token = models.CharField(max_length=64)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices, blank=True)
    error = models.JSONField(null=True, blank=True)
    logs = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "task_attempts"
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="attempt_number_per_task"),
            models.UniqueConstraint(fields=["lease_token"], name="attempt_lease_token_unique"),
        ]
        ordering = ["task_id", "number"]

    def __str__(self) -> str:
        return f"{self.task_id} #{self.number}"


class TaskInput(models.Model):
    """Lineage (D9): which commits of which dataset a task read."""

    org_path: ClassVar[str] = "task__org"

    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="inputs", db_constraint=False
    )
    dataset_id = models.CharField(max_length=128)
    generation = models.PositiveIntegerField()
    seq_start = models.PositiveBigIntegerField()
    seq_end = models.PositiveBigIntegerField()
    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "task_inputs"
        indexes = [models.Index(fields=["dataset_id", "generation", "seq_start"])]

    def __str__(self) -> str:
        return f"{self.dataset_id}@{self.generation}.{self.seq_start}-{self.seq_end}"


class NodeLane(models.Model):
    """The dispatch counter row of one (version, node, lane) (D11).

    Caps are enforced under this row's lock, not by counting tasks; `runnable` is derived by
    the database and indexed, so claims never rescan paused, blocked, capped or idle work;
    `claim_floor` lets a claim skip the claim index's entries of tasks already claimed
    (ADR 0015).
    """

    org_path: ClassVar[str] = "dag_version__dag__org"

    dag_version = models.ForeignKey(DagVersion, on_delete=models.CASCADE, related_name="lanes")
    node_id = models.CharField(max_length=63)
    lane = models.CharField(max_length=16, choices=Mode.choices)
    priority = models.PositiveSmallIntegerField(default=0, help_text="0 = live, dispatched first.")
    runtime = models.CharField(max_length=16, blank=True)
    pending = models.IntegerField(default=0)
    in_flight = models.IntegerField(default=0)
    cap = models.PositiveIntegerField(default=32)
    paused = models.BooleanField(default=False)
    blocked = models.CharField(max_length=200, blank=True, help_text="Why it cannot dispatch.")
    dispatched_at = models.DateTimeField(default=timezone.now, help_text="Last served.")
    claim_floor = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Claims start at this creation time: no pending task of the lane is older "
        "(checked against the pending count at each claim).",
    )
    runnable = models.GeneratedField(
        # Django resolves a Q as a boolean expression here; django-stubs accept only Expression.
        expression=Q(paused=False)  # type: ignore[arg-type]
        & Q(blocked="")
        & Q(pending__gt=0)
        & Q(in_flight__lt=F("cap")),
        output_field=models.BooleanField(),
        db_persist=True,
    )

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "node_lanes"
        constraints = [
            models.UniqueConstraint(
                fields=["dag_version", "node_id", "lane"], name="node_lane_unique"
            ),
        ]
        indexes = [
            models.Index(
                fields=["priority", "dispatched_at", "id"],
                condition=Q(runnable=True),
                name="node_lane_runnable_idx",
            ),
        ]
        ordering = ["dag_version_id", "node_id", "priority"]

    def __str__(self) -> str:
        return f"{self.node_id}/{self.lane}"
