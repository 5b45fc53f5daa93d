"""Create (idempotently) the demo org, its people and credentials, and print how to log in."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from apps.orgs import services
from apps.orgs.models import Membership, Org, User
from apps.orgs.roles import Role


def _ensure_user(username: str, *, superuser: bool, password: str | None) -> tuple[User, str]:
    """Create the user with a fresh password, or keep an existing one's (shown as unchanged)."""
    user = User.objects.filter(username=username).first()
    if user is not None:
        return user, "(unchanged; set with manage.py changepassword)"
    password = password or secrets.token_urlsafe(12)
    if superuser:
        user = User.objects.create_superuser(username=username, password=password, email="")
    else:
        user = User.objects.create_user(username=username, password=password, is_staff=True)
    return user, password


class Command(BaseCommand):
    help = (
        "Create the demo org, a superuser 'admin', an owner 'demo', an API token and a worker key."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--org", default="demo")
        parser.add_argument("--password", help="Password for new users (default: random).")
        parser.add_argument("--token-file", help="Also write the API token to this file.")

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["org"]
        with transaction.atomic():
            _, admin_password = _ensure_user("admin", superuser=True, password=options["password"])
            owner, owner_password = _ensure_user(
                "demo", superuser=False, password=options["password"]
            )
            org = Org.objects.filter(slug=slug).first()
            if org is None:
                org = services.org_create(slug=slug, name="Demo", owner=owner)
            elif not Membership.objects.filter(org=org, user=owner).exists():
                services.membership_add(org=org, user=owner, role=Role.OWNER, actor=None)
            _, token = services.api_token_issue(user=owner, org=org, name="demo")
            _, worker_key = services.worker_key_issue(org=org, name="demo")
        if options["token_file"]:
            path = Path(options["token_file"])
            path.write_text(token)
            path.chmod(0o600)
        self.stdout.write(
            f"org:         {org.slug}\n"
            f"superuser:   admin / {admin_password}\n"
            f"org owner:   demo / {owner_password}\n"
            f"API token:   {token}\n"
            f"worker key:  {worker_key}\n"
        )
