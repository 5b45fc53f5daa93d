"""Thin Celery tasks (STYLE.md pattern 10): each calls one service function."""

from __future__ import annotations

import functools
from typing import Any

from celery import shared_task
from django.conf import settings

from apps.tasks import dispatch, fanout, reaper, storage_gc
from sluice_worker.client import WorkerClient
from sluice_worker.handlers import handler_dirs
from sluice_worker.runner import run_message


@shared_task(ignore_result=True)
def dispatch_tick() -> int:
    return dispatch.dispatch_until_idle(max_ticks=20)


@shared_task(ignore_result=True)
def reap_tick() -> int:
    return reaper.reap_once().total


@shared_task(ignore_result=True)
def fanout_tick() -> int:
    return fanout.fan_out_pending_events()


@shared_task(ignore_result=True)
def reconcile_tick() -> int:
    return reaper.reconcile_lanes()


@shared_task(ignore_result=True)
def gc_tick() -> int:
    return storage_gc.collect_garbage().files


@functools.lru_cache(maxsize=8)
def _pool_client(api_url: str, key: str) -> WorkerClient:
    """One client per worker process and API, so messages reuse its kept-alive connection."""
    return WorkerClient(api_url, key)


@shared_task(ignore_result=True, acks_late=False)
def run_pool_message(message: dict[str, Any]) -> dict[str, int]:
    """The python runtime: run the SDK wrapper against the internal HTTP API, like any worker."""
    client = _pool_client(
        message.get("api_url") or settings.SLUICE_API_URL, settings.SLUICE_POOL_KEY
    )
    dirs = handler_dirs(settings.SLUICE_HANDLER_PATH, settings.BASE_DIR)
    return run_message(message, client, dirs)
