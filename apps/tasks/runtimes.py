"""Runtime adapters: how claimed tasks reach workers. The Dispatcher only calls `send`.

A node's runtime is its `runtime` (operators), `sql` (materialized sql nodes) or its kind
(control and alert nodes, run by handlers registered by the apps that own them). A runtime
with no adapter blocks its lanes, visibly, instead of losing tasks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from apps.tasks.celery_publish import redis_publisher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatched:
    """One claimed task as it goes on the wire (§6 queue message)."""

    task_id: uuid.UUID
    attempt: int
    dispatch_token: str

    def as_message(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "attempt": self.attempt,
            "dispatch_token": self.dispatch_token,
        }


def dispatch_token(task_id: uuid.UUID | str, dispatch_count: int) -> str:
    """Derived, not stored: a message from an earlier dispatch of the task no longer matches."""
    message = f"dispatch:{task_id}:{dispatch_count}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()[:40]


def runtime_of(node: dict[str, Any]) -> str:
    if node["kind"] == "operator":
        return str(node["runtime"])
    return str(node["kind"])


class RuntimeAdapter(Protocol):
    def send(self, node: dict[str, Any], tasks: list[Dispatched]) -> set[uuid.UUID]:
        """Hand the tasks to workers; return the ids whose send failed (they go back to
        pending). Called after the claiming transaction has committed."""


# One claim's send: the node's config and its claimed tasks.
Send = tuple[dict[str, Any], list[Dispatched]]


def send_all(adapter: RuntimeAdapter, sends: list[Send]) -> set[uuid.UUID]:
    """Every send of one runtime in a tick: at once where the adapter can (`send_many`),
    one by one otherwise. Returns the ids whose send failed."""
    send_many: Callable[[list[Send]], set[uuid.UUID]] | None = getattr(adapter, "send_many", None)
    if send_many is not None:
        return send_many(sends)
    failed: set[uuid.UUID] = set()
    for node, tasks in sends:
        failed |= adapter.send(node, tasks)
    return failed


class RuntimeRegistry:
    def __init__(self) -> None:
        self._adapters: dict[str, Callable[[], RuntimeAdapter]] = {}

    def register(self, name: str, factory: Callable[[], RuntimeAdapter]) -> None:
        self._adapters[name] = factory

    def get(self, name: str) -> RuntimeAdapter | None:
        factory = self._adapters.get(name)
        return factory() if factory else None

    def names(self) -> set[str]:
        return set(self._adapters)


runtimes = RuntimeRegistry()


def pool_message(tasks: list[Dispatched]) -> dict[str, Any]:
    return {"tasks": [t.as_message() for t in tasks], "api_url": settings.SLUICE_API_URL}


def pool_message_args(tasks: list[Dispatched]) -> tuple[list[Any], str]:
    """The pool task's arguments for `tasks`, and their repr for Celery's logs (the count: a
    repr of the whole message would cost more than the rest of the send)."""
    return [pool_message(tasks)], f"[{len(tasks)} task(s)]"


def publish_through_celery(messages: list[tuple[list[Any], str]]) -> None:
    """Celery's own publish (`apply_async`) of pool messages: one producer, one batch (one
    Redis pipeline where the broker is Redis)."""
    from apps.tasks.celery_tasks import run_pool_message

    with run_pool_message.app.producer_or_acquire() as producer, producer.batch():
        for args, argsrepr in messages:
            run_pool_message.apply_async(
                args=args, producer=producer, argsrepr=argsrepr, kwargsrepr="{}"
            )


class CeleryPoolAdapter:
    """The platform's own pool workers (python, sql): one Celery message per claimed batch."""

    def send(self, node: dict[str, Any], tasks: list[Dispatched]) -> set[uuid.UUID]:
        return self.send_many([(node, tasks)])

    def send_many(self, sends: list[Send]) -> set[uuid.UUID]:
        """A tick's messages in one round trip where the broker can batch them (Redis: one
        pipeline). A failure fails them all: the tasks go back to pending, and a message that
        did go is refused at fetch (its dispatch token is stale)."""
        from apps.tasks.celery_tasks import run_pool_message

        messages = [pool_message_args(tasks) for _, tasks in sends]
        try:
            publisher = redis_publisher(run_pool_message.app, run_pool_message.name)
            if publisher is not None:
                publisher.publish(messages)
            else:
                publish_through_celery(messages)
        except Exception:  # any broker failure: the tasks go back to pending
            logger.exception(
                "sending %d message(s) of %s to Celery failed",
                len(sends),
                ", ".join(sorted({node["id"] for node, _ in sends})),
            )
            return {t.task_id for _, tasks in sends for t in tasks}
        return set()


runtimes.register("python", CeleryPoolAdapter)
