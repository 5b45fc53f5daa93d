"""The lean single task-complete (notify trigger, PostgreSQL): it records exactly what the
full path records, in two statements, then notifies after their commit; it writes nothing
for a lease that is not live, and hands every case it was not written for to the full path,
whose answers (and errors) stay the API's."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.datasets.models import Commit, Generation
from apps.orgs import services as org_services
from apps.orgs.authentication import WorkerPrincipal
from apps.tasks import lean as lean_paths
from apps.tasks import worker_api, worker_lean
from apps.tasks.fanout import fan_out_pending_events
from apps.tasks.ingest import events_ingest
from apps.tasks.models import Attempt, Event, Task, TaskInput
from apps.tasks.reaper import reconcile_lanes
from apps.tasks.triggers import Wakeups
from apps.tasks.worker_lean import Principal, lean_task_complete, lean_task_fetch
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy, fetch, worker_client

pytestmark = pytest.mark.django_db(transaction=True)
POOL = WorkerPrincipal(org=None, key_id=None)


def as_caller(principal: WorkerPrincipal) -> Principal:
    return lambda: principal


@pytest.fixture
def chain(settings, world: World, recorder: RecordingAdapter) -> APIClient:
    assert connection.vendor == "postgresql", "the lean path is PostgreSQL's"
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    deploy(world.acme, chain_config(nodes=2))
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    return worker_client(key)


def leases(world: World, chain: APIClient, recorder: RecordingAdapter, n: int) -> list[dict]:
    """`n` leased op1 tasks, each of its own source event."""
    first = Event.objects.count()
    events_ingest(
        world.acme,
        {
            "events": [
                {
                    "dataset": "chain.src",
                    "idempotency_key": f"e{first + i}",
                    "range_start": 0,
                    "range_end": 1,
                    "payload": {"i": i},
                }
                for i in range(n)
            ]
        },
    )
    fan_out_pending_events()
    answers = [fetch(chain, message) for message in recorder.take("op1")]
    assert [a.status_code for a in answers] == [200] * n
    return [a.json() for a in answers]


def body(lease: dict, **extra: Any) -> dict[str, Any]:
    return {"lease_token": lease["lease"]["token"], "outputs": [], "logs": "done", **extra}


def lean(lease: dict, principal: WorkerPrincipal = POOL, **extra: Any) -> dict[str, Any] | None:
    return lean_task_complete(as_caller(principal), json.dumps(body(lease, **extra)).encode())


def recorded(task_id: str) -> dict[str, Any]:
    """What a completion wrote, less what differs between any two tasks."""
    task = Task.objects.values().get(pk=task_id)
    event = Event.objects.values().get(producer_task_id=task_id)
    commit = Commit.objects.values().get(producer_task_id=task_id)
    attempt = Attempt.objects.values().get(task_id=task_id)
    lineage = TaskInput.objects.values("dataset_id", "generation", "seq_start", "seq_end")
    [input_event] = lineage.filter(task_id=task_id).values_list("event_id", flat=True)
    assert input_event == Task.objects.get(pk=task_id).event_id
    assert task["output_event_id"] == event["id"] and event["commit_id"] == commit["id"]
    assert task["finished_at"] and attempt["ended_at"]
    return {
        "task": {k: task[k] for k in ("state", "lease_token", "lease_expires_at", "deadline_at")},
        "event": {
            k: v
            for k, v in event.items()
            if k not in ("id", "commit_id", "producer_task_id", "created_at", "event_time")
        }
        | {"payload": event["payload"] == {"shared": 1}},
        "commit": {
            k: v
            for k, v in commit.items()
            if k not in ("id", "seq", "producer_task_id", "created_at")
        },
        "attempt": {k: attempt[k] for k in ("outcome", "logs", "metrics", "error")},
        "lineage": list(lineage.filter(task_id=task_id).values("dataset_id", "generation")),
    }


def test_a_plain_completion_is_recorded_as_the_full_path_records_it(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    for lease in leases(world, chain, recorder, 2):  # op2's inputs: events with commits
        assert lean(lease) is not None
    fan_out_pending_events()
    one, other = [fetch(chain, m).json() for m in recorder.take("op2")]
    extra = {"payload": {"shared": 1}, "metrics": {"rows_seen": 3}}
    full = worker_api.task_complete(POOL, body(other, **extra))
    assert full["state"] == "succeeded"
    answer = lean(one, **extra)
    assert answer == {
        "task_id": one["task"]["id"],
        "state": "succeeded",
        "event": {"id": str(Event.objects.get(producer_task_id=one["task"]["id"]).pk)},
    }
    assert recorded(one["task"]["id"]) == recorded(other["task"]["id"])
    seqs = Commit.objects.filter(producer_node="op2").values_list("seq", flat=True)
    assert sorted(seqs) == [1, 2]  # each took the generation's next seq
    assert _last_seq("chain.op2") == 2
    assert reconcile_lanes() == 0  # the lane counters are what the tasks table says
    # Downstream sees each output event once, whichever path recorded it.
    assert fan_out_pending_events() == 2


def test_the_lean_complete_answers_without_a_django_query(
    settings,
    world: World,
    chain: APIClient,
    recorder: RecordingAdapter,
    django_assert_num_queries,
):
    [lease] = leases(world, chain, recorder, 1)
    pool = APIClient()
    pool.credentials(HTTP_AUTHORIZATION=f"Bearer {settings.SLUICE_POOL_KEY}")
    wakeups = Wakeups()
    try:
        assert wakeups.wait(0.05) is False
        with django_assert_num_queries(0):  # only the lean path's own statements ran
            response = pool.post("/internal/task-complete", body(lease), format="json")
        assert response.status_code == 200, response.content
        assert not hasattr(response.wsgi_request, "session")  # ahead of that middleware
        assert response.headers["Content-Length"] == str(len(response.content))
        assert wakeups.wait(5.0) is True  # the dispatcher loops are woken
    finally:
        wakeups.close()
    answer = response.json()
    assert answer["state"] == "succeeded"
    # A repeat takes the full path, which answers the same and records nothing more.
    repeat = pool.post("/internal/task-complete", body(lease), format="json")
    assert repeat.status_code == 200 and repeat.json() == answer
    assert hasattr(repeat.wsgi_request, "session")
    assert Event.objects.filter(producer_task_id=lease["task"]["id"]).count() == 1
    assert Commit.objects.filter(producer_task_id=lease["task"]["id"]).count() == 1


def test_an_org_worker_key_completes_only_its_own_tasks(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    mine, theirs = leases(world, chain, recorder, 2)
    response = chain.post("/internal/task-complete", body(mine), format="json")
    assert response.status_code == 200 and response.json()["state"] == "succeeded"
    other_org = WorkerPrincipal(org=world.globex, key_id=None)
    assert lean(theirs, other_org) is None  # another org's: the full path says 404
    _, key = org_services.worker_key_issue(org=world.globex, name="g")
    refused = worker_client(key).post("/internal/task-complete", body(theirs), format="json")
    assert refused.status_code == 404
    assert Task.objects.get(pk=theirs["task"]["id"]).state == "running"


def _last_seq(dataset: str = "chain.op1") -> int | None:
    generation = Generation.objects.filter(dataset__dataset_id=dataset).first()
    return generation.last_seq if generation else None


def _nothing_written(lease: dict, extra: dict[str, Any]) -> None:
    def state() -> tuple:
        attempt = Attempt.objects.get(task_id=lease["task"]["id"])
        return Commit.objects.count(), _last_seq(), attempt.outcome, attempt.ended_at

    before = state()
    assert lean(lease, **extra) is None
    assert state() == before


def test_a_completion_wakes_the_dispatchers_once_it_has_committed(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    """Its events wait for fan-out: the loops are woken, by a notification of its own after
    the completion's commit (ADR 0024); a completion that records nothing wakes nobody."""
    done, gone = leases(world, chain, recorder, 2)
    Task.objects.filter(pk=gone["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    wakeups = Wakeups()
    try:
        assert wakeups.wait(0.05) is False
        assert lean(gone) is None  # not live: the full path answers, nothing was recorded
        assert wakeups.wait(0.1) is False
        assert lean(done) is not None
        assert wakeups.wait(5.0) is True
        assert Event.objects.filter(producer_task_id=done["task"]["id"]).exists()
    finally:
        wakeups.close()


def test_a_lease_that_is_not_live_writes_nothing_and_gets_the_full_answer(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    expired, canceled = leases(world, chain, recorder, 2)
    Task.objects.filter(pk=expired["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    _nothing_written(expired, {})
    response = chain.post("/internal/task-complete", body(expired), format="json")
    assert response.status_code == 409 and response.json()["code"] == "lease_expired"
    cancel = world["operator"].client().post(f"/v1/tasks/{canceled['task']['id']}/cancel")
    assert cancel.status_code == 200, cancel.content
    _nothing_written(canceled, {})
    response = chain.post("/internal/task-complete", body(canceled), format="json")
    assert response.status_code == 409 and response.json()["code"] == "task_canceled"
    assert reconcile_lanes() == 0


@pytest.mark.parametrize(
    "extra",
    [
        {"range_start": 0, "range_end": 5},  # a range of its own: typed by the full path
        {"payload": ["not", "an", "object"]},
        {"metrics": 7},
        {"logs": 7},
        {"colour": "red"},
    ],
)
def test_everything_else_takes_the_full_path(
    world: World, chain: APIClient, recorder: RecordingAdapter, extra: dict[str, Any]
):
    [lease] = leases(world, chain, recorder, 1)
    _nothing_written(lease, extra)


def test_outputs_and_other_nodes_take_the_full_path(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    [lease] = leases(world, chain, recorder, 1)
    named = {"outputs": [{"dataset": "chain.op1", "files": []}]}
    _nothing_written(lease, named)
    assert lean_task_complete(as_caller(POOL), b"[1]") is None
    assert lean_task_complete(as_caller(POOL), b"{not json") is None
    assert lean_task_complete(as_caller(POOL), b'{"lease_token": "nobody holds this"}') is None


def test_a_call_the_lean_path_declines_unread_is_not_authenticated_twice(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    """A completion naming files (every operator that writes) goes to the full path before
    the lean path asks who the caller is: the worker key is looked up once, by the full path."""
    [lease] = leases(world, chain, recorder, 1)
    asked: list[bool] = []

    def caller() -> WorkerPrincipal:
        asked.append(True)
        return POOL

    files = {"outputs": [{"dataset": "chain.op1", "files": [{"path": "x"}]}]}
    for form in (body(lease, **files), {"items": [body(lease, **files)]}):
        assert lean_task_complete(caller, json.dumps(form).encode()) is None
    assert asked == []
    assert lean(lease) is not None  # a plain one asks (once per call) and completes


def lean_batch(leases_: list[dict], **extra: Any) -> dict[str, Any] | None:
    items = [body(lease, **extra) for lease in leases_]
    return lean_task_complete(as_caller(POOL), json.dumps({"items": items}).encode())


def test_a_batch_is_recorded_as_the_full_path_records_it(
    settings,
    world: World,
    chain: APIClient,
    recorder: RecordingAdapter,
    django_assert_num_queries,
):
    for lease in leases(world, chain, recorder, 6):
        assert lean(lease) is not None
    fan_out_pending_events()
    op2 = [fetch(chain, m).json() for m in recorder.take("op2")]
    extra = {"payload": {"shared": 1}, "metrics": {"rows_seen": 3}}
    full = worker_api.task_complete_many(POOL, [body(lease, **extra) for lease in op2[:3]])
    assert [r["state"] for r in full] == ["succeeded"] * 3
    pool = APIClient()
    pool.credentials(HTTP_AUTHORIZATION=f"Bearer {settings.SLUICE_POOL_KEY}")
    items = [body(lease, **extra) for lease in op2[3:]]
    with django_assert_num_queries(0):  # only the lean path's own statements ran
        response = pool.post("/internal/task-complete", {"items": items}, format="json")
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["task_id"] for r in results] == [lease["task"]["id"] for lease in op2[3:]]
    for result in results:
        assert result["event"]["id"] == str(
            Event.objects.get(producer_task_id=result["task_id"]).pk
        )
    for lease in op2[3:]:
        assert recorded(lease["task"]["id"]) == recorded(op2[0]["task"]["id"])
    seqs = Commit.objects.filter(producer_node="op2").order_by("seq")
    assert [c.seq for c in seqs] == [1, 2, 3, 4, 5, 6]
    # Seqs follow the items' order.
    assert [str(c.producer_task_id) for c in seqs][3:] == [r["task_id"] for r in results]
    assert _last_seq("chain.op2") == 6
    assert reconcile_lanes() == 0
    assert fan_out_pending_events() == 6


def test_events_and_tasks_get_ids_that_sort_by_creation_time(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    """Ingest, fan-out and the lean completion each make version 7 ids, so a table's new
    rows (and their primary-key entries) come in order, not at random places."""
    op1 = leases(world, chain, recorder, 3)
    assert lean_batch(op1) is not None
    fan_out_pending_events()
    sources = list(Event.objects.filter(dataset_id="chain.src").order_by("created_at"))
    outputs = list(Event.objects.filter(dataset_id="chain.op1").order_by("created_at"))
    tasks = list(Task.objects.order_by("created_at"))
    assert [t.node_id for t in tasks] == ["op1"] * 3 + ["op2"] * 3
    for rows in (sources, outputs, tasks):
        assert all(row.pk.version == 7 for row in rows)
    assert max(e.pk for e in sources) < min(e.pk for e in outputs)
    assert [t.pk for t in tasks] == sorted(t.pk for t in tasks)


def test_a_batch_item_the_lean_path_did_not_complete_is_answered_alone(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    live, expired, also_live = leases(world, chain, recorder, 3)
    Task.objects.filter(pk=expired["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    answer = lean_batch([live, expired, also_live])
    assert answer is not None
    first, refused, third = answer["results"]
    assert first["state"] == third["state"] == "succeeded"
    assert (refused["index"], refused["code"]) == (1, "lease_expired")
    assert refused["task_id"] == expired["task"]["id"]
    assert Commit.objects.filter(producer_task_id=expired["task"]["id"]).count() == 0
    assert reconcile_lanes() == 0
    # The same batch again: nothing for the lean path to complete, so the full path answers
    # it, each item as before, and nothing is recorded twice.
    assert lean_batch([live, expired, also_live]) is None
    items = [body(lease) for lease in (live, expired, also_live)]
    again = chain.post("/internal/task-complete", {"items": items}, format="json").json()
    assert [r.get("state") for r in again["results"]] == ["succeeded", None, "succeeded"]
    assert Commit.objects.filter(producer_node="op1").count() == 2


def test_a_batch_the_lean_path_may_not_record_takes_the_full_path(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    one, other = leases(world, chain, recorder, 2)
    commits = Commit.objects.count()
    assert lean_batch([one, one]) is None  # a repeated token
    assert lean_batch([one, other], outputs=[{"dataset": "chain.op1", "files": []}]) is None
    assert lean_task_complete(as_caller(POOL), b'{"items": []}') is None
    assert lean_task_complete(as_caller(POOL), b'{"items": [1]}') is None
    too_many = json.dumps({"items": [body(one)] * 101}).encode()
    assert lean_task_complete(as_caller(POOL), too_many) is None
    Task.objects.filter(pk=other["task"]["id"]).update(lane="backfill")  # two lanes
    assert lean_batch([one, other]) is None
    assert Commit.objects.count() == commits


# --- task-fetch ------------------------------------------------------------------------------


def op2_messages(world: World, chain: APIClient, recorder: RecordingAdapter, n: int) -> list:
    """Dispatch messages of `n` op2 tasks: their input events carry op1's commits."""
    for lease in leases(world, chain, recorder, n):
        assert lean(lease) is not None
    fan_out_pending_events()
    return recorder.take("op2")


def lean_fetch(message: dict, principal: WorkerPrincipal = POOL, **extra: Any) -> dict | None:
    body = {"task_id": message["task_id"], "dispatch_token": message["dispatch_token"]}
    return lean_task_fetch(
        as_caller(principal), json.dumps({**body, "worker_id": "w9", **extra}).encode()
    )


def _masked(lease: dict) -> dict:
    """A lease body less what differs between any two tasks' leases."""
    masked = json.loads(json.dumps(lease))
    for path in (
        ("task", "id"),
        ("lease", "token"),
        ("lease", "expires_at"),
        ("input", "event", "id"),
        ("input", "event", "version"),
        ("input", "event", "event_time"),
        ("idempotency", "task_id"),
    ):
        parent = masked
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = "…"
    masked["output"]["staging"] = masked["output"]["staging"].split("/_staging/")[0]
    for dataset in masked["input"]["datasets"]:
        dataset["version"] = dataset["files"] = "…"
    return masked


def test_a_plain_fetch_leases_as_the_full_path_leases(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    one, other = op2_messages(world, chain, recorder, 2)
    lease = lean_fetch(one)
    assert lease is not None
    full = worker_api.task_fetch(POOL, other["task_id"], other["dispatch_token"], "w9")
    assert _masked(lease) == _masked(full)
    assert lease["input"]["datasets"][0]["dataset"] == "chain.op1"
    assert lease["output"]["staging"].endswith(f"/_staging/{one['task_id']}/1/")

    def started(task_id: str) -> dict:
        task = Task.objects.values().get(pk=task_id)
        attempt = Attempt.objects.values().get(task_id=task_id)
        assert task["lease_token"] == attempt["lease_token"]
        assert task["started_at"] and task["deadline_at"] > task["lease_expires_at"]
        return {
            "task": {k: task[k] for k in ("state", "attempt", "error")},
            "attempt": {
                k: v
                for k, v in attempt.items()
                if k not in ("id", "task_id", "lease_token", "started_at", "heartbeat_at")
            },
        }

    assert started(one["task_id"]) == started(other["task_id"])
    assert started(one["task_id"])["task"] == {"state": "running", "attempt": 1, "error": None}
    assert reconcile_lanes() == 0
    # The lease works: the full path completes it.
    done = worker_api.task_complete(POOL, body(lease, outputs=None))
    assert done["state"] == "succeeded"


def test_the_lean_fetch_answers_without_a_django_query(
    settings,
    world: World,
    chain: APIClient,
    recorder: RecordingAdapter,
    django_assert_num_queries,
):
    events_ingest(world.acme, {"dataset": "chain.src", "range_start": 0, "range_end": 1})
    fan_out_pending_events()
    [message] = recorder.take("op1")
    pool = APIClient()
    pool.credentials(HTTP_AUTHORIZATION=f"Bearer {settings.SLUICE_POOL_KEY}")
    with django_assert_num_queries(0):  # only the lean path's own statements ran
        response = fetch(pool, message)
    assert response.status_code == 200, response.content
    assert not hasattr(response.wsgi_request, "session")  # ahead of that middleware
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.json()["task"]["id"] == message["task_id"]
    # The same message again: the full path's 409, and still one attempt.
    again = fetch(pool, message)
    assert again.status_code == 409 and again.json()["code"] == "not_leasable"
    assert Attempt.objects.filter(task_id=message["task_id"]).count() == 1


def test_a_fetch_the_lean_path_may_not_make_takes_the_full_path(
    world: World, chain: APIClient, recorder: RecordingAdapter
):
    events_ingest(world.acme, {"dataset": "chain.src", "range_start": 0, "range_end": 1})
    fan_out_pending_events()
    [message] = recorder.take("op1")
    assert lean_fetch({**message, "dispatch_token": "x" * 40}) is None
    assert (
        lean_fetch(message, WorkerPrincipal(org=world.globex, key_id=None)) is None
    )  # another org's task
    assert lean_fetch(message, colour="red") is None
    assert lean_fetch({**message, "task_id": "not-a-uuid"}) is None
    assert lean_task_fetch(as_caller(POOL), b"[]") is None
    assert Attempt.objects.count() == 0 and Task.objects.get(pk=message["task_id"]).attempt == 0
    assert lean_fetch(message) is not None
    assert lean_fetch(message) is None  # leased once
    assert Attempt.objects.count() == 1


def test_a_fetch_that_loses_the_race_between_its_statements_leases_nothing(
    world: World, chain: APIClient, recorder: RecordingAdapter, monkeypatch
):
    events_ingest(
        world.acme,
        {
            "events": [
                {"dataset": "chain.src", "idempotency_key": k, "range_start": 0, "range_end": 1}
                for k in ("a", "b", "c")
            ]
        },
    )
    fan_out_pending_events()
    first, second, third = recorder.take("op1")
    real_run_rows = lean_paths.run_rows
    racing = [first]

    def another_worker_fetches_first(sql: str, params: dict, **kwargs: Any) -> Any:
        while sql in (worker_lean._START.one, worker_lean._START.many) and racing:
            message = racing.pop()  # between the read and the move
            worker_api.task_fetch(POOL, message["task_id"], message["dispatch_token"], "w2")
        return real_run_rows(sql, params, **kwargs)

    monkeypatch.setattr(lean_paths, "run_rows", another_worker_fetches_first)
    assert lean_fetch(first) is None  # the full path answers 409
    racing.append(second)
    # In a batch, the raced task is refused (by the full path) and the other one leased.
    batch = {"tasks": [{k: m[k] for k in ("task_id", "dispatch_token")} for m in (second, third)]}
    answer = lean_task_fetch(as_caller(POOL), json.dumps({**batch, "worker_id": "w9"}).encode())
    assert answer is not None
    assert [lease["task"]["id"] for lease in answer["leases"]] == [third["task_id"]]
    assert answer["refused"] == [{"task_id": second["task_id"], "code": "not_leasable"}]
    workers = Attempt.objects.order_by("task_id").values_list("task_id", "worker_id")
    assert sorted((str(t), w) for t, w in workers) == sorted(
        [(first["task_id"], "w2"), (second["task_id"], "w2"), (third["task_id"], "w9")]
    )
    assert reconcile_lanes() == 0


def test_a_batch_fetch_is_leased_as_the_full_path_leases_it(
    settings,
    world: World,
    chain: APIClient,
    recorder: RecordingAdapter,
    django_assert_num_queries,
):
    messages = op2_messages(world, chain, recorder, 4)
    pool = APIClient()
    pool.credentials(HTTP_AUTHORIZATION=f"Bearer {settings.SLUICE_POOL_KEY}")
    tasks = [{k: m[k] for k in ("task_id", "dispatch_token")} for m in messages]
    with django_assert_num_queries(0):  # only the lean path's own statements ran
        response = pool.post(
            "/internal/task-fetch", {"tasks": tasks[:3], "worker_id": "w9"}, format="json"
        )
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["refused"] == []
    assert [lease["task"]["id"] for lease in answer["leases"]] == [
        m["task_id"] for m in messages[:3]
    ]
    [full] = worker_api.task_fetch_many(POOL, tasks[3:], "w9")
    for lease in answer["leases"]:
        assert _masked(lease) == _masked(full)
    assert Attempt.objects.filter(worker_id="w9").count() == 4
    # The same batch again: every task refused by the full path, nothing leased twice.
    again = pool.post(
        "/internal/task-fetch", {"tasks": tasks[:3], "worker_id": "w9"}, format="json"
    )
    assert again.json()["leases"] == []
    assert [r["code"] for r in again.json()["refused"]] == ["not_leasable"] * 3
    assert Attempt.objects.count() == 4 + 4  # op1's four and op2's four


def test_a_postgres_output_takes_the_full_path_in_bulk(
    settings, world: World, recorder: RecordingAdapter
):
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    config = chain_config(name="pgc", nodes=1)
    config["nodes"][1]["output"]["backend"] = "postgres"
    deploy(world.acme, config)
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    client = worker_client(key)
    events_ingest(
        world.acme,
        {
            "events": [
                {"dataset": "pgc.src", "idempotency_key": k, "range_start": 0, "range_end": 1}
                for k in ("a", "b")
            ]
        },
    )
    fan_out_pending_events()
    pair = [fetch(client, m).json() for m in recorder.take("op1")]
    assert lean_batch(pair) is None  # the statement writes parquet outputs only
    assert lean(pair[0]) is None
    assert Commit.objects.count() == 0
    items = [body(lease) for lease in pair]
    response = client.post("/internal/task-complete", {"items": items}, format="json")
    assert [r["state"] for r in response.json()["results"]] == ["succeeded"] * 2
    assert Commit.objects.filter(producer_node="op1").count() == 2
