"""API tokens and worker keys: hashed at rest, shown once, revocable, expiring, 401 when bad."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.orgs import services
from apps.orgs.models import ApiToken, WorkerKey
from tests.conftest import World

pytestmark = pytest.mark.smoke


def _all_database_text() -> str:
    """Every text value in every table of our apps, to search for a leaked raw secret."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            chunks.extend(str(value) for row in cursor.fetchall() for value in row)
    return "\n".join(chunks)


def test_raw_credentials_never_reach_the_database(world: World):
    created = world["owner"].client().post("/v1/tokens", {"name": "ci"}, format="json")
    assert created.status_code == 201
    raw_token = created.json()["token"]
    _, raw_key = services.worker_key_issue(org=world.acme, name="k")
    text = _all_database_text()
    for raw in (raw_token, raw_key, world["viewer"].token):
        assert raw not in text
        assert raw[12:] not in text  # not even the secret part without its visible prefix
    token = ApiToken.objects.get(pk=created.json()["id"])
    assert token.key_hash == services.hash_secret(raw_token)


def test_token_is_shown_once(world: World):
    client = world["owner"].client()
    created = client.post("/v1/tokens", {"name": "once"}, format="json").json()
    assert created["token"].startswith("slt_")
    listed = client.get("/v1/tokens").json()["results"]
    assert all("token" not in t for t in listed)
    assert created["id"] in {t["id"] for t in listed}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Basic dXNlcjpwYXNz",
        "Bearer slt_unknown",
        "Bearer " + "x" * 500,
        "Token abc",
    ],
)
def test_bad_credentials_are_401_json(world: World, header: str):
    client = APIClient()
    response = client.get("/v1/tokens", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "unauthenticated"
    assert body["detail"]
    assert body["errors"] == []


def test_missing_credentials_are_401(db: None):
    response = APIClient().get("/v1/tokens")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_token_is_401_and_revoke_is_idempotent(world: World):
    client = world["developer"].client()
    token = ApiToken.objects.get(user=world["developer"].user)
    assert client.delete(f"/v1/tokens/{token.pk}").status_code == 204
    assert client.get("/v1/tokens").status_code == 401
    assert services.credential_revoke(token) is False


def test_expired_token_is_401(world: World):
    user = world["viewer"].user
    token, raw = services.api_token_issue(
        user=user, org=world.acme, name="short", expires_at=timezone.now() + dt.timedelta(hours=1)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/tokens").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert client.get("/v1/tokens").status_code == 401


def test_expiry_in_the_past_is_refused(world: World):
    response = (
        world["owner"]
        .client()
        .post("/v1/tokens", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, format="json")
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "expires_at"


def test_last_used_at_is_touched_at_most_once_per_interval(world: World, settings):
    token = ApiToken.objects.get(user=world["viewer"].user)
    assert token.last_used_at is None
    client = world["viewer"].client()
    client.get("/v1/tokens")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    client.get("/v1/tokens")
    token.refresh_from_db()
    assert token.last_used_at == first
    settings.SLUICE_TOKEN_TOUCH_INTERVAL_S = 0
    client.get("/v1/tokens")
    token.refresh_from_db()
    assert token.last_used_at > first


def test_removed_member_loses_token(world: World):
    client = world["operator"].client()
    services.membership_remove(org=world.acme, username="operator-acme", actor=None)
    assert client.get("/v1/tokens").status_code == 401


def test_worker_keys_revoked_and_pool_key(world: World, settings):
    key, raw = services.worker_key_issue(org=world.acme, name="k")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/internal/whoami").status_code == 200
    services.credential_revoke(key)
    assert client.get("/internal/whoami").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {settings.SLUICE_POOL_KEY}")
    assert client.get("/internal/whoami").json() == {"org": None, "pool": True}
    # An API token is not a worker key.
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world['owner'].token}")
    assert client.get("/internal/whoami").status_code == 401


def test_issue_commands_print_only_the_secret(world: World, capsys):
    call_command("issue_token", org="acme", user="viewer-acme")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("slt_") and "\n" not in raw
    assert ApiToken.objects.get(key_hash=services.hash_secret(raw)).user.username == "viewer-acme"
    call_command("issue_worker_key", org="acme")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("slw_")
    assert WorkerKey.objects.get(key_hash=services.hash_secret(raw)).org == world.acme
