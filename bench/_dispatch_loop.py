"""A bounded dispatcher loop with a chosen batch size (bench/dispatch.py uses batch 1 to send
one task per pool message, so every worker call carries one task). Stops after --seconds or
on SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--idle-sleep", type=float, default=0.05)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import close_old_connections

    from apps.tasks.dispatch import dispatch_once

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + args.seconds
    while not stopping.is_set() and time.monotonic() < deadline:
        close_old_connections()
        if not dispatch_once(batch=args.batch):
            stopping.wait(args.idle_sleep)


if __name__ == "__main__":
    main()
