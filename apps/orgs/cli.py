"""Helpers shared by management commands."""

from __future__ import annotations

from django.core.management.base import CommandError

from apps.orgs.models import Org


def org_by_slug(slug: str) -> Org:
    org = Org.objects.filter(slug=slug).first()
    if org is None:
        raise CommandError(f"no org {slug!r}")
    return org
