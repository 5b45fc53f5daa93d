"""A loop is a series of bool-returning steps (STYLE.md pattern 3): run while there may be
more, sleep only when idle, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from django.db import DatabaseError, close_old_connections, connection

from apps.orgs.heap import settle_heap

logger = logging.getLogger(__name__)

IDLE_SLICE_S = 0.5
# How often a busy loop lets Django check its connection (`close_old_connections`: age, errors,
# and a `SELECT 1` before the next statement). Checked before every step, a round trip was
# added to every step; a connection that fails between checks fails its step, which closes it.
CONNECTION_CHECK_INTERVAL_S = 1.0


def run_loop(
    step: Callable[[], bool],
    *,
    loop: bool,
    idle_sleep: float,
    wait: Callable[[float], object] | None = None,
) -> None:
    """Run `step` once, or until stopped. When idle, sleep `idle_sleep`, or less when `wait`
    (called with a timeout) returns True: there may be work."""
    if not loop:
        step()
        return
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    settle_heap()
    checked_at = float("-inf")
    while not stopping.is_set():
        if (now := time.monotonic()) - checked_at >= CONNECTION_CHECK_INTERVAL_S:
            close_old_connections()
            checked_at = now
        try:
            busy = step()
        except DatabaseError:
            # A deadlock victim or a dropped connection: the step is idempotent, so log it,
            # drop the connection and go on; the loop must outlive any one transaction.
            logger.exception("loop step failed; retrying")
            connection.close()
            busy = False
        if not busy:
            _idle(stopping, idle_sleep, wait)


def _idle(
    stopping: threading.Event, seconds: float, wait: Callable[[float], object] | None
) -> None:
    if wait is None:
        stopping.wait(seconds)
        return
    # In slices: a signal does not interrupt a blocking wait, so a stop is noticed within one.
    deadline = time.monotonic() + seconds
    while not stopping.is_set() and (left := deadline - time.monotonic()) > 0:
        if wait(min(left, IDLE_SLICE_S)):
            return
