"""Run the Reaper outside beat: one pass, or `--loop` until SIGTERM."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.tasks import reaper
from apps.tasks.loops import run_loop


class Command(BaseCommand):
    help = "Expire lost leases, time out attempts, release retries, requeue lost messages."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--idle-sleep", type=float, default=1.0)

    def handle(self, *args: Any, **options: Any) -> None:
        def step() -> bool:
            result = reaper.reap_once()
            if result.total:
                self.stdout.write(
                    f"expired {result.expired}, timed out {result.timed_out}, "
                    f"released {result.released}, requeued {result.requeued}"
                )
            return result.total > 0

        run_loop(step, loop=options["loop"], idle_sleep=options["idle_sleep"])
