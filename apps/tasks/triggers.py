"""Low-latency dispatch: after a commit that made work runnable, dispatch right away.

Beat ticks remain the safety net, so a lost trigger only costs latency, never work.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)


def _run() -> None:
    mode = settings.SLUICE_DISPATCH_TRIGGER
    try:
        if mode == "inline":
            from apps.tasks.dispatch import dispatch_once

            dispatch_once()
        elif mode == "celery":
            from apps.tasks.celery_tasks import dispatch_tick

            dispatch_tick.delay()
    except Exception:  # the beat tick will pick the work up; never fail the caller's request
        logger.exception("dispatch trigger failed")


def dispatch_after_commit() -> None:
    """Dispatch once after the current transaction commits (once, however often called)."""
    if settings.SLUICE_DISPATCH_TRIGGER == "off":
        return
    connection = transaction.get_connection()
    if connection.in_atomic_block and any(entry[1] is _run for entry in connection.run_on_commit):
        return
    transaction.on_commit(_run)
