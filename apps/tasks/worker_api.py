"""The worker protocol (DESIGN.md D7, §6): fetch, heartbeat, checkpoint, complete, fail.

Each call is one short transaction on locked rows. The lease token names one attempt; after
the lease expired or the task was canceled, writes answer 409 and nothing is recorded.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from apps.datasets.models import Commit, Dataset
from apps.datasets.ranges import canonical_range
from apps.datasets.services import (
    CommitRequest,
    commits_record,
    datasets_named,
    inspect_outputs,
)
from apps.datasets.storage import FileFacts, prefix_of_generation
from apps.orgs.authentication import WorkerPrincipal
from apps.orgs.bulk import insert_all, update_each
from apps.orgs.compiled import load_models
from apps.orgs.errors import Conflict, NotFound, SluiceError, ValidationFailed
from apps.secrets import services as secrets_service
from apps.tasks import lifecycle
from apps.tasks.fanout import fan_out_inserted, fanned_out_stamp
from apps.tasks.lifecycle import counted_atomic
from apps.tasks.models import Attempt, AttemptOutcome, Event, EventKind, Task, TaskInput, TaskState
from apps.tasks.runtimes import dispatch_token
from apps.tasks.triggers import dispatch_after_commit

LOG_LIMIT_BYTES = 64 * 1024
MAX_BATCH = 100  # items per call of a batch form


def lease_ttl_s() -> float:
    return float(settings.SLUICE_LEASE_TTL_S)


class NotLeasable(Conflict):
    code = "not_leasable"


class LeaseExpired(Conflict):
    code = "lease_expired"


class TaskCanceled(Conflict):
    code = "task_canceled"


def log_tail(text: str | None) -> str:
    raw = (text or "").encode("utf-8", "replace")
    return raw[-LOG_LIMIT_BYTES:].decode("utf-8", "ignore")


def _may_act_for(principal: WorkerPrincipal, org_id: int) -> bool:
    """The pool key acts for every org; an org's worker key only for that org."""
    return principal.org is None or principal.org.pk == org_id


# Read through `cached_node_map`, not with every task row.
_UNREAD_VERSION_FIELDS = ("dag_version__config", "dag_version__diff")


def _node(task: Task) -> dict[str, Any]:
    return task.dag_version.cached_node_map()[task.node_id]


# What a lease or a completion reads with each task row.
_TASK_RELATIONS = ("dag_version__dag", "event__commit__dataset")


def _locked_tasks(ids: list[uuid.UUID], *relations: str, org_id: int | None) -> list[Task]:
    """The tasks among `ids` (of `org_id`, unless None), locked in id order, with their
    version, DAG, event, commit and dataset (and `relations`); one statement, compiled once
    per connection."""

    def build() -> QuerySet[Task]:
        tasks = Task.objects.all() if org_id is None else Task.objects.filter(org_id=org_id)
        return (
            tasks.select_for_update(of=("self",))
            .select_related(*_TASK_RELATIONS, *relations)
            .defer(*_UNREAD_VERSION_FIELDS)
            .filter(pk__any=ids)
            .order_by("pk")
        )

    scope = [] if org_id is None else [org_id]
    return load_models(("locked_tasks", org_id is None, relations), build, [*scope, ids])


def _org_scope(principal: WorkerPrincipal) -> int | None:
    """The org whose tasks a worker key may touch; None for the platform's pool key."""
    return None if principal.org is None else principal.org.pk


def _staging(storage_prefix: str, generation: int, task_id: uuid.UUID, attempt: int) -> str:
    return f"{prefix_of_generation(storage_prefix, generation)}/_staging/{task_id}/{attempt}/"


def event_body(event: Event) -> dict[str, Any]:
    return event_body_of(
        event.pk,
        event.kind,
        event.dataset_id,
        event.commit.version if event.commit else None,
        event.range_start,
        event.range_end,
        event.event_time,
        event.mode,
        event.payload,
    )


