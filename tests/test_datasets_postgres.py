"""The postgres backend (D2): a table per generation and a view, COPY loading inside the
completing transaction, upserts on unique_key, replace, evolution, and exactly-once commits
under duplicate and concurrent completes."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db import connection, connections
from django.utils import timezone
from psycopg import sql

from apps.datasets.models import Commit, Dataset
from apps.orgs import services as org_services
from apps.tasks import reaper
from apps.tasks.models import Task
from tests.conftest import RecordingAdapter, World
from tests.flow import deploy, fetch, worker_client
from tests.test_datasets import post

TYPES = {
    "id": "int64",
    "name": "string",
    "ok": "bool",
    "ts": "timestamp[us, tz=UTC]",
    "day": "date32",
    "price": "decimal128(10, 2)",
    "score": "float64",
}


def pg_chain(
    source: dict[str, Any] | None = None, copy_output: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": "items",
        "nodes": [
            {
                "id": "items",
                "kind": "source",
                "output": {
                    "dataset": "shop.items",
                    "backend": "postgres",
                    "range_type": "int",
                    "schema": TYPES,
                    **(source or {}),
                },
            },
            {
                "id": "copy",
                "kind": "operator",
                "runtime": "python",
                "handler": "demo_ops:noop",
                "inputs": ["items"],
                "output": {
                    "dataset": "shop.items_copy",
                    "backend": "postgres",
                    "range_type": "int",
                    **(copy_output or {}),
                },
                "retry": {"max_attempts": 3, "backoff_s": 0, "max_backoff_s": 0},
            },
        ],
    }


ROWS = [
    {
        "id": 1,
        "name": "ada",
        "ok": True,
        "ts": "2026-01-01T00:00:00Z",
        "day": "2026-01-01",
        "price": "12.50",
        "score": 1.5,
    },
    {"id": 2, "name": "", "ok": False, "ts": None, "day": None, "price": None, "score": None},
    {"id": 3, "name": None, "ok": None, "ts": "2026-01-02T03:04:05.123456+00:00"},
]


def view_rows(dataset_id: str, *columns: str) -> list[tuple[Any, ...]]:
    dataset = Dataset.objects.get(dataset_id=dataset_id)
    selected = sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*")
    query = sql.SQL("SELECT {} FROM {}.{} ORDER BY 1").format(
        selected, sql.Identifier(dataset.pg_schema), sql.Identifier(dataset.pg_view)
    )
    with connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchall()


@pytest.fixture
def operator(world: World, recorder: RecordingAdapter):
    assert connection.vendor == "postgresql", "the postgres backend needs PostgreSQL"
    deploy(world.acme, pg_chain())
    return world["operator"].client()


def test_source_rows_round_trip_through_the_table_and_the_view(operator):
    assert post(operator, ROWS).status_code == 202
    assert view_rows("shop.items") == [
        (
            1,
            "ada",
            True,
            dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            dt.date(2026, 1, 1),
            decimal.Decimal("12.50"),
            1.5,
        ),
        (2, "", False, None, None, None, None),
        (3, None, None, dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC), None, None, None),
    ]
    dataset = Dataset.objects.get(dataset_id="shop.items")
    assert dataset.pg_view == "shop.items" and dataset.pg_schema == f"org_{dataset.org_id}"
    rows = operator.get("/v1/datasets/shop.items/data").json()["results"]
    assert rows[0] == {
        "id": 1,
        "name": "ada",
        "ok": True,
        "ts": "2026-01-01T00:00:00+00:00",
        "day": "2026-01-01",
        "price": "12.50",
        "score": 1.5,
    }
    assert rows[1]["name"] == "" and rows[2]["name"] is None  # empty string is not null
    body = b"".join(operator.get("/v1/datasets/shop.items/data?format=parquet").streaming_content)
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == 3 and table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    arrow = b"".join(operator.get("/v1/datasets/shop.items/data?format=arrow").streaming_content)
    assert pa.ipc.open_stream(arrow).read_all().column("id").to_pylist() == [1, 2, 3]


def test_version_pin_range_and_paging_read_by_commit(operator):
    post(operator, [{"id": 1}], key="a", start=0, end=10)
    post(operator, [{"id": 2}, {"id": 3}], key="b", start=10, end=20)
    base = "/v1/datasets/shop.items/data"
    assert [r["id"] for r in operator.get(f"{base}?version=1.1").json()["results"]] == [1]
    ranged = operator.get(f"{base}?range_start=10&range_end=15").json()["results"]
    assert sorted(r["id"] for r in ranged) == [2, 3]
    page = operator.get(f"{base}?limit=2").json()
    rest = operator.get(page["next"]).json()
    assert sorted(r["id"] for r in page["results"] + rest["results"]) == [1, 2, 3]
    assert rest["next"] is None
    empty = operator.get(f"{base}?range_start=50&range_end=60&format=parquet")
    assert pq.read_table(io.BytesIO(b"".join(empty.streaming_content))).num_rows == 0


def test_unique_key_upserts_latest_commit_and_last_row_win(world: World, recorder):
    deploy(
        world.acme,
        pg_chain(source={"unique_key": ["id"], "schema": {"id": "int64", "name": "string"}}),
    )
    client = world["operator"].client()
    post(client, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], key="one")
    post(
        client, [{"id": 1, "name": "z"}, {"id": 3, "name": "c"}, {"id": 3, "name": "d"}], key="two"
    )
    assert view_rows("shop.items") == [(1, "z"), (2, "b"), (3, "d")]
    api = client.get("/v1/datasets/shop.items/data").json()["results"]
    assert sorted((r["id"], r["name"]) for r in api) == [(1, "z"), (2, "b"), (3, "d")]
    assert Commit.objects.filter(dataset__dataset_id="shop.items").count() == 2


def test_replace_deletes_the_rows_of_superseded_commits(world: World, recorder):
    deploy(
        world.acme,
        pg_chain(source={"update_strategy": "replace", "schema": {"id": "int64"}}),
    )
    client = world["operator"].client()
    post(client, [{"id": 1}], key="a", start=0, end=5)
    post(client, [{"id": 2}], key="b", start=5, end=10)
    post(client, [{"id": 3}], key="c", start=20, end=30)
    post(client, [{"id": 9}], key="wide", start=0, end=10)
    assert view_rows("shop.items") == [(3,), (9,)]
    api = client.get("/v1/datasets/shop.items/data").json()["results"]
    assert sorted(r["id"] for r in api) == [3, 9]


def _worker(world: World):  # type: ignore[no-untyped-def]
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    return worker_client(key)


def _write(lease: dict[str, Any], table: pa.Table, name: str = "part-0.parquet") -> dict:
    path = lease["output"]["staging"] + name
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return {"path": path, "rows": table.num_rows}


def _complete(worker, lease: dict[str, Any], files: list[dict]):  # type: ignore[no-untyped-def]
    return worker.post(
        "/internal/task-complete",
        {
            "lease_token": lease["lease"]["token"],
            "outputs": [{"dataset": "shop.items_copy", "files": files}],
        },
        format="json",
    )


def test_operator_output_loads_once_and_evolves_the_table(world: World, operator, recorder):
    worker = _worker(world)
    post(operator, [{"id": 1}], key="a")
    lease = fetch(worker, recorder.take("copy")[0]).json()
    files = [_write(lease, pa.table({"n": pa.array([1, 2], pa.int64())}))]
    assert _complete(worker, lease, files).status_code == 200
    assert _complete(worker, lease, files).status_code == 200  # a duplicate: same answer
    assert view_rows("shop.items_copy") == [(1,), (2,)]
    assert Commit.objects.filter(dataset__dataset_id="shop.items_copy").count() == 1

    post(operator, [{"id": 2}], key="b")
    second = fetch(worker, recorder.take("copy")[0]).json()
    wider = pa.table({"n": pa.array([3], pa.int64()), "note": pa.array(["new"])})
    assert _complete(worker, second, [_write(second, wider)]).status_code == 200
    assert view_rows("shop.items_copy", "n", "note") == [(1, None), (2, None), (3, "new")]

    post(operator, [{"id": 3}], key="c")
    third = fetch(worker, recorder.take("copy")[0]).json()
    wrong = pa.table({"n": pa.array(["three"])})
    refused = _complete(worker, third, [_write(third, wrong)])
    assert refused.status_code == 400 and refused.json()["errors"][0]["path"].endswith(".n")
    assert len(view_rows("shop.items_copy")) == 3


def test_worker_killed_after_writing_leaves_nothing_and_the_retry_loads_once(
    world: World, operator, recorder
):
    worker = _worker(world)
    post(operator, [{"id": 1}])
    first = fetch(worker, recorder.take("copy")[0]).json()
    written = [_write(first, pa.table({"n": pa.array([7], pa.int64())}))]
    # The worker dies here, before task-complete: nothing is visible.
    assert operator.get("/v1/datasets/shop.items_copy/data").json()["results"] == []
    Task.objects.filter(node_id="copy").update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    reaper.reap_once()
    retry = fetch(worker, recorder.take("copy")[0]).json()
    assert _complete(worker, first, written).status_code == 409
    files = [_write(retry, pa.table({"n": pa.array([7, 8], pa.int64())}))]
    assert _complete(worker, retry, files).status_code == 200
    assert view_rows("shop.items_copy") == [(7,), (8,)]
    assert Commit.objects.filter(dataset__dataset_id="shop.items_copy").count() == 1


def test_a_list_column_is_refused_at_deploy(world: World):
    from apps.dags import services as dag_services
    from apps.orgs.errors import ValidationFailed

    config = pg_chain(source={"schema": {"id": "int64", "tags": "list<string>"}})
    with pytest.raises(ValidationFailed) as refused:
        dag_services.dag_deploy(org=world.acme, config=config, actor=None)
    assert any(
        e.path == "nodes[0].output.schema.tags" and "parquet backend" in e.message
        for e in refused.value.errors
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["postgres", "parquet"])
def test_concurrent_completes_of_two_attempts_commit_once(world: World, recorder, backend):
    """The first attempt's lease was lost and the task retried: the zombie first attempt and
    the second both complete at the same moment (twice each). One commit, from the second."""
    deploy(world.acme, pg_chain(source={"backend": backend}, copy_output={"backend": backend}))
    worker = _worker(world)
    post(world["operator"].client(), [{"id": 1}])
    first = fetch(worker, recorder.take("copy")[0]).json()
    Task.objects.filter(node_id="copy").update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    reaper.reap_once()
    second = fetch(worker, recorder.take("copy")[0], worker="w2").json()
    calls = [
        (first, [_write(first, pa.table({"n": pa.array([1], pa.int64())}))]),
        (second, [_write(second, pa.table({"n": pa.array([2], pa.int64())}))]),
    ] * 2
    barrier = threading.Barrier(len(calls))
    statuses: list[int] = []

    def run(lease: dict[str, Any], files: list[dict]) -> None:
        try:
            barrier.wait(timeout=10)
            statuses.append(_complete(worker, lease, files).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200, 200, 409, 409]
    commits = Commit.objects.filter(dataset__dataset_id="shop.items_copy")
    assert commits.count() == 1
    assert commits.get().files[0]["path"].startswith(second["output"]["staging"])
    api = world["operator"].client().get("/v1/datasets/shop.items_copy/data").json()
    assert [r["n"] for r in api["results"]] == [2]


@pytest.mark.django_db(transaction=True)
def test_a_read_stopped_early_leaves_the_connection_usable(world: World, recorder):
    from apps.datasets import pg

    deploy(world.acme, pg_chain(source={"schema": {"id": "int64", "name": "string"}}))
    client = world["operator"].client()
    many = [{"id": i, "name": "x" * 1000} for i in range(10_000)]  # 40 MB: ten blocks
    for key in range(4):
        assert post(client, many, key=str(key)).status_code == 202
    dataset = Dataset.objects.get(dataset_id="shop.items")
    batches = pg.read_batches(dataset, 1, None)
    first = next(batches)
    assert 0 < first.num_rows < 40_000
    batches.close()  # the client went away mid-download
    assert Commit.objects.filter(dataset=dataset).count() == 4  # the connection still answers
    assert sum(b.num_rows for b in pg.read_batches(dataset, 1, None)) == 40_000
