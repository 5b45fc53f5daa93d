"""The dispatch loop in-process: events -> tasks -> leases -> commits -> events downstream."""

from __future__ import annotations

import datetime as dt
import io
import uuid

import pytest
from django.core.management import call_command
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.datasets.models import Commit
from apps.orgs import services as org_services
from apps.tasks import dispatch, fanout, lifecycle, reaper
from apps.tasks.models import Attempt, Event, NodeLane, Task, TaskInput
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, complete, deploy, fetch, worker_client, write_output

pytestmark = pytest.mark.smoke


@pytest.fixture
def chain(world: World, recorder: RecordingAdapter):
    deploy(world.acme, chain_config())
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    return worker_client(key)


def post_event(world: World, key: str = "k1", **fields):
    body = {
        "dataset": "chain.src",
        "idempotency_key": key,
        "range_start": 0,
        "range_end": 10,
        **fields,
    }
    return world["operator"].client().post("/v1/events", body, format="json")


def test_event_flows_down_the_chain(world: World, chain, recorder: RecordingAdapter):
    response = post_event(world, payload={"hello": "world"})
    assert response.status_code == 202
    [answer] = response.json()["events"]
    assert answer["created"] is True
    [message] = recorder.take("op1")
    assert message["attempt"] == 1
    lease = fetch(chain, message)
    assert lease.status_code == 200, lease.json()
    body = lease.json()
    assert body["task"]["attempt"] == 1 and body["task"]["max_attempts"] == 3
    assert body["node"] == {
        "dag": "chain",
        "dag_version": 1,
        "id": "op1",
        "kind": "operator",
        "runtime": "python",
        "handler": "demo_ops:noop",
        "config": {},
    }
    assert body["input"]["event"]["id"] == answer["id"]
    assert body["input"]["event"]["payload"] == {"hello": "world"}
    assert body["input"]["event"]["range_start"] == "0"
    assert body["output"]["dataset"] == "chain.op1" and body["output"]["generation"] == 1
    assert body["lease"]["heartbeat_interval_s"] == 10
    assert body["idempotency"] == {"task_id": body["task"]["id"], "attempt": 1}
    done = complete(chain, body, rows=5)
    assert done.status_code == 200, done.json()
    assert done.json()["state"] == "succeeded"
    output = Event.objects.get(pk=done.json()["event"]["id"])
    assert output.dataset_id == "chain.op1" and output.commit.version == "1.1"
    assert output.commit.rows == 5 and (output.range_start, output.range_end) == ("0", "10")
    task = Task.objects.get(pk=body["task"]["id"])
    assert task.inputs.count() == 0  # the source event carried no commit
    [downstream] = recorder.take("op2")
    second = fetch(chain, downstream).json()
    assert second["input"]["event"]["version"] == "1.1"
    assert second["input"]["datasets"][0]["files"] == [body["output"]["staging"] + "part-0.parquet"]
    complete(chain, second)
    op2 = Task.objects.get(pk=second["task"]["id"])
    assert op2.state == "succeeded"
    lineage = op2.inputs.get()
    assert (lineage.dataset_id, lineage.generation, lineage.seq_start) == ("chain.op1", 1, 1)


def test_second_fetch_is_not_leasable(world: World, chain, recorder: RecordingAdapter):
    post_event(world)
    [message] = recorder.take("op1")
    assert fetch(chain, message).status_code == 200
    again = fetch(chain, message, worker="w2")
    assert again.status_code == 409 and again.json()["code"] == "not_leasable"
    assert Attempt.objects.count() == 1


def test_wrong_token_and_other_org_key(world: World, chain, recorder: RecordingAdapter):
    post_event(world)
    [message] = recorder.take("op1")
    forged = {**message, "dispatch_token": "0" * 40}
    assert fetch(chain, forged).status_code == 409
    _, other_key = org_services.worker_key_issue(org=world.globex, name="g")
    assert fetch(worker_client(other_key), message).status_code == 404
    lease = fetch(chain, message).json()
    # Another org's key holding the lease token still finds no such lease.
    other = worker_client(other_key)
    token = {"lease_token": lease["lease"]["token"]}
    for path in ("/internal/task-heartbeat", "/internal/task-complete", "/internal/task-fail"):
        answer = other.post(path, token, format="json")
        assert answer.status_code == 404, path
        assert answer.json()["code"] == "not_found"
    assert complete(chain, lease).status_code == 200


def test_complete_twice_gives_one_commit(world: World, chain, recorder: RecordingAdapter):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    first = complete(chain, lease, rows=3).json()
    second = complete(chain, lease, rows=3).json()
    assert first == second
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 1
    assert Event.objects.filter(dataset_id="chain.op1").count() == 1


