from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.orgs import services
from apps.orgs.models import Org


class Command(BaseCommand):
    help = "Issue a worker key for an org; prints only the key."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--name", default="cli")

    def handle(self, *args: Any, **options: Any) -> None:
        org = Org.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"no org {options['org']!r}")
        _, raw = services.worker_key_issue(org=org, name=options["name"])
        self.stdout.write(raw)
