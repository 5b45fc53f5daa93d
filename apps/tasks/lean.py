"""What the lean paths share (ADR 0010, ADR 0013): a hot request answered by a statement or
two of hand-written SQL in autocommit, instead of DRF, the ORM and a transaction of a dozen
round trips. A lean path only ever answers the plain case it was written for; anything else
(or any doubt) returns None and the request takes the full path, whose answers and errors
stay the API's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import connection
from django.http import HttpRequest
from rest_framework.exceptions import AuthenticationFailed

from apps.orgs.authentication import bearer_value
from apps.tasks.fanout import deferred
from apps.tasks.triggers import CHANNEL

LEAN_BODY_BYTES = 64 * 1024


def lean_possible() -> bool:
    """PostgreSQL, the notify trigger (fan-out and dispatch are the loops'), and no transaction
    around the request (each statement commits on its own)."""
    return deferred() and connection.vendor == "postgresql" and not connection.in_atomic_block


def lean_json_request(request: HttpRequest) -> tuple[str, bytes] | None:
    """The bearer token and body of a plain JSON POST the lean path may read, or None."""
    if request.method != "POST" or request.content_type != "application/json":
        return None
    if request.META.get("HTTP_ACCEPT", "*/*") not in ("*/*", "application/json"):
        return None  # DRF negotiates anything else (the browsable API)
    try:
        token = bearer_value(request)
    except AuthenticationFailed:  # malformed: the full path says so
        return None
    if token is None:
        return None
    length = request.META.get("CONTENT_LENGTH") or ""
    if not (length.isdigit() and 0 < int(length) <= LEAN_BODY_BYTES):
        return None  # chunked or large: read (and refused when too large) by the full path
    return token, request.body


def run_rows(
    sql: str, params: dict[str, Any], *, prepare: bool = True
) -> list[tuple[Any, ...]] | None:
    """Run one statement in autocommit on this thread's connection (prepared once per
    connection unless `prepare` or `SLUICE_DB_PREPARED_STATEMENTS` is off): its rows. None
    when the connection fails, typically a kept-alive one found dead: the full path
    reconnects and answers (whatever did commit is found there, as for any retry)."""
    if connection.connection is None:
        connection.ensure_connection()
    try:
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(sql, params, prepare=prepare)
            return cursor.fetchall()
    except psycopg.OperationalError:
        connection.close()  # the full path reconnects
        return None


# Its own transaction, after the one that made the work: a transaction that notifies holds
# PostgreSQL's one notification lock from its commit's start to its end, so statements that
# notified in their own commit waited for each other's WAL flush (a quarter of the active
# backends sampled in `pg_stat_activity` at 100 events/s). Writing nothing, it flushes nothing.
_NOTIFY = "SELECT pg_notify(%(channel)s, '')"


def notify_dispatchers() -> None:
    """Wake the dispatcher loops after a lean path's commit (a lost wake-up costs only
    latency: the loops poll, and beat ticks)."""
    run_rows(_NOTIFY, {"channel": CHANNEL})


def run_statement(sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """`run_rows`' first row, or None (no row, or no connection)."""
    rows = run_rows(sql, params)
    return rows[0] if rows else None


@dataclass(frozen=True)
class ItemsStatement:
    """A prepared statement over a list of items (`{items}` in its text: a relation of one
    row per item), in two forms whose generic plans PostgreSQL keeps for any number of items:

    - one item as plain values (no arrays to send and unnest: a tenth of a millisecond);
    - the items unnested from arrays, ending in a `LIMIT` of their count, a parameter. A
      generic plan takes `unnest` of an array parameter for ten rows, so a call of fewer
      found a custom plan cheaper and planned every call afresh (about a millisecond for the
      completion's statement); with the limit it takes them for one row, a tenth of ten.

    The statements written over it reach each item's rows by its keys (lateral joins), so
    the estimate changes no access path: the plan kept is right for any number of items and
    any size of table. (Reads of `key = ANY($1)` kept plans made while a table was small,
    scanning it whole once it had grown, or were planned afresh at every call: ADR 0014,
    0017.)"""

    one: str
    many: str

    @classmethod
    def over(cls, template: str, columns: list[tuple[str, str, str]]) -> ItemsStatement:
        """`columns`: (parameter, SQL type, column name) of each of an item's values."""
        # Arrays go in binary: psycopg quotes and escapes each element of a text array in
        # Python, three times the CPU of the binary form's.
        arrays = ", ".join(f"%({param})b::{type_}[]" for param, type_, _ in columns)
        names = ", ".join(name for _, _, name in columns)
        values = ", ".join(f"%({param})s::{type_} AS {name}" for param, type_, name in columns)
        one = f"SELECT {values}"
        many = f"SELECT * FROM unnest({arrays}) AS v({names})"  # noqa: S608 (our own names)
        many += " LIMIT %(item_count)s"
        return cls(template.replace("{items}", one), template.replace("{items}", many))

    def rows(
        self, items: dict[str, list[Any]], params: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]] | None:
        """Run it over `items` (each parameter's list of values, one per item) with `params`."""
        params = params or {}
        count = len(next(iter(items.values())))
        if count == 1:
            return run_rows(self.one, {**{k: v[0] for k, v in items.items()}, **params})
        return run_rows(self.many, {**items, **params, "item_count": count})
