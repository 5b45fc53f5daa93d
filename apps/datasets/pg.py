"""The `postgres` backend (D2): one table per generation in the org's schema, and a view named
after the dataset that points at the live generation.

Committed parquet is loaded inside the completing transaction: streamed as CSV through `COPY`
straight into the generation's table for plain appends, or into a temporary table and then
`INSERT … ON CONFLICT` for datasets with a `unique_key`. Every row carries `_sluice_seq`, the
seq of the commit that last wrote it, so reads select by commit like the parquet backend does.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from django.db import connection
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from apps.datasets.models import Dataset
from apps.datasets.storage import filesystem_for
from apps.orgs.errors import ValidationFailed
from sluice_worker.arrow_types import arrow_schema, parse_arrow_type

SEQ_COLUMN = "_sluice_seq"
PG_IDENTIFIER_BYTES = 63
LOAD_BATCH_ROWS = 65_536


def column_type(type_text: str) -> str | None:
    """The PostgreSQL type that holds an Arrow type exactly, or None when there is none here."""
    data_type = parse_arrow_type(type_text)
    if pa.types.is_timestamp(data_type):
        return "timestamptz" if data_type.tz else "timestamp"
    if pa.types.is_decimal(data_type):
        return f"numeric({data_type.precision}, {data_type.scale})"
    simple = {
        "int8": "smallint",
        "int16": "smallint",
        "int32": "integer",
        "int64": "bigint",
        "uint8": "smallint",
        "uint16": "integer",
        "uint32": "bigint",
        "uint64": "numeric(20, 0)",
        "halffloat": "real",
        "float": "real",
        "double": "double precision",
        "string": "text",
        "large_string": "text",
        "bool": "boolean",
        "date32[day]": "date",
        "date64[ms]": "date",
    }
    return simple.get(str(data_type))


def schema_problems(schema: dict[str, str]) -> dict[str, str]:
    """{column: why} for the columns a postgres dataset cannot hold."""
    problems: dict[str, str] = {}
    for name, type_text in schema.items():
        if len(name.encode()) > PG_IDENTIFIER_BYTES:
            problems[name] = f"a postgres column name has at most {PG_IDENTIFIER_BYTES} bytes"
        elif name == SEQ_COLUMN:
            problems[name] = f"{SEQ_COLUMN} is reserved by the postgres backend"
        else:
            try:
                supported = column_type(type_text) is not None
            except ValueError:
                continue  # the config validator reports unknown types itself
            if not supported:
                problems[name] = (
                    f"{type_text} has no postgres column type here (use the parquet backend)"
                )
    return problems


def _table(dataset: Dataset, generation: int) -> sql.Composed:
    return sql.SQL("{}.{}").format(
        sql.Identifier(dataset.pg_schema), sql.Identifier(dataset.pg_table(generation))
    )


def _columns(names: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _raw_cursor() -> Any:
    """psycopg's own cursor on Django's connection (and so inside its transaction)."""
    connection.ensure_connection()
    return connection.connection.cursor()


def _existing_columns(cursor: Any, dataset: Dataset, generation: int) -> list[str] | None:
    cursor.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [f'"{dataset.pg_schema}"."{dataset.pg_table(generation)}"'],
    )
    names = [row[0] for row in cursor.fetchall()]
    return names or None


def _ensure_schema(cursor: Any, name: str) -> None:
    cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name])
    if cursor.fetchone():
        return
    # Two first commits of one org may race to create its schema: serialize them.
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"sluice-schema:{name}"])
    cursor.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))


def ensure_table(dataset: Dataset, generation: int) -> None:
    """Create the generation's table (or add the columns the schema has gained) and point the
    view at it when it is the live generation. Runs under the generation's row lock."""
    problems = schema_problems(dataset.schema)
    if problems:
        column, why = next(iter(problems.items()))
        raise ValidationFailed.field(f"schema.{column}", why)
    cursor = _raw_cursor()
    table = _table(dataset, generation)
    existing = _existing_columns(cursor, dataset, generation)
    if existing is None:
        _ensure_schema(cursor, dataset.pg_schema)
        definitions = [
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(column_type(type_text) or ""))
            for name, type_text in dataset.schema.items()
        ]
        definitions.append(sql.SQL("{} bigint NOT NULL").format(sql.Identifier(SEQ_COLUMN)))
        cursor.execute(
            sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(definitions))
        )
        if dataset.unique_key:
            nulls = " NULLS NOT DISTINCT" if getattr(connection, "pg_version", 0) >= 150000 else ""
            cursor.execute(
                sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})" + nulls).format(
                    sql.Identifier(f"{dataset.pg_table(generation)}_key"),
                    table,
                    _columns(dataset.unique_key),
                )
            )
        if dataset.update_strategy == "replace":
            cursor.execute(
                sql.SQL("CREATE INDEX {} ON {} ({})").format(
                    sql.Identifier(f"{dataset.pg_table(generation)}_seq"),
                    table,
                    sql.Identifier(SEQ_COLUMN),
                )
            )
    missing = [name for name in dataset.schema if existing is not None and name not in existing]
    for name in missing:
        cursor.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                table, sql.Identifier(name), sql.SQL(column_type(dataset.schema[name]) or "")
            )
        )
    if generation == dataset.live_generation and (existing is None or missing):
        point_view(dataset, generation)


