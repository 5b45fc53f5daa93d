"""The bulk forms of task-fetch and task-complete answer each item as the single call would,
and write exactly what the single calls would: one commit, one event, one lineage row each."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.utils import timezone

from apps.datasets.models import Commit
from apps.tasks.models import Attempt, Event, NodeLane, Task
from apps.tasks.reaper import reconcile_lanes
from tests import test_dispatch_flow
from tests.conftest import RecordingAdapter, World
from tests.flow import write_output
from tests.test_dispatch_flow import post_event

pytestmark = pytest.mark.smoke
chain = test_dispatch_flow.chain  # the fixture: a deployed chain and a worker client


def _fetch_all(client, messages: list[dict[str, Any]]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    tasks = [{"task_id": m["task_id"], "dispatch_token": m["dispatch_token"]} for m in messages]
    return client.post(
        "/internal/task-fetch", {"tasks": tasks, "worker_id": "bulk"}, format="json"
    ).json()


def _complete_all(client, items: list[dict[str, Any]]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    answer = client.post("/internal/task-complete", {"items": items}, format="json")
    assert answer.status_code == 200, answer.content
    return list(answer.json()["results"])


def test_bulk_complete_answers_each_item_like_the_single_call(
    world: World, chain, recorder: RecordingAdapter
):
    for i in range(5):
        post_event(world, key=f"k{i}")
    fetched = _fetch_all(chain, recorder.take("op1"))
    leases = fetched["leases"]
    assert len(leases) == 5 and fetched["refused"] == []
    assert Attempt.objects.filter(worker_id="bulk", outcome="").count() == 5
    ok, repeat, expired, canceled, _ = leases
    assert _complete_all(chain, [{"lease_token": repeat["lease"]["token"]}])[0]["state"] == (
        "succeeded"
    )
    Task.objects.filter(pk=expired["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    world["operator"].client().post(f"/v1/tasks/{canceled['task']['id']}/cancel")
    items = [
        {
            "lease_token": ok["lease"]["token"],
            "outputs": [{"dataset": ok["output"]["dataset"], "files": [write_output(ok, rows=2)]}],
            "logs": "done",
            "payload": {"n": 1},
        },
        {"lease_token": repeat["lease"]["token"]},
        {"lease_token": expired["lease"]["token"]},
        {"lease_token": canceled["lease"]["token"]},
        {"lease_token": "nope"},
        "not an object",
        {"lease_token": ok["lease"]["token"]},  # the same token again in the batch
    ]
    results = _complete_all(chain, items)
    assert results[0]["state"] == "succeeded" and results[0]["event"]
    assert results[1]["state"] == "succeeded"  # a repeat answers the same
    assert [r.get("code") for r in results[2:6]] == [
        "lease_expired",
        "task_canceled",
        "not_found",
        "validation_error",
    ]
    assert results[6] == results[0]
    produced = Commit.objects.filter(dataset__dataset_id="chain.op1")
    assert produced.count() == 2  # ok and repeat, once each
    event = Event.objects.get(pk=results[0]["event"]["id"])
    assert (event.payload, event.commit.rows, event.producer_task_id) == (
        {"n": 1},
        2,
        Task.objects.get(pk=ok["task"]["id"]).pk,
    )
    assert Attempt.objects.get(lease_token=ok["lease"]["token"]).logs == "done"
    assert Task.objects.filter(node_id="op2").count() == 2  # fanned out, once per commit
    assert reconcile_lanes() == 0  # the lane counters match the tasks table
    # Still running: the expired one (until the reaper) and the one not completed.
    assert NodeLane.objects.get(node_id="op1", lane="live").in_flight == 2


def test_one_bad_schema_makes_each_item_answer_alone(
    world: World, chain, recorder: RecordingAdapter
):
    for i in range(3):
        post_event(world, key=f"s{i}")
    first, second, third = _fetch_all(chain, recorder.take("op1"))["leases"]

    def output(lease: dict[str, Any], table: pa.Table) -> dict[str, Any]:
        path = lease["output"]["staging"] + "part.parquet"
        write_output(lease, "part.parquet", rows=0)  # makes the folder
        pq.write_table(table, path)
        return {
            "lease_token": lease["lease"]["token"],
            "outputs": [
                {"dataset": lease["output"]["dataset"], "files": [{"path": path, "rows": 1}]}
            ],
        }

    numbers = pa.table({"n": pa.array([1], pa.int64())})
    words = pa.table({"n": pa.array(["one"])})
    results = _complete_all(
        chain, [output(first, numbers), output(second, words), output(third, numbers)]
    )
    assert [r.get("state") for r in results] == ["succeeded", None, "succeeded"], results
    assert results[1]["code"] == "validation_error" and "n" in results[1]["detail"]
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 2
    assert Task.objects.get(pk=second["task"]["id"]).state == "running"  # it may still complete
    assert reconcile_lanes() == 0


def test_bulk_fetch_refuses_bad_and_repeated_items(world: World, chain, recorder):
    post_event(world, key="f1")
    [message] = recorder.take("op1")
    fetched = chain.post(
        "/internal/task-fetch",
        {
            "tasks": [
                {"task_id": "not-a-uuid", "dispatch_token": "x"},
                {"task_id": message["task_id"], "dispatch_token": "wrong"},
                {"task_id": "00000000-0000-0000-0000-000000000000", "dispatch_token": "x"},
            ],
            "worker_id": "w",
        },
        format="json",
    ).json()
    assert fetched["leases"] == []
    assert [r["code"] for r in fetched["refused"]] == [
        "validation_error",
        "not_leasable",
        "not_found",
    ]
    assert Task.objects.get(pk=message["task_id"]).state == "queued"  # still leasable
    again = _fetch_all(chain, [message])
    assert len(again["leases"]) == 1 and again["leases"][0]["task"]["attempt"] == 1
