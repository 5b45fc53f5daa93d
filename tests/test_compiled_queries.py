"""Hot SELECTs compiled once per connection (`apps/orgs/compiled.py`): the same instances
as the queryset, its SQL built once, and a call site with misordered parameters refused."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError

from apps.orgs.compiled import ParameterOrderError, load_models
from apps.tasks.models import Task
from tests.conftest import World
from tests.flow import chain_config, deploy

# The tests not marked smoke are of the compiled path, which only PostgreSQL takes (on SQLite
# `load_models` runs the queryset itself).


@pytest.fixture
def tasks(world: World) -> list[Task]:
    deploy(world.acme, chain_config())
    client = world["operator"].client()
    for i in range(3):
        body = {"dataset": "chain.src", "idempotency_key": f"c{i}", "range_start": i}
        assert (
            client.post("/v1/events", {**body, "range_end": i + 1}, format="json").status_code
            == 202
        )
    return list(Task.objects.order_by("pk"))


def _loaded(ids: list[Any]) -> Any:
    return (
        Task.objects.select_related("dag_version__dag", "event")
        .defer("dag_version__config")
        .filter(pk__any=ids)
        .order_by("pk")
    )


def _snapshot(task: Task) -> tuple[Any, ...]:
    return (
        task.pk,
        task.state,
        task.created_at,
        task.dag_version.pk,
        task.dag_version.number,
        task.dag_version.dag.name,
        task.event.pk,
        task.event.payload,
        task.event.created_at,
        task.get_deferred_fields(),
        task.dag_version.get_deferred_fields(),
    )


@pytest.mark.smoke
def test_the_same_instances_as_the_queryset(tasks: list[Task], django_assert_num_queries):
    ids = [t.pk for t in tasks]
    expected = [_snapshot(t) for t in _loaded(ids)]
    with django_assert_num_queries(1):  # related rows come with the one statement
        loaded = load_models("test_same", lambda: _loaded(ids), [ids])
        assert [_snapshot(t) for t in loaded] == expected
    assert not loaded[0]._state.adding and loaded[0]._state.db == "default"


def test_the_sql_is_built_once_per_connection(tasks: list[Task]):
    ids = [t.pk for t in tasks]
    builds = 0

    def build() -> Any:
        nonlocal builds
        builds += 1
        return _loaded(ids)

    for subset in (ids, ids[:1], ids[1:]):
        assert [t.pk for t in load_models("test_once", build, [subset])] == subset
    assert builds == 1

    seen: list[int] = []

    def other_thread() -> None:  # another connection compiles its own
        try:
            load_models("test_once", build, [ids])
            seen.append(builds)
        finally:
            connection.close()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen == [2]


def test_misordered_parameters_are_refused(tasks: list[Task], world: World):
    ids = [t.pk for t in tasks]
    org_id = world.acme.pk

    def build() -> Any:
        return Task.objects.filter(org_id=org_id, pk__any=ids)

    with pytest.raises(ParameterOrderError):
        load_models("test_misordered", build, [ids, org_id])
    assert len(load_models("test_ordered", build, [org_id, ids])) == len(ids)


@pytest.mark.django_db(transaction=True)
def test_a_locking_select_needs_a_transaction(tasks: list[Task]):
    ids = [t.pk for t in tasks]

    def build() -> Any:
        return Task.objects.select_for_update().filter(pk__any=ids)

    with transaction.atomic():
        assert len(load_models("test_locking", build, [ids])) == len(ids)
    with pytest.raises(TransactionManagementError):
        load_models("test_locking", build, [ids])


@pytest.mark.smoke
def test_the_fetch_statement_keeps_a_worker_keys_org_scope(tasks: list[Task], world: World):
    from apps.tasks import worker_api

    def code(org: Any) -> str:
        principal = worker_api.WorkerPrincipal(org=org, key_id=None)
        [answer] = worker_api.task_fetch_many(principal, [{"task_id": str(tasks[0].pk)}], "w")
        return str(answer["code"])

    assert code(world.acme) == "not_leasable"  # found: still pending
    assert code(world.globex) == "not_found"
    assert code(world.acme) == "not_leasable"  # each org's parameters, one compiled statement