def point_view(dataset: Dataset, generation: int) -> None:
    """The dataset's view selects the schema's columns from `generation`'s table."""
    cursor = _raw_cursor()
    view = sql.SQL("{}.{}").format(
        sql.Identifier(dataset.pg_schema), sql.Identifier(dataset.pg_view)
    )
    # A view cannot drop or reorder columns in place; after an evolution it only grows, but a
    # cutover to a generation of another shape needs a fresh view.
    cursor.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
    cursor.execute(
        sql.SQL("CREATE VIEW {} AS SELECT {} FROM {}").format(
            view, _columns(list(dataset.schema)), _table(dataset, generation)
        )
    )


def _file_batches(uri: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The file's rows in the schema's column order; columns the file lacks (added to the
    schema after it was written) come as nulls."""
    filesystem, path = filesystem_for(uri)
    with filesystem.open_input_file(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=LOAD_BATCH_ROWS):
            arrays = [
                batch.column(field.name).cast(field.type)
                if field.name in batch.schema.names
                else pa.nulls(batch.num_rows, field.type)
                for field in schema
            ]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _csv(batch: pa.RecordBatch | pa.Table, seq: int) -> bytes:
    """Rows as COPY's CSV, the commit's seq appended. Zoned timestamps are written as their UTC
    wall time (the load runs in UTC): Arrow formats those fifteen times faster."""
    arrays = [
        column.cast(pa.timestamp(column.type.unit))
        if pa.types.is_timestamp(column.type) and column.type.tz
        else column
        for column in batch.columns
    ]
    arrays.append(pa.repeat(pa.scalar(seq, pa.int64()), batch.num_rows))
    buffer = io.BytesIO()
    pa_csv.write_csv(
        pa.Table.from_arrays(arrays, names=[*batch.schema.names, SEQ_COLUMN]),
        buffer,
        pa_csv.WriteOptions(include_header=False),
    )
    return buffer.getvalue()


def _last_per_key(tables: list[pa.Table], key: list[str]) -> pa.Table:
    """The commit's rows, one per key: the last one written wins (D10)."""
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        return table
    order = "_sluice_row"
    indexed = table.append_column(order, pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by(key, use_threads=False).aggregate([(order, "max")])
    if last.num_rows == table.num_rows:
        return table
    rows = last[f"{order}_max"]
    return table.take(rows.take(pc.sort_indices(rows)))  # kept in the order written


def load_commit(dataset: Dataset, generation: int, seq: int, files: list[str]) -> None:
    """Load a commit's parquet files into the generation's table, inside the caller's
    transaction (the generation's row lock is held). Plain appends stream straight into the
    table; with a `unique_key` the commit is deduplicated in Arrow (it is one task's output),
    copied into a temporary table, and upserted."""
    ensure_table(dataset, generation)
    if not files:
        return
    cursor = _raw_cursor()
    cursor.execute("SET LOCAL TIME ZONE 'UTC'")
    schema = arrow_schema(dataset.schema)
    names = [*schema.names, SEQ_COLUMN]
    table = _table(dataset, generation)
    if not dataset.unique_key:
        copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, _columns(names))
        # A writer thread sends while this one reads and encodes the next batch.
        with cursor.copy(copy, writer=QueuedLibpqWriter(cursor)) as stream:
            for uri in files:
                for batch in _file_batches(uri, schema):
                    stream.write(_csv(batch, seq))
        return
    rows = _last_per_key(
        [pa.Table.from_batches(list(_file_batches(uri, schema)), schema) for uri in files],
        list(dataset.unique_key),
    )
    cursor.execute(
        sql.SQL(
            "CREATE TEMPORARY TABLE _sluice_load (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP"
        ).format(table)
    )
    copy = sql.SQL("COPY _sluice_load ({}) FROM STDIN (FORMAT csv)").format(_columns(names))
    with cursor.copy(copy, writer=QueuedLibpqWriter(cursor)) as stream:
        for batch in rows.to_batches(LOAD_BATCH_ROWS):
            stream.write(_csv(batch, seq))
    key = list(dataset.unique_key)
    cursor.execute(
        sql.SQL(
            "INSERT INTO {table} ({names}) SELECT {names} FROM _sluice_load "
            "ON CONFLICT ({key}) DO UPDATE SET {updates}"
        ).format(
            table=table,
            names=_columns(names),
            key=_columns(key),
            updates=sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n))
                for n in names
                if n not in key
            ),
        )
    )
    cursor.execute("DROP TABLE _sluice_load")


