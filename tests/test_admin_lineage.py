"""The admin lineage page of a commit, its links from the commit admin, and the registry list."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.datasets.models import Commit
from apps.orgs import services as org_services
from apps.tasks.models import Task
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, complete, deploy, fetch, web_login, worker_client

pytestmark = pytest.mark.smoke


@pytest.fixture
def chain(world: World, recorder: RecordingAdapter) -> dict[str, Commit]:
    """src (rows posted by a source) -> op1 -> op2, each operator writing 3 rows."""
    deploy(world.acme, chain_config(nodes=2))
    posted = (
        world["operator"]
        .client()
        .post(
            "/v1/events",
            {
                "dataset": "chain.src",
                "idempotency_key": "a",
                "range_start": 0,
                "range_end": 10,
                "rows": [{"n": 1}, {"n": 2}],
            },
            format="json",
        )
    )
    assert posted.status_code == 202, posted.json()
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    worker = worker_client(key)
    for node in ("op1", "op2"):
        [message] = recorder.take(node)
        assert complete(worker, fetch(worker, message).json(), rows=3).status_code == 200
    return {c.dataset.dataset_id: c for c in Commit.objects.select_related("dataset")}


def _page(client: Client, commit: Commit):  # type: ignore[no-untyped-def]
    return client.get(f"/admin/tasks/task/lineage/{commit.pk}/")


def test_lineage_page_shows_task_inputs_and_consumers(world: World, chain):
    middle = chain["chain.op1"]
    producer = Task.objects.get(node_id="op1", org=world.acme)
    consumer = Task.objects.get(node_id="op2", org=world.acme)
    page = _page(web_login("viewer-acme"), middle)
    assert page.status_code == 200
    body = page.content.decode()
    assert "Lineage of chain.op1@1.1" in body
    assert f'href="/admin/tasks/task/{producer.pk}/change/"' in body
    assert "chain v1" in body and "op1" in body
    assert "w1" in body  # the attempt's worker
    # upstream: the source commit it read, with a link to walk further up
    assert "chain.src@1.1" in body
    assert f'href="/admin/tasks/task/lineage/{chain["chain.src"].pk}/"' in body
    assert f'href="/admin/tasks/event/{producer.event_id}/change/"' in body
    # downstream: the task that read it and the commit that task produced
    assert f'href="/admin/tasks/task/{consumer.pk}/change/"' in body
    assert "chain.op2@1.1" in body
    assert f'href="/admin/tasks/task/lineage/{chain["chain.op2"].pk}/"' in body


def test_lineage_page_of_a_source_commit(world: World, chain):
    body = _page(web_login("operator-acme"), chain["chain.src"]).content.decode()
    assert "No task: written by source chain / src" in body
    assert "chain.op1@1.1" in body  # read by op1


def test_commit_admin_links_to_the_lineage_page(world: World, chain):
    client = web_login("viewer-acme")
    url = f'href="/admin/tasks/task/lineage/{chain["chain.op1"].pk}/"'
    listing = client.get("/admin/datasets/commit/")
    assert listing.status_code == 200 and url in listing.content.decode()
    detail = client.get(f"/admin/datasets/commit/{chain['chain.op1'].pk}/change/")
    assert detail.status_code == 200 and url in detail.content.decode()


def test_another_orgs_commit_is_404(world: World, chain, superuser):
    commit = chain["chain.op1"]
    assert _page(web_login("owner-globex"), commit).status_code == 404
    assert _page(web_login("viewer-acme"), Commit(pk=10**9)).status_code == 404
    assert _page(web_login(superuser.username), commit).status_code == 200


def test_dataset_list_shows_live_totals_and_producer(world: World, chain):
    client = web_login("viewer-acme")
    body = client.get("/admin/datasets/dataset/").content.decode()
    row = body[body.index("chain.op1") :].split("</tr>")[0]
    cells = [c.split(">", 1)[1].split("<", 1)[0] for c in row.split("<td")[1:]]
    # org, producer, backend, live generation, then its commits, rows and bytes
    assert cells[:6] == ["acme", "chain / op1", "parquet", "1", "1", "3"]
    assert "bytes" in cells[6]
    detail = client.get(f"/admin/datasets/dataset/{chain['chain.op1'].dataset_id}/change/")
    assert detail.status_code == 200
