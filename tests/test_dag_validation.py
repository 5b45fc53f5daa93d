"""Invalid DAG configs: each problem reported with its path and a plain sentence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from apps.dags import services
from apps.orgs.errors import Conflict, ValidationFailed
from tests.conftest import World
from tests.dag_configs import pipeline

pytestmark = pytest.mark.smoke

Mutation = Callable[[dict[str, Any]], Any]


def node(config: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in config["nodes"] if n["id"] == node_id)


def _set(path_fn: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Mutation:
    return lambda c: path_fn(c).__setitem__(key, value)


def _del(path_fn: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Mutation:
    return lambda c: path_fn(c).pop(key)


CLEAN: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: node(c, "orders_clean")  # noqa: E731
RAW: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: node(c, "orders_raw")  # noqa: E731
REVENUE: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: node(c, "revenue")  # noqa: E731
HOURLY: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: node(c, "hourly")  # noqa: E731
ALERT: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: node(c, "revenue_drop")  # noqa: E731


def _append_node(extra: dict[str, Any]) -> Mutation:
    return lambda c: c["nodes"].append(extra)


# (case id, mutation, expected path, a fragment of the expected message)
CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown top key", _set(lambda c: c, "nodez", []), "nodez", "unknown key 'nodez'"),
    ("missing nodes", _del(lambda c: c, "nodes"), "nodes", "missing required field 'nodes'"),
    ("empty nodes", _set(lambda c: c, "nodes", []), "nodes", "at least 1"),
    ("bad dag name", _set(lambda c: c, "name", "Orders!"), "name", "not a valid DAG name"),
    (
        "unknown node key",
        _set(CLEAN, "handlr", "x"),
        "nodes[1].handlr",
        "unknown key 'handlr' (did you mean 'handler'?)",
    ),
    (
        "misplaced field for kind",
        _set(RAW, "query", "select 1"),
        "nodes[0].query",
        "'query' is not a field of a source node",
    ),
    ("unknown kind", _set(RAW, "kind", "sauce"), "nodes[0].kind", "unknown node kind 'sauce'"),
    ("missing id", _del(RAW, "id"), "nodes[0].id", "missing required field 'id'"),
    ("bad node id", _set(HOURLY, "id", "Hourly"), "nodes[2].id", "not a valid node id"),
    ("dotted node id", _set(HOURLY, "id", "a.b"), "nodes[2].id", "not a valid node id"),
    (
        "duplicate id",
        _set(HOURLY, "id", "orders_clean"),
        "nodes[2].id",
        "duplicate node id 'orders_clean' (first at nodes[1])",
    ),
    (
        "unknown runtime",
        _set(CLEAN, "runtime", "pythn"),
        "nodes[1].runtime",
        "unknown runtime 'pythn'",
    ),
    (
        "python without handler",
        _del(CLEAN, "handler"),
        "nodes[1].handler",
        "a python operator needs 'handler'",
    ),
    (
        "ecs without queue",
        lambda c: (CLEAN(c).pop("handler"), CLEAN(c).update(runtime="ecs")),
        "nodes[1].queue",
        "an ecs operator needs 'queue'".replace("an ecs", "a ecs"),
    ),
    (
        "lambda without function",
        lambda c: (CLEAN(c).pop("handler"), CLEAN(c).update(runtime="lambda")),
        "nodes[1].function",
        "a lambda operator needs 'function'",
    ),
    (
        "queue on python",
        _set(CLEAN, "queue", "q"),
        "nodes[1].queue",
        "'queue' does not apply to the python runtime",
    ),
    (
        "handler module missing",
        _set(CLEAN, "handler", "nowhere:clean"),
        "nodes[1].handler",
        "module 'nowhere' of handler 'nowhere:clean' is not in",
    ),
    (
        "handler function missing",
        _set(CLEAN, "handler", "orders:dirty"),
        "nodes[1].handler",
        "defines no function 'dirty'",
    ),
    (
        "handler malformed",
        _set(CLEAN, "handler", "orders.clean"),
        "nodes[1].handler",
        "is not of the form module:function",
    ),
    (
        "unknown input node",
        _set(CLEAN, "inputs", ["ordrs_raw"]),
        "nodes[1].inputs[0]",
        "unknown node 'ordrs_raw' (did you mean 'orders_raw'?)",
    ),
    (
        "unknown input dataset",
        _set(CLEAN, "inputs", ["other.thing"]),
        "nodes[1].inputs[0]",
        "unknown dataset 'other.thing'",
    ),
    ("empty inputs", _set(CLEAN, "inputs", []), "nodes[1].inputs", "at least 1"),
    ("inputs not a list", _set(CLEAN, "inputs", "orders_raw"), "nodes[1].inputs", "must be a list"),
    (
        "cycle",
        _set(CLEAN, "inputs", ["revenue"]),
        "nodes[1].inputs",
        "cycle: orders_clean -> hourly -> revenue -> orders_clean",
    ),
    (
        "self cycle",
        _set(CLEAN, "inputs", ["orders_clean"]),
        "nodes[1].inputs",
        "cycle: orders_clean -> orders_clean",
    ),
    (
        "bad dataset id",
        _set(lambda c: CLEAN(c)["output"], "dataset", "sales..x"),
        "nodes[1].output.dataset",
        "not a valid dataset id",
    ),
    (
        "dataset id with dash",
        _set(lambda c: CLEAN(c)["output"], "dataset", "sales.orders-x"),
        "nodes[1].output.dataset",
        "not a valid dataset id",
    ),
    (
        "two producers in dag",
        _set(lambda c: CLEAN(c)["output"], "dataset", "SALES.Orders_Raw"),
        "nodes[1].output.dataset",
        "dataset 'sales.orders_raw' is also produced by node",
    ),
    (
        "unknown backend",
        _set(lambda c: CLEAN(c)["output"], "backend", "mysql"),
        "nodes[1].output.backend",
        "unknown backend 'mysql'",
    ),
    (
        "unknown range type",
        _set(lambda c: RAW(c)["output"], "range_type", "date"),
        "nodes[0].output.range_type",
        "unknown range_type 'date'",
    ),
    (
        "unknown arrow type",
        _set(lambda c: RAW(c)["output"]["schema"], "amount", "float65"),
        "nodes[0].output.schema.amount",
        "unknown Arrow type 'float65'",
    ),
    (
        "unique key not in schema",
        _set(lambda c: RAW(c)["output"], "unique_key", ["order"]),
        "nodes[0].output.unique_key[0]",
        "column 'order' is not in the declared schema",
    ),
    (
        "bad sql",
        _set(REVENUE, "query", "selec sum(amount) from hourly"),
        "nodes[3].query",
        "DuckDB cannot parse the SQL",
    ),
    (
        "two statements",
        _set(REVENUE, "query", "select 1; select 2"),
        "nodes[3].query",
        "exactly one SELECT",
    ),
    (
        "not a select",
        _set(REVENUE, "query", "delete from hourly"),
        "nodes[3].query",
        "exactly one SELECT",
    ),
    (
        "materialized sql without output",
        _del(REVENUE, "output"),
        "nodes[3].output",
        "a materialized sql node needs 'output'",
    ),
    (
        "virtual sql with output",
        _set(REVENUE, "materialize", False),
        "nodes[3].output",
        "'output' needs 'materialize: true'",
    ),
    (
        "bad alert sql",
        _set(ALERT, "condition", "select * frm revenue"),
        "nodes[4].condition",
        "DuckDB cannot parse",
    ),
    (
        "unknown channel",
        lambda c: ALERT(c)["routes"][0].update(channel="pager"),
        "nodes[4].routes[0].channel",
        "unknown alert channel 'pager'",
    ),
    (
        "route without secret",
        lambda c: ALERT(c)["routes"][0].pop("secret"),
        "nodes[4].routes[0].secret",
        "missing required field 'secret'",
    ),
    (
        "unknown severity",
        _set(ALERT, "severity", "meh"),
        "nodes[4].severity",
        "unknown severity 'meh'",
    ),
    (
        "alert as input",
        _append_node({"id": "after", "kind": "splitter", "inputs": ["revenue_drop"], "chunk": 10}),
        "nodes[5].inputs[0]",
        "is an alert and has no output",
    ),
    (
        "aggregator with two inputs",
        _set(HOURLY, "inputs", ["orders_clean", "orders_raw"]),
        "nodes[2].inputs",
        "at most 1",
    ),
    (
        "batch missing max_events",
        lambda c: HOURLY(c)["batch"].pop("max_events"),
        "nodes[2].batch.max_events",
        "missing required field 'max_events'",
    ),
    ("timeout too small", _set(CLEAN, "timeout_s", 0), "nodes[1].timeout_s", "at least 1"),
    (
        "retry wrong type",
        _set(lambda c: CLEAN(c)["retry"], "max_attempts", "3"),
        "nodes[1].retry.max_attempts",
        "must be an integer",
    ),
    (
        "concurrency unknown lane",
        _set(lambda c: CLEAN(c)["concurrency"], "bulk", 1),
        "nodes[1].concurrency.bulk",
        "unknown key 'bulk'",
    ),
    (
        "unknown secret",
        _set(CLEAN, "secrets", ["warehouse_tokn"]),
        "nodes[1].secrets[0]",
        "the org has no secret 'warehouse_tokn'",
    ),
    (
        "unknown route secret",
        lambda c: ALERT(c)["routes"][0].update(secret="pd_key"),
        "nodes[4].routes[0].secret",
        "the org has no secret 'pd_key'",
    ),
    (
        "bad secret name",
        _set(CLEAN, "secrets", ["Bad-Name"]),
        "nodes[1].secrets[0]",
        "not a valid secret name",
    ),
    (
        "too many nodes",
        lambda c: c["nodes"].extend(
            {"id": f"n{i}", "kind": "splitter", "inputs": ["hourly"], "chunk": 1}
            for i in range(500)
        ),
        "nodes",
        "at most 500",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_config_reports_path_and_message(world: World, mutate, path, fragment):
    config = pipeline()
    mutate(config)
    with pytest.raises(ValidationFailed) as caught:
        services.dag_deploy(org=world.acme, config=config, actor=None, dry_run=True)
    pairs = [(e.path, e.message) for e in caught.value.errors]
    assert any(p == path and fragment in m for p, m in pairs), pairs


def test_every_problem_is_reported_at_once(world: World):
    config = pipeline()
    CLEAN(config)["handlr"] = "x"
    HOURLY(config)["inputs"] = ["nope"]
    RAW(config)["output"]["schema"]["amount"] = "money"
    with pytest.raises(ValidationFailed) as caught:
        services.dag_deploy(org=world.acme, config=config, actor=None)
    paths = {e.path for e in caught.value.errors}
    assert {"nodes[1].handlr", "nodes[2].inputs[0]", "nodes[0].output.schema.amount"} <= paths


def test_case_insensitive_dataset_ids_are_normalized(world: World):
    config = pipeline()
    RAW(config)["output"]["dataset"] = "Sales.Orders_RAW"
    result = services.dag_deploy(org=world.acme, config=config, actor=None)
    assert result.created
    from apps.datasets.models import Dataset

    assert Dataset.objects.filter(org=world.acme, dataset_id="sales.orders_raw").exists()


def test_postgres_backend_refused_on_sqlite(world: World, settings):
    from django.db import connection

    config = pipeline()
    CLEAN(config)["output"]["backend"] = "postgres"
    if connection.vendor == "sqlite":
        with pytest.raises(ValidationFailed) as caught:
            services.dag_deploy(org=world.acme, config=config, actor=None, dry_run=True)
        assert caught.value.errors[0].path == "nodes[1].output.backend"
        assert "needs PostgreSQL" in caught.value.errors[0].message
    else:
        assert services.dag_deploy(org=world.acme, config=config, actor=None, dry_run=True)


def test_dataset_of_another_dag_is_a_valid_input_and_a_producer_conflict(world: World):
    services.dag_deploy(org=world.acme, config=pipeline(), actor=None)
    consumer = {
        "name": "reports",
        "nodes": [
            {
                "id": "copy",
                "kind": "operator",
                "runtime": "python",
                "handler": "orders:clean",
                "inputs": ["SALES.orders_clean"],
                "output": {"dataset": "reports.orders_copy"},
            }
        ],
    }
    assert services.dag_deploy(org=world.acme, config=consumer, actor=None).created
    stealer = pipeline(name="stealer", prefix="other")
    CLEAN(stealer)["output"]["dataset"] = "sales.orders_clean"
    with pytest.raises(Conflict) as caught:
        services.dag_deploy(org=world.acme, config=stealer, actor=None)
    assert caught.value.code == "producer_conflict"
    assert "already produced by DAG 'orders', node 'orders_clean'" in caught.value.detail
    assert caught.value.errors[0].path == "nodes[1].output.dataset"


def test_another_orgs_dataset_is_not_an_input(world: World):
    services.dag_deploy(org=world.globex, config=pipeline(), actor=None)
    consumer = {
        "name": "reports",
        "nodes": [
            {
                "id": "copy",
                "kind": "operator",
                "runtime": "python",
                "handler": "orders:clean",
                "inputs": ["sales.orders_clean"],
                "output": {"dataset": "reports.orders_copy"},
            }
        ],
    }
    with pytest.raises(ValidationFailed) as caught:
        services.dag_deploy(org=world.acme, config=consumer, actor=None)
    assert "unknown dataset 'sales.orders_clean'" in caught.value.errors[0].message


def test_not_an_object(world: World):
    with pytest.raises(ValidationFailed):
        services.dag_deploy(org=world.acme, config=["nodes"], actor=None)


def test_table_has_at_least_thirty_cases():
    assert len(CASES) >= 30
