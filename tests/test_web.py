"""Browser pages: login, the org list, the org overview (404 for non-members), logout."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import World
from tests.factories import PASSWORD

pytestmark = pytest.mark.smoke


def test_login_then_orgs_then_overview_then_logout(world: World):
    client = Client()
    assert client.get("/orgs/").status_code == 302  # to the login page
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "viewer-acme", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/orgs/"
    orgs = client.get("/orgs/")
    assert b"acme" in orgs.content and b"globex" not in orgs.content
    overview = client.get("/o/acme/")
    assert overview.status_code == 200
    assert b"owner-acme" in overview.content  # the member list
    assert client.post("/logout/").status_code == 302
    assert client.get("/o/acme/").status_code == 302


def test_wrong_password_stays_on_login(world: World):
    response = Client().post("/login/", {"username": "viewer-acme", "password": "nope"})
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content


def test_non_member_gets_404_on_org_pages(world: World):
    client = Client()
    assert client.login(username="owner-globex", password=PASSWORD)
    assert client.get("/o/acme/").status_code == 404
    assert client.get("/o/nosuch/").status_code == 404
    assert client.get("/o/globex/").status_code == 200
