"""The lean single-event POST (notify trigger, PostgreSQL): it stores exactly what the full
path stores, in one statement, then notifies after its commit, and hands every other case to
the full path, whose answers (and errors) stay the API's."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.db import connection, connections, transaction
from django.http import HttpRequest
from django.test import RequestFactory
from django.utils import timezone

from apps.dags.models import VersionState
from apps.orgs import services as org_services
from apps.orgs.models import ApiToken
from apps.tasks import ingest_lean
from apps.tasks.ingest import events_ingest
from apps.tasks.ingest_lean import single_event_ingest
from apps.tasks.models import Event, EventKind
from apps.tasks.triggers import Wakeups
from apps.tasks.views import lean_events_post
from tests.conftest import World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.django_db(transaction=True)
TOUCH_S = 60


@pytest.fixture
def notify(settings, world: World) -> World:
    assert connection.vendor == "postgresql", "the lean path is PostgreSQL's"
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    deploy(world.acme, chain_config(nodes=1))
    ApiToken.objects.update(last_used_at=timezone.now())  # as after a first request
    ingest_lean._range_types.clear()
    return world


def lean(world: World, item: dict, role: str = "operator") -> uuid.UUID | None:
    return single_event_ingest(world[role].token, json.dumps(item).encode(), TOUCH_S)


def item(key: str) -> dict:
    return {"dataset": "chain.src", "idempotency_key": key, "range_start": 1, "range_end": 2}


def test_a_plain_event_is_stored_as_the_full_path_stores_it(notify: World):
    fields = {
        "range_start": "007",
        "range_end": 9,
        "mode": "backfill",
        "payload": {"why": "replay", "n": [1, 2]},
        "event_time": "2026-01-02T03:04:05+01:00",
    }
    lean_id = lean(notify, {"dataset": "CHAIN.src", "idempotency_key": "a", **fields})
    assert lean_id is not None
    [full] = events_ingest(notify.acme, {"dataset": "CHAIN.src", "idempotency_key": "b", **fields})
    assert full.created

    def stored(event_id: uuid.UUID) -> dict:
        row = Event.objects.filter(pk=event_id).values().get()
        return {k: v for k, v in row.items() if k not in ("id", "idempotency_key", "created_at")}

    assert stored(lean_id) == stored(full.event_id)
    assert stored(lean_id)["range_start"] == "7" and stored(lean_id)["fanned_out_at"] is None
    # Both paths make ids that sort by creation time.
    assert lean_id.version == full.event_id.version == 7 and lean_id < full.event_id


def test_the_lean_post_answers_202_without_a_django_query(notify: World, django_assert_num_queries):
    client = notify["operator"].client()
    with django_assert_num_queries(0):  # only the lean path's own statement ran
        response = client.post("/v1/events", item("k"), format="json")
    assert response.status_code == 202, response.content
    # Answered ahead of the session, auth and messages middleware, with the header it adds.
    assert not hasattr(response.wsgi_request, "session")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Content-Length"] == str(len(response.content))  # not chunked
    [answer] = response.json()["events"]
    assert answer["created"] is True
    assert Event.objects.get(pk=answer["id"]).idempotency_key == "k"
    # A repeat goes the full path, which finds the original.
    repeat = client.post("/v1/events", item("k"), format="json")
    assert repeat.status_code == 202
    assert repeat.json()["events"] == [{"id": answer["id"], "created": False}]
    assert hasattr(repeat.wsgi_request, "session")


def test_the_insert_notifies_the_dispatcher(notify: World):
    wakeups = Wakeups()
    try:
        assert wakeups.wait(0.05) is False
        assert lean(notify, item("n")) is not None
        assert wakeups.wait(5.0) is True
        assert lean(notify, item("n")) is None  # a repeat inserts nothing, notifies nobody
        assert wakeups.wait(0.1) is False
    finally:
        wakeups.close()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({**item("r"), "rows": [{"n": 1}]}, 202, None),  # rows: the full path writes them
        ({"events": [item("b")]}, 202, None),
        ({**item("p"), "payload": {"rows": 1}}, 202, None),  # only looks like rows
        ({**item("big"), "payload": {"blob": "x" * 70_000}}, 202, None),
        ({**item("x"), "dataset": "chain.op1"}, 400, "dataset"),  # not a source
        ({**item("x"), "dataset": "nope"}, 400, "dataset"),
        ({**item("x"), "range_start": 5}, 400, "range_start"),  # start ≥ end
        ({**item("x"), "range_end": None}, 400, "range_end"),
        ({**item("x"), "range_start": "one"}, 400, "range_start"),
        ({**item("x"), "mode": "later"}, 400, "mode"),
        ({**item("x"), "payload": []}, 400, "payload"),
        ({**item("x"), "event_time": "noon"}, 400, "event_time"),
        ({**item("x"), "idempotency_key": 7}, 400, "idempotency_key"),
        ({**item("x"), "colour": "red"}, 400, "colour"),
        ([item("x")], 400, "body"),
    ],
)
def test_everything_else_takes_the_full_path(notify: World, body, status: int, field):
    assert single_event_ingest(notify["operator"].token, json.dumps(body).encode(), 60) is None
    response = notify["operator"].client().post("/v1/events", body, format="json")
    assert response.status_code == status, response.content
    if field:
        assert field in json.dumps(response.json()["errors"])


def test_tokens_the_full_path_refuses_or_touches(notify: World):
    assert lean(notify, item("v"), role="viewer") is None
    assert notify["viewer"].client().post("/v1/events", item("v"), format="json").status_code == 403

    operator = notify["operator"]
    ApiToken.objects.filter(user=operator.user).update(last_used_at=None)
    assert lean(notify, item("t1")) is None  # a token to touch
    assert operator.client().post("/v1/events", item("t1"), format="json").status_code == 202
    assert lean(notify, item("t2")) is not None  # touched by the full path

    token = ApiToken.objects.get(user=operator.user)
    org_services.credential_revoke(token)
    assert lean(notify, item("t3")) is None
    assert operator.client().post("/v1/events", item("t3"), format="json").status_code == 401

    owner = notify["owner"]
    owner.user.is_active = False
    owner.user.save()
    assert lean(notify, item("t4"), role="owner") is None
    assert not Event.objects.filter(idempotency_key__in=["v", "t3", "t4"]).exists()


def test_a_wrong_range_type_guess_costs_a_second_statement(notify: World):
    key = (org_services.hash_secret(notify["operator"].token), "chain.src")
    ingest_lean._range_types[key] = "timestamp"  # as before a redeploy changed the type
    event_id = lean(notify, {**item("g"), "range_start": "03", "range_end": "4"})
    assert event_id is not None
    assert Event.objects.get(pk=event_id).range_start == "3"
    assert ingest_lean._range_types[key] == "int"


def test_not_inside_a_transaction(notify: World):
    with transaction.atomic():
        assert lean(notify, item("in")) is None


def test_a_dead_connection_falls_back_and_the_post_still_lands(notify: World):
    assert lean(notify, item("warm")) is not None
    pid = connection.connection.info.backend_pid
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    response = notify["operator"].client().post("/v1/events", item("after"), format="json")
    assert response.status_code == 202, response.content
    assert Event.objects.filter(idempotency_key="after").count() == 1


def test_the_insert_names_every_column_the_database_requires():
    columns = re.search(r"INSERT INTO events \(([^)]*)\)", ingest_lean._INGEST)[1]
    named = set(re.split(r",\s*", columns))
    required = {f.column for f in Event._meta.concrete_fields if not f.null}
    assert required <= named, required - named


def test_the_statement_spells_the_constants_the_models_define():
    assert VersionState.ACTIVE == "active" and "v.state = 'active'" in ingest_lean._INGEST
    assert EventKind.DATA == "data" and "%(dataset)s, 'data'," in ingest_lean._INGEST


def test_only_bodies_of_a_known_small_length_take_the_lean_path(notify: World):
    def request(key: str) -> HttpRequest:
        return RequestFactory().post(
            "/v1/events",
            json.dumps(item(key)),
            content_type="application/json",
            headers={"Authorization": f"Bearer {notify['operator'].token}"},
        )

    answer = lean_events_post(request("len"))
    assert answer is not None and answer.status_code == 202
    chunked = request("chunked")
    del chunked.META["CONTENT_LENGTH"]  # the full path reads it, and refuses it if too large
    assert lean_events_post(chunked) is None
    assert not Event.objects.filter(idempotency_key="chunked").exists()
