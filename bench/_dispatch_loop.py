"""A bounded dispatcher loop whose messages carry a chosen number of tasks: bench/dispatch.py
runs it with --message-size 1 so that every worker call carries one task. It claims as the
Dispatcher does (up to --batch per lane and tick) and splits each claim into messages. Stops
after --seconds or on SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=100, help="tasks claimed per lane and tick")
    parser.add_argument("--message-size", type=int, default=1, help="tasks per message")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--idle-sleep", type=float, default=0.05)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import close_old_connections

    from apps.tasks.dispatch import claim, send
    from apps.tasks.fanout import fan_out_pending_events
    from apps.tasks.triggers import Wakeups

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wakeups = Wakeups()
    size = args.message_size
    deadline = time.monotonic() + args.seconds
    while not stopping.is_set() and time.monotonic() < deadline:
        close_old_connections()
        fanned = fan_out_pending_events()
        claims = claim(batch=args.batch)
        messages = [
            replace(c, tasks=c.tasks[i : i + size])
            for c in claims
            for i in range(0, len(c.tasks), size)
        ]
        if not send(messages) and not fanned:
            wakeups.wait(args.idle_sleep)
    wakeups.close()


if __name__ == "__main__":
    main()
