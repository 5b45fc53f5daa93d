"""Operators of the orders example. Each takes the SDK's task context and returns rows."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def clean_orders(table: pa.Table) -> pa.Table:
    """Drop orders without an id or with a non-positive amount; keep the last row per order id;
    round amounts to cents."""
    if table.num_rows == 0:
        return table
    valid = pc.and_(pc.is_valid(table["order_id"]), pc.greater(table["amount"], 0))
    table = table.filter(pc.fill_null(valid, False))
    last_row_of: dict[str, int] = {}
    for index, order_id in enumerate(table["order_id"].to_pylist()):
        last_row_of[order_id] = index
    table = table.take(sorted(last_row_of.values()))
    rounded = pc.round(table["amount"], 2)
    return table.set_column(table.schema.get_field_index("amount"), "amount", rounded)


def clean(ctx: Any) -> pa.Table:
    return clean_orders(ctx.read_input())
