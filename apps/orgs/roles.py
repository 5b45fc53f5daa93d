"""Roles and the permissions each grants on its org (DESIGN.md D8).

This table is the documentation: `docs/roles.md` is generated from the same dictionaries
by a test that fails when they drift apart.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    OPERATOR = "operator", "Operator"
    VIEWER = "viewer", "Viewer"


# codename -> what it allows. Codenames are guardian object permissions on `orgs.Org`.
PERMISSIONS: dict[str, str] = {
    "view_org": "Read the org's DAGs, datasets, events, tasks and members",
    "post_events": "Post events and invalidations",
    "operate_tasks": "Retry, cancel and requeue tasks",
    "pause_dags": "Pause and resume DAGs, nodes and lanes",
    "deploy_dags": "Deploy, roll back and delete DAGs",
    "write_secrets": "Create, rotate and delete secrets",
    "manage_members": "Add, change and remove members, tokens and worker keys",
    "manage_owners": "Grant or take away the owner role",
}

_VIEWER = ("view_org",)
_OPERATOR = (*_VIEWER, "post_events", "operate_tasks", "pause_dags")
_DEVELOPER = (*_OPERATOR, "deploy_dags")
_ADMIN = (*_DEVELOPER, "write_secrets", "manage_members")
_OWNER = (*_ADMIN, "manage_owners")

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset(_VIEWER),
    Role.OPERATOR: frozenset(_OPERATOR),
    Role.DEVELOPER: frozenset(_DEVELOPER),
    Role.ADMIN: frozenset(_ADMIN),
    Role.OWNER: frozenset(_OWNER),
}


def perm_name(codename: str) -> str:
    """The full permission name guardian expects, e.g. `orgs.deploy_dags`."""
    if codename not in PERMISSIONS:
        raise ValueError(f"unknown org permission {codename!r}")
    return f"orgs.{codename}"
