"""The §6 error shape everywhere, the body cap, /healthz and the OpenAPI schema."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.conftest import World

pytestmark = pytest.mark.smoke


def test_unknown_api_path_is_json_404(db: None):
    response = Client().get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "Not found.", "errors": []}


def test_method_not_allowed_is_json(world: World):
    response = world["owner"].client().put("/v1/tokens", {}, format="json")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_body_over_cap_is_413_before_parsing(world: World, settings):
    settings.SLUICE_MAX_BODY_BYTES = 1024
    body = b'{"username": "' + b"x" * 2000 + b'", "role": "viewer"}'
    response = (
        world["owner"]
        .client()
        .post("/v1/orgs/acme/members", data=body, content_type="application/json")
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_unsupported_media_type_is_415(world: World):
    response = (
        world["owner"]
        .client()
        .post("/v1/tokens", data="name=x", content_type="application/x-www-form-urlencoded")
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_healthz(db: None):
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_openapi_schema_documents_errors_and_auth(db: None):
    response = APIClient().get("/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    post_members = schema["paths"]["/v1/orgs/{slug}/members"]["post"]
    for code in ("201", "400", "401", "403", "404", "409", "413"):
        assert code in post_members["responses"], code
    error_ref = post_members["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error_ref.endswith("/Error")
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {
        "code",
        "detail",
        "errors",
    }
    assert "apiToken" in schema["components"]["securitySchemes"]
    listed = schema["paths"]["/v1/tokens"]["get"]["responses"]["200"]["content"]
    ref = listed["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][ref]["properties"]) == {"results", "next"}


def test_schema_ui_is_served_without_a_cdn(db: None):
    response = Client().get("/v1/schema/ui/")
    assert response.status_code == 200
    assert b"cdn.jsdelivr" not in response.content


def test_members_list_is_cursor_paginated(world: World):
    client = world["owner"].client()
    first = client.get("/v1/orgs/acme/members?limit=2").json()
    assert len(first["results"]) == 2 and first["next"]
    names = [m["username"] for m in first["results"]]
    url = first["next"]
    while url:
        page = client.get(url).json()
        names += [m["username"] for m in page["results"]]
        url = page["next"]
    assert sorted(names) == sorted(
        ["owner-acme", "admin-acme", "developer-acme", "operator-acme", "viewer-acme"]
    )
