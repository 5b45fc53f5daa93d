"""Admin: tokens shown once at creation and never after; memberships through the services."""

from __future__ import annotations

import re

import pytest

from apps.orgs import services
from apps.orgs.access import has_org_perm
from apps.orgs.models import ApiToken, Membership, WorkerKey
from tests.conftest import World
from tests.factories import UserFactory
from tests.flow import web_login

pytestmark = pytest.mark.smoke


def test_admin_issues_token_shown_once(world: World):
    client = web_login("admin-acme")
    response = client.post(
        "/admin/orgs/apitoken/add/",
        {"org": world.acme.pk, "user": world["viewer"].user.pk, "name": "from-admin"},
        follow=True,
    )
    assert response.status_code == 200
    raw = re.search(rb"slt_[A-Za-z0-9_-]{43}", response.content)
    assert raw, response.content[:2000]
    token = ApiToken.objects.get(name="from-admin")
    assert token.key_hash == services.hash_secret(raw.group().decode())
    change = client.get(f"/admin/orgs/apitoken/{token.pk}/change/")
    assert raw.group() not in change.content
    assert token.key_hash.encode() not in change.content


def test_admin_refuses_token_for_non_member(world: World):
    client = web_login("admin-acme")
    response = client.post(
        "/admin/orgs/apitoken/add/",
        {"org": world.acme.pk, "user": world.outsider.user.pk, "name": "x"},
    )
    assert response.status_code == 200  # the form again, with an error
    assert not ApiToken.objects.filter(name="x").exists()


def test_admin_revoke_action(world: World):
    key, _ = services.worker_key_issue(org=world.acme, name="k")
    client = web_login("owner-acme")
    response = client.post(
        "/admin/orgs/workerkey/", {"action": "revoke", "_selected_action": [str(key.pk)]}
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert WorkerKey.objects.usable().filter(pk=key.pk).count() == 0


def _inline_management(prefix: str, total: int, initial: int) -> dict[str, str]:
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def test_org_inline_adds_member_through_service(world: World):
    newcomer = UserFactory(username="newcomer")
    services.membership_add(org=world.globex, user=newcomer, role="viewer", actor=None)
    client = web_login("owner-acme")
    existing = list(Membership.objects.filter(org=world.acme).order_by("user__username"))
    data: dict[str, str] = {
        "slug": "acme",
        "name": "Acme",
        "created_at_0": "2026-01-01",
        "created_at_1": "00:00:00",
    }
    data.update(_inline_management("memberships", len(existing) + 1, len(existing)))
    for i, membership in enumerate(existing):
        data[f"memberships-{i}-id"] = str(membership.pk)
        data[f"memberships-{i}-org"] = str(world.acme.pk)
        data[f"memberships-{i}-role"] = membership.role
    n = len(existing)
    data[f"memberships-{n}-org"] = str(world.acme.pk)
    data[f"memberships-{n}-username"] = newcomer.username
    data[f"memberships-{n}-role"] = "developer"
    for prefix in ("api_tokens", "worker_keys"):
        data.update(_inline_management(prefix, 0, 0))
    response = client.post(f"/admin/orgs/org/{world.acme.pk}/change/", data)
    assert response.status_code == 302
    assert Membership.objects.get(org=world.acme, user=newcomer).role == "developer"
    assert has_org_perm(newcomer, world.acme, "deploy_dags")
