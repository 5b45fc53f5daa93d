"""Set a platform secret from standard input (so the value never appears in argv or history)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.orgs.errors import SluiceError
from apps.secrets.services import platform_secret_put


class Command(BaseCommand):
    help = "Create or rotate a platform secret; reads the value from standard input."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        value = sys.stdin.read().rstrip("\n")
        try:
            secret, created = platform_secret_put(name=options["name"], value=value, actor=None)
        except SluiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"{secret.name} v{secret.version} {'created' if created else 'rotated'}")
