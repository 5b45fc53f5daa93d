"""A loop is a series of bool-returning steps (STYLE.md pattern 3): run while there may be
more, sleep only when idle, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from django.db import DatabaseError, close_old_connections, connection

logger = logging.getLogger(__name__)


def run_loop(step: Callable[[], bool], *, loop: bool, idle_sleep: float) -> None:
    if not loop:
        step()
        return
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping.is_set():
        close_old_connections()
        try:
            busy = step()
        except DatabaseError:
            # A deadlock victim or a dropped connection: the step is idempotent, so log it,
            # drop the connection and go on; the loop must outlive any one transaction.
            logger.exception("loop step failed; retrying")
            connection.close()
            busy = False
        if not busy:
            stopping.wait(idle_sleep)