def event_body_of(
    event_id: uuid.UUID,
    kind: str,
    dataset_id: str,
    version: str | None,
    range_start: str,
    range_end: str,
    event_time: dt.datetime,
    mode: str,
    payload: Any,
) -> dict[str, Any]:
    """An event as the API shows it, from its values."""
    return {
        "id": str(event_id),
        "kind": kind,
        "dataset": dataset_id,
        "version": version,
        "range_start": range_start or None,
        "range_end": range_end or None,
        "event_time": event_time.isoformat(),
        "mode": mode,
        "payload": payload,
    }


def input_dataset_body(
    dataset_id: str, version: str, backend: str, schema: Any, files: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a lease tells of the commit its input event names."""
    return {
        "dataset": dataset_id,
        "version": version,
        "backend": backend,
        "schema": schema,
        "files": [f["path"] for f in files],
    }


def output_body(
    dataset_id: str,
    backend: str,
    generation: int,
    schema: Any,
    storage_prefix: str,
    task_id: uuid.UUID,
    attempt: int,
) -> dict[str, Any]:
    """What a lease tells of the dataset its task writes, and where it stages its files."""
    return {
        "dataset": dataset_id,
        "backend": backend,
        "generation": generation,
        "schema": schema,
        "staging": _staging(storage_prefix, generation, task_id, attempt),
    }


@dataclass(frozen=True)
class LeasedTask:
    """The task's part of a lease body, as plain values: the lean fetch reads them from its
    rows without building models (six per task were half of a 100-task fetch)."""

    task_id: uuid.UUID
    attempt: int
    max_attempts: int
    mode: str
    lane: str
    lease_token: str | None
    lease_expires_at: dt.datetime | None
    dag: str
    dag_version: int
    node_id: str


def lease_body(
    task: Task,
    node: dict[str, Any],
    secrets_for_task: dict[str, str],
    output_dataset: Dataset | None = None,
) -> dict:
    event = task.event
    input_datasets = []
    if event.commit is not None:
        dataset = event.commit.dataset
        input_datasets.append(
            input_dataset_body(
                event.dataset_id,
                event.commit.version,
                dataset.backend,
                dataset.schema,
                event.commit.files,
            )
        )
    output = None
    if node.get("output"):
        dataset = output_dataset or Dataset.objects.get(
            org=task.org_id, dataset_id=node["output"]["dataset"]
        )
        output = output_body(
            dataset.dataset_id,
            dataset.backend,
            dataset.live_generation,
            dataset.schema,
            dataset.storage_prefix,
            task.pk,
            task.attempt,
        )
    leased = LeasedTask(
        task.pk,
        task.attempt,
        task.max_attempts,
        task.mode,
        task.lane,
        task.lease_token,
        task.lease_expires_at,
        task.dag_version.dag.name,
        task.dag_version.number,
        task.node_id,
    )
    return lease_body_of(leased, node, event_body(event), input_datasets, output, secrets_for_task)


def lease_body_of(
    task: LeasedTask,
    node: dict[str, Any],
    event: dict[str, Any],
    input_datasets: list[dict[str, Any]],
    output: dict[str, Any] | None,
    secrets_for_task: dict[str, str],
) -> dict[str, Any]:
    """The body of a lease (DESIGN.md §6), from its parts."""
    node_body: dict[str, Any] = {
        "dag": task.dag,
        "dag_version": task.dag_version,
        "id": task.node_id,
        "kind": node["kind"],
        "runtime": node.get("runtime", node["kind"]),
        "handler": node.get("handler"),
        "config": node.get("config", {}),
    }
    if node["kind"] == "sql":
        node_body["query"] = node["query"]
    return {
        "task": {
            "id": str(task.task_id),
            "attempt": task.attempt,
            "max_attempts": task.max_attempts,
            "mode": task.mode,
            "lane": task.lane,
            "timeout_s": node.get("timeout_s", 3600),
        },
        "lease": {
            "token": task.lease_token,
            "expires_at": task.lease_expires_at.isoformat() if task.lease_expires_at else None,
            "heartbeat_interval_s": round(lease_ttl_s() / 3, 3),
        },
        "node": node_body,
        "input": {"event": event, "datasets": input_datasets},
        "output": output,
        "secrets": secrets_for_task,
        "idempotency": {"task_id": str(task.task_id), "attempt": task.attempt},
    }


def task_fetch(
    principal: WorkerPrincipal, task_id: str, token: str, worker_id: str
) -> dict[str, Any]:
    """Lease a new attempt of a queued task: exactly once per dispatch (409 otherwise)."""
    try:
        task_uuid = uuid.UUID(str(task_id))
    except ValueError:
        raise ValidationFailed.field("task_id", "must be a UUID") from None
    outcome = _lease(principal, {task_uuid: token or ""}, worker_id)[task_uuid]
    if isinstance(outcome, SluiceError):
        raise outcome
    return outcome


def refusal(task_id: Any, index: int, error: SluiceError) -> dict[str, Any]:
    """A batch item's answer when that item is refused (the batch goes on)."""
    return {"task_id": task_id, "index": index, "code": error.code, "detail": error.detail}


def task_fetch_many(
    principal: WorkerPrincipal, items: list[Any], worker_id: str
) -> list[dict[str, Any]]:
    """The batch form of `task_fetch`: every leasable task of the batch is leased in one
    transaction with a handful of statements; each other item gets its own refusal."""
    results: dict[int, dict[str, Any]] = {}
    wanted: dict[uuid.UUID, tuple[int, str]] = {}
    for index, item in enumerate(items):
        task_id = item.get("task_id") if isinstance(item, dict) else None
        try:
            task_uuid = uuid.UUID(str(task_id))
        except ValueError:
            results[index] = refusal(task_id, index, ValidationFailed("task_id must be a UUID"))
            continue
        if task_uuid in wanted:
            results[index] = refusal(task_id, index, NotLeasable("a repeat in this batch"))
            continue
        wanted[task_uuid] = (index, str(item.get("dispatch_token") or ""))
    outcomes = _lease(principal, {task: token for task, (_, token) in wanted.items()}, worker_id)
    for task_uuid, (index, _) in wanted.items():
        outcome = outcomes[task_uuid]
        if isinstance(outcome, SluiceError):
            outcome = refusal(str(task_uuid), index, outcome)
        results[index] = outcome
    return [results[index] for index in range(len(items))]


def _lease(
    principal: WorkerPrincipal, tokens: dict[uuid.UUID, str], worker_id: str
) -> dict[uuid.UUID, dict[str, Any] | SluiceError]:
    """Lease every task of `tokens` (id -> dispatch token) that its dispatch may lease, in one
    transaction with a handful of statements: its lease body, or why not."""
    outcomes: dict[uuid.UUID, dict[str, Any] | SluiceError] = {}
    with counted_atomic():
        found = {
            task.pk: task for task in _locked_tasks(sorted(tokens), org_id=_org_scope(principal))
        }
        leasable = []
        for task_uuid, token in tokens.items():
            task = found.get(task_uuid)
            if task is None:
                outcomes[task_uuid] = NotFound(f"No task {task_uuid}.")
            elif task.state != TaskState.QUEUED or not secrets.compare_digest(
                token, dispatch_token(task.pk, task.dispatch_count)
            ):
                outcomes[task_uuid] = NotLeasable(
                    f"Task {task_uuid} is {task.state}; this dispatch cannot lease it."
                )
            else:
                leasable.append(task)
        if not leasable:
            return outcomes
        leases = {task.pk: secrets.token_urlsafe(32) for task in leasable}
        lifecycle.task_start_many(
            leasable,
            leases=leases,
            lease_ttl_s=lease_ttl_s(),
            timeout_of=lambda task: float(_node(task).get("timeout_s", 3600)),
        )
        now = timezone.now()
        insert_all(
            Attempt,
            [
                Attempt(
                    task=task,
                    number=task.attempt,
                    worker_id=worker_id[:200],
                    lease_token=leases[task.pk],
                    heartbeat_at=now,
                )
                for task in leasable
            ],
        )
        outputs = _output_datasets(leasable)
        for task in leasable:
            node = _node(task)
            # Only while leased, only the org secrets the node names; each one is audited.
            handed = secrets_service.handout(task.org_id, node.get("secrets") or [], task.pk)
            dataset = outputs.get((task.org_id, (node.get("output") or {}).get("dataset")))
            outcomes[task.pk] = lease_body(task, node, handed, dataset)
    return outcomes


def _output_datasets(tasks: list[Task]) -> dict[tuple[int, str | None], Dataset]:
    """The output datasets of the tasks' nodes, read once per batch."""
    wanted: dict[int, set[str]] = {}
    for task in tasks:
        output = _node(task).get("output")
        if output:
            wanted.setdefault(task.org_id, set()).add(output["dataset"])
    return {
        (dataset.org_id, dataset.dataset_id): dataset
        for org_id, ids in wanted.items()
        for dataset in datasets_named(org_id, sorted(ids))
    }


@dataclass
class LeasedAttempt:
    attempt: Attempt
    task: Task


def _locked_attempt(principal: WorkerPrincipal, lease_token: str) -> LeasedAttempt:
    if not isinstance(lease_token, str) or not lease_token:
        raise ValidationFailed.field("lease_token", "required")
    attempts = _locked_attempts([lease_token])
    scope = _org_scope(principal)
    tasks = _locked_tasks([attempts[0].task_id], "org", org_id=scope) if attempts else []
    if not tasks:  # no such lease, or another org's
        raise NotFound("No attempt holds this lease token.")
    attempt, task = attempts[0], tasks[0]
    attempt.task = task
    return LeasedAttempt(attempt, task)


def _locked_attempts(lease_tokens: list[str]) -> list[Attempt]:
    """The attempts holding these lease tokens, locked in id order."""
    return load_models(
        "locked_attempts",
        lambda: (
            Attempt.objects.select_for_update(of=("self",))
            .filter(lease_token__any=lease_tokens)
            .order_by("pk")
        ),
        [lease_tokens],
    )


def _require_live_lease(leased: LeasedAttempt) -> None:
    task, attempt = leased.task, leased.attempt
    if task.state == TaskState.CANCELED or attempt.outcome == AttemptOutcome.CANCELED:
        raise TaskCanceled(f"Task {task.pk} was canceled.")
    if (
        attempt.outcome
        or task.state != TaskState.RUNNING
        or task.lease_token != attempt.lease_token
        or task.lease_expires_at is None
        or task.lease_expires_at <= timezone.now()
    ):
        raise LeaseExpired(f"The lease of task {task.pk} attempt {attempt.number} has expired.")


def _end_attempt(attempt: Attempt, outcome: str, **fields: Any) -> None:
    attempt.outcome = outcome
    attempt.ended_at = timezone.now()
    for name, value in fields.items():
        setattr(attempt, name, value)
    attempt.save(update_fields=["outcome", "ended_at", *fields])


def task_heartbeat(
    principal: WorkerPrincipal, lease_token: str, progress: dict[str, Any] | None
) -> dict[str, Any]:
    with counted_atomic():
        leased = _locked_attempt(principal, lease_token)
        task, attempt = leased.task, leased.attempt
        if task.state == TaskState.CANCELED and attempt.outcome == AttemptOutcome.CANCELED:
            return {"task_id": str(task.pk), "lease_expires_at": None, "cancel": True}
        _require_live_lease(leased)
        now = timezone.now()
        expires = now + dt.timedelta(seconds=lease_ttl_s())
        Task.objects.filter(pk=task.pk, state=TaskState.RUNNING).update(lease_expires_at=expires)
        attempt.heartbeat_at = now
        fields = ["heartbeat_at"]
        if progress:
            attempt.progress = progress
            fields.append("progress")
        attempt.save(update_fields=fields)
    return {"task_id": str(task.pk), "lease_expires_at": expires.isoformat(), "cancel": False}


def _range(task: Task, body: dict[str, Any], node: dict[str, Any]) -> tuple[str, str]:
    """The output range: the body's, typed by the output dataset, else the input event's."""
    start, end = body.get("range_start"), body.get("range_end")
    if start is None and end is None:
        return task.event.range_start, task.event.range_end
    dataset = _output_dataset(task, node)
    range_type = dataset.range_type if dataset else "string"
    return canonical_range(range_type, start, end)


def _names_outputs(body: dict[str, Any]) -> bool:
    """Whether a completion says anything of outputs: missing or empty is an operator that
    returned nothing (no files to check); anything else is checked, and refused unless it is
    a list of the node's output files."""
    return body.get("outputs") not in (None, [])


def _output_files(node: dict[str, Any], outputs: Any) -> list[dict[str, Any]]:
    """The files named for the node's output dataset (the platform only records them here)."""
    target = (node.get("output") or {}).get("dataset")
    files: list[dict[str, Any]] = []
    if outputs in (None, []):
        return files
    if not isinstance(outputs, list):
        raise ValidationFailed.field("outputs", "must be a list")
    for i, output in enumerate(outputs):
        if not isinstance(output, dict) or output.get("dataset") != target:
            raise ValidationFailed.field(
                f"outputs[{i}].dataset", f"this node writes only {target!r}"
            )
        for j, item in enumerate(output.get("files") or []):
            path = f"outputs[{i}].files[{j}]"
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise ValidationFailed.field(path, "must be {path, rows, bytes}")
            counts = {key: item.get(key, 0) for key in ("rows", "bytes")}
            for key, value in counts.items():
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValidationFailed.field(f"{path}.{key}", "must be an integer ≥ 0")
            files.append({"path": item["path"], **counts})
    return files


def _commit_request(
    task: Task, node: dict[str, Any], facts: list[FileFacts], range_: tuple[str, str]
) -> CommitRequest:
    return CommitRequest(
        dataset_id=node["output"]["dataset"],
        files=[{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in facts],
        schemas=tuple(f.schema for f in facts),
        range_start=range_[0],
        range_end=range_[1],
        producer_dag=task.dag_version.dag.name,
        producer_node=task.node_id,
        producer_task_id=task.pk,
    )


def _output_event(
    task: Task,
    node: dict[str, Any],
    commit: Commit,
    range_: tuple[str, str],
    payload: dict[str, Any],
    checkpoint_n: int,
) -> Event:
    """The one event of a commit (unsaved). A `replace` write supersedes the earlier commits
    inside its range, so it tells the consumers to recompute that range (D10): the event is
    an invalidation, one level down."""
    output = node["output"]
    replaces = output.get("update_strategy") == "replace"
    source = task.event
    return Event(
        org_id=task.org_id,
        dataset_id=output["dataset"],
        kind=EventKind.INVALIDATE if replaces else EventKind.DATA,
        mode=task.mode,
        range_start=range_[0],
        range_end=range_[1],
        payload=payload or {},
        commit=commit,
        producer_task=task,
        checkpoint_n=checkpoint_n,
        origin_id=(source.origin_id or source.pk) if replaces else None,
        depth=source.depth + 1 if replaces else 0,
        fanned_out_at=fanned_out_stamp(timezone.now()),
    )


def _emit(
    task: Task,
    node: dict[str, Any],
    facts: list[FileFacts],
    range_: tuple[str, str],
    payload: dict[str, Any],
    checkpoint_n: int,
) -> Event | None:
    """Record a commit of the checked files and its one data event, and fan it out, in the
    caller's transaction."""
    if not node.get("output"):
        return None
    [commit] = commits_record(task.org, [_commit_request(task, node, facts, range_)])
    event = _output_event(task, node, commit, range_, payload, checkpoint_n)
    event.save(force_insert=True)
    fan_out_inserted([event])
    return event


def task_checkpoint(principal: WorkerPrincipal, body: dict[str, Any]) -> dict[str, Any]:
    """A mid-task commit, durable at once, keyed (task, n): a retry's same n gets the original."""
    n = body.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValidationFailed.field("n", "must be an integer ≥ 1")
    token = body.get("lease_token")
    repeat = Event.objects.filter(
        producer_task__attempts__lease_token=token, checkpoint_n=n
    ).exists()
    # A repeated n is answered with the original below, under the lock; its files are an
    # earlier attempt's, so they are not checked again.
    facts = (
        []
        if repeat
        else _checked_files(
            principal,
            token,
            "files",
            lambda node: [
                {
                    "dataset": (node.get("output") or {}).get("dataset"),
                    "files": body.get("files") or [],
                }
            ],
        )
    )
    with counted_atomic():
        leased = _locked_attempt(principal, body.get("lease_token", ""))
        task = leased.task
        _require_live_lease(leased)
        existing = Event.objects.filter(producer_task=task, checkpoint_n=n).first()
        if existing is not None:
            return {"task_id": str(task.pk), "event": {"id": str(existing.pk), "created": False}}
        node = _node(task)
        event = _emit(task, node, facts, _range(task, body, node), body.get("payload") or {}, n)
        dispatch_after_commit()
    if event is None:
        raise ValidationFailed.field("n", "this node has no output dataset to checkpoint")
    return {"task_id": str(task.pk), "event": {"id": str(event.pk), "created": True}}


def _checked_files(
    principal: WorkerPrincipal,
    lease_token: Any,
    where: str,
    outputs_of: Callable[[dict[str, Any]], Any],
) -> list[FileFacts]:
    """Check the files a worker names (under its staging prefix, present, rows as reported)
    before any lock is taken: reading parquet footers is I/O, possibly on S3. The locked
    transaction then re-checks the lease, so a check for a lease that is gone commits
    nothing."""
    attempt = (
        Attempt.objects.select_related("task__dag_version").filter(lease_token=lease_token).first()
        if isinstance(lease_token, str) and lease_token
        else None
    )
    if attempt is None or attempt.outcome or attempt.task.state != TaskState.RUNNING:
        return []  # the locked path answers 404 or 409, or repeats a finished answer
    task = attempt.task
    if not _may_act_for(principal, task.org_id):
        return []
    node = _node(task)
    files = _output_files(node, outputs_of(node))
    dataset = _output_dataset(task, node) if files else None
    if dataset is None:
        return []
    prefix = _staging(dataset.storage_prefix, dataset.live_generation, task.pk, attempt.number)
    return inspect_outputs(files, prefix, where)


def _output_dataset(task: Task, node: dict[str, Any]) -> Dataset | None:
    output = node.get("output")
    if not output:
        return None
    return Dataset.objects.get(org_id=task.org_id, dataset_id=output["dataset"])


def _complete_answer(task: Task) -> dict[str, Any]:
    event = {"id": str(task.output_event_id)} if task.output_event_id else None
    return {"task_id": str(task.pk), "state": task.state, "event": event}


def task_complete(principal: WorkerPrincipal, body: dict[str, Any]) -> dict[str, Any]:
    """Commit the attempt's output, succeed the task and emit one data event, atomically.
    The same call again answers the same; after expiry or cancel it is refused."""
    facts = (
        _checked_files(
            principal, body.get("lease_token"), "outputs[0].files", lambda node: body.get("outputs")
        )
        if _names_outputs(body)
        else []
    )
    with counted_atomic():
        leased = _locked_attempt(principal, body.get("lease_token", ""))
        task, attempt = leased.task, leased.attempt
        if attempt.outcome == AttemptOutcome.SUCCEEDED:
            return _complete_answer(task)
        _require_live_lease(leased)
        node = _node(task)
        range_ = _range(task, body, node)
        event = _emit(task, node, facts, range_, body.get("payload") or {}, 0)
        commit = task.event.commit
        if commit is not None:
            TaskInput.objects.create(
                task=task,
                dataset_id=task.event.dataset_id,
                generation=commit.generation,
                seq_start=commit.seq,
                seq_end=commit.seq,
                event=task.event,
            )
        lifecycle.task_succeed(task, output_event_id=event.pk if event else None)
        _end_attempt(
            attempt,
            AttemptOutcome.SUCCEEDED,
            logs=log_tail(body.get("logs")),
            metrics=body.get("metrics") or {},
        )
        dispatch_after_commit()
    return _complete_answer(task)


def task_complete_many(principal: WorkerPrincipal, items: list[Any]) -> list[dict[str, Any]]:
    """The batch form of `task_complete`: the whole batch in one short transaction — attempts
    and tasks locked with one statement each, commits, events, lineage and moves written in
    bulk. Each item is answered as `task_complete` would answer it alone; should a commit be
    refused (a schema problem of one item), each item runs alone instead."""
    try:
        return _complete_batch(principal, items)
    except ValidationFailed:
        return [complete_alone(principal, item, index) for index, item in enumerate(items)]


def complete_alone(principal: WorkerPrincipal, item: Any, index: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        return refusal(None, index, ValidationFailed("each item must be an object"))
    try:
        return task_complete(principal, item)
    except SluiceError as exc:
        return refusal(task_id_of(item), index, exc)


def task_id_of(item: dict[str, Any]) -> str | None:
    """The task a batch item names: by id, or through the attempt holding its lease token."""
    if "task_id" in item:
        return str(item["task_id"])
    token = item.get("lease_token")
    task_id = Attempt.objects.filter(lease_token=token).values_list("task_id", flat=True).first()
    return str(task_id) if task_id else None


def _outputs_of(item: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    return lambda _node: item.get("outputs")


@dataclass
class _Completion:
    index: int
    item: dict[str, Any]
    task: Task
    attempt: Attempt
    node: dict[str, Any]
    range_: tuple[str, str]
    facts: list[FileFacts]


def _complete_batch(principal: WorkerPrincipal, items: list[Any]) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    facts_of: dict[int, list[FileFacts]] = {}
    tokens: dict[str, int] = {}
    later: list[int] = []  # malformed items, and repeats of a token, answered after the batch
    for index, item in enumerate(items):
        token = item.get("lease_token") if isinstance(item, dict) else None
        if not isinstance(token, str) or not token or token in tokens:
            later.append(index)
            continue
        tokens[token] = index
        if _names_outputs(item):  # files are checked before any lock: footers are I/O
            try:
                facts_of[index] = _checked_files(
                    principal, token, "outputs[0].files", _outputs_of(item)
                )
            except SluiceError as exc:
                del tokens[token]
                results[index] = refusal(None, index, exc)
    with counted_atomic():
        attempts = {a.lease_token: a for a in _locked_attempts(list(tokens))}
        task_ids = sorted({a.task_id for a in attempts.values()})
        tasks = {t.pk: t for t in _locked_tasks(task_ids, "org", org_id=None)}
        done: list[_Completion] = []
        for token, index in tokens.items():
            item = items[index]
            attempt = attempts.get(token)
            task = tasks.get(attempt.task_id) if attempt else None
            if attempt is None or task is None or not _may_act_for(principal, task.org_id):
                results[index] = refusal(
                    None, index, NotFound("No attempt holds this lease token.")
                )
                continue
            if attempt.outcome == AttemptOutcome.SUCCEEDED:
                results[index] = _complete_answer(task)
                continue
            try:
                _require_live_lease(LeasedAttempt(attempt, task))
                node = _node(task)
                range_ = _range(task, item, node)
            except SluiceError as exc:
                results[index] = refusal(str(task.pk), index, exc)
                continue
            done.append(
                _Completion(index, item, task, attempt, node, range_, facts_of.get(index, []))
            )
        _record_completions(done)
    for completion in done:
        results[completion.index] = _complete_answer(completion.task)
    for index in later:
        results[index] = complete_alone(principal, items[index], index)
    return [results[index] for index in range(len(items))]


def _record_completions(done: list[_Completion]) -> None:
    """Commits, events (fanned out), lineage, task and attempt moves of a batch, in bulk."""
    if not done:
        return
    producing = [c for c in done if c.node.get("output")]
    by_org: dict[int, list[_Completion]] = {}
    for completion in producing:
        by_org.setdefault(completion.task.org_id, []).append(completion)
    events: list[Event] = []
    for group in by_org.values():
        org = group[0].task.org
        requests = [_commit_request(c.task, c.node, c.facts, c.range_) for c in group]
        for completion, commit in zip(group, commits_record(org, requests), strict=True):
            payload = completion.item.get("payload") or {}
            events.append(
                _output_event(
                    completion.task, completion.node, commit, completion.range_, payload, 0
                )
            )
    insert_all(Event, events)
    fan_out_inserted(events)
    output_of = {event.producer_task_id: event.pk for event in events}
    insert_all(
        TaskInput,
        [
            TaskInput(
                task=c.task,
                dataset_id=c.task.event.dataset_id,
                generation=c.task.event.commit.generation,
                seq_start=c.task.event.commit.seq,
                seq_end=c.task.event.commit.seq,
                event=c.task.event,
            )
            for c in done
            if c.task.event.commit is not None
        ],
    )
    lifecycle.task_succeed_many([c.task for c in done], output_event_ids=output_of)
    now = timezone.now()
    ended = {
        c.attempt.pk: {
            "outcome": AttemptOutcome.SUCCEEDED,
            "ended_at": now,
            "logs": log_tail(c.item.get("logs")),
            "metrics": c.item.get("metrics") or {},
        }
        for c in done
    }
    update_each(Attempt, ended)
    for c in done:
        for name, value in ended[c.attempt.pk].items():
            setattr(c.attempt, name, value)
    dispatch_after_commit()


def task_fail(principal: WorkerPrincipal, body: dict[str, Any]) -> dict[str, Any]:
    error = body.get("error") or {}
    if not isinstance(error, dict):
        raise ValidationFailed.field("error", "must be an object {type, message, traceback}")
    retryable = body.get("retryable", True)
    if not isinstance(retryable, bool):
        raise ValidationFailed.field("retryable", "must be true or false")
    with counted_atomic():
        leased = _locked_attempt(principal, body.get("lease_token", ""))
        task, attempt = leased.task, leased.attempt
        if attempt.outcome == AttemptOutcome.FAILED:
            return _fail_answer(task)
        _require_live_lease(leased)
        clean_error = {
            "type": str(error.get("type", "Error"))[:200],
            "message": str(error.get("message", ""))[:4000],
            "traceback": log_tail(str(error.get("traceback", "")))[-16000:],
        }
        lifecycle.task_attempt_failed(
            task, error=clean_error, retryable=retryable, retry=_node(task).get("retry", {})
        )
        _end_attempt(
            attempt, AttemptOutcome.FAILED, error=clean_error, logs=log_tail(body.get("logs"))
        )
    return _fail_answer(task)


def _fail_answer(task: Task) -> dict[str, Any]:
    next_at = task.next_attempt_at.isoformat() if task.next_attempt_at else None
    return {"task_id": str(task.pk), "state": task.state, "next_attempt_at": next_at}
