"""DAG configs for tests: a valid pipeline that deploys on the embedded default too."""

from __future__ import annotations

import copy
from typing import Any


def pipeline(name: str = "orders", prefix: str = "sales") -> dict[str, Any]:
    return copy.deepcopy(
        {
            "name": name,
            "nodes": [
                {
                    "id": "orders_raw",
                    "kind": "source",
                    "output": {
                        "dataset": f"{prefix}.orders_raw",
                        "unique_key": ["order_id"],
                        "schema": {
                            "order_id": "string",
                            "ts": "timestamp[us, tz=UTC]",
                            "amount": "float64",
                        },
                    },
                },
                {
                    "id": "orders_clean",
                    "kind": "operator",
                    "runtime": "python",
                    "handler": "orders:clean",
                    "inputs": ["orders_raw"],
                    "output": {"dataset": f"{prefix}.orders_clean"},
                    "retry": {"max_attempts": 3, "backoff_s": 5},
                    "timeout_s": 300,
                    "concurrency": {"live": 4, "backfill": 2},
                },
                {
                    "id": "hourly",
                    "kind": "aggregator",
                    "inputs": ["orders_clean"],
                    "batch": {"max_events": 100, "max_wait_s": 60},
                },
                {
                    "id": "revenue",
                    "kind": "sql",
                    "materialize": True,
                    "inputs": ["hourly"],
                    "query": "select date_trunc('hour', ts) h, sum(amount) revenue "
                    "from hourly group by 1",
                    "output": {
                        "dataset": f"{prefix}.revenue_hourly",
                        "update_strategy": "replace",
                    },
                },
                {
                    "id": "revenue_drop",
                    "kind": "alert",
                    "inputs": ["revenue"],
                    "condition": "select * from revenue where revenue < 100",
                    "severity": "critical",
                    "routes": [{"channel": "slack", "secret": "slack_webhook_url"}],
                },
            ],
        }
    )
