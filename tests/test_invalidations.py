"""Invalidations (D10), replace semantics and the lineage API."""

from __future__ import annotations

import pytest

from apps.orgs import services as org_services
from apps.tasks.models import Event, Task
from tests.conftest import RecordingAdapter, World
from tests.flow import complete, deploy, fetch, worker_client

pytestmark = pytest.mark.smoke


def replace_chain() -> dict:
    """src -> a -> b -> c, where a, b and c rewrite their range (update_strategy: replace)."""
    nodes: list[dict] = [
        {"id": "src", "kind": "source", "output": {"dataset": "inv.src", "range_type": "int"}}
    ]
    upstream = "src"
    for name in ("a", "b", "c"):
        nodes.append(
            {
                "id": name,
                "kind": "operator",
                "runtime": "python",
                "handler": "demo_ops:noop",
                "inputs": [upstream],
                "output": {
                    "dataset": f"inv.{name}",
                    "range_type": "int",
                    "update_strategy": "replace",
                },
            }
        )
        upstream = name
    return {"name": "inv", "nodes": nodes}


@pytest.fixture
def chain(world: World, recorder: RecordingAdapter):
    deploy(world.acme, replace_chain())
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    return worker_client(key)


def _drain(chain, recorder, node: str) -> list[dict]:  # type: ignore[no-untyped-def]
    leases = []
    for message in recorder.take(node):
        lease = fetch(chain, message).json()
        assert complete(chain, lease, rows=1).status_code == 200
        leases.append(lease)
    return leases


def test_three_level_cascade_recomputes_only_the_range(world: World, chain, recorder):
    client = world["operator"].client()
    for start in (0, 10, 20):  # three ranges flow all the way down
        client.post(
            "/v1/events",
            {
                "dataset": "inv.src",
                "idempotency_key": f"e{start}",
                "range_start": start,
                "range_end": start + 10,
            },
            format="json",
        )
    for node in ("a", "b", "c"):
        assert len(_drain(chain, recorder, node)) == 3
    before = Task.objects.count()
    response = client.post(
        "/v1/datasets/inv.src/invalidate", {"range_start": 10, "range_end": 20}, format="json"
    )
    assert response.status_code == 202
    origin = Event.objects.get(pk=response.json()["event"]["id"])
    assert (origin.kind, origin.depth, origin.range_start, origin.range_end) == (
        "invalidate",
        0,
        "10",
        "20",
    )
    for level, node in enumerate(("a", "b", "c"), start=1):
        [lease] = _drain(chain, recorder, node)
        assert lease["input"]["event"]["kind"] == "invalidate"
        assert (lease["input"]["event"]["range_start"], lease["input"]["event"]["range_end"]) == (
            "10",
            "20",
        )
        emitted = Event.objects.get(producer_task_id=lease["task"]["id"])
        assert (emitted.kind, emitted.depth) == ("invalidate", level + 0)
        assert emitted.origin_id in {origin.pk, origin.origin_id}
    assert Task.objects.count() == before + 3  # one recomputation per level, nothing else
    assert Event.objects.filter(dataset_id="inv.c", kind="invalidate").count() == 4


def test_replace_reads_keep_only_the_newest_commit_of_a_range(world: World, chain, recorder):
    client = world["operator"].client()
    client.post(
        "/v1/events",
        {"dataset": "inv.src", "idempotency_key": "x", "range_start": 0, "range_end": 10},
        format="json",
    )
    _drain(chain, recorder, "a")
    client.post(
        "/v1/datasets/inv.src/invalidate", {"range_start": 0, "range_end": 10}, format="json"
    )
    _drain(chain, recorder, "a")
    rows = client.get("/v1/datasets/inv.a/data").json()["results"]
    assert len(rows) == 1  # the rewrite superseded the first commit of [0, 10)
    commits = client.get("/v1/datasets/inv.a/commits").json()["results"]
    assert [c["version"] for c in commits] == ["1.1", "1.2"]


def test_invalidate_bad_input(world: World, chain):
    client = world["operator"].client()
    inverted = client.post(
        "/v1/datasets/inv.src/invalidate", {"range_start": 5, "range_end": 1}, format="json"
    )
    assert inverted.status_code == 400 and inverted.json()["errors"][0]["path"] == "range_start"
    missing = client.post("/v1/datasets/inv.src/invalidate", {"range_start": 5}, format="json")
    assert missing.json()["errors"][0]["path"] == "range_end"
    assert (
        client.post(
            "/v1/datasets/inv.nope/invalidate", {"range_start": 1, "range_end": 2}, format="json"
        ).status_code
        == 404
    )
    assert (
        world["viewer"]
        .client()
        .post("/v1/datasets/inv.src/invalidate", {"range_start": 1, "range_end": 2}, format="json")
        .status_code
        == 403
    )
    assert not Event.objects.exists()


def test_lineage_walks_up_and_down(world: World, chain, recorder):
    client = world["operator"].client()
    client.post(
        "/v1/events",
        {"dataset": "inv.src", "idempotency_key": "l", "range_start": 0, "range_end": 10},
        format="json",
    )
    for node in ("a", "b", "c"):
        _drain(chain, recorder, node)
    middle = client.get("/v1/datasets/inv.b/lineage?version=1.1").json()
    assert middle["commit"]["dataset"] == "inv.b"
    assert [(u["dataset"], u["level"]) for u in middle["upstream"]] == [("inv.a", 1)]
    assert [(d["dataset"], d["level"]) for d in middle["downstream"]] == [("inv.c", 1)]
    top = client.get("/v1/datasets/inv.a/lineage").json()
    assert [(d["dataset"], d["level"]) for d in top["downstream"]] == [("inv.b", 1), ("inv.c", 2)]
    assert client.get("/v1/datasets/inv.a/lineage?version=1.9").status_code == 404
    assert world.outsider.client().get("/v1/datasets/inv.a/lineage").status_code == 404
