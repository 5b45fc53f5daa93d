"""Arrow type names as written in DAG configs (`int64`, `timestamp[us, tz=UTC]`, …)."""

from __future__ import annotations

import re

import pyarrow as pa

_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:,\s*tz=([A-Za-z0-9_+\-/:]+))?\]$")
_DECIMAL = re.compile(r"^decimal(128|256)?\((\d+),\s*(\d+)\)$")
_LIST = re.compile(r"^list<(.+)>$")


def parse_arrow_type(name: str) -> pa.DataType:
    """The Arrow type for `name`; ValueError with a plain sentence when Arrow has no such type."""
    text = name.strip()
    if match := _TIMESTAMP.match(text):
        return pa.timestamp(match.group(1), tz=match.group(2))
    if match := _DECIMAL.match(text):
        precision, scale = int(match.group(2)), int(match.group(3))
        factory = pa.decimal256 if match.group(1) == "256" else pa.decimal128
        try:
            return factory(precision, scale)
        except ValueError as exc:
            raise ValueError(f"invalid decimal {name!r}: {exc}") from exc
    if match := _LIST.match(text):
        return pa.list_(parse_arrow_type(match.group(1)))
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise ValueError(
            f"unknown Arrow type {name!r} (e.g. int64, float64, string, bool, date32, "
            "timestamp[us, tz=UTC], decimal128(18, 2), list<string>)"
        ) from None


def arrow_schema(columns: dict[str, str]) -> pa.Schema:
    return pa.schema([pa.field(col, parse_arrow_type(t)) for col, t in columns.items()])
