"""POST /v1/events: idempotency, batches, bad input (a 4xx naming the field, nothing stored)."""

from __future__ import annotations

import pytest

from apps.tasks.models import Event, Task
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.smoke


@pytest.fixture
def source(world: World, recorder: RecordingAdapter):
    deploy(world.acme, chain_config())
    deploy(
        world.acme,
        {
            "name": "stamps",
            "nodes": [{"id": "ticks", "kind": "source", "output": {"dataset": "clock.ticks"}}],
        },
    )
    return world["operator"].client()


def test_repeat_key_returns_original(source):
    body = {"dataset": "CHAIN.src", "idempotency_key": "same", "range_start": 1, "range_end": 2}
    first = source.post("/v1/events", body, format="json").json()["events"][0]
    again = source.post("/v1/events", body, format="json").json()["events"][0]
    assert first["created"] is True and again == {"id": first["id"], "created": False}
    assert Event.objects.count() == 1 and Task.objects.count() == 1


def test_batch_with_repeats_inside(source):
    events = [
        {"dataset": "chain.src", "idempotency_key": k, "range_start": 0, "range_end": 1}
        for k in ("a", "b", "a")
    ]
    answer = source.post("/v1/events", {"events": events}, format="json").json()["events"]
    assert [a["created"] for a in answer] == [True, True, False]
    assert answer[0]["id"] == answer[2]["id"]
    assert Task.objects.filter(node_id="op1").count() == 2


def test_event_read_back(source):
    posted = source.post(
        "/v1/events",
        {
            "dataset": "clock.ticks",
            "idempotency_key": "t",
            "range_start": "2026-01-01T00:00:00Z",
            "range_end": "2026-01-01T01:00:00+01:00",
            "payload": {"n": 1},
        },
        format="json",
    )
    assert posted.status_code == 400  # the end (00:00Z) is not after the start
    posted = source.post(
        "/v1/events",
        {
            "dataset": "clock.ticks",
            "idempotency_key": "t",
            "range_start": "2026-01-01T00:00:00Z",
            "range_end": "2026-01-01T02:00:00+01:00",
            "payload": {"n": 1},
        },
        format="json",
    )
    event_id = posted.json()["events"][0]["id"]
    detail = source.get(f"/v1/events/{event_id}").json()
    assert detail["range_start"] == "2026-01-01T00:00:00.000000Z"
    assert detail["range_end"] == "2026-01-01T01:00:00.000000Z"
    assert detail["mode"] == "live" and detail["payload"] == {"n": 1}
    listed = source.get("/v1/events?dataset=clock.ticks").json()["results"]
    assert [e["id"] for e in listed] == [event_id]
    assert source.get("/v1/events/not-a-uuid").status_code == 404


BAD = [
    ({"idempotency_key": "x"}, "dataset", "required"),
    ({"dataset": "chain.nope"}, "dataset", "not a source dataset"),
    ({"dataset": "chain.op1"}, "dataset", "not a source dataset"),
    ({"dataset": "chain.src", "range_start": 5, "range_end": 5}, "range_start", "before"),
    ({"dataset": "chain.src", "range_start": 5}, "range_end", "both ends"),
    ({"dataset": "chain.src", "range_start": "x", "range_end": 2}, "range_start", "integer"),
    (
        {"dataset": "clock.ticks", "range_start": "2026-01-01", "range_end": "2026-01-02"},
        "range_start",
        "time zone",
    ),
    ({"dataset": "chain.src", "mode": "fast"}, "mode", "live"),
    ({"dataset": "chain.src", "payload": []}, "payload", "object"),
    ({"dataset": "chain.src", "colour": "red"}, "colour", "unknown field"),
    ({"dataset": "chain.src", "event_time": "yesterday"}, "event_time", "RFC 3339"),
    ({"dataset": "chain.src", "idempotency_key": 7}, "idempotency_key", "string"),
]


@pytest.mark.parametrize(("body", "field", "fragment"), BAD)
def test_bad_event_names_the_field(source, body, field, fragment):
    response = source.post("/v1/events", body, format="json")
    assert response.status_code == 400, response.json()
    errors = response.json()["errors"]
    assert any(e["path"] == field and fragment in e["message"] for e in errors), errors
    assert not Event.objects.exists()


def test_one_bad_event_stores_none_of_the_batch(source):
    events = [
        {"dataset": "chain.src", "idempotency_key": "ok"},
        {"dataset": "chain.src", "mode": "nope"},
    ]
    response = source.post("/v1/events", {"events": events}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "events[1].mode"
    assert not Event.objects.exists()


def test_batch_limits_and_shapes(source):
    too_many = [{"dataset": "chain.src"}] * 1001
    response = source.post("/v1/events", {"events": too_many}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["path"] == "events"
    assert source.post("/v1/events", {"events": []}, format="json").status_code == 400
    assert source.post("/v1/events", [1, 2], format="json").status_code == 400
    malformed = source.post("/v1/events", data=b"{", content_type="application/json")
    assert malformed.status_code == 400 and malformed.json()["code"] == "parse_error"


def test_body_cap_is_413(source, settings):
    settings.SLUICE_MAX_BODY_BYTES = 2000
    events = [{"dataset": "chain.src", "idempotency_key": str(i)} for i in range(100)]
    response = source.post("/v1/events", {"events": events}, format="json")
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    assert not Event.objects.exists()


def test_viewers_cannot_post_and_other_orgs_are_invisible(world: World, source):
    viewer = world["viewer"].client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    assert viewer.status_code == 403
    outsider = world.outsider.client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    assert outsider.status_code == 400  # not a source dataset of *their* org
    source.post("/v1/events", {"dataset": "chain.src", "idempotency_key": "mine"}, format="json")
    event = Event.objects.get()
    assert world.outsider.client().get(f"/v1/events/{event.pk}").status_code == 404
    task = Task.objects.first()
    assert world.outsider.client().get(f"/v1/tasks/{task.pk}").status_code == 404
    assert world.outsider.client().post(f"/v1/tasks/{task.pk}/cancel").status_code == 404


def test_tasks_list_filters(world: World, source):
    source.post("/v1/events", {"dataset": "chain.src", "idempotency_key": "f"}, format="json")
    client = world["viewer"].client()
    assert len(client.get("/v1/tasks?node=op1").json()["results"]) == 1
    assert client.get("/v1/tasks?node=op2").json()["results"] == []
    assert len(client.get("/v1/tasks?dag=chain&lane=live&mode=live").json()["results"]) == 1
    bad = client.get("/v1/tasks?state=sleeping")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "state"
