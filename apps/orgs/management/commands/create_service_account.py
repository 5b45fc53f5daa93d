from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.orgs import services
from apps.orgs.cli import org_by_slug
from apps.orgs.errors import SluiceError
from apps.orgs.roles import Role


class Command(BaseCommand):
    help = "Create a service account <name>@<org> with a role; prints its username."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--role", default=Role.OPERATOR, choices=Role.values)

    def handle(self, *args: Any, **options: Any) -> None:
        org = org_by_slug(options["org"])
        try:
            user = services.service_account_create(
                org=org, name=options["name"], role=options["role"], actor=None
            )
        except SluiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(user.username)
