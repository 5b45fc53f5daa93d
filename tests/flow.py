"""Helpers to drive the dispatch loop from tests, through the real HTTP API layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.test import Client
from rest_framework.test import APIClient

from apps.dags import services as dag_services
from apps.orgs.models import Org
from tests.factories import PASSWORD


def chain_config(
    name: str = "chain",
    handler: str = "demo_ops:noop",
    nodes: int = 3,
    concurrency: dict[str, int] | None = None,
    handlers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A source and a chain of python operators: src -> op1 -> op2 -> …"""
    config: dict[str, Any] = {
        "name": name,
        "nodes": [
            {
                "id": "src",
                "kind": "source",
                "output": {"dataset": f"{name}.src", "range_type": "int"},
            }
        ],
    }
    upstream = "src"
    for i in range(nodes):
        node_id = f"op{i + 1}"
        node = {
            "id": node_id,
            "kind": "operator",
            "runtime": "python",
            "handler": (handlers or {}).get(node_id, handler),
            "inputs": [upstream],
            "output": {"dataset": f"{name}.{node_id}"},
            "retry": {"max_attempts": 3, "backoff_s": 0, "max_backoff_s": 0},
        }
        if concurrency:
            node["concurrency"] = concurrency
        config["nodes"].append(node)
        upstream = node_id
    return config


def deploy(org: Org, config: dict[str, Any]) -> None:
    dag_services.dag_deploy(org=org, config=config, actor=None)


def worker_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def fetch(client: APIClient, message: dict[str, Any], worker: str = "w1") -> Any:
    return client.post(
        "/internal/task-fetch",
        {
            "task_id": message["task_id"],
            "dispatch_token": message["dispatch_token"],
            "worker_id": worker,
        },
        format="json",
    )


def write_output(lease: dict[str, Any], name: str = "part-0.parquet", rows: int = 0) -> dict:
    """Write a parquet file of `rows` rows under the lease's staging prefix, as a worker does."""
    path = lease["output"]["staging"] + name
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"n": pa.array(range(rows), pa.int64())}), path)
    return {"path": path, "rows": rows, "bytes": Path(path).stat().st_size}


def complete(client: APIClient, lease: dict[str, Any], rows: int = 0, **extra: Any) -> Any:
    outputs = []
    if lease["output"]:
        outputs = [
            {"dataset": lease["output"]["dataset"], "files": [write_output(lease, rows=rows)]}
        ]
    body = {"lease_token": lease["lease"]["token"], "outputs": outputs, **extra}
    return client.post("/internal/task-complete", body, format="json")


def web_login(username: str) -> Client:
    """A browser session of one of the personas (tests.factories.PASSWORD)."""
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client
