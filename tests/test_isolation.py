"""Org isolation: another org's objects are 404 in the API and absent from every admin list."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from rest_framework.test import APIClient

from apps.dags import services as dag_services
from apps.orgs import services
from apps.orgs.models import ApiToken, Membership, WorkerKey
from tests.conftest import World
from tests.dag_configs import pipeline
from tests.factories import PASSWORD

pytestmark = pytest.mark.smoke


def test_member_endpoints_of_another_org_are_404(world: World):
    client = world["owner"].client()
    for method, url in [
        ("get", "/v1/orgs/globex/members"),
        ("post", "/v1/orgs/globex/members"),
        ("get", "/v1/orgs/globex/members/owner-globex"),
        ("patch", "/v1/orgs/globex/members/owner-globex"),
        ("delete", "/v1/orgs/globex/members/owner-globex"),
        ("get", "/v1/orgs/nosuch/members"),
    ]:
        response = getattr(client, method)(url, {"role": "viewer"}, format="json")
        assert response.status_code == 404, (method, url)
        assert response.json()["code"] == "not_found"
    assert Membership.objects.filter(user=world.outsider.user).count() == 1


def test_token_acts_only_in_its_own_org(world: World):
    """A user in two orgs: a token for acme cannot reach globex's members, even as its owner."""
    user = world["owner"].user
    services.membership_add(org=world.globex, user=user, role="owner", actor=None)
    acme_client = world["owner"].client()
    assert acme_client.get("/v1/orgs/globex/members").status_code == 404
    _, raw = services.api_token_issue(user=user, org=world.globex, name="globex")
    globex_client = APIClient()
    globex_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert globex_client.get("/v1/orgs/globex/members").status_code == 200
    assert globex_client.get("/v1/orgs/acme/members").status_code == 404


def test_tokens_of_another_org_are_invisible_and_unrevocable(world: World):
    outsider_token = ApiToken.objects.get(user=world.outsider.user)
    client = world["owner"].client()
    listed = {t["id"] for t in client.get("/v1/tokens").json()["results"]}
    assert str(outsider_token.pk) not in listed
    assert client.delete(f"/v1/tokens/{outsider_token.pk}").status_code == 404
    outsider_token.refresh_from_db()
    assert outsider_token.revoked_at is None


def test_session_user_picks_org_by_header(world: World):
    client = APIClient()
    client.force_authenticate(world["viewer"].user)
    assert client.get("/v1/tokens").status_code == 400  # must name the org
    assert client.get("/v1/tokens", HTTP_X_SLUICE_ORG="acme").status_code == 200
    assert client.get("/v1/tokens", HTTP_X_SLUICE_ORG="globex").status_code == 404


ADMIN_CHANGELISTS = [
    model for model in admin.site._registry if model.__module__.startswith("apps.")
]


@pytest.mark.parametrize("model", ADMIN_CHANGELISTS, ids=lambda m: m._meta.label)
def test_admin_changelists_show_no_rows_of_another_org(world: World, model):
    services.worker_key_issue(org=world.globex, name="globex-key")
    services.worker_key_issue(org=world.acme, name="acme-key")
    dag_services.dag_deploy(org=world.globex, config=pipeline(prefix="globex"), actor=None)
    dag_services.dag_deploy(org=world.acme, config=pipeline(name="mine"), actor=None)
    client = Client()
    assert client.login(username="owner-acme", password=PASSWORD)
    url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
    response = client.get(url)
    if model._meta.model_name == "user":
        assert response.status_code == 403  # users are platform-wide: superusers only
        return
    assert response.status_code == 200
    body = response.content.decode()
    assert "globex" not in body, url
    assert "owner-globex" not in body


def test_admin_object_of_another_org_is_not_reachable(world: World):
    client = Client()
    assert client.login(username="owner-acme", password=PASSWORD)
    other = Membership.objects.get(user=world.outsider.user)
    response = client.get(f"/admin/orgs/membership/{other.pk}/change/")
    assert response.status_code in (302, 404)  # admin redirects "does not exist" to the index
    assert client.get(f"/admin/orgs/org/{world.globex.pk}/change/").status_code in (302, 404)


def test_superuser_sees_every_org_in_admin(world: World, superuser):
    client = Client()
    assert client.login(username="root", password=PASSWORD)
    body = client.get("/admin/orgs/org/").content.decode()
    assert "acme" in body and "globex" in body


def test_worker_key_identifies_its_org_only(world: World):
    _, acme_key = services.worker_key_issue(org=world.acme, name="k")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {acme_key}")
    assert client.get("/internal/whoami").json() == {"org": "acme", "pool": False}
    # A worker key is not an API token: the public API refuses it.
    assert client.get("/v1/orgs/acme/members").status_code == 401
    assert WorkerKey.objects.filter(org=world.acme).count() == 1