def test_complete_refuses_outputs_that_are_not_a_list(world, chain, recorder):
    """Missing or empty outputs are an operator that returned nothing; anything else that is
    not a list is a 400 naming the field (a refusal in the batch form), and the task stays
    running."""
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    token = lease["lease"]["token"]
    for bad in ({}, "", 0, False, "part-0.parquet"):
        body = {"lease_token": token, "outputs": bad}
        answer = chain.post("/internal/task-complete", body, format="json")
        assert answer.status_code == 400, bad
        assert answer.json()["errors"][0]["path"] == "outputs"
        batch = chain.post("/internal/task-complete", {"items": [body]}, format="json")
        [refused] = batch.json()["results"]
        assert refused["code"] == "validation_error", bad
    assert Task.objects.get(node_id="op1").state == "running"
    done = chain.post(
        "/internal/task-complete", {"lease_token": token, "outputs": []}, format="json"
    )
    assert done.status_code == 200


def test_operator_that_writes_nothing_makes_zero_row_commit(world, chain, recorder):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    body = chain.post(
        "/internal/task-complete", {"lease_token": lease["lease"]["token"]}, format="json"
    ).json()
    event = Event.objects.get(pk=body["event"]["id"])
    assert event.commit.rows == 0 and event.commit.files == []
    assert Task.objects.filter(node_id="op2").count() == 1


def test_failure_retries_with_backoff_then_fails(world, chain, recorder):
    post_event(world)
    message = recorder.take("op1")[0]
    for attempt in (1, 2, 3):
        lease = fetch(chain, message).json()
        assert lease["task"]["attempt"] == attempt
        failed = chain.post(
            "/internal/task-fail",
            {
                "lease_token": lease["lease"]["token"],
                "error": {"type": "ValueError", "message": "boom", "traceback": "..."},
                "logs": "line\n" * 3,
            },
            format="json",
        ).json()
        if attempt < 3:
            assert failed["state"] == "retry_wait" and failed["next_attempt_at"]
            assert reaper.release_retries() == 1  # backoff_s is 0 in this DAG
            [message] = recorder.take("op1")
            assert message["attempt"] == attempt + 1
        else:
            assert failed["state"] == "failed"
    task = Task.objects.get(node_id="op1")
    assert task.error["type"] == "ValueError"
    assert list(task.attempts.values_list("outcome", flat=True)) == ["failed"] * 3
    assert task.attempts.first().logs == "line\n" * 3
    # Retry by hand: a new attempt, with max_attempts counted afresh.
    retried = world["operator"].client().post(f"/v1/tasks/{task.pk}/retry")
    assert retried.status_code == 200 and retried.json()["state"] in {"pending", "queued"}
    lease = fetch(chain, recorder.take("op1")[0]).json()
    assert lease["task"]["attempt"] == 4
    assert complete(chain, lease).json()["state"] == "succeeded"


