"""`update_each`: per-row values in one statement (unnest on PostgreSQL, CASE elsewhere);
`execute_in_order`: statements in one round trip on PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection, models
from django.utils import timezone

from apps.orgs.bulk import execute_in_order, insert_all, insert_new, update_each
from apps.tasks.ingest import events_ingest
from apps.tasks.models import Attempt, Event, Task
from tests.conftest import World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.smoke


def test_each_row_gets_its_own_values_and_only_matching_rows_change(world: World):
    deploy(world.acme, chain_config(nodes=1))
    body = {
        "events": [
            {
                "dataset": "chain.src",
                "idempotency_key": f"k{i}",
                "range_start": i,
                "range_end": i + 1,
            }
            for i in range(3)
        ]
    }
    events_ingest(world.acme, body)
    first, second, third = Task.objects.order_by("created_at", "pk")
    Task.objects.filter(pk=third.pk).update(state="canceled")
    later = timezone.now() + dt.timedelta(minutes=5)
    event = Event.objects.first()
    assert event is not None

    updated = update_each(
        Task,
        {
            first.pk: {"lease_token": "a", "error": {"why": "x"}, "output_event_id": event.pk},
            second.pk: {"lease_token": "b", "error": None, "output_event_id": None},
            third.pk: {"lease_token": "c", "error": {"why": "z"}, "output_event_id": None},
        },
        shared={"deadline_at": later},
        where={"state": "pending"},
    )

    assert updated == 2  # the canceled one is left alone
    rows = {t.pk: t for t in Task.objects.all()}
    assert (rows[first.pk].lease_token, rows[first.pk].error) == ("a", {"why": "x"})
    assert rows[first.pk].output_event_id == event.pk
    assert (rows[second.pk].lease_token, rows[second.pk].error) == ("b", None)
    assert Task.objects.filter(pk=second.pk, error__isnull=True).exists()  # SQL NULL
    assert rows[first.pk].deadline_at == rows[second.pk].deadline_at == later
    assert (rows[third.pk].lease_token, rows[third.pk].deadline_at) == (None, None)
    assert update_each(Task, {}) == 0


def test_insert_new_skips_conflicts_and_says_what_it_inserted(world: World):
    deploy(world.acme, chain_config(nodes=1))
    [first] = events_ingest(
        world.acme,
        {"dataset": "chain.src", "idempotency_key": "k0", "range_start": 0, "range_end": 1},
    )
    now = timezone.now()

    def event(key: str) -> Event:
        return Event(
            org=world.acme,
            dataset_id="chain.src",
            idempotency_key=key,
            range_start="0",
            range_end="1",
            event_time=now,
            payload={"b": 1, "a": [1, 2]},
            created_at=now,
        )

    repeat, new = event("k0"), event("k1")
    assert insert_new(Event, [repeat, new]) == {new.pk}
    stored = Event.objects.get(pk=new.pk)
    assert (stored.payload, stored.idempotency_key, stored.fanned_out_at) == (
        {"b": 1, "a": [1, 2]},
        "k1",
        None,
    )
    assert not Event.objects.filter(pk=repeat.pk).exists()
    assert Event.objects.filter(idempotency_key="k0").get().pk == first.event_id
    assert insert_new(Event, []) == set()


def test_insert_all_numbers_the_rows_in_order_as_bulk_create_does(world: World):
    deploy(world.acme, chain_config(nodes=1))
    events_ingest(
        world.acme,
        {"events": [{"dataset": "chain.src", "idempotency_key": f"k{i}"} for i in range(3)]},
    )
    tasks = list(Task.objects.order_by("created_at", "pk"))
    attempts = [
        Attempt(task=task, number=1, worker_id=f"w{i}", lease_token=f"lease-{i}")
        for i, task in enumerate(tasks)
    ]
    insert_all(Attempt, attempts)
    assert all(a.pk is not None and not a._state.adding for a in attempts)
    for i, attempt in enumerate(attempts):
        stored = Attempt.objects.get(pk=attempt.pk)
        assert (stored.task_id, stored.worker_id, stored.lease_token) == (
            tasks[i].pk,
            f"w{i}",
            f"lease-{i}",
        )
        assert stored.started_at is not None and stored.metrics == {} and stored.error is None
    assert sorted(a.pk for a in attempts) == [a.pk for a in attempts]
    insert_all(Attempt, [])


def test_plain_columns_are_the_values_the_fields_would_prepare(world: World):
    """Inserts take str, int, UUID and aware datetime attributes as they are; anything else
    (JSON, a naive datetime, a value of another type) goes through the field."""
    from django.db import connection

    from apps.orgs.bulk import _column

    deploy(world.acme, chain_config(nodes=1))
    events_ingest(world.acme, {"dataset": "chain.src", "idempotency_key": "p"})
    task = Task.objects.get()
    attempts = [
        Attempt(task=task, number=n, worker_id="w", lease_token=f"t{n}", heartbeat_at=now)
        for n, now in enumerate([timezone.now(), None])
    ]
    events = list(Event.objects.all())
    for model, objs in ((Attempt, attempts), (Event, events), (Task, [task])):
        for field in model._meta.concrete_fields:
            prepared = [field.get_db_prep_save(field.pre_save(o, True), connection) for o in objs]
            column = _column(field, objs)
            if isinstance(field, models.JSONField):
                assert [getattr(v, "obj", v) for v in column] == [
                    getattr(v, "obj", v) for v in prepared
                ]
            else:
                assert column == prepared, field.name

    naive = Attempt(task=task, number=9, lease_token="n", started_at=dt.datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.warns(RuntimeWarning):  # the field's own check still runs
        _column(Attempt._meta.get_field("started_at"), [naive])
    odd = Attempt(task=task, number="7", lease_token="o")  # a str where an int belongs
    assert _column(Attempt._meta.get_field("number"), [odd]) == [7]


@pytest.mark.django_db
def test_statements_run_in_order_in_one_round_trip(django_assert_num_queries):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE ordered (n integer, note text)")
    statements = [
        ("INSERT INTO ordered VALUES (%s, %s)", [1, "it's; 100%"]),
        ("UPDATE ordered SET n = n * %s", [10]),  # sees the row before it
        ("INSERT INTO ordered VALUES (%s, %s)", [2, "%s"]),
    ]
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 3):
        execute_in_order(statements)
    with connection.cursor() as cursor:
        cursor.execute("SELECT n, note FROM ordered ORDER BY n DESC")
        assert cursor.fetchall() == [(10, "it's; 100%"), (2, "%s")]
