"""Delete stale staging and landing files now, outside beat (D7)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.orgs.models import Org
from apps.tasks import storage_gc


class Command(BaseCommand):
    help = "Delete staging and landing files that no commit names, once past the grace period."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--grace-seconds", type=float, default=None, help="default: SLUICE_GC_GRACE_S"
        )
        parser.add_argument("--org", help="only this org's datasets (its slug)")
        parser.add_argument("--limit", type=int, default=storage_gc.DEFAULT_LIMIT)

    def handle(self, *args: Any, **options: Any) -> None:
        org = None
        if options["org"]:
            org = Org.objects.filter(slug=options["org"]).first()
            if org is None:
                raise CommandError(f"No org {options['org']!r}.")
        result = storage_gc.collect_garbage(
            org=org, grace_s=options["grace_seconds"], limit=options["limit"]
        )
        self.stdout.write(f"deleted {result.files} files, {result.bytes} bytes")
