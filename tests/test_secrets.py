"""Secrets: write-only, encrypted, handed only to leased tasks that name them, audited."""

from __future__ import annotations

import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from django.test import Client

from apps.orgs import services as org_services
from apps.secrets import crypto
from apps.secrets import services as secret_services
from apps.secrets.models import AuditAction, Secret, SecretAudit, SecretVersion
from tests.conftest import ROLES, RecordingAdapter, World
from tests.factories import PASSWORD
from tests.flow import chain_config, deploy, fetch, worker_client

pytestmark = pytest.mark.smoke

MARK = "s3cr3t-VALUE-do-not-leak-7f1c"


def _everything_in_db() -> bytes:
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                for value in row:
                    chunks.append(
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
    return b"\n".join(chunks)


def test_put_get_list_delete_never_show_the_value(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    admin = world["admin"].client()
    created = admin.put("/v1/secrets/warehouse_token", {"value": MARK}, format="json")
    assert created.status_code == 201
    assert created.json()["name"] == "warehouse_token" and created.json()["version"] == 1
    rotated = admin.put("/v1/secrets/warehouse_token", {"value": MARK + "-2"}, format="json")
    assert rotated.status_code == 200 and rotated.json()["version"] == 2
    bodies = [
        created.content,
        rotated.content,
        admin.get("/v1/secrets").content,
        admin.get("/v1/secrets/warehouse_token").content,
    ]
    bad = admin.put("/v1/secrets/Bad-Name", {"value": MARK}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "name"
    unknown = admin.put("/v1/secrets/x", {"value": MARK, "extra": MARK}, format="json")
    assert unknown.status_code == 400
    bodies += [bad.content, unknown.content]
    page = Client()
    assert page.login(username="admin-acme", password=PASSWORD)
    secret = Secret.objects.get(name="warehouse_token")
    bodies += [
        page.get("/admin/secrets/secret/").content,
        page.get(f"/admin/secrets/secret/{secret.pk}/change/").content,
        page.get("/admin/secrets/secretaudit/").content,
    ]
    for body in bodies:
        assert MARK.encode() not in body
    assert MARK not in caplog.text
    assert MARK.encode() not in _everything_in_db()  # encrypted at rest
    assert SecretVersion.objects.filter(secret=secret).count() == 2  # history kept
    assert admin.delete("/v1/secrets/warehouse_token").status_code == 204
    assert admin.get("/v1/secrets/warehouse_token").status_code == 404
    actions = list(
        SecretAudit.objects.filter(secret_name="warehouse_token")
        .order_by("at")
        .values_list("action", flat=True)
    )
    assert actions == ["create", "rotate", "delete"]


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_and_owners_write(world: World, role: str):
    response = world[role].client().put("/v1/secrets/k", {"value": "v"}, format="json")
    allowed = role in {"owner", "admin"}
    assert response.status_code == (201 if allowed else 403)
    assert world[role].client().get("/v1/secrets").status_code == 200  # metadata is readable
    if allowed:
        assert world[role].client().delete("/v1/secrets/k").status_code == 204


def test_admin_sets_a_new_value_write_only(world: World):
    page = Client()
    assert page.login(username="admin-acme", password=PASSWORD)
    response = page.post(
        "/admin/secrets/secret/add/",
        {
            "org": world.acme.pk,
            "name": "api_key",
            "new_value": MARK,
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    secret = Secret.objects.get(name="api_key")
    assert secret.version == 1
    change = page.get(f"/admin/secrets/secret/{secret.pk}/change/")
    assert MARK.encode() not in change.content
    viewer = Client()
    assert viewer.login(username="viewer-acme", password=PASSWORD)
    assert viewer.get("/admin/secrets/secret/add/").status_code == 403


@pytest.fixture
def secret_chain(world: World, recorder: RecordingAdapter):
    secret_services.secret_put(org=world.acme, name="warehouse_token", value=MARK, actor=None)
    secret_services.secret_put(
        org=world.globex, name="warehouse_token", value="globex-value", actor=None
    )
    secret_services.platform_secret_put(name="warehouse_token", value="platform-value", actor=None)
    config = chain_config(nodes=2)
    config["nodes"][1]["secrets"] = ["warehouse_token"]  # op1 names it; op2 does not
    deploy(world.acme, config)
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    return worker_client(key)


def test_handout_only_to_the_node_that_names_it(world: World, secret_chain, recorder):
    world["operator"].client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    lease = fetch(secret_chain, recorder.take("op1")[0])
    assert lease.json()["secrets"] == {"warehouse_token": MARK}
    audit = SecretAudit.objects.get(action=AuditAction.HANDOUT)
    assert str(audit.task_id) == lease.json()["task"]["id"] and audit.version == 1
    secret_chain.post(
        "/internal/task-complete", {"lease_token": lease.json()["lease"]["token"]}, format="json"
    )
    downstream = fetch(secret_chain, recorder.take("op2")[0]).json()
    assert downstream["secrets"] == {}
    assert "platform-value" not in str(downstream) and "globex-value" not in str(lease.json())
    assert SecretAudit.objects.filter(action=AuditAction.HANDOUT).count() == 1


def test_other_orgs_key_cannot_fetch_the_task(world: World, secret_chain, recorder):
    world["operator"].client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    message = recorder.take("op1")[0]
    _, other = org_services.worker_key_issue(org=world.globex, name="g")
    refused = fetch(worker_client(other), message)
    assert refused.status_code == 404 and MARK.encode() not in refused.content
    assert not SecretAudit.objects.filter(action=AuditAction.HANDOUT).exists()


def test_new_tasks_get_the_newest_version(world: World, secret_chain, recorder):
    secret_services.secret_put(
        org=world.acme, name="warehouse_token", value=MARK + "-v2", actor=None
    )
    world["operator"].client().post("/v1/events", {"dataset": "chain.src"}, format="json")
    lease = fetch(secret_chain, recorder.take("op1")[0]).json()
    assert lease["secrets"] == {"warehouse_token": MARK + "-v2"}
    assert (
        SecretVersion.objects.filter(secret__org=world.acme, secret__name="warehouse_token").count()
        == 2
    )


def test_secret_in_use_cannot_be_deleted(world: World, secret_chain):
    response = world["admin"].client().delete("/v1/secrets/warehouse_token")
    assert response.status_code == 409 and "chain/op1" in response.json()["detail"]
    meta = world["admin"].client().get("/v1/secrets/warehouse_token").json()
    assert meta["referenced_by"] == ["chain/op1"]


def test_deploy_refuses_unknown_secret(world: World):
    config = chain_config(nodes=1)
    config["nodes"][1]["secrets"] = ["missing_one"]
    response = world["developer"].client().post("/v1/dags?dry_run=true", config, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0] == {
        "path": "nodes[1].secrets[0]",
        "message": "the org has no secret 'missing_one'",
    }


def test_key_rotation_reencrypts_and_old_key_can_go(world: World, settings):
    old_key = settings.SLUICE_SECRET_KEYS[0]
    secret_services.secret_put(org=world.acme, name="rotating", value=MARK, actor=None)
    new_key = Fernet.generate_key().decode()
    settings.SLUICE_SECRET_KEYS = [new_key, old_key]
    call_command("rotate_secret_keys")
    settings.SLUICE_SECRET_KEYS = [new_key]  # the old key is dropped
    version = SecretVersion.objects.get(secret__name="rotating")
    assert crypto.decrypt(version.ciphertext) == MARK
    assert SecretAudit.objects.filter(action=AuditAction.REENCRYPT).exists()
    settings.SLUICE_SECRET_KEYS = [old_key]
    with pytest.raises(Exception) as caught:
        crypto.decrypt(version.ciphertext)
    assert MARK not in str(caught.value)
