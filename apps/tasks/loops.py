"""A loop is a series of bool-returning steps (STYLE.md pattern 3): run while there may be
more, sleep only when idle, stop cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from django.db import close_old_connections


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
        if not step():
            stopping.wait(idle_sleep)
