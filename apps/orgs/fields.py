from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper


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
