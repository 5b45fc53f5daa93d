from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import lookups


class OrderedJSONField(models.JSONField):
    """JSON that keeps its key order on PostgreSQL: stored as `json`, not `jsonb` (which
    reorders keys). Configs and schemas rely on it: a declared schema's column order is the
    column order of the data."""

    def db_type(self, connection: BaseDatabaseWrapper) -> str | None:
        if connection.vendor == "postgresql":
            return "json"
        return super().db_type(connection)

    def get_db_prep_value(
        self, value: Any, connection: BaseDatabaseWrapper, prepared: bool = False
    ) -> Any:
        if connection.vendor == "postgresql" and not hasattr(value, "resolve_expression"):
            from psycopg.types.json import Json

            return Json(value)
        return super().get_db_prep_value(value, connection, prepared)

    def from_db_value(self, value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
        if not isinstance(value, str):
            return value  # psycopg already decoded a `json` column, keeping the key order
        return super().from_db_value(value, expression, connection)


@models.Field.register_lookup
class AnyOf(lookups.In):
    """`field__any=[…]`: `IN (…)`, but sent to PostgreSQL as `= ANY(%s)` with one array
    parameter. Bulk moves name thousands of rows; an `IN` list of that size costs more to
    quote, send and plan than the update itself."""

    lookup_name = "any"

    def as_sql(self, compiler: Any, connection: BaseDatabaseWrapper) -> Any:
        if connection.vendor != "postgresql" or not isinstance(self.rhs, list | tuple | set):
            return super().as_sql(compiler, connection)
        lhs, lhs_params = self.process_lhs(compiler, connection)
        field = self.lhs.output_field
        values = [field.get_db_prep_value(v, connection, prepared=False) for v in self.rhs]
        return f"{lhs} = ANY(%s)", (*lhs_params, values)
