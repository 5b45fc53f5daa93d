"""Datasets on parquet storage: source rows, completion checks, schemas, and the read API."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apps.datasets.models import Commit, Dataset
from apps.orgs import services as org_services
from apps.tasks import reaper
from apps.tasks.models import Event, Task
from tests.conftest import RecordingAdapter, World
from tests.flow import complete, deploy, fetch, worker_client

pytestmark = pytest.mark.smoke

SCHEMA = {"id": "int64", "name": "string", "ts": "timestamp[us, tz=UTC]"}


def typed_chain(schema: dict[str, str] | None = SCHEMA) -> dict:
    source = {"dataset": "shop.items", "range_type": "int"}
    if schema:
        source["schema"] = schema
    return {
        "name": "items",
        "nodes": [
            {"id": "items", "kind": "source", "output": source},
            {
                "id": "copy",
                "kind": "operator",
                "runtime": "python",
                "handler": "demo_ops:noop",
                "inputs": ["items"],
                "output": {"dataset": "shop.items_copy"},
                "retry": {"max_attempts": 3, "backoff_s": 0, "max_backoff_s": 0},
            },
        ],
    }


ROWS = [
    {"id": 1, "name": "ada", "ts": "2026-01-01T00:00:00Z"},
    {"id": 2, "name": "grace", "ts": "2026-01-01T00:00:01+00:00"},
]


@pytest.fixture
def items(world: World, recorder: RecordingAdapter):
    deploy(world.acme, typed_chain())
    return world["operator"].client()


def post(client, rows, key="k", start=0, end=10, **extra):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/events",
        {
            "dataset": "shop.items",
            "idempotency_key": key,
            "range_start": start,
            "range_end": end,
            "rows": rows,
            **extra,
        },
        format="json",
    )


def test_source_rows_become_a_commit_and_read_back_in_every_format(items):
    response = post(items, ROWS)
    assert response.status_code == 202, response.json()
    event = Event.objects.get()
    assert event.commit.version == "1.1" and event.commit.rows == 2
    path = event.commit.files[0]["path"]
    assert "/_landing/" in path and Path(path).exists()
    data = items.get("/v1/datasets/shop.items/data?format=json").json()
    assert data == {
        "results": [
            {"id": 1, "name": "ada", "ts": "2026-01-01T00:00:00+00:00"},
            {"id": 2, "name": "grace", "ts": "2026-01-01T00:00:01+00:00"},
        ],
        "next": None,
    }
    csv_body = b"".join(items.get("/v1/datasets/shop.items/data?format=csv").streaming_content)
    assert csv_body.decode().splitlines()[0] == "id,name,ts"
    parquet = b"".join(items.get("/v1/datasets/shop.items/data?format=parquet").streaming_content)
    assert pq.read_table(io.BytesIO(parquet)).column("name").to_pylist() == ["ada", "grace"]
    arrow = b"".join(items.get("/v1/datasets/shop.items/data?format=arrow").streaming_content)
    assert pa.ipc.open_stream(arrow).read_all().num_rows == 2
    assert list(Dataset.objects.get(dataset_id="shop.items").schema) == ["id", "name", "ts"]
    detail = items.get("/v1/datasets/shop.items").json()
    assert (detail["rows"], detail["commits"], detail["backend"]) == (2, 1, "parquet")
    assert detail["producer"] == {"dag": "items", "node": "items"}
    commits = items.get("/v1/datasets/shop.items/commits").json()["results"]
    assert [c["version"] for c in commits] == ["1.1"]


def test_repeat_event_with_rows_commits_once(items):
    post(items, ROWS)
    again = post(items, ROWS)
    assert again.json()["events"][0]["created"] is False
    assert Commit.objects.filter(dataset__dataset_id="shop.items").count() == 1
    landing = Path(Commit.objects.get().files[0]["path"]).parent
    assert len(list(landing.iterdir())) == 1  # the repeat's file was removed


@pytest.mark.parametrize(
    ("rows", "path", "fragment"),
    [
        ([{"id": "x", "name": "a", "ts": None}], "rows[0].id", "'x' cannot be cast to int64"),
        (
            [ROWS[0], {"id": 3, "name": "b", "ts": "soon"}],
            "rows[1].ts",
            "cannot be cast to timestamp",
        ),
        ([{"id": 1, "colour": "red"}], "rows[0].colour", "column not in the schema"),
        (["not an object"], "rows[0]", "must be an object"),
        ({"id": 1}, "rows", "must be a list"),
    ],
)
def test_rows_that_do_not_cast_are_400_and_nothing_is_committed(items, rows, path, fragment):
    response = post(items, rows)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert any(e["path"] == path and fragment in e["message"] for e in errors), errors
    assert not Event.objects.exists() and not Commit.objects.exists()


def test_too_many_rows(items):
    response = post(items, [{"id": i} for i in range(10_001)])
    assert response.status_code == 400 and response.json()["errors"][0]["path"] == "rows"


def test_first_commit_fixes_an_undeclared_schema_then_evolution(world: World, recorder):
    deploy(world.acme, typed_chain(schema=None))
    client = world["operator"].client()
    assert post(client, [{"id": 1, "name": "a"}], key="a").status_code == 202
    assert Dataset.objects.get(dataset_id="shop.items").schema == {"id": "int64", "name": "string"}
    wrong = post(client, [{"id": "one", "name": "b"}], key="b")
    assert wrong.status_code == 400 and wrong.json()["errors"][0]["path"] == "rows[0].id"


def _lease(world: World, client, recorder):  # type: ignore[no-untyped-def]
    post(client, ROWS)
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    worker = worker_client(key)
    return worker, fetch(worker, recorder.take("copy")[0]).json()


def _complete_with(worker, lease, path: str, rows: int):  # type: ignore[no-untyped-def]
    return worker.post(
        "/internal/task-complete",
        {
            "lease_token": lease["lease"]["token"],
            "outputs": [{"dataset": "shop.items_copy", "files": [{"path": path, "rows": rows}]}],
        },
        format="json",
    )


def test_completion_checks_files_rows_and_schema(world: World, items, recorder, tmp_path):
    worker, lease = _lease(world, items, recorder)
    assert lease["input"]["datasets"][0]["files"][0].endswith(".parquet")
    staging = lease["output"]["staging"]
    outside = tmp_path / "elsewhere.parquet"
    pq.write_table(pa.table({"id": [1]}), outside)
    refused = _complete_with(worker, lease, str(outside), 1)
    assert refused.status_code == 400 and "must lie under" in refused.json()["detail"]
    missing = _complete_with(worker, lease, staging + "nope.parquet", 1)
    assert missing.status_code == 400 and "no parquet file" in missing.json()["detail"]
    Path(staging).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64())}), staging + "a.parquet")
    lying = _complete_with(worker, lease, staging + "a.parquet", 5)
    assert lying.status_code == 400
    assert lying.json()["errors"][0] == {
        "path": "outputs[0].files[0].rows",
        "message": "reports 5 rows; the file holds 2",
    }
    assert not Commit.objects.filter(dataset__dataset_id="shop.items_copy").exists()
    assert Task.objects.get(node_id="copy").state == "running"  # it may still complete
    ok = _complete_with(worker, lease, staging + "a.parquet", 2)
    assert ok.status_code == 200, ok.json()
    assert Dataset.objects.get(dataset_id="shop.items_copy").schema == {"id": "int64"}


def test_later_commits_may_add_nullable_columns_only(world: World, items, recorder):
    worker, lease = _lease(world, items, recorder)
    complete(worker, lease, rows=3)  # fixes {"n": int64}
    post(items, ROWS, key="second")
    second = fetch(worker, recorder.take("copy")[0]).json()
    staging = second["output"]["staging"]
    Path(staging).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"n": pa.array([1.5])}), staging + "float.parquet")
    changed = _complete_with(worker, second, staging + "float.parquet", 1)
    assert changed.status_code == 400
    assert changed.json()["errors"][0]["path"] == "files[0].schema.n"
    assert "is double; the dataset has int64" in changed.json()["errors"][0]["message"]
    pq.write_table(
        pa.table({"n": pa.array([1], pa.int64()), "extra": pa.array(["x"])}),
        staging + "wider.parquet",
    )
    assert _complete_with(worker, second, staging + "wider.parquet", 1).status_code == 200
    assert Dataset.objects.get(dataset_id="shop.items_copy").schema == {
        "n": "int64",
        "extra": "string",
    }


def test_worker_killed_after_writing_leaves_nothing_visible(world: World, items, recorder):
    import datetime as dt

    from django.utils import timezone

    worker, lease = _lease(world, items, recorder)
    staging = lease["output"]["staging"]
    Path(staging).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"n": pa.array([1], pa.int64())}), staging + "written.parquet")
    # ... and the worker dies before task-complete.
    assert items.get("/v1/datasets/shop.items_copy/data").json()["results"] == []
    Task.objects.filter(node_id="copy").update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    reaper.reap_once()
    retry = fetch(worker, recorder.take("copy")[0]).json()
    late = _complete_with(worker, lease, staging + "written.parquet", 1)
    assert late.status_code == 409
    assert complete(worker, retry, rows=4).status_code == 200
    assert Commit.objects.filter(dataset__dataset_id="shop.items_copy").count() == 1
    rows = items.get("/v1/datasets/shop.items_copy/data").json()["results"]
    assert len(rows) == 4


def test_version_pin_range_filter_and_paging(items):
    post(items, [{"id": 1, "name": "a"}], key="a", start=0, end=10)
    post(items, [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}], key="b", start=10, end=20)
    base = "/v1/datasets/shop.items/data"
    assert [r["id"] for r in items.get(f"{base}?version=1.1").json()["results"]] == [1]
    assert [
        r["id"] for r in items.get(f"{base}?range_start=10&range_end=15").json()["results"]
    ] == [2, 3]
    page = items.get(f"{base}?limit=2").json()
    assert [r["id"] for r in page["results"]] == [1, 2] and page["next"]
    rest = items.get(page["next"]).json()
    assert [r["id"] for r in rest["results"]] == [3] and rest["next"] is None
    assert items.get(f"{base}?version=1.9").status_code == 404
    assert items.get(f"{base}?version=x").json()["errors"][0]["path"] == "version"
    assert items.get(f"{base}?format=xml").json()["errors"][0]["path"] == "format"
    assert items.get(f"{base}?limit=20000").status_code == 400
    assert items.get("/v1/datasets/shop.nothing").status_code == 404


def test_datasets_of_other_orgs_are_404(world: World, items):
    post(items, ROWS)
    outsider = world.outsider.client()
    assert outsider.get("/v1/datasets/shop.items").status_code == 404
    assert outsider.get("/v1/datasets/shop.items/data").status_code == 404
    assert outsider.get("/v1/datasets").json()["results"] == []
    listed = world["viewer"].client().get("/v1/datasets").json()["results"]
    assert {d["dataset"] for d in listed} >= {"shop.items", "shop.items_copy"}


def test_append_with_unique_key_reads_one_row_per_key_latest_wins(world: World, recorder):
    config = typed_chain({"id": "int64", "name": "string"})
    config["nodes"][0]["output"]["unique_key"] = ["id"]
    deploy(world.acme, config)
    client = world["operator"].client()
    post(client, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], key="one")
    post(
        client, [{"id": 1, "name": "z"}, {"id": 3, "name": "c"}, {"id": 3, "name": "d"}], key="two"
    )
    rows = client.get("/v1/datasets/shop.items/data").json()["results"]
    assert sorted((r["id"], r["name"]) for r in rows) == [(1, "z"), (2, "b"), (3, "d")]
    assert Commit.objects.filter(dataset__dataset_id="shop.items").count() == 2  # both kept


def _arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_rows_as_an_arrow_or_parquet_body_with_the_event_fields_as_query_parameters(items):
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int32()),  # cast to the dataset's int64
            "name": ["ada", "grace"],
            "ts": pa.array([0, 1_000_000], pa.timestamp("us", tz="UTC")),
        }
    )
    url = "/v1/events?dataset=shop.items&idempotency_key=a1&range_start=0&range_end=10"
    sent = items.post(
        url + '&payload={"batch":7}',
        _arrow_stream(table),
        content_type="application/vnd.apache.arrow.stream",
    )
    assert sent.status_code == 202, sent.json()
    event = Event.objects.get()
    assert (event.commit.rows, event.payload, event.range_end) == (2, {"batch": 7}, "10")
    again = items.post(url, _parquet(table), content_type="application/vnd.apache.parquet")
    assert again.json()["events"][0]["created"] is False
    parquet = items.post(
        url.replace("a1", "p1"), _parquet(table), content_type="application/vnd.apache.parquet"
    )
    assert parquet.status_code == 202
    rows = items.get("/v1/datasets/shop.items/data").json()["results"]
    assert [r["name"] for r in rows] == ["ada", "grace", "ada", "grace"]
    assert Dataset.objects.get(dataset_id="shop.items").schema == SCHEMA


@pytest.mark.parametrize(
    ("body", "content_type", "query", "path"),
    [
        (b"not arrow", "application/vnd.apache.arrow.stream", "", "body"),
        (b"", "application/vnd.apache.parquet", "", "body"),
        (
            _arrow_stream(pa.table({"id": ["x"], "name": ["a"]})),
            "application/vnd.apache.arrow.stream",
            "",
            "rows.id",
        ),
        (
            _parquet(pa.table({"id": pa.array([1], pa.int64())})),
            "application/vnd.apache.parquet",
            "&colour=red",
            "colour",
        ),
        (
            _parquet(pa.table({"id": pa.array([1], pa.int64())})),
            "application/vnd.apache.parquet",
            "&payload=[1",
            "payload",
        ),
    ],
)
def test_bad_table_bodies_are_400_naming_the_problem(items, body, content_type, query, path):
    response = items.post(
        f"/v1/events?dataset=shop.items&range_start=0&range_end=1{query}",
        body,
        content_type=content_type,
    )
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["path"] == path
    assert not Event.objects.exists() and not Commit.objects.exists()


def test_files_written_by_the_client_under_the_landing_prefix(items, tmp_path):
    landing = items.get("/v1/datasets/shop.items").json()["landing_prefix"]
    assert landing.endswith("/shop/items/g1/_landing/")
    Path(landing).mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array([5, 6], pa.int64()),
            "name": ["x", "y"],
            "ts": pa.array([None, None], pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, landing + "mine.parquet")
    outside = tmp_path / "outside.parquet"
    pq.write_table(table, outside)

    def send(files, key="f"):  # type: ignore[no-untyped-def]
        body = {"dataset": "shop.items", "idempotency_key": key, "files": files}
        return items.post("/v1/events", body, format="json")

    bad = send([{"path": str(outside), "rows": 2}])
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "files[0].path"
    lying = send([{"path": landing + "mine.parquet", "rows": 3}])
    assert lying.json()["errors"][0]["path"] == "files[0].rows"
    both = items.post(
        "/v1/events",
        {"dataset": "shop.items", "rows": [], "files": [{"path": landing + "mine.parquet"}]},
        format="json",
    )
    assert both.status_code == 400 and both.json()["errors"][0]["path"] == "files"
    assert not Commit.objects.exists()
    ok = send([{"path": landing + "mine.parquet", "rows": 2}])
    assert ok.status_code == 202, ok.json()
    assert Commit.objects.get().files[0]["path"] == landing + "mine.parquet"
    assert (
        send([{"path": landing + "mine.parquet", "rows": 2}]).json()["events"][0]["created"]
        is False
    )
    assert Path(landing + "mine.parquet").exists()  # a repeat never deletes the client's file
    rows = items.get("/v1/datasets/shop.items/data").json()["results"]
    assert [(r["id"], r["ts"]) for r in rows] == [(5, None), (6, None)]
