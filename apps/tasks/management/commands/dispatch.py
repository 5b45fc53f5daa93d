"""Run the Dispatcher outside beat: one pass, or `--loop` until SIGTERM."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.tasks import dispatch
from apps.tasks.loops import run_loop
from apps.tasks.triggers import Wakeups


class Command(BaseCommand):
    help = "Claim pending tasks and send them to their runtimes (one pass, or --loop)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--idle-sleep", type=float, default=0.2)

    def handle(self, *args: Any, **options: Any) -> None:
        def step() -> bool:
            fanned, claims = dispatch.fan_out_and_claim()
            sent = dispatch.send(claims)
            if sent or fanned:
                self.stdout.write(f"fanned out {fanned} event(s), sent {sent} task(s)")
            return bool(sent or fanned)

        wakeups = Wakeups()  # SLUICE_DISPATCH_TRIGGER=notify wakes an idle loop at once
        try:
            run_loop(
                step, loop=options["loop"], idle_sleep=options["idle_sleep"], wait=wakeups.wait
            )
        finally:
            wakeups.close()
