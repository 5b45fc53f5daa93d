"""Dataset write and read throughput, both backends, beside bare pyarrow and bare psycopg COPY.

Usage: .venv/bin/python bench/datasets.py [--rows 1000000] [--repeat 3] [--json out.json]

It recreates the PostgreSQL database named in --database-url (default sluice_bench_datasets),
migrates it, and measures, on one table of --rows rows (id int64, customer string, amount
float64, ts timestamp[us, tz=UTC], note string):

- parquet write: bare `pq.write_table` vs Sluice's commit path (the SDK's parquet write under
  the staging prefix, the platform's footer check, the commit recorded in a transaction);
- parquet read: bare `pq.read_table` vs `GET /v1/datasets/{id}/data?format=arrow` streamed
  through Django (in process: no socket);
- postgres write: bare psycopg `COPY … FROM STDIN` of the same rows already encoded as CSV,
  into a table of the same column types, vs the same commit path with the postgres backend
  (parquet read back, CSV-encoded and COPYed inside the completing transaction); also a
  `unique_key` dataset (COPY into a temporary table, then INSERT … ON CONFLICT);
- postgres read: bare `COPY (SELECT …) TO STDOUT` vs the same data API.

Each figure is the median of --repeat runs, in rows/s and MB/s of the table's Arrow size.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._benchutil import recreate_database  # noqa: E402  (needs the repository on the path)

console = Console()
SCHEMA = {
    "id": "int64",
    "customer": "string",
    "amount": "float64",
    "ts": "timestamp[us, tz=UTC]",
    "note": "string",
}


def make_table(rows: int, offset: int = 0) -> pa.Table:
    import pyarrow.compute as pc

    ids = pa.array(range(offset, offset + rows), pa.int64())
    return pa.table(
        {
            "id": ids,
            "customer": pc.binary_join_element_wise(
                "customer-", pc.cast(pc.bit_wise_and(ids, 4095), pa.string()), ""
            ),
            "amount": pc.divide(pc.cast(pc.bit_wise_and(ids, 65535), pa.float64()), 100.0),
            "ts": pc.cast(pc.add(ids, 1_700_000_000_000_000), pa.timestamp("us", tz="UTC")),
            "note": pa.array(["paid by card"] * rows),
        }
    )


def median_seconds(run: Callable[[int], None], repeat: int, label: str) -> float:
    timings = []
    for attempt in range(repeat):
        with console.status(f"{label} ({attempt + 1}/{repeat})"):
            started = time.perf_counter()
            run(attempt)
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def sources(backend: str, names: list[str], unique_key: bool = False) -> list[dict[str, Any]]:
    output: dict[str, Any] = {"backend": backend, "schema": SCHEMA, "range_type": "int"}
    if unique_key:
        output["unique_key"] = ["id"]
    return [
        {"id": name.replace(".", "_"), "kind": "source", "output": {"dataset": name, **output}}
        for name in names
    ]


class Bench:
    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        from apps.orgs import services
        from apps.orgs.models import User

        self.args = args
        self.data_dir = data_dir
        self.table = make_table(args.rows)
        self.megabytes = self.table.nbytes / 1e6
        self.org = services.org_create(slug="bench", name="Bench")
        user = User.objects.create_user(username="bench-viewer", password=None)
        services.membership_add(org=self.org, user=user, role="viewer", actor=None)
        _, self.token = services.api_token_issue(user=user, org=self.org, name="bench")
        self.figures: dict[str, dict[str, float]] = {}

    def record(self, name: str, seconds: float, rows: int | None = None) -> None:
        rows = rows or self.args.rows
        self.figures[name] = {
            "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds),
            "mb_per_s": round(self.megabytes * rows / self.args.rows / seconds, 1),
        }

    def deploy(self, nodes: list[dict[str, Any]]) -> None:
        from apps.dags.services import dag_deploy

        dag_deploy(org=self.org, config={"name": "bench", "nodes": nodes}, actor=None)

    def commit(self, dataset_id: str, table: pa.Table, start: int) -> None:
        """What a worker and the platform do for one output: write parquet under the staging
        prefix, check its footer, record the commit (and load postgres) in one transaction."""
        from django.db import transaction

        from apps.datasets.models import Dataset
        from apps.datasets.services import CommitRequest, commits_record, inspect_outputs
        from apps.datasets.storage import generation_prefix, write_table

        dataset = Dataset.objects.get(org=self.org, dataset_id=dataset_id)
        prefix = f"{generation_prefix(dataset, dataset.live_generation)}/_staging/bench/{start}/"
        written = write_table(table, f"{prefix}part-0.parquet")
        [facts] = inspect_outputs([{"path": written.path, "rows": written.rows}], prefix, "files")
        with transaction.atomic():
            commits_record(
                self.org,
                [
                    CommitRequest(
                        dataset_id=dataset_id,
                        files=[{"path": facts.path, "rows": facts.rows, "bytes": facts.bytes}],
                        range_start=str(start),
                        range_end=str(start + 1),
                        schemas=(facts.schema,),
                    )
                ],
            )

    def read_api(self, dataset_id: str) -> bytes:
        """Stream the dataset as Arrow IPC through the data API (the bytes, as the bare reads
        take them; the rows are checked once, untimed)."""
        from django.test import Client

        client = Client(HTTP_AUTHORIZATION=f"Bearer {self.token}")
        response = client.get(f"/v1/datasets/{dataset_id}/data?format=arrow")
        assert response.status_code == 200, response.content
        return b"".join(response.streaming_content)

    def read_storage(self, dataset_id: str) -> None:
        """The backend's own reader, record batch by record batch (what the data API streams)."""
        from apps.datasets import pg
        from apps.datasets.models import Commit, Dataset
        from apps.datasets.storage import read_batches

        dataset = Dataset.objects.get(org=self.org, dataset_id=dataset_id)
        if dataset.backend == "postgres":
            batches = pg.read_batches(dataset, dataset.live_generation, None)
        else:
            commits = Commit.objects.filter(dataset=dataset)
            batches = read_batches([f["path"] for c in commits for f in c.files])
        rows = sum(batch.num_rows for batch in batches)
        assert rows == self.args.rows, f"read {rows} rows, expected {self.args.rows}"

    def check_rows(self, body: bytes) -> None:
        rows = pa.ipc.open_stream(body).read_all().num_rows
        assert rows == self.args.rows, f"read {rows} rows, expected {self.args.rows}"

    def parquet(self) -> None:
        repeat = self.args.repeat
        bare_dir = Path(tempfile.mkdtemp(dir=self.data_dir))
        self.deploy(sources("parquet", ["bench.parquet_write", "bench.parquet_read"]))
        self.record(
            "parquet write, bare pyarrow",
            median_seconds(
                lambda i: pq.write_table(self.table, bare_dir / f"{i}.parquet"),
                repeat,
                "bare pyarrow write",
            ),
        )
        self.record(
            "parquet write, Sluice commit",
            median_seconds(
                lambda i: self.commit("bench.parquet_write", self.table, i),
                repeat,
                "Sluice parquet commit",
            ),
        )
        self.record(
            "parquet read, bare pyarrow",
            median_seconds(
                lambda i: pq.read_table(bare_dir / "0.parquet"), repeat, "bare pyarrow read"
            ),
        )
        self.commit("bench.parquet_read", self.table, 0)
        self.check_rows(self.read_api("bench.parquet_read"))
        self.record(
            "parquet read, Sluice storage reader",
            median_seconds(
                lambda i: self.read_storage("bench.parquet_read"), repeat, "Sluice parquet reader"
            ),
        )
        self.record(
            "parquet read, Sluice data API (arrow)",
            median_seconds(
                lambda i: self.read_api("bench.parquet_read"),
                repeat,
                "Sluice parquet read",
            ),
        )

    def postgres(self) -> None:
        from django.db import connection, transaction

        from apps.datasets.pg import column_type

        repeat = self.args.repeat
        self.deploy(
            sources("postgres", ["bench.pg_write", "bench.pg_read"])
            + sources("postgres", ["bench.pg_keyed"], unique_key=True)
        )
        columns = ", ".join(f'"{n}" {column_type(t)}' for n, t in SCHEMA.items())
        naive = self.table.set_column(
            self.table.schema.get_field_index("ts"), "ts", self.table["ts"].cast(pa.timestamp("us"))
        )

        def bare_copy(attempt: int) -> None:
            """The table encoded as CSV batch by batch (zoned timestamps as UTC wall time, the
            fast way) and streamed through one COPY into a table of the same column types."""
            options = pa_csv.WriteOptions(include_header=False)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL TIME ZONE 'UTC'")
                cursor.execute(f"CREATE TABLE bare_{attempt} ({columns})")
                with cursor.cursor.copy(f"COPY bare_{attempt} FROM STDIN (FORMAT csv)") as copy:
                    for batch in naive.to_batches(65_536):
                        encoded = io.BytesIO()
                        pa_csv.write_csv(batch, encoded, options)
                        copy.write(encoded.getvalue())

        self.record(
            "postgres write, bare psycopg COPY", median_seconds(bare_copy, repeat, "bare COPY")
        )

        def bare_upsert(attempt: int) -> None:
            """The hand-written upsert: COPY into a temporary table, INSERT … ON CONFLICT into a
            table with a unique index on id (new keys each run, as for Sluice's figure)."""
            rows = make_table(self.args.rows, attempt * self.args.rows)
            rows = rows.set_column(
                rows.schema.get_field_index("ts"), "ts", rows["ts"].cast(pa.timestamp("us"))
            )
            options = pa_csv.WriteOptions(include_header=False)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL TIME ZONE 'UTC'")
                cursor.execute(f"CREATE TABLE IF NOT EXISTS bare_keyed ({columns}, UNIQUE (id))")
                cursor.execute("CREATE TEMP TABLE bare_load (LIKE bare_keyed) ON COMMIT DROP")
                with cursor.cursor.copy("COPY bare_load FROM STDIN (FORMAT csv)") as copy:
                    for batch in rows.to_batches(65_536):
                        encoded = io.BytesIO()
                        pa_csv.write_csv(batch, encoded, options)
                        copy.write(encoded.getvalue())
                updates = ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in SCHEMA if n != "id")
                cursor.execute(
                    "INSERT INTO bare_keyed SELECT * FROM bare_load "
                    f"ON CONFLICT (id) DO UPDATE SET {updates}"
                )

        self.record(
            "postgres upsert, bare COPY + INSERT ON CONFLICT",
            median_seconds(bare_upsert, repeat, "bare upsert"),
        )
        self.record(
            "postgres write, Sluice commit",
            median_seconds(
                lambda i: self.commit("bench.pg_write", self.table, i), repeat, "Sluice pg commit"
            ),
        )
        self.record(
            "postgres write, Sluice commit with unique_key",
            median_seconds(
                lambda i: self.commit(
                    "bench.pg_keyed", make_table(self.args.rows, i * self.args.rows), i
                ),
                repeat,
                "Sluice pg upsert commit",
            ),
        )

        def bare_read(attempt: int) -> None:
            received = 0
            with (
                connection.cursor() as cursor,
                cursor.cursor.copy("COPY (SELECT * FROM bare_0) TO STDOUT (FORMAT csv)") as copy,
            ):
                for chunk in copy:
                    received += len(chunk)
            assert received > 0

        self.record(
            "postgres read, bare psycopg COPY TO", median_seconds(bare_read, repeat, "bare COPY TO")
        )
        self.commit("bench.pg_read", self.table, 0)
        self.check_rows(self.read_api("bench.pg_read"))
        self.record(
            "postgres read, Sluice storage reader",
            median_seconds(
                lambda i: self.read_storage("bench.pg_read"), repeat, "Sluice pg reader"
            ),
        )
        self.record(
            "postgres read, Sluice data API (arrow)",
            median_seconds(lambda i: self.read_api("bench.pg_read"), repeat, "Sluice pg read"),
        )

    def report(self) -> None:
        out = Table(
            title=f"{self.args.rows:,} rows, {self.megabytes:.0f} MB in Arrow; "
            f"median of {self.args.repeat}"
        )
        for column in ("figure", "seconds", "rows/s", "MB/s"):
            out.add_column(column, justify="left" if column == "figure" else "right")
        for name, figure in self.figures.items():
            out.add_row(
                name,
                f"{figure['seconds']:.3f}",
                f"{figure['rows_per_s']:,}",
                f"{figure['mb_per_s']:.1f}",
            )
        console.print(out)
        for backend, pairs in {
            "parquet": [
                ("write, bare pyarrow", "write, Sluice commit"),
                ("read, bare pyarrow", "read, Sluice storage reader"),
                ("read, bare pyarrow", "read, Sluice data API (arrow)"),
            ],
            "postgres": [
                ("write, bare psycopg COPY", "write, Sluice commit"),
                ("upsert, bare COPY + INSERT ON CONFLICT", "write, Sluice commit with unique_key"),
                ("read, bare psycopg COPY TO", "read, Sluice storage reader"),
                ("read, bare psycopg COPY TO", "read, Sluice data API (arrow)"),
            ],
        }.items():
            for bare, ours in pairs:
                a, b = self.figures.get(f"{backend} {bare}"), self.figures.get(f"{backend} {ours}")
                if a and b:
                    ratio = b["seconds"] / a["seconds"]
                    verdict = "within" if ratio <= 1.5 else "over"
                    console.print(
                        f"{backend} {ours}: {ratio:.2f}× the bare time ({verdict} the 1.5× target)"
                    )
                    self.figures[f"{backend} {ours}"]["ratio_to_bare"] = round(ratio, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma list: parquet,postgres")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/sluice_bench_datasets"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-datasets-"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": args.database_url,
            "SLUICE_DATA_DIR": str(data_dir),
            "SLUICE_STORAGE_ROOT": str(data_dir / "storage"),
            "SLUICE_DISPATCH_TRIGGER": "off",
            "LOG_LEVEL": "WARNING",
        }
    )
    console.print(f"data dir: {data_dir}")
    with console.status("recreating and migrating the database"):
        recreate_database(args.database_url)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    bench = Bench(args, data_dir)
    if "parquet" not in skip:
        bench.parquet()
    if "postgres" not in skip:
        bench.postgres()
    bench.report()
    if args.json:
        args.json.write_text(json.dumps(bench.figures, indent=2))


if __name__ == "__main__":
    main()