def delete_commits(dataset: Dataset, generation: int, seqs: list[int]) -> None:
    """Remove the rows of superseded commits (`replace`, D10)."""
    if not seqs:
        return
    _raw_cursor().execute(
        sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(
            _table(dataset, generation), sql.Identifier(SEQ_COLUMN)
        ),
        [seqs],
    )


def _row_blocks(stream: Iterator[Any], size: int = 4 << 20) -> Iterator[bytearray]:
    """COPY TO hands out one row per chunk: join them into blocks of whole rows."""
    block = bytearray()
    for chunk in stream:
        block += chunk
        if len(block) >= size:
            yield block
            block = bytearray()
    if block:
        yield block


_DONE = object()


def _copy_blocks(cursor: Any, copy: sql.Composable) -> Iterator[bytearray]:
    """Blocks of whole rows from `COPY … TO STDOUT`, read on a thread while the caller parses
    the one before (the read is Python-bound, the parse is not). A caller that stops early
    (a client gone mid-download) cancels the query, so the connection stays usable."""
    blocks: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            with cursor.copy(copy) as stream:
                for block in _row_blocks(stream):
                    if not offer(block):
                        cursor.connection.cancel()
                        for _ in stream:
                            pass  # ends in QueryCanceled
            offer(_DONE)
        except BaseException as exc:  # handed to the caller's thread, raised there
            if not (stop.is_set() and isinstance(exc, psycopg.errors.QueryCanceled)):
                offer(exc)

    reader = threading.Thread(target=read, name="copy-reader", daemon=True)
    reader.start()
    try:
        while (item := blocks.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def read_batches(
    dataset: Dataset,
    generation: int,
    seqs: list[int] | None,
    offset: int = 0,
    limit: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """The rows of `seqs` (every row when None) as record batches, streamed through COPY."""
    schema = arrow_schema(dataset.schema)
    cursor = _raw_cursor()
    if _existing_columns(cursor, dataset, generation) is None or seqs == []:
        return
    # Zoned timestamps travel as UTC wall time, parsed without a zone and zoned again in Arrow:
    # several times faster than parsing offsets.
    zoned = {f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.tz}
    selected = sql.SQL(", ").join(
        sql.SQL("({0} AT TIME ZONE 'UTC') AS {0}").format(sql.Identifier(f.name))
        if f.name in zoned
        else sql.Identifier(f.name)
        for f in schema
    )
    query = sql.SQL("SELECT {} FROM {}").format(selected, _table(dataset, generation))
    if seqs is not None:
        query = sql.SQL("{} WHERE {} = ANY({})").format(
            query, sql.Identifier(SEQ_COLUMN), sql.Literal(seqs)
        )
    if limit is not None:
        # Pages of one unchanged table come in one order only while scans start at its head.
        cursor.execute("SET synchronize_seqscans = off")
        query = sql.SQL("{} LIMIT {} OFFSET {}").format(
            query, sql.Literal(limit), sql.Literal(offset)
        )
    copy = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    wire = pa.schema(
        [pa.field(f.name, pa.timestamp(f.type.unit)) if f.name in zoned else f for f in schema]
    )
    convert = pa_csv.ConvertOptions(
        column_types=wire,
        true_values=["t"],
        false_values=["f"],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    read_options = pa_csv.ReadOptions(column_names=schema.names)
    for block in _copy_blocks(cursor, copy):
        table = pa_csv.read_csv(
            pa.BufferReader(pa.py_buffer(block)), read_options=read_options, convert_options=convert
        )
        for batch in table.to_batches():
            yield pa.RecordBatch.from_arrays(
                [
                    column.cast(field.type)
                    for column, field in zip(batch.columns, schema, strict=True)
                ],
                schema=schema,
            )
