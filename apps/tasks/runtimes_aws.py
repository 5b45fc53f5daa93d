"""AWS runtimes (D7): `ecs` sends to the node's SQS queue, `lambda` invokes its function.

The same code runs against AWS and against any compatible endpoint: region, endpoint override
and credentials come from settings and the usual AWS chain. SQS and Lambda are only the
doorbell; the lease in the database is the source of truth, so a duplicate or a lost message
costs nothing but time.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from apps.tasks.runtimes import Dispatched

logger = logging.getLogger(__name__)

SQS_BATCH = 10  # SendMessageBatch takes at most 10 entries
THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
}


def aws_client(service: str) -> Any:
    return boto3.client(
        service,
        region_name=settings.SLUICE_AWS_REGION,
        endpoint_url=settings.SLUICE_AWS_ENDPOINT_URL or None,
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15
        ),
    )


def _error_code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def with_throttle_retries(call: Callable[..., Any], attempts: int = 4) -> Any:
    """Retry a call on throttling with exponential backoff; other errors raise at once."""
    for attempt in range(attempts):
        try:
            return call()
        except ClientError as exc:
            if _error_code(exc) not in THROTTLING_CODES or attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


def single_message(task: Dispatched) -> dict[str, Any]:
    return {**task.as_message(), "api_url": settings.SLUICE_API_URL}


@lru_cache(maxsize=256)
def _queue_url(endpoint: str, region: str, queue: str) -> str:
    if queue.startswith(("https://", "http://")):
        return queue
    return str(aws_client("sqs").get_queue_url(QueueName=queue)["QueueUrl"])


class SqsAdapter:
    """`ecs` runtime: one SQS message per task, sent ten at a time with SendMessageBatch."""

    def __init__(self, client: Any = None) -> None:
        self.client = client or aws_client("sqs")

    def send(self, node: dict[str, Any], tasks: list[Dispatched]) -> set[uuid.UUID]:
        failed: set[uuid.UUID] = set()
        try:
            url = _queue_url(
                settings.SLUICE_AWS_ENDPOINT_URL, settings.SLUICE_AWS_REGION, node["queue"]
            )
        except (ClientError, BotoCoreError):
            logger.exception("queue %s of node %s not found", node["queue"], node["id"])
            return {t.task_id for t in tasks}
        for start in range(0, len(tasks), SQS_BATCH):
            chunk = tasks[start : start + SQS_BATCH]
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(single_message(task))}
                for i, task in enumerate(chunk)
            ]
            try:
                answer = with_throttle_retries(
                    lambda entries=entries: self.client.send_message_batch(
                        QueueUrl=url, Entries=entries
                    )
                )
            except (ClientError, BotoCoreError):
                logger.exception("sending %d task(s) to %s failed", len(chunk), url)
                failed |= {t.task_id for t in chunk}
                continue
            failed |= {chunk[int(f["Id"])].task_id for f in answer.get("Failed", [])}
        return failed


class LambdaAdapter:
    """`lambda` runtime: an asynchronous invoke (InvocationType=Event) per task. The function's
    own async retries must be 0: Sluice owns retries, and lease expiry catches time-outs."""

    def __init__(self, client: Any = None) -> None:
        self.client = client or aws_client("lambda")

    def send(self, node: dict[str, Any], tasks: list[Dispatched]) -> set[uuid.UUID]:
        failed: set[uuid.UUID] = set()
        for task in tasks:
            payload = json.dumps(single_message(task)).encode()
            try:
                with_throttle_retries(
                    lambda payload=payload: self.client.invoke(
                        FunctionName=node["function"], InvocationType="Event", Payload=payload
                    )
                )
            except (ClientError, BotoCoreError):
                logger.exception("invoking %s for task %s failed", node["function"], task.task_id)
                failed.add(task.task_id)
        return failed


def lambda_retry_problems(function: str, client: Any = None) -> str | None:
    """Why `function` is unfit for Sluice (async retries not 0), or None. Only checked when
    AWS credentials are present; an unreachable API is not a deploy error."""
    if boto3.session.Session().get_credentials() is None and client is None:
        return None
    client = client or aws_client("lambda")
    try:
        config = client.get_function_event_invoke_config(FunctionName=function)
    except ClientError as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            return (
                f"function {function!r} has no event invoke config, so AWS retries async "
                "invocations twice; set MaximumRetryAttempts to 0 (Sluice owns retries)"
            )
        return None
    except BotoCoreError:
        return None
    retries = config.get("MaximumRetryAttempts")
    if retries != 0:
        return (
            f"function {function!r} retries async invocations {retries} time(s); set "
            "MaximumRetryAttempts to 0 (Sluice owns retries)"
        )
    return None
