from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from apps.orgs import services
from apps.orgs.cli import org_by_slug


class Command(BaseCommand):
    help = "Issue a worker key for an org; prints only the key."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--name", default="cli")

    def handle(self, *args: Any, **options: Any) -> None:
        org = org_by_slug(options["org"])
        _, raw = services.worker_key_issue(org=org, name=options["name"])
        self.stdout.write(raw)
