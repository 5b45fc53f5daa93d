"""Bulk writes built from column arrays on PostgreSQL (one statement, no per-row SQL):
updates where each row gets values of its own, and inserts that skip conflicting rows."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import connection, models
from django.db.models import Case, Value, When
from django.utils import timezone


@contextmanager
def array_cursor() -> Iterator[Any]:
    """A cursor for statements whose parameters are column arrays. On PostgreSQL it binds
    them server-side: Django's cursors bind client-side, quoting every element of every array
    into the SQL text, which was a tenth of a batch task-complete. psycopg prepares a
    statement run this way once the connection has run it `prepare_threshold` times
    (`SLUICE_DB_PREPARED_STATEMENTS`), so only statements whose plan does not hinge on a
    parameter's value belong here: a generic plan of `state = $1` cannot use the partial
    indexes (`WHERE state = 'pending'`, …). Django's query log and execute wrappers still
    see the statements."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    raw = psycopg.Cursor(connection.connection)
    make = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    with make(raw) as cursor:  # type: ignore[arg-type]  # the stubs expect a wrapper
        yield cursor


# A statement and its parameters, as `execute_in_order` runs them.
Statement = tuple[str, Sequence[Any]]


def joins_statements() -> bool:
    """Whether several statements go to the database in one round trip here: PostgreSQL,
    whose driver sends them in a pipeline."""
    return connection.vendor == "postgresql" and psycopg.Pipeline.is_supported()


def execute_in_order(statements: Sequence[Statement]) -> list[tuple[Any, ...]]:
    """Run `statements` (SQL, parameters) one after the other in the current transaction, on
    PostgreSQL in one round trip; the last one's rows (none if it returns none). A loop's
    step ran a dozen short statements, each a round trip to a backend that, with both cores
    busy, waits to be scheduled.

    On PostgreSQL they go in a pipeline, bound server-side, and psycopg prepares each
    statement once the connection has run it `prepare_threshold` times (planning was two
    thirds of the waiting-events statement's time; the simple query that joined them before
    could not be prepared). So, as for `array_cursor`, no statement here may have a plan that
    hinges on a parameter's value: constants that select a partial index are literals in the
    text. Django's execute wrappers and query log see one query a round trip."""
    if not statements:
        return []
    if not joins_statements():
        with connection.cursor() as cursor:
            for sql, params in statements:
                cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []
    connection.validate_no_broken_transaction()
    connection.ensure_connection()
    raw = connection.connection

    def send_statements(sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        cursors = [psycopg.Cursor(raw) for _ in statements]
        # A single statement goes without a pipeline: one round trip either way, and a
        # pipeline costs the client a third more CPU.
        pipeline = raw.pipeline() if len(statements) > 1 else contextlib.nullcontext()
        try:
            with connection.wrap_database_errors:
                with pipeline:
                    for cursor, (statement, values) in zip(cursors, statements, strict=True):
                        cursor.execute(statement, values)
                last = cursors[-1]
                return last.fetchall() if last.description is not None else []
        finally:
            for cursor in cursors:
                cursor.close()

    run = send_statements
    for wrapper in reversed(connection.execute_wrappers):
        run = functools.partial(wrapper, run)
    joined = "; ".join(sql for sql, _ in statements)
    values = [param for _, params in statements for param in params]
    context = {"connection": connection, "cursor": None}
    if not connection.queries_logged:
        return run(joined, values, False, context)
    compose = connection.ops.compose_sql  # type: ignore[attr-defined]  # PostgreSQL's
    shown = "; ".join(compose(sql, params) for sql, params in statements)
    with connection.make_debug_cursor(None).debug_sql(shown):  # type: ignore[arg-type]
        return run(joined, values, False, context)


def update_each(
    model: type[models.Model],
    values: Mapping[Any, Mapping[str, Any]],
    *,
    shared: Mapping[str, Any] | None = None,
    where: Mapping[str, Any] | None = None,
) -> int:
    """Set `values[pk]` on each row `pk` (and `shared` on all of them), for the rows that also
    match `where` (field = value); one statement. Returns how many rows were updated.

    On PostgreSQL it is `UPDATE … FROM unnest(<one array per column>)`: Django's CASE form
    (`bulk_update`) resolves an expression per row and field, which took a third of a batch
    task-complete. Field names may be attnames (`output_event_id`); values are plain values."""
    if not values:
        return 0
    shared = dict(shared or {})
    where = dict(where or {})
    opts = model._meta
    names = sorted({name for row in values.values() for name in row})
    if connection.vendor != "postgresql":
        return model._default_manager.filter(pk__in=list(values), **where).update(
            **shared, **{name: _case(opts, name, values) for name in names}
        )
    pk = opts.pk
    assert pk is not None
    ids = list(values)
    quote = connection.ops.quote_name
    table = quote(opts.db_table)
    arrays = [_prepared(pk, ids)]
    casts = [_array_of(pk)]
    sets, params = [], []
    for index, name in enumerate(names):
        field = _field(opts, name)
        arrays.append(_prepared(field, [values[i].get(name) for i in ids]))
        casts.append(_array_of(field))
        sets.append(f"{quote(field.column)} = v.c{index}")
    for name, value in shared.items():
        field = _field(opts, name)
        sets.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    conditions, condition_params = [f"{table}.{quote(pk.column)} = v.pk"], []
    for name, value in where.items():
        field = _field(opts, name)
        conditions.append(f"{table}.{quote(field.column)} = %s")
        condition_params.append(field.get_db_prep_save(value, connection))
    columns = ", ".join(["pk", *(f"c{i}" for i in range(len(names)))])
    sql = (  # identifiers come from the model's metadata; every value is a parameter
        f"UPDATE {table} SET {', '.join(sets)} "  # noqa: S608
        f"FROM unnest({', '.join(casts)}) AS v({columns}) WHERE {' AND '.join(conditions)}"
    )
    with array_cursor() as cursor:
        cursor.execute(sql, [*params, *arrays, *condition_params])
        return int(cursor.rowcount)


def insert_new(model: type[models.Model], objs: Sequence[models.Model]) -> set[Any]:
    """Insert `objs` (primary keys set by the caller), skipping those that conflict with a
    unique constraint; returns the primary keys inserted. On PostgreSQL one
    `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING pk` (which also tells
    what was inserted); elsewhere `bulk_create` and a lookup."""
    if not objs:
        return set()
    pk = model._meta.pk
    assert pk is not None
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs, ignore_conflicts=True)
        found = model._default_manager.filter(pk__in=[obj.pk for obj in objs])
        return set(found.values_list("pk", flat=True))
    rows = _insert_arrays(model, objs, list(model._meta.concrete_fields), "ON CONFLICT DO NOTHING")
    inserted = {pk.to_python(row[0]) for row in rows}
    _mark_saved([obj for obj in objs if obj.pk in inserted])
    return inserted


