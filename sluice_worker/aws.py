"""Workers on AWS: an SQS poller for ECS services, and a Lambda handler.

Both run the same wrapper as every other worker; SQS and Lambda only deliver the ids of a task.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sluice_worker.client import WorkerClient
from sluice_worker.handlers import handler_dirs
from sluice_worker.runner import run_message

logger = logging.getLogger("sluice_worker.aws")


def sqs_client() -> Any:
    import boto3

    return boto3.client(
        "sqs",
        region_name=os.environ.get("SLUICE_AWS_REGION")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        endpoint_url=os.environ.get("SLUICE_AWS_ENDPOINT_URL") or None,
    )


def poll_sqs(
    queue_url: str,
    client: WorkerClient,
    dirs: list[Path],
    *,
    sqs: Any = None,
    wait_s: int = 20,
    visibility_s: int = 60,
    max_messages: int | None = None,
    idle_exit_s: float | None = None,
    default_handler: str | None = None,
) -> int:
    """Long-poll the queue and run each message; returns how many messages were handled.

    A message is deleted once its task completed, failed, or was refused as a duplicate (409)
    or as canceled. While the task runs, each heartbeat extends the message's visibility, so a
    live worker keeps it; a dead one lets it reappear, where the next fetch finds the task no
    longer queued and drops it: the Reaper retries the task with a fresh message.
    """
    sqs = sqs or sqs_client()
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    handled = 0
    idle_since = time.monotonic()
    while not stopping.is_set():
        if max_messages is not None and handled >= max_messages:
            break
        answer = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
        )
        messages = answer.get("Messages", [])
        if not messages:
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
            continue
        for message in messages:
            receipt = message["ReceiptHandle"]

            def extend(receipt: str = receipt) -> None:
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
                )

            try:
                body = json.loads(message["Body"])
            except ValueError:
                logger.error("dropping a message that is not JSON")
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
                continue
            counts = run_message(
                body, client, dirs, on_heartbeat=extend, default_handler=default_handler
            )
            logger.info("task %s: %s", body.get("task_id"), counts)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
            handled += 1
        idle_since = time.monotonic()
    return handled


def lambda_handler(event: dict[str, Any], context: Any = None) -> dict[str, int]:
    """The entry point of a Lambda function running operators (async invoke, retries 0).

    Environment: SLUICE_API_URL (unless the payload names `api_url`), SLUICE_WORKER_KEY,
    SLUICE_HANDLER_PATH (relative to the function's root), SLUICE_HANDLER (the operator,
    `module:function`)."""
    api_url = event.get("api_url") or os.environ["SLUICE_API_URL"]
    client = WorkerClient(api_url, os.environ["SLUICE_WORKER_KEY"])
    root = Path(os.environ.get("LAMBDA_TASK_ROOT", os.getcwd()))
    dirs = handler_dirs(os.environ.get("SLUICE_HANDLER_PATH", "examples"), root)
    return run_message(event, client, dirs, default_handler=os.environ.get("SLUICE_HANDLER"))
