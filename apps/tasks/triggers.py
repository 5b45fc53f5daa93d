"""Low-latency dispatch: after a commit that made work runnable, dispatch right away.

Beat ticks remain the safety net, so a lost trigger only costs latency, never work.

Modes (`SLUICE_DISPATCH_TRIGGER`): "inline" dispatches in the committing process; "notify"
(PostgreSQL) sends a NOTIFY that wakes the `manage.py dispatch --loop` processes, so requests
never claim or send and a busy dispatcher claims whole batches; "celery" queues a
`dispatch_tick`; "off" leaves it to the loops and beat.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

logger = logging.getLogger(__name__)

CHANNEL = "sluice_dispatch"


def _run() -> None:
    mode = settings.SLUICE_DISPATCH_TRIGGER
    try:
        if mode == "inline":
            from apps.tasks.dispatch import dispatch_once

            dispatch_once()
        elif mode == "notify":
            with connection.cursor() as cursor:
                cursor.execute(f"NOTIFY {CHANNEL}")
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


class Wakeups:
    """What an idle dispatcher loop waits on: a NOTIFY on the dispatch channel (PostgreSQL,
    over a connection of its own), or just the timeout (SQLite, or the connection lost)."""

    def __init__(self) -> None:
        self._listener: Any = None
        self._enabled = connection.vendor == "postgresql"

    def _connection(self) -> Any:
        if self._listener is None:
            wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
            wrapper.ensure_connection()
            wrapper.connection.execute(f"LISTEN {CHANNEL}")
            self._listener = wrapper
        return self._listener.connection

    def wait(self, timeout: float) -> bool:
        """Block until a notification or `timeout` seconds; True when woken by one."""
        if not self._enabled:
            time.sleep(timeout)
            return False
        try:
            raw = self._connection()
            woken = any(True for _ in raw.notifies(timeout=timeout, stop_after=1))
            if woken:  # many commits may have notified meanwhile: one wake-up covers them all
                for _ in raw.notifies(timeout=0.0):
                    pass
            return woken
        except Exception as exc:  # a lost listener only costs latency: poll until it is back
            logger.warning("dispatch wake-up listener lost (%s); polling meanwhile", exc)
            self.close()
            time.sleep(timeout)
            return False

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):  # already broken
                self._listener.close()
            self._listener = None
