"""Operators used by the benchmarks and tests: they do nothing, or misbehave on purpose."""

from __future__ import annotations

import time
from typing import Any


def noop(ctx: Any) -> None:
    return None


def sleepy(ctx: Any) -> list[dict[str, Any]]:
    """Sleeps `payload.sleep_s` seconds (only on attempt `payload.sleep_on_attempt`, default
    every attempt) in small steps, checking for cancel between them; then returns one row."""
    payload = ctx.event["payload"]
    if payload.get("sleep_on_attempt") in (None, ctx.attempt):
        deadline = time.monotonic() + float(payload.get("sleep_s", 30))
        while time.monotonic() < deadline:
            ctx.checkpoint()
            time.sleep(0.02)
    return [{"attempt": ctx.attempt}]


def checkpointing(ctx: Any) -> None:
    """Emits checkpoint 1, then sleeps on the first attempt (to be killed), then finishes."""
    import pyarrow as pa

    ctx.emit_checkpoint(pa.table({"part": [1]}))
    sleepy(ctx)
