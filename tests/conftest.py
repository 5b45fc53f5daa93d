"""Personas (STYLE.md pattern 11): one user per role in org `acme`, an outsider in `globex`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from apps.orgs import services
from apps.orgs.models import Org, User
from apps.orgs.roles import Role
from apps.secrets import services as secret_services
from tests.factories import OrgFactory, UserFactory, member

pytest_plugins = ["tests.aws_fixtures"]  # moto_endpoint, aws

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


@pytest.fixture(autouse=True)
def storage_root(settings, tmp_path: Path) -> Path:
    """Every test writes its datasets under its own folder."""
    root = tmp_path / "storage"
    settings.SLUICE_STORAGE_ROOT = str(root)
    return root


@pytest.fixture
def world(db: None) -> World:
    acme = OrgFactory(slug="acme")
    globex = OrgFactory(slug="globex")
    personas = {role: _persona(acme, role, f"{role}-acme") for role in ROLES}
    outsider = _persona(globex, Role.OWNER, "owner-globex")
    for org in (acme, globex):  # the alert route of tests.dag_configs.pipeline names it
        secret_services.secret_put(
            org=org, name="slack_webhook_url", value="https://hooks.example/x", actor=None
        )
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


class RecordingAdapter:
    """Stands in for a queue: records what the Dispatcher sends, so a test can act as the
    worker. (Our own database and HTTP layer stay real.)"""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.fail_next = 0

    def __call__(self) -> RecordingAdapter:
        return self

    def send(self, node: dict, tasks: list) -> set:
        if self.fail_next:
            self.fail_next -= 1
            return {t.task_id for t in tasks}
        for task in tasks:
            self.messages.append({"node": node["id"], **task.as_message()})
        return set()

    def take(self, node: str | None = None) -> list[dict]:
        """Run the Dispatcher as a beat tick would (on_commit triggers do not fire inside a
        test's transaction), then take what it sent."""
        from apps.tasks.dispatch import dispatch_until_idle

        dispatch_until_idle()
        picked = [m for m in self.messages if node is None or m["node"] == node]
        self.messages = [m for m in self.messages if m not in picked]
        return picked


@pytest.fixture
def recorder() -> Iterator[RecordingAdapter]:
    from apps.tasks.runtimes import CeleryPoolAdapter, runtimes

    adapter = RecordingAdapter()
    runtimes.register("python", adapter)
    yield adapter
    runtimes.register("python", CeleryPoolAdapter)
