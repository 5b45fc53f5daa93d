"""A dispatcher loop whose messages carry a chosen number of tasks: bench/dispatch.py runs it
with --message-size 1 so that every worker call carries one task. It is `manage.py dispatch
--loop` (the same loop, wake-ups and claims) except that each claim is split into messages.
Stops after --seconds or on SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=100, help="tasks claimed per lane and tick")
    parser.add_argument("--message-size", type=int, default=1, help="tasks per message")
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--idle-sleep", type=float, default=0.05)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from apps.tasks.dispatch import fan_out_and_claim, send
    from apps.tasks.loops import run_loop
    from apps.tasks.triggers import Wakeups

    size = args.message_size

    def step() -> bool:
        fanned, claims = fan_out_and_claim(batch=args.batch)
        messages = [
            replace(c, tasks=c.tasks[i : i + size])
            for c in claims
            for i in range(0, len(c.tasks), size)
        ]
        return bool(send(messages) or fanned)

    signal.alarm(args.seconds)  # SIGALRM ends the process after --seconds
    wakeups = Wakeups()
    try:
        run_loop(step, loop=True, idle_sleep=args.idle_sleep, wait=wakeups.wait)
    finally:
        wakeups.close()


if __name__ == "__main__":
    main()
