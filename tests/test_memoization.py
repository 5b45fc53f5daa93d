"""Memoization (D9): the same node on the same input commit does not run twice."""

from __future__ import annotations

import pytest
from django.db import transaction

from apps.orgs import services as org_services
from apps.tasks import fanout
from apps.tasks.fanout import fan_out
from apps.tasks.models import Event, NodeLane, Task
from tests.conftest import World
from tests.flow import chain_config, complete, deploy, fetch, worker_client

pytestmark = pytest.mark.smoke


def _config(op2_timeout: int) -> dict:
    config = chain_config(nodes=2)
    config["nodes"][0]["output"]["schema"] = {"id": "int64"}
    config["nodes"][2]["timeout_s"] = op2_timeout  # op1 keeps its node hash across versions
    return config


@pytest.mark.parametrize("joined_at_most", [fanout.INSERT_JOINED_AT_MOST, 0])
def test_a_replayed_commit_is_skipped_for_an_unchanged_node(
    world: World, recorder, monkeypatch, joined_at_most: int
):
    # The memo read in the round trip of a small INSERT, and after a COPY.
    monkeypatch.setattr(fanout, "INSERT_JOINED_AT_MOST", joined_at_most)
    deploy(world.acme, _config(300))
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    worker = worker_client(key)
    client = world["operator"].client()
    client.post(
        "/v1/events",
        {"dataset": "chain.src", "idempotency_key": "m", "rows": [{"id": 1}]},
        format="json",
    )
    event = Event.objects.get(dataset_id="chain.src")
    first = Task.objects.get(node_id="op1")
    assert first.memo_key
    complete(worker, fetch(worker, recorder.take("op1")[0]).json(), rows=1)
    deploy(world.acme, _config(600))  # v2: only op2 changed
    with transaction.atomic():
        [row] = [t for t in fan_out([event]) if t.node_id == "op1"]
    replayed = Task.objects.get(pk=row.id)
    assert replayed.dag_version.number == 2 and replayed.memo_key == first.memo_key
    assert replayed.state == "skipped_memoized" and replayed.finished_at
    lane = NodeLane.objects.get(dag_version=replayed.dag_version, node_id="op1", lane="live")
    assert lane.pending == 0  # nothing waits to run


def test_events_without_a_commit_and_invalidations_never_memoize(world: World, recorder):
    deploy(world.acme, _config(300))
    client = world["operator"].client()
    client.post("/v1/events", {"dataset": "chain.src", "idempotency_key": "n"}, format="json")
    client.post(
        "/v1/datasets/chain.src/invalidate", {"range_start": 0, "range_end": 5}, format="json"
    )
    assert set(Task.objects.values_list("memo_key", flat=True)) == {""}
