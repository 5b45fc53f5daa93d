"""Personas (STYLE.md pattern 11): one user per role in org `acme`, an outsider in `globex`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from apps.orgs import services
from apps.orgs.models import Org, User
from apps.orgs.roles import Role
from tests.factories import OrgFactory, UserFactory, member

ROLES = [Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.OPERATOR, Role.VIEWER]


@dataclass
class Persona:
    user: User
    org: Org
    role: str
    token: str

    def client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")
        return client


@dataclass
class World:
    acme: Org
    globex: Org
    personas: dict[str, Persona]
    outsider: Persona  # owner of globex, nothing in acme

    def __getitem__(self, role: str) -> Persona:
        return self.personas[role]


def _persona(org: Org, role: str, username: str) -> Persona:
    user = member(org, role, username)
    _, raw = services.api_token_issue(user=user, org=org, name="test")
    return Persona(user=user, org=org, role=role, token=raw)


@pytest.fixture
def world(db: None) -> World:
    acme = OrgFactory(slug="acme")
    globex = OrgFactory(slug="globex")
    personas = {role: _persona(acme, role, f"{role}-acme") for role in ROLES}
    outsider = _persona(globex, Role.OWNER, "owner-globex")
    return World(acme=acme, globex=globex, personas=personas, outsider=outsider)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def superuser(db: None) -> User:
    return UserFactory(username="root", is_superuser=True)


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    return UserFactory
