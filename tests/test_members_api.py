"""Members API: shapes, bad input, the last-owner rule, service accounts."""

from __future__ import annotations

import pytest

from apps.orgs.models import Membership, User
from tests.conftest import World
from tests.factories import UserFactory

pytestmark = pytest.mark.smoke


def test_add_change_remove_member(world: World):
    UserFactory(username="carol")
    client = world["admin"].client()
    created = client.post(
        "/v1/orgs/acme/members", {"username": "carol", "role": "viewer"}, format="json"
    )
    assert created.status_code == 201
    assert created.json() == {
        "username": "carol",
        "role": "viewer",
        "is_service_account": False,
        "created_at": created.json()["created_at"],
    }
    changed = client.patch("/v1/orgs/acme/members/carol", {"role": "developer"}, format="json")
    assert changed.json()["role"] == "developer"
    assert client.get("/v1/orgs/acme/members/carol").json()["role"] == "developer"
    assert client.delete("/v1/orgs/acme/members/carol").status_code == 204
    assert client.get("/v1/orgs/acme/members/carol").status_code == 404


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"username": "carol", "role": "emperor"}, "role"),
        ({"username": "carol"}, "role"),
        ({"role": "viewer"}, "username"),
        ({"username": "nobody", "role": "viewer"}, "username"),
        ({"username": "carol", "role": "viewer", "colour": "red"}, "colour"),
        ({"username": ["carol"], "role": "viewer"}, "username"),
    ],
)
def test_bad_member_input_names_the_field(world: World, body: dict, path: str):
    UserFactory(username="carol")
    response = world["owner"].client().post("/v1/orgs/acme/members", body, format="json")
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "validation_error"
    assert path in [e["path"] for e in payload["errors"]]
    assert not Membership.objects.filter(user__username="carol").exists()


def test_malformed_json_is_400(world: World):
    response = (
        world["owner"]
        .client()
        .post("/v1/orgs/acme/members", data=b"{not json", content_type="application/json")
    )
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_duplicate_member_is_409(world: World):
    response = (
        world["owner"]
        .client()
        .post("/v1/orgs/acme/members", {"username": "viewer-acme", "role": "admin"}, format="json")
    )
    assert response.status_code == 409
    assert response.json()["code"] == "already_member"


def test_last_owner_cannot_be_removed_or_demoted(world: World):
    client = world["owner"].client()
    demoted = client.patch("/v1/orgs/acme/members/owner-acme", {"role": "admin"}, format="json")
    assert demoted.status_code == 409
    assert demoted.json()["code"] == "last_owner"
    assert client.delete("/v1/orgs/acme/members/owner-acme").status_code == 409
    # With a second owner, the first may step down.
    assert (
        client.patch(
            "/v1/orgs/acme/members/admin-acme", {"role": "owner"}, format="json"
        ).status_code
        == 200
    )
    assert (
        client.patch(
            "/v1/orgs/acme/members/owner-acme", {"role": "admin"}, format="json"
        ).status_code
        == 200
    )


def test_service_account_belongs_to_one_org(world: World):
    client = world["admin"].client()
    created = client.post(
        "/v1/orgs/acme/members",
        {"username": "ingest", "role": "operator", "service_account": True},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["username"] == "ingest@acme"
    bot = User.objects.get(username="ingest@acme")
    assert bot.is_service_account and not bot.has_usable_password()
    token = client.post("/v1/tokens", {"name": "bot", "username": "ingest@acme"}, format="json")
    assert token.status_code == 201
    assert token.json()["username"] == "ingest@acme"
    other = world.outsider.client().post(
        "/v1/orgs/globex/members", {"username": "ingest@acme", "role": "viewer"}, format="json"
    )
    assert other.status_code == 409
    bad = client.post(
        "/v1/orgs/acme/members",
        {"username": "Bad Name", "role": "viewer", "service_account": True},
        format="json",
    )
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["path"] == "username"
