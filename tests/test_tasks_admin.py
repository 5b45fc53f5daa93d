"""Operator admin for tasks: scoped lists, actions by role, the overview page."""

from __future__ import annotations

import pytest

from apps.tasks.models import NodeLane, Task
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy, web_login

pytestmark = pytest.mark.smoke


@pytest.fixture
def tasks(world: World, recorder: RecordingAdapter):
    deploy(world.acme, chain_config())
    deploy(world.globex, chain_config(name="theirs"))
    world["operator"].client().post(
        "/v1/events", {"dataset": "chain.src", "idempotency_key": "a"}, format="json"
    )
    world.outsider.client().post(
        "/v1/events", {"dataset": "theirs.src", "idempotency_key": "b"}, format="json"
    )
    return Task.objects.get(org=world.acme)


def test_task_admin_lists_only_own_org_and_acts_by_role(world, tasks):
    viewer = web_login("viewer-acme")
    listing = viewer.get("/admin/tasks/task/")
    assert listing.status_code == 200 and b"theirs" not in listing.content
    viewer.post("/admin/tasks/task/", {"action": "cancel", "_selected_action": [tasks.pk]})
    assert Task.objects.get(pk=tasks.pk).state == "pending"
    operator = web_login("operator-acme")
    operator.post("/admin/tasks/task/", {"action": "cancel", "_selected_action": [tasks.pk]})
    assert Task.objects.get(pk=tasks.pk).state == "canceled"
    operator.post("/admin/tasks/task/", {"action": "retry", "_selected_action": [tasks.pk]})
    assert Task.objects.get(pk=tasks.pk).state in {"pending", "queued"}
    detail = operator.get(f"/admin/tasks/task/{tasks.pk}/change/")
    assert detail.status_code == 200 and b"input event" in detail.content.lower()


def test_overview_page(world, tasks):
    page = web_login("viewer-acme").get("/admin/tasks/task/overview/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "Dispatch overview" in body and "op1" in body and "theirs" not in body


def test_lane_pause_action(world, tasks):
    lane = NodeLane.objects.get(node_id="op1", dag_version__dag__org=world.acme)
    operator = web_login("operator-acme")
    operator.post(
        "/admin/tasks/nodelane/", {"action": "pause_node_lane", "_selected_action": [lane.pk]}
    )
    lane.refresh_from_db()
    assert lane.paused
    assert lane.dag_version.dag.__class__.objects.get(pk=lane.dag_version.dag_id).pauses == [
        {"node": "op1", "lane": "live"}
    ]
    operator.post(
        "/admin/tasks/nodelane/", {"action": "resume_node_lane", "_selected_action": [lane.pk]}
    )
    lane.refresh_from_db()
    assert not lane.paused
