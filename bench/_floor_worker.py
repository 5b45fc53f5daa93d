"""The worker side of bench/floor_one_per_call.py: a Celery app over Redis whose one task makes
the worker protocol's two calls for its task with the SDK's own client, and runs nothing in
between. Started as `celery -A bench._floor_worker worker`; the broker comes from
FLOOR_BROKER_URL and the web's address from FLOOR_API_URL."""

from __future__ import annotations

import functools
import os

from celery import Celery

from sluice_worker.client import WorkerClient

app = Celery("floor", broker=os.environ.get("FLOOR_BROKER_URL", "redis://127.0.0.1:6379/13"))
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@functools.cache
def _client() -> WorkerClient:
    return WorkerClient(os.environ["FLOOR_API_URL"], "floor-key")


@app.task(name="floor.run_task", ignore_result=True, acks_late=False)
def run_task(task_id: int) -> None:
    client = _client()
    client.request("POST", "/internal/task-fetch", {"task_id": task_id, "worker_id": "floor"})
    client.request("POST", "/internal/task-complete", {"task_id": task_id, "lease_token": "t"})