def insert_all(model: type[models.Model], objs: Sequence[models.Model]) -> None:
    """`bulk_create(objs)`, auto primary keys included; on PostgreSQL one
    `INSERT … SELECT FROM unnest(…) RETURNING pk`: `bulk_create` builds and quotes each
    value of each row into the SQL, a quarter of a batch task-fetch or task-complete."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs)
        return
    pk = model._meta.pk
    assert pk is not None
    # An identity column: the database numbers the rows.
    generated = isinstance(pk, models.AutoField | models.BigAutoField | models.SmallAutoField)
    fields = [f for f in model._meta.concrete_fields if not (generated and f is pk)]
    rows = _insert_arrays(model, objs, fields, "")
    if generated:  # RETURNING follows the order of the arrays, as bulk_create relies on
        for obj, (value,) in zip(objs, rows, strict=True):
            obj.pk = value
    _mark_saved(objs)


def _insert_arrays(
    model: type[models.Model], objs: Sequence[models.Model], fields: list[Any], conflict: str
) -> list[tuple[Any, ...]]:
    opts = model._meta
    pk = opts.pk
    assert pk is not None
    quote = connection.ops.quote_name
    arrays = [_column(f, objs) for f in fields]
    casts = ", ".join(_array_of(f) for f in fields)
    sql = (  # identifiers come from the model's metadata; every value is a parameter
        f"INSERT INTO {quote(opts.db_table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"SELECT * FROM unnest({casts}) {conflict} RETURNING {quote(pk.column)}"
    )
    with array_cursor() as cursor:
        cursor.execute(sql, arrays)
        return list(cursor.fetchall())


def _array_of(field: Any) -> str:
    """The placeholder of an array of `field`'s values, sent in binary: psycopg quotes and
    escapes each element of a text-format array in Python, a tenth of the web workers' Python
    time in a batched run (mostly the ingest's arrays), as the lean paths found before."""
    return f"%b::{field.db_type(connection)}[]"


def _plain_type(field: Any) -> type | None:
    """The Python type whose values `field` sends to PostgreSQL as they are (its
    `get_db_prep_save` only converts or checks them), or None."""
    if isinstance(field, models.ForeignKey):
        return _plain_type(field.target_field)
    if isinstance(field, models.BooleanField):
        return bool
    if isinstance(field, models.IntegerField):  # and its auto, positive, small and big kinds
        return int
    if isinstance(field, models.CharField | models.TextField):
        return str
    if isinstance(field, models.UUIDField):
        return uuid.UUID
    if type(field) is models.DateTimeField and not (field.auto_now or field.auto_now_add):
        return dt.datetime
    return None


def _column(field: Any, objs: Sequence[models.Model]) -> list[Any]:
    """One column's database values, as `get_db_prep_save(pre_save(obj))` gives them."""
    if _plain_type(field) is None:
        return [field.get_db_prep_save(field.pre_save(obj, True), connection) for obj in objs]
    return _prepared(field, [getattr(obj, field.attname) for obj in objs])


def _prepared(field: Any, values: list[Any]) -> list[Any]:
    """`field.get_db_prep_save(value)` of each value. On PostgreSQL, values already of the
    field's plain type are taken as they are: preparing each value of each row was a sixth of
    a batch worker call, and the statements' casts (`::integer[]`, …) type the arrays.
    Anything else (JSON, a naive datetime, an int given as a string) goes through the field."""
    kind = _plain_type(field) if connection.vendor == "postgresql" else None
    if kind is not None and all(
        value is None
        or (
            isinstance(value, kind)
            and not (kind is int and isinstance(value, bool))
            and not (isinstance(value, dt.datetime) and timezone.is_naive(value))
        )
        for value in values
    ):
        return values
    return [field.get_db_prep_save(value, connection) for value in values]


def _mark_saved(objs: Sequence[models.Model]) -> None:
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias


def _field(opts: Any, name: str) -> models.Field[Any, Any]:
    field = opts.get_field(name)  # by name or attname
    assert isinstance(field, models.Field), name
    return field


def _case(opts: Any, name: str, values: Mapping[Any, Mapping[str, Any]]) -> Any:
    """The value of one column for each row: itself when all rows share it, else a CASE."""
    column = [row.get(name) for row in values.values()]
    field = _field(opts, name)
    if all(repr(value) == repr(column[0]) for value in column):
        return column[0]
    target = getattr(field, "target_field", field)
    return Case(
        *[
            When(pk=pk, then=Value(row.get(name), output_field=target))
            for pk, row in values.items()
        ],
        output_field=target,
    )
