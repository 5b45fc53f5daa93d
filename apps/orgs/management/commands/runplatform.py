"""Run the web server, a Celery worker and Celery beat as one foreground process group.

Ctrl-C or SIGTERM stops all three; if any of them dies, the others are stopped too and the
command exits non-zero, so a supervisor (or a terminal user) notices.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

STOP_GRACE_S = 10.0


class Command(BaseCommand):
    help = "Run web (gunicorn), Celery worker and Celery beat together in the foreground."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--celery-concurrency", type=int, default=2)
        parser.add_argument(
            "--with-generator",
            action="store_true",
            help="Also run examples/generator.py with the token in <data>/demo-token.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bind = f"{options['host']}:{options['port']}"
        python = sys.executable
        bin_dir = os.path.dirname(python)
        env = {**os.environ, "SLUICE_API_URL": os.environ.get("SLUICE_API_URL", f"http://{bind}")}
        commands = {
            "web": [
                os.path.join(bin_dir, "gunicorn"),
                "config.wsgi:application",
                "--bind",
                bind,
                "--workers",
                str(options["web_workers"]),
                "--threads",
                "4",
                "--access-logfile",
                "-",
                "--graceful-timeout",
                "5",
            ],
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(options["celery_concurrency"]),
                "--without-mingle",
                "--without-gossip",
            ],
            "beat": [
                python,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(settings.DATA_DIR / "celerybeat-schedule"),
            ],
        }
        if options["with_generator"]:
            commands["generator"] = [
                python,
                str(settings.BASE_DIR / "examples" / "generator.py"),
                "--api-url",
                f"http://{bind}",
                "--token-file",
                str(settings.DATA_DIR / "demo-token"),
            ]
        children: dict[str, subprocess.Popen[bytes]] = {}
        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, command in commands.items():
            children[name] = subprocess.Popen(command, env=env)  # noqa: S603
        self.stdout.write(
            self.style.SUCCESS(f"Sluice is running at http://{bind}/  (admin: /admin/, API: /v1/)")
        )
        self.stdout.write("Press Ctrl-C to stop.")
        self.stdout.flush()
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"{name} exited with {child.returncode}; stopping the rest")
                    exit_code = 1
                    stopping = True
            time.sleep(0.2)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.stdout.write("Sluice stopped.")
        if exit_code:
            sys.exit(exit_code)
