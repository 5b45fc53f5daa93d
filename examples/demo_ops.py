"""Operators used by the benchmarks and tests: they do nothing, or misbehave on purpose."""

from __future__ import annotations

import time
from typing import Any


def noop(ctx: Any) -> None:
    return None


def sleepy(ctx: Any) -> None:
    """Sleeps `payload.sleep_s` seconds in small steps, checking for cancel between them."""
    deadline = time.monotonic() + float(ctx.event["payload"].get("sleep_s", 30))
    while time.monotonic() < deadline:
        ctx.checkpoint()
        time.sleep(0.05)
