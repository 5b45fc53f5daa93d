"""Every role × every permission, through the service layer, the API and the admin."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.orgs.access import has_org_perm, orgs_with_perm
from apps.orgs.models import Membership
from apps.orgs.roles import PERMISSIONS
from tests.conftest import ROLES, World
from tests.factories import PASSWORD, UserFactory

# Written out by hand (not derived from roles.py), so a change to the mapping must be deliberate.
EXPECTED: dict[str, set[str]] = {
    "viewer": {"view_org"},
    "operator": {"view_org", "post_events", "operate_tasks", "pause_dags"},
    "developer": {"view_org", "post_events", "operate_tasks", "pause_dags", "deploy_dags"},
    "admin": {
        "view_org",
        "post_events",
        "operate_tasks",
        "pause_dags",
        "deploy_dags",
        "write_secrets",
        "manage_members",
    },
    "owner": set(PERMISSIONS),
}
TABLE = [(role, perm, perm in EXPECTED[role]) for role in EXPECTED for perm in PERMISSIONS]


@pytest.mark.smoke
@pytest.mark.parametrize(("role", "perm", "allowed"), TABLE)
def test_role_grants_exactly_its_permissions(world: World, role: str, perm: str, allowed: bool):
    persona = world[role]
    assert has_org_perm(persona.user, world.acme, perm) is allowed
    assert has_org_perm(persona.user, world.globex, perm) is False
    assert (world.acme in orgs_with_perm(persona.user, perm)) is allowed


@pytest.mark.parametrize("role", ROLES)
def test_role_change_replaces_permissions(world: World, role: str):
    target = world["viewer"]
    owner = world["owner"]
    response = owner.client().patch(
        f"/v1/orgs/acme/members/{target.user.username}", {"role": role}, format="json"
    )
    assert response.status_code == 200, response.json()
    for perm in PERMISSIONS:
        assert has_org_perm(target.user, world.acme, perm) is (perm in EXPECTED[role])


@pytest.mark.parametrize("role", ROLES)
def test_api_read_members_any_role(world: World, role: str):
    response = world[role].client().get("/v1/orgs/acme/members")
    assert response.status_code == 200
    names = {m["username"] for m in response.json()["results"]}
    assert names == {f"{r}-acme" for r in ROLES}


@pytest.mark.parametrize("role", ROLES)
def test_api_add_member_needs_manage_members(world: World, role: str):
    newcomer = UserFactory(username="newcomer")
    response = (
        world[role]
        .client()
        .post("/v1/orgs/acme/members", {"username": "newcomer", "role": "viewer"}, format="json")
    )
    allowed = "manage_members" in EXPECTED[role]
    assert response.status_code == (201 if allowed else 403), response.json()
    assert Membership.objects.filter(user=newcomer).exists() is allowed
    if not allowed:
        assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize("role", ROLES)
def test_api_grant_owner_needs_manage_owners(world: World, role: str):
    response = (
        world[role]
        .client()
        .patch("/v1/orgs/acme/members/viewer-acme", {"role": "owner"}, format="json")
    )
    allowed = "manage_owners" in EXPECTED[role]
    assert response.status_code == (200 if allowed else 403), response.json()
    assert Membership.objects.get(user__username="viewer-acme").role == (
        "owner" if allowed else "viewer"
    )


@pytest.mark.parametrize("role", ROLES)
def test_api_remove_member_needs_manage_members(world: World, role: str):
    response = world[role].client().delete("/v1/orgs/acme/members/operator-acme")
    allowed = "manage_members" in EXPECTED[role]  # the operator removing itself included
    assert response.status_code == (204 if allowed else 403)
    assert Membership.objects.filter(user__username="operator-acme").exists() is (not allowed)


@pytest.mark.parametrize("role", ROLES)
def test_api_token_for_another_member_needs_manage_members(world: World, role: str):
    response = (
        world[role]
        .client()
        .post("/v1/tokens", {"name": "for-viewer", "username": "viewer-acme"}, format="json")
    )
    allowed = "manage_members" in EXPECTED[role] or role == "viewer"
    assert response.status_code == (201 if allowed else 403), response.json()


def _admin_client(username: str) -> Client:
    client = Client()
    assert client.login(username=username, password=PASSWORD)
    return client


@pytest.mark.parametrize("role", ROLES)
def test_admin_follows_role(world: World, role: str):
    client = _admin_client(f"{role}-acme")
    may_manage = "manage_members" in EXPECTED[role]
    assert client.get("/admin/orgs/org/").status_code == 200
    change = client.get(f"/admin/orgs/org/{world.acme.pk}/change/")
    assert change.status_code == 200
    # Without manage_members the page is read-only: no save button.
    assert (b'name="_save"' in change.content) is may_manage
    assert client.get("/admin/orgs/membership/add/").status_code == (200 if may_manage else 403)
    assert client.get("/admin/orgs/apitoken/add/").status_code == (200 if may_manage else 403)
    membership = Membership.objects.get(user__username="viewer-acme")
    response = client.post(f"/admin/orgs/membership/{membership.pk}/change/", {"role": "developer"})
    assert response.status_code == (302 if may_manage else 403)
    membership.refresh_from_db()
    assert membership.role == ("developer" if may_manage else "viewer")
    assert has_org_perm(membership.user, world.acme, "deploy_dags") is may_manage