def test_expired_lease_is_reaped_and_retried(world, chain, recorder):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    Task.objects.filter(pk=lease["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    beat = chain.post(
        "/internal/task-heartbeat", {"lease_token": lease["lease"]["token"]}, format="json"
    )
    assert beat.status_code == 409 and beat.json()["code"] == "lease_expired"
    late = complete(chain, lease)
    assert late.status_code == 409 and late.json()["code"] == "lease_expired"
    result = reaper.reap_once()
    assert result.expired == 1 and result.released == 1
    assert Attempt.objects.get().outcome == "lease_expired"
    retry = fetch(chain, recorder.take("op1")[0]).json()
    assert retry["task"]["attempt"] == 2
    complete(chain, retry)
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 1


def test_attempt_timeout(world, chain, recorder):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    Task.objects.filter(pk=lease["task"]["id"]).update(
        deadline_at=timezone.now() - dt.timedelta(seconds=1)
    )
    assert reaper.reap_timeouts() == 1
    assert Attempt.objects.get().outcome == "timed_out"
    assert Task.objects.get(pk=lease["task"]["id"]).state == "retry_wait"


def test_the_reaper_retries_with_the_nodes_backoff_or_fails(world: World, recorder):
    """On PostgreSQL one statement does what the locked-rows path does elsewhere; the smoke
    run holds the SQLite path to the same outcomes."""
    config = chain_config(nodes=1)
    config["nodes"][1]["retry"] = {"max_attempts": 3, "backoff_s": 10, "max_backoff_s": 15}
    deploy(world.acme, config)
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    client = worker_client(key)
    for i in range(4):
        post_event(world, key=f"e{i}")
    first, second, spent, late = [fetch(client, m).json() for m in recorder.take("op1")]
    past = timezone.now() - dt.timedelta(seconds=1)
    Task.objects.filter(pk__in=[first["task"]["id"], spent["task"]["id"]]).update(
        lease_expires_at=past
    )
    Task.objects.filter(pk=second["task"]["id"]).update(attempt=2, lease_expires_at=past)
    Task.objects.filter(pk=spent["task"]["id"]).update(attempt=3)
    Task.objects.filter(pk=late["task"]["id"]).update(deadline_at=past)
    before = timezone.now()
    assert reaper.reap_expired_leases() == 3
    after = timezone.now()

    def task(lease: dict) -> Task:
        return Task.objects.get(pk=lease["task"]["id"])

    # Backoff base·2^(n-1), capped, times 0.5–1.0: 10 s after a first attempt, 15 after a second.
    for lease, delay in ((first, 10), (second, 15)):
        moved = task(lease)
        assert moved.state == "retry_wait" and moved.lease_token is None
        assert moved.finished_at is None and moved.error["type"] == "LeaseExpired"
        low, high = delay * 0.5, delay * 1.0
        assert before + dt.timedelta(seconds=low) <= moved.next_attempt_at
        assert moved.next_attempt_at <= after + dt.timedelta(seconds=high)
    failed = task(spent)
    assert failed.state == "failed" and failed.finished_at is not None
    assert failed.next_attempt_at is None and failed.lease_expires_at is None
    outcomes = Attempt.objects.filter(outcome="lease_expired").values_list("error", flat=True)
    assert [error["type"] for error in outcomes] == ["LeaseExpired"] * 3
    assert reaper.reap_timeouts() == 1
    assert task(late).state == "retry_wait"
    assert Attempt.objects.get(task_id=late["task"]["id"]).outcome == "timed_out"
    assert NodeLane.objects.get(node_id="op1", lane="live").in_flight == 0
    assert reaper.reconcile_lanes() == 0
    assert reaper.reap_expired_leases() == 0  # nothing twice


def test_heartbeat_extends_the_lease(world, chain, recorder):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    before = Task.objects.get(pk=lease["task"]["id"]).lease_expires_at
    beat = chain.post(
        "/internal/task-heartbeat",
        {"lease_token": lease["lease"]["token"], "progress": {"done": 1}},
        format="json",
    )
    assert beat.status_code == 200 and beat.json()["cancel"] is False
    assert Task.objects.get(pk=lease["task"]["id"]).lease_expires_at >= before
    assert Attempt.objects.get().progress == {"done": 1}


def test_cancel_running_task(world, chain, recorder):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    canceled = world["operator"].client().post(f"/v1/tasks/{lease['task']['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    beat = chain.post(
        "/internal/task-heartbeat", {"lease_token": lease["lease"]["token"]}, format="json"
    )
    assert beat.status_code == 200 and beat.json()["cancel"] is True
    late = complete(chain, lease)
    assert late.status_code == 409 and late.json()["code"] == "task_canceled"
    assert not Event.objects.filter(dataset_id="chain.op1").exists()
    assert not Task.objects.filter(node_id="op2").exists()
    viewer = world["viewer"].client().post(f"/v1/tasks/{lease['task']['id']}/cancel")
    assert viewer.status_code == 403


def test_cancel_pending_and_cap(world: World, recorder: RecordingAdapter):
    deploy(world.acme, chain_config(concurrency={"live": 2, "backfill": 1}))
    for i in range(5):
        post_event(world, key=f"e{i}")
    assert len(recorder.take("op1")) == 2  # the cap
    lane = NodeLane.objects.get(node_id="op1", lane="live")
    assert (lane.pending, lane.in_flight) == (3, 2)
    pending = Task.objects.filter(state="pending").first()
    world["operator"].client().post(f"/v1/tasks/{pending.pk}/cancel")
    lane.refresh_from_db()
    assert (lane.pending, lane.in_flight) == (2, 2)
    assert reaper.reconcile_lanes() == 0  # the counters match the tasks table


def test_an_idle_reaper_tick_is_one_statement(
    world: World, chain, recorder: RecordingAdapter, django_assert_num_queries
):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    with django_assert_num_queries(1):  # a queued and a running task, nothing due
        assert reaper.reap_once().total == 0
    Task.objects.filter(pk=lease["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    result = reaper.reap_once()
    assert (result.expired, result.timed_out, result.requeued) == (1, 0, 0)


def test_reconcile_repairs_drifted_counters(world: World, recorder: RecordingAdapter):
    deploy(world.acme, chain_config(concurrency={"live": 2, "backfill": 1}))
    for i in range(5):
        post_event(world, key=f"e{i}")
    assert len(recorder.take("op1")) == 2
    NodeLane.objects.filter(node_id="op1", lane="live").update(pending=40, in_flight=0)
    assert reaper.reconcile_lanes() == 1
    lane = NodeLane.objects.get(node_id="op1", lane="live")
    assert (lane.pending, lane.in_flight) == (3, 2)
    assert reaper.reconcile_lanes() == 0


def test_checkpoint_is_keyed_by_n(world, chain, recorder):
    post_event(world)
    lease = fetch(chain, recorder.take("op1")[0]).json()
    body = {
        "lease_token": lease["lease"]["token"],
        "n": 1,
        "files": [write_output(lease, "cp-1.parquet", rows=2)],
    }
    first = chain.post("/internal/events", body, format="json")
    assert first.status_code == 202 and first.json()["event"]["created"] is True
    # The worker dies; the retry emits the same checkpoint again.
    Task.objects.filter(pk=lease["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    reaper.reap_once()
    retry = fetch(chain, recorder.take("op1")[0]).json()
    again = chain.post(
        "/internal/events", {**body, "lease_token": retry["lease"]["token"]}, format="json"
    )
    assert again.json()["event"] == {"id": first.json()["event"]["id"], "created": False}
    complete(chain, retry)
    # Downstream saw the checkpoint once, and the final commit once.
    assert Task.objects.filter(node_id="op2").count() == 2
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 2


def test_pause_holds_tasks_and_resume_drains(world, chain, recorder):
    operator = world["operator"].client()
    operator.post("/v1/dags/chain/pause", {"node": "op1"}, format="json")
    events = [
        {"dataset": "chain.src", "idempotency_key": f"p{i}", "range_start": i, "range_end": i + 1}
        for i in range(1000)
    ]
    response = operator.post("/v1/events", {"events": events}, format="json")
    assert response.status_code == 202 and len(response.json()["events"]) == 1000
    assert recorder.take("op1") == []
    assert Task.objects.filter(node_id="op1", state="pending").count() == 1000
    operator.post("/v1/dags/chain/resume", {"node": "op1"}, format="json")
    dispatch.dispatch_until_idle()
    assert len(recorder.take("op1")) == 32  # the default live cap; the rest wait their turn
    lane = NodeLane.objects.get(node_id="op1", lane="live")
    assert (lane.pending, lane.in_flight) == (968, 32)


def test_failed_send_returns_tasks_to_pending(world, chain, recorder):
    recorder.fail_next = 1
    post_event(world)
    assert dispatch.dispatch_once() == 0
    task = Task.objects.get(node_id="op1")
    assert task.state == "pending" and task.dispatch_count == 1
    assert dispatch.dispatch_once() == 1
    [message] = recorder.take("op1")
    assert fetch(chain, message).status_code == 200


def test_dispatcher_crash_after_commit_is_recovered(world, chain, recorder, settings):
    settings.SLUICE_DISPATCH_TRIGGER = "off"
    post_event(world)
    claims = dispatch.claim()  # committed as queued; the process "dies" before sending
    assert claims and Task.objects.get(node_id="op1").state == "queued"
    Task.objects.filter(node_id="op1").update(
        queued_at=timezone.now() - dt.timedelta(seconds=settings.SLUICE_QUEUED_TIMEOUT_S + 1)
    )
    assert reaper.requeue_stale_queued() == 1
    dispatch.dispatch_once()
    message = recorder.take("op1")[-1]
    # The old message (if it ever arrives) is refused: its dispatch token is stale.
    stale = {**message, "dispatch_token": claims[0].tasks[0].dispatch_token}
    assert fetch(chain, stale).status_code == 409
    assert fetch(chain, message).status_code == 200


def test_a_dispatcher_step_claims_what_it_fans_out_in_one_transaction(
    world, chain, recorder, settings
):
    settings.SLUICE_DISPATCH_TRIGGER = "notify"  # requests leave fan-out to the loops
    for key in ("s1", "s2", "s3"):
        post_event(world, key=key)
    assert not Task.objects.exists()
    with CaptureQueriesContext(connection) as queries:
        fanned, claims = dispatch.fan_out_and_claim()
    assert fanned == 3
    assert [(c.node_id, len(c.tasks)) for c in claims] == [("op1", 3)]
    opened = [q["sql"] for q in queries if q["sql"].startswith(("BEGIN", "SAVEPOINT"))]
    assert len(opened) == 1  # fan-out and claim share one transaction, no savepoints inside
    assert set(Task.objects.values_list("state", flat=True)) == {"queued"}
    lane = _op1_lane()
    assert (lane.pending, lane.in_flight) == (0, 3)
    assert dispatch.send(claims) == 3
    assert [fetch(chain, m).status_code for m in recorder.take("op1")] == [200] * 3


def test_lanes_are_served_least_recently_served_first(world, chain, recorder, settings):
    settings.SLUICE_DISPATCH_PACING = False
    post_event(world, key="r1")
    [message] = recorder.take("op1")
    assert complete(chain, fetch(chain, message).json()).status_code == 200  # op2 pending
    post_event(world, key="r2")  # op1 pending again
    long_ago = timezone.now() - dt.timedelta(hours=1)
    NodeLane.objects.filter(node_id="op1").update(dispatched_at=long_ago)
    NodeLane.objects.filter(node_id="op2").update(dispatched_at=long_ago + dt.timedelta(minutes=1))
    with CaptureQueriesContext(connection) as queries:
        [first] = dispatch.claim(lanes_per_tick=1)
    assert first.node_id == "op1"
    lane_writes = [q["sql"] for q in queries if q["sql"].startswith("UPDATE node_lanes")]
    assert len(lane_writes) == 1  # its counts, floor and served time in one statement
    assert _op1_lane().dispatched_at > long_ago + dt.timedelta(minutes=1)
    [second] = dispatch.claim(lanes_per_tick=1)
    assert second.node_id == "op2"
    assert dispatch.claim(lanes_per_tick=1) == []


def test_a_failed_claim_leaves_the_events_waiting(world, chain, recorder, settings, monkeypatch):
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    post_event(world)

    def lanes_lost(*args: object) -> list:
        raise OperationalError("the connection dropped")

    monkeypatch.setattr(dispatch, "_runnable_lanes", lanes_lost)
    with pytest.raises(OperationalError):
        dispatch.fan_out_and_claim()
    assert not Task.objects.exists()  # the fan-out rolled back with the claim
    assert not NodeLane.objects.filter(pending__gt=0).exists()
    assert Event.objects.filter(fanned_out_at=None).count() == 1
    monkeypatch.undo()
    assert dispatch.fan_out_and_claim()[0] == 1


def test_one_dispatch_pass_fans_out_and_sends(world, chain, recorder, settings):
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    post_event(world)
    out = io.StringIO()
    call_command("dispatch", stdout=out)
    assert "fanned out 1 event(s), sent 1 task(s)" in out.getvalue()
    assert [m["node"] for m in recorder.messages] == ["op1"]


def test_backfill_lane_and_mode(world, chain, recorder):
    post_event(world, key="b1", mode="backfill")
    task = Task.objects.get(node_id="op1")
    assert (task.lane, task.mode) == ("backfill", "backfill")
    lease = fetch(chain, recorder.take("op1")[0]).json()
    complete(chain, lease)
    downstream = Task.objects.get(node_id="op2")
    assert (downstream.lane, downstream.mode) == ("backfill", "backfill")


def test_batch_forms(world, chain, recorder):
    for i in range(3):
        post_event(world, key=f"b{i}")
    messages = recorder.take("op1")
    fetched = chain.post(
        "/internal/task-fetch",
        {
            "tasks": [
                {"task_id": m["task_id"], "dispatch_token": m["dispatch_token"]} for m in messages
            ]
            + [
                {"task_id": messages[0]["task_id"], "dispatch_token": messages[0]["dispatch_token"]}
            ],
            "worker_id": "batch",
        },
        format="json",
    ).json()
    assert len(fetched["leases"]) == 3
    assert fetched["refused"] == [{"task_id": messages[0]["task_id"], "code": "not_leasable"}]
    tokens = [lease["lease"]["token"] for lease in fetched["leases"]]
    beats = chain.post(
        "/internal/task-heartbeat", {"items": [{"lease_token": t} for t in tokens]}, format="json"
    ).json()
    assert [r["cancel"] for r in beats["results"]] == [False] * 3
    done = chain.post(
        "/internal/task-complete",
        {
            "items": [
                {"lease_token": tokens[0]},
                {"lease_token": tokens[1]},
                {"lease_token": "nope"},
            ]
        },
        format="json",
    ).json()["results"]
    assert [r.get("state") for r in done[:2]] == ["succeeded", "succeeded"]
    assert done[2]["code"] == "not_found"
    failed = chain.post(
        "/internal/task-fail",
        {"items": [{"lease_token": tokens[2], "retryable": False, "error": {"message": "x"}}]},
        format="json",
    ).json()["results"]
    assert failed[0]["state"] == "failed"


def test_ingest_triggers_dispatch_after_commit(
    world, chain, recorder, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        post_event(world)
    assert recorder.messages == []  # nothing is sent before the commit
    for callback in callbacks:
        callback()
    assert [m["node"] for m in recorder.messages] == ["op1"]


def test_pacing_sends_a_busy_lane_larger_messages(world, chain, settings):
    """With pacing, a lane with tasks in flight waits until as many are pending as are in
    flight (or its room is that small); an idle lane is served at once."""
    settings.SLUICE_DISPATCH_PACING = True

    def messages() -> list[list[dict]]:
        return [[t.as_message() for t in c.tasks] for c in dispatch.claim() if c.node_id == "op1"]

    post_event(world, key="p1")
    [first] = messages()  # idle: at once
    post_event(world, key="p2")
    [second] = messages()  # 1 pending >= 1 in flight
    post_event(world, key="p3")
    assert messages() == []  # 1 pending < 2 in flight: it waits
    post_event(world, key="p4")
    [pair] = messages()
    assert (len(first), len(second), len(pair)) == (1, 1, 2)  # one message of two
    for message in first + second + pair[:1]:
        assert complete(chain, fetch(chain, message).json()).status_code == 200
    post_event(world, key="p5")
    [fifth] = messages()  # 1 pending >= 1 still in flight
    assert len(fifth) == 1

    # The cap still rules: with room for one, one goes even though more are in flight.
    lane = NodeLane.objects.get(node_id="op1", lane="live")
    NodeLane.objects.filter(pk=lane.pk).update(cap=lane.in_flight + 1)
    for key in ("p6", "p7", "p8"):
        post_event(world, key=key)
    assert [len(m) for m in messages()] == [1]
    assert messages() == []  # at the cap
    lane.refresh_from_db()
    assert (lane.pending, lane.in_flight) == (2, lane.cap)


def test_pacing_serves_a_full_batch_however_much_is_in_flight(world, chain, settings):
    """A lane with more in flight than a batch holds is served once a full batch waits."""

    def op1_sizes(batch: int) -> list[int]:
        return [len(c.tasks) for c in dispatch.claim(batch=batch) if c.node_id == "op1"]

    settings.SLUICE_DISPATCH_PACING = False
    for key in ("b1", "b2", "b3"):
        post_event(world, key=key)
    assert op1_sizes(batch=100) == [3]
    settings.SLUICE_DISPATCH_PACING = True
    post_event(world, key="b4")
    assert op1_sizes(batch=2) == []  # 1 pending < min(3 in flight, batch 2)
    post_event(world, key="b5")
    assert op1_sizes(batch=2) == [2]  # a full batch, though 3 are in flight


def test_the_fan_out_insert_covers_the_task_model():
    """The COPY of fan-out (PostgreSQL) names every column that cannot start
    NULL, and nothing the model lacks: a new field on Task fails here, not in production."""
    fields = {f.column: f for f in Task._meta.concrete_fields}
    written = set(fanout.NewTask._fields)
    assert written <= set(fields)
    assert {column for column, f in fields.items() if not f.null} <= written
    assert all(fields[column].null for column in set(fields) - written)


def test_node_maps_are_parsed_once_per_version(
    world, chain, django_assert_num_queries, django_assert_max_num_queries
):
    from apps.dags.models import DagVersion

    version = DagVersion.objects.defer("config").get(dag__name="chain", state="active")
    with django_assert_max_num_queries(1):  # the config, unless this process parsed it already
        nodes = version.cached_node_map()
    again = DagVersion.objects.defer("config").get(pk=version.pk)
    with django_assert_num_queries(0):
        assert again.cached_node_map() is nodes
    assert nodes == DagVersion.objects.get(pk=version.pk).node_map()


def test_a_duplicate_fan_out_fails_loudly(world, chain):
    """Callers fan out only events not yet fanned out; a second task for the same (version,
    node, event) is a bug, refused by the unique constraint as Django's IntegrityError."""
    post_event(world, "dup")
    task = Task.objects.get(node_id="op1")
    row = fanout.NewTask(
        id=uuid.uuid4(),
        org_id=task.org_id,
        dag_version_id=task.dag_version_id,
        node_id=task.node_id,
        event_id=task.event_id,
        state="pending",
        lane=task.lane,
        mode=task.mode,
        attempt=0,
        attempts_base=0,
        max_attempts=3,
        dispatch_count=0,
        created_at=timezone.now(),
        memo_key="",
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        fanout.insert_tasks([row])
    assert Task.objects.filter(node_id="op1").count() == 1


def test_an_org_with_pipeline_rows_is_not_deleted(world: World, chain, recorder: RecordingAdapter):
    """The keys of events, tasks, attempts and lineage have no database constraint
    (ADR 0012); their parents are never deleted from under them: an org that has DAGs and
    datasets is protected, and the attempt leaves every row as it was."""
    post_event(world)
    complete(chain, fetch(chain, recorder.take("op1")[0]).json())
    op2 = fetch(chain, recorder.take("op2")[0]).json()
    complete(chain, op2)

    def counts() -> list[int]:
        models = (Event, Task, Attempt, TaskInput, Commit, NodeLane)
        return [model.objects.count() for model in models]

    before = counts()
    assert all(before)
    with pytest.raises(ProtectedError):
        world.acme.delete()
    assert counts() == before


# --- the claim floor ---------------------------------------------------------------------------


@pytest.fixture
def untriggered(settings) -> None:
    """Ingest fans out but does not dispatch: each test claims when it says so."""
    settings.SLUICE_DISPATCH_TRIGGER = "off"


def _op1_lane() -> NodeLane:
    return NodeLane.objects.get(node_id="op1", lane="live")


def _claim_op1(batch: int) -> list[uuid.UUID]:
    return [t.task_id for c in dispatch.claim(batch=batch) if c.node_id == "op1" for t in c.tasks]


def _pending_op1(world: World, count: int) -> list[Task]:
    for i in range(count):
        post_event(world, key=f"f{i}")
    return list(Task.objects.filter(node_id="op1").order_by("created_at"))


def _one_claimed_under_a_wrong_floor(world: World, count: int) -> list[Task]:
    """`count` pending op1 tasks, the first claimed, then a floor above all the others (as a
    move that rolled back, or a clock that stepped back, could leave it)."""
    tasks = _pending_op1(world, count)
    assert _claim_op1(1) == [tasks[0].id]
    NodeLane.objects.filter(pk=_op1_lane().pk).update(
        claim_floor=timezone.now() + dt.timedelta(days=1)
    )
    return tasks


def test_claims_move_the_floor_to_the_newest_task_they_took(world, chain, untriggered):
    tasks = _pending_op1(world, 5)
    assert _op1_lane().claim_floor is None
    assert _claim_op1(2) == [t.id for t in tasks[:2]]
    assert _op1_lane().claim_floor == tasks[1].created_at
    assert _claim_op1(2) == [t.id for t in tasks[2:4]]
    assert _op1_lane().claim_floor == tasks[3].created_at


def test_a_task_back_in_pending_lowers_the_floor_and_goes_first(world, chain, untriggered):
    from apps.tasks import services

    tasks = _pending_op1(world, 4)
    assert _claim_op1(2) == [tasks[0].id, tasks[1].id]
    services.task_requeue(tasks[0])  # queued -> pending, older than the floor
    assert _op1_lane().claim_floor == tasks[0].created_at
    assert _claim_op1(1) == [tasks[0].id]


def test_a_task_below_the_floor_that_no_counter_saw_is_still_claimed(world, chain, untriggered):
    """The floored scan finds fewer tasks than the lane's pending count, so the claim looks
    from the start and drops the floor; the next claim sets it again."""
    tasks = _one_claimed_under_a_wrong_floor(world, 3)
    assert _claim_op1(10) == [tasks[1].id, tasks[2].id]
    assert _op1_lane().claim_floor is None
    post_event(world, key="later")
    assert _op1_lane().claim_floor is None  # a new task lowers a floor, never sets one
    [later] = _claim_op1(10)
    assert _op1_lane().claim_floor == Task.objects.get(pk=later).created_at


def test_a_fan_out_older_than_the_floor_lowers_it(world, chain, untriggered):
    """Tasks of a fan-out that commits after a claim went past their creation time."""
    _one_claimed_under_a_wrong_floor(world, 2)
    post_event(world, key="late")
    late = Task.objects.filter(node_id="op1").latest("created_at")
    assert _op1_lane().claim_floor == late.created_at


def test_reconcile_lowers_a_floor_above_a_pending_task(world, chain, untriggered):
    tasks = _one_claimed_under_a_wrong_floor(world, 2)
    assert reaper.reconcile_lanes() >= 1
    assert _op1_lane().claim_floor == tasks[1].created_at


def test_a_step_reads_the_lanes_in_the_round_trip_that_counts_its_fan_out(
    world, chain, recorder, settings
):
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    post_event(world)
    with CaptureQueriesContext(connection) as queries:
        fanned, claims = dispatch.fan_out_and_claim()
    assert fanned == 1 and [c.node_id for c in claims] == ["op1"]
    [read] = [q["sql"] for q in queries if "FROM node_lanes l" in q["sql"]]
    if connection.vendor == "postgresql":  # one round trip: the fan-out's count, then the read
        assert read.startswith("UPDATE node_lanes SET pending = pending + 1")
        # A few tasks go in one INSERT, not a COPY (two round trips).
        assert [q for q in queries if q["sql"].startswith("INSERT INTO tasks")]
        assert not [q for q in queries if q["sql"].startswith("COPY")]
    assert _op1_lane().in_flight == 1


@pytest.mark.django_db(transaction=True)
def test_a_step_commits_in_the_round_trip_of_its_last_counter_update(
    world, chain, recorder, settings
):
    """PostgreSQL: the `COMMIT` goes with the claim's counter update, asynchronously (a lost
    step is found again); the claim is committed for every other connection all the same."""
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    post_event(world)
    with CaptureQueriesContext(connection) as queries:
        fanned, claims = dispatch.fan_out_and_claim()
    assert fanned == 1 and [c.node_id for c in claims] == ["op1"]
    if connection.vendor == "postgresql":
        [last] = [q["sql"] for q in queries if q["sql"].endswith("; COMMIT")]
        assert last.startswith("UPDATE node_lanes SET pending = pending +  -1")
        assert last.endswith("; SET LOCAL synchronous_commit = off; COMMIT")
        other = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT state FROM tasks")
                assert cursor.fetchall() == [("queued",)]
        finally:
            other.close()
    assert list(Task.objects.values_list("state", flat=True)) == ["queued"]
    assert dispatch.send(claims) == 1 and len(recorder.take("op1")) == 1


@pytest.mark.django_db(transaction=True)
def test_a_commit_that_fails_after_the_counter_updates_leaves_nothing(world, chain, settings):
    """A constraint checked at commit fails the block whose `COMMIT` went with its counter
    updates (PostgreSQL), as it fails Django's own commit elsewhere: nothing stays."""
    settings.SLUICE_DISPATCH_TRIGGER = "off"
    post_event(world)
    event = Event.objects.get()
    before = _op1_lane()
    with pytest.raises(IntegrityError), lifecycle.counted_atomic():
        Event.objects.filter(pk=event.pk).update(origin_id=uuid.uuid4())  # deferred check
        lifecycle.bump_lane(
            before.dag_version_id, "op1", before.lane, lifecycle.LaneDelta(pending=5)
        )
    after = _op1_lane()
    assert (after.pending, after.in_flight) == (before.pending, before.in_flight)
    assert Event.objects.get().origin_id is None


def test_a_step_reads_an_orgs_versions_again_only_when_they_changed(
    world, chain, recorder, settings
):
    """PostgreSQL: the waiting events' statement reads each org's versions stamp; a step
    whose stamp matches the versions kept reads none."""
    from apps.dags.models import Dag
    from apps.dags.services import dag_pause, dag_rollback

    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    kept = connection.vendor == "postgresql"

    def step(key: str, **fields) -> tuple[list[int], int]:
        post_event(world, key=key, **fields)
        with CaptureQueriesContext(connection) as queries:
            assert dispatch.fan_out_and_claim()[0] == 1
        reads = [q for q in queries if 'FROM "dag_versions" INNER JOIN "dags"' in q["sql"]]
        tasks = Task.objects.filter(event__idempotency_key=key)
        return sorted(tasks.values_list("dag_version__number", flat=True)), len(reads)

    step("k1")
    assert step("k2") == ([1], 0 if kept else 1)
    config = chain_config()
    config["nodes"][1]["timeout_s"] = 999  # op1 changed: version 2 supersedes 1
    deploy(world.acme, config)
    assert step("k3") == ([2], 1)
    assert step("k4") == ([2], 0 if kept else 1)
    dag = Dag.objects.get(org=world.acme, name="chain")
    dag_rollback(dag=dag, version=1, actor=None)  # version 1's stamp again, kept is 2's
    assert step("k5") == ([1], 1)
    # A lane created from kept versions takes the DAG's pauses as they are now.
    dag_pause(dag=Dag.objects.get(pk=dag.pk), node="op1")
    step("k6", mode="backfill")
    assert NodeLane.objects.get(dag_version__number=1, node_id="op1", lane="backfill").paused
