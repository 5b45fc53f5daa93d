"""Operators of the demo pipeline (examples/demo.yaml)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from orders import clean_orders as drop_bad_orders


def clean_orders(ctx: Any) -> pa.Table:
    """The source event carries its orders in the payload: validate, dedupe, round, type."""
    raw = ctx.event["payload"].get("orders", [])
    ctx.log(f"{len(raw)} raw order(s)")
    table = pa.Table.from_pylist(
        [
            {
                "order_id": o.get("order_id"),
                "customer": str(o.get("customer", "")).strip().lower() or None,
                "amount": float(o["amount"]) if o.get("amount") is not None else None,
                "ts": dt.datetime.fromisoformat(o["ts"]) if o.get("ts") else None,
            }
            for o in raw
        ],
        schema=pa.schema(
            [
                ("order_id", pa.string()),
                ("customer", pa.string()),
                ("amount", pa.float64()),
                ("ts", pa.timestamp("us", tz="UTC")),
            ]
        ),
    )
    table = drop_bad_orders(table)
    return table.filter(pc.is_valid(table["customer"]))


REVENUE = pa.schema([("customer", pa.string()), ("orders", pa.int64()), ("revenue", pa.float64())])


def revenue_by_customer(ctx: Any) -> pa.Table:
    """Orders and revenue per customer in the input commit."""
    table = ctx.read_input()
    if table.num_rows == 0:
        return REVENUE.empty_table()
    grouped = table.group_by("customer").aggregate([("order_id", "count"), ("amount", "sum")])
    return pa.table(
        {
            "customer": grouped["customer"],
            "orders": grouped["order_id_count"].cast(pa.int64()),
            "revenue": pc.round(grouped["amount_sum"], 2),
        },
        schema=REVENUE,
    )


def customer_latest(ctx: Any) -> None:
    """Stamp each customer's latest figures and write them with the SDK's writer; the postgres
    backend upserts them on `customer`, so the table keeps one row per customer."""
    table = ctx.read_input()
    stamp = pa.array([dt.datetime.now(dt.UTC)] * table.num_rows, pa.timestamp("us", tz="UTC"))
    written = ctx.write_output(table.append_column("updated_at", stamp))
    ctx.log(f"upserting {written['rows']} customer(s)")
