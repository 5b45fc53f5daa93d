from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.orgs import services
from apps.orgs.cli import org_by_slug
from apps.orgs.errors import SluiceError
from apps.orgs.models import User


class Command(BaseCommand):
    help = "Issue an API token for a member of an org; prints only the token."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--user", required=True)
        parser.add_argument("--name", default="cli")

    def handle(self, *args: Any, **options: Any) -> None:
        org = org_by_slug(options["org"])
        user = User.objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user {options['user']!r}")
        try:
            _, raw = services.api_token_issue(user=user, org=org, name=options["name"])
        except SluiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(raw)
