"""Re-encrypt every secret value under the newest key of SLUICE_SECRET_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.secrets.services import rotate_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the first (newest) key of SLUICE_SECRET_KEYS. "
        "Afterwards the older keys can be removed from the setting."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        count = rotate_keys()
        self.stdout.write(f"re-encrypted {count} secret version(s) under the newest key")
