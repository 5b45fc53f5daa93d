"""Hot SELECTs compiled once per connection and run again with new parameter values.

Building the SQL of a queryset costs Django more than PostgreSQL spends running it: a task
row loaded with its version, DAG, event, commit and dataset took ~3 ms to compile and ~0.3 ms
to run. `load_models` compiles such a queryset the first time a connection runs it, keeps
the SQL and what Django needs to turn rows into model instances, and afterwards only runs the
SQL with the new parameters and builds the instances as `QuerySet.__iter__` would.

The caller names the parameters in the order the compiled SQL takes them; the first
compilation checks that order, so a call site whose parameters do not line up fails the first
time it runs (in its tests), never silently. PostgreSQL only: elsewhere the queryset runs as
usual (on SQLite an `__any` list compiles to one placeholder per element).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators  # type: ignore[attr-defined]
from django.db.transaction import TransactionManagementError

M = TypeVar("M", bound=Model)


class ParameterOrderError(AssertionError):
    """A call site's parameters are not those its compiled SQL takes, in that order."""


@dataclass
class _Compiled:
    sql: str
    compiler: Any
    model: type[Model]
    init_list: list[str]
    start: int
    end: int
    populators: list[Any]
    for_update: bool

    def instances(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        objs = []
        for row in self.compiler.results_iter([rows]):  # the fields' converters
            obj = self.model.from_db(DEFAULT_DB_ALIAS, self.init_list, row[self.start : self.end])
            for populator in self.populators:
                populator.populate(row, obj)
            objs.append(obj)
        return objs


def _compile(queryset: QuerySet[Any], params: Sequence[Any]) -> _Compiled:
    query = queryset.query
    prefetches = getattr(queryset, "_prefetch_related_lookups", ())
    if query.annotation_select or prefetches or query.combinator:
        raise ValueError("load_models takes plain model querysets (select_related, defer)")
    if queryset.db != DEFAULT_DB_ALIAS:
        raise ValueError("load_models runs on the default database")
    compiler = query.get_compiler(using=queryset.db)
    sql, compiled_params = compiler.as_sql()
    if list(compiled_params) != list(params):
        raise ParameterOrderError(f"compiled parameters {compiled_params!r}, given {params!r}")
    klass_info = compiler.klass_info
    select_fields = klass_info["select_fields"]
    start, end = select_fields[0], select_fields[-1] + 1
    return _Compiled(
        sql=sql,
        compiler=compiler,
        model=klass_info["model"],
        init_list=[column[0].target.attname for column in compiler.select[start:end]],
        start=start,
        end=end,
        populators=get_related_populators(klass_info, compiler.select, queryset.db),
        for_update=bool(query.select_for_update),
    )


def load_models(key: Hashable, build: Callable[[], QuerySet[M]], params: Sequence[Any]) -> list[M]:
    """`list(build())`, compiled once per connection and `key`. `build()` must give the same
    SQL for every call with the same key; `params` are its parameters in SQL order."""
    connection = connections[DEFAULT_DB_ALIAS]  # this thread's own, which holds the cache
    if connection.vendor != "postgresql":
        return list(build())
    cache: dict[Hashable, _Compiled] = connection.__dict__.setdefault("_sluice_compiled", {})
    compiled = cache.get(key)
    if compiled is None:
        compiled = cache[key] = _compile(build(), params)
    if compiled.for_update and connection.get_autocommit():
        raise TransactionManagementError("select_for_update outside of a transaction")
    with connection.cursor() as cursor:
        cursor.execute(compiled.sql, params)
        rows = cursor.fetchall()
    return compiled.instances(rows)
