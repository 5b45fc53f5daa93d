"""Deploys through the API: versions, idempotency, diff, rollback, pause, delete, roles."""

from __future__ import annotations

import json

import pytest
import yaml
from django.core.management import CommandError, call_command

from apps.dags.models import Dag, DagVersion
from apps.datasets.models import Dataset
from tests.conftest import ROLES, World
from tests.dag_configs import pipeline

pytestmark = pytest.mark.smoke


def deploy(client, config, **query):
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return client.post(f"/v1/dags{suffix}", config, format="json")


def producers(org) -> dict[str, str]:
    return {d.dataset_id: d.producer_dag for d in Dataset.objects.filter(org=org)}


def test_deploy_then_identical_is_200(world: World):
    client = world["developer"].client()
    first = deploy(client, pipeline())
    assert first.status_code == 201, first.json()
    body = first.json()
    assert body["dag"] == "orders" and body["version"] == 1 and body["state"] == "active"
    assert body["diff"] == {
        "added": ["orders_raw", "orders_clean", "hourly", "revenue", "revenue_drop"],
        "removed": [],
        "changed": [],
        "rebuild": [],
    }
    again = deploy(client, pipeline())
    assert again.status_code == 200
    assert again.json()["version"] == 1 and again.json()["created"] is False
    assert DagVersion.objects.filter(dag__name="orders").count() == 1


def test_yaml_body(world: World):
    client = world["developer"].client()
    response = client.post(
        "/v1/dags", data=yaml.safe_dump(pipeline()), content_type="application/yaml"
    )
    assert response.status_code == 201, response.json()
    bad = client.post("/v1/dags", data="nodes: [", content_type="application/yaml")
    assert bad.status_code == 400 and bad.json()["code"] == "parse_error"


def test_dry_run_stores_nothing(world: World):
    response = deploy(world["developer"].client(), pipeline(), dry_run="true")
    assert response.status_code == 200
    assert response.json()["dry_run"] is True and response.json()["state"] == "validated"
    assert not Dag.objects.exists() and not Dataset.objects.exists()


def test_change_reports_changed_and_rebuild_downstream(world: World):
    client = world["developer"].client()
    deploy(client, pipeline())
    changed = pipeline()
    changed["nodes"][1]["timeout_s"] = 600  # orders_clean
    response = deploy(client, changed)
    assert response.status_code == 201
    diff = response.json()["diff"]
    assert diff["changed"] == ["orders_clean"]
    # Everything below orders_clean that materializes data is rebuilt; the alert is not.
    assert diff["rebuild"] == ["orders_clean", "hourly", "revenue"]
    versions = client.get("/v1/dags/orders/versions").json()["results"]
    assert [(v["version"], v["state"]) for v in versions] == [(2, "active"), (1, "superseded")]
    detail = client.get("/v1/dags/orders/versions/2").json()
    assert detail["diff"]["changed"] == ["orders_clean"]
    assert detail["config"]["nodes"][1]["timeout_s"] == 600
    assert client.get("/v1/dags/orders/versions/9").status_code == 404


def test_defaults_are_filled_in(world: World):
    client = world["developer"].client()
    deploy(client, pipeline())
    config = client.get("/v1/dags/orders").json()["config"]
    clean = config["nodes"][1]
    assert clean["retry"] == {"max_attempts": 3, "backoff_s": 5, "max_backoff_s": 300}
    assert clean["output"]["backend"] == "parquet"
    assert clean["output"]["retention"] == {"keep_generations": 2, "days": 7}


def test_rollback_is_atomic_and_idempotent(world: World):
    client = world["developer"].client()
    deploy(client, pipeline())
    v2 = pipeline()
    v2["nodes"][1]["output"]["dataset"] = "sales.orders_tidy"
    deploy(client, v2)
    assert producers(world.acme)["sales.orders_tidy"] == "orders"
    assert producers(world.acme)["sales.orders_clean"] == ""
    back = client.post("/v1/dags/orders/rollback", {"version": 1}, format="json")
    assert back.status_code == 200, back.json()
    assert back.json()["active_version"] == 1
    assert producers(world.acme)["sales.orders_clean"] == "orders"
    assert producers(world.acme)["sales.orders_tidy"] == ""
    again = client.post("/v1/dags/orders/rollback", {"version": 1}, format="json")
    assert again.status_code == 200 and again.json()["active_version"] == 1
    states = dict(DagVersion.objects.values_list("number", "state"))
    assert states == {1: "active", 2: "superseded"}
    forward = client.post("/v1/dags/orders/rollback", {"version": 2}, format="json")
    assert forward.json()["active_version"] == 2


def test_rollback_default_is_previous_version(world: World):
    client = world["developer"].client()
    deploy(client, pipeline())
    v2 = pipeline()
    v2["nodes"][1]["timeout_s"] = 10
    deploy(client, v2)
    assert client.post("/v1/dags/orders/rollback", {}, format="json").json()["active_version"] == 1
    nothing = client.post("/v1/dags/orders/rollback", {}, format="json")
    assert nothing.status_code == 409 and nothing.json()["code"] == "no_previous_version"


def test_rollback_refused_when_producer_taken_meanwhile(world: World):
    """The flip and the producer claims switch together: a refused claim changes nothing."""
    client = world["developer"].client()
    deploy(client, pipeline())
    v2 = pipeline()
    v2["nodes"][1]["output"]["dataset"] = "sales.orders_tidy"
    deploy(client, v2)
    other = pipeline(name="other", prefix="misc")
    other["nodes"][1]["output"]["dataset"] = "sales.orders_clean"  # free since v2
    assert deploy(client, other).status_code == 201
    refused = client.post("/v1/dags/orders/rollback", {"version": 1}, format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "producer_conflict"
    assert Dag.objects.get(name="orders").active_version.number == 2
    assert producers(world.acme)["sales.orders_tidy"] == "orders"


def test_pause_and_resume(world: World):
    client = world["operator"].client()
    deploy(world["developer"].client(), pipeline())
    assert client.post("/v1/dags/orders/pause", {}, format="json").json()["paused"] is True
    body = client.post(
        "/v1/dags/orders/pause", {"node": "orders_clean", "lane": "backfill"}, format="json"
    ).json()
    assert body["pauses"] == [{"node": "orders_clean", "lane": "backfill"}]
    client.post("/v1/dags/orders/resume", {}, format="json")
    dag = Dag.objects.get(name="orders")
    assert dag.is_paused("orders_clean", "backfill") and not dag.is_paused("orders_clean", "live")
    client.post(
        "/v1/dags/orders/resume", {"node": "orders_clean", "lane": "backfill"}, format="json"
    )
    dag.refresh_from_db()
    assert not dag.is_paused("orders_clean", "backfill")
    bad = client.post("/v1/dags/orders/pause", {"node": "nope"}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "node"
    bad_lane = client.post("/v1/dags/orders/pause", {"lane": "slow"}, format="json")
    assert bad_lane.status_code == 400 and bad_lane.json()["errors"][0]["path"] == "lane"


def test_delete_retires_and_releases_producers(world: World):
    client = world["developer"].client()
    deploy(client, pipeline())
    assert client.delete("/v1/dags/orders").status_code == 204
    detail = client.get("/v1/dags/orders").json()
    assert detail["active_version"] is None and detail["state"] == "retired"
    assert DagVersion.objects.get().state == "retired"
    assert set(producers(world.acme).values()) == {""}
    assert Dataset.objects.filter(org=world.acme).count() == 3  # data kept
    other = pipeline(name="other")
    assert deploy(client, other).status_code == 201  # the datasets are free to claim
    assert client.delete("/v1/dags/orders").status_code == 204  # idempotent


def test_get_dag_and_list(world: World):
    client = world["viewer"].client()
    deploy(world["developer"].client(), pipeline())
    listed = client.get("/v1/dags").json()
    assert [d["name"] for d in listed["results"]] == ["orders"] and listed["next"] is None
    detail = client.get("/v1/dags/orders").json()
    assert set(detail) >= {"name", "active_version", "paused", "config", "versions"}
    assert detail["versions"][0]["version"] == 1


@pytest.mark.parametrize("role", ROLES)
def test_deploy_and_pause_permissions(world: World, role: str):
    may_deploy = role in {"owner", "admin", "developer"}
    may_pause = role in {"owner", "admin", "developer", "operator"}
    response = deploy(world[role].client(), pipeline())
    assert response.status_code == (201 if may_deploy else 403)
    if not may_deploy:
        deploy(world["owner"].client(), pipeline())
    pause = world[role].client().post("/v1/dags/orders/pause", {}, format="json")
    assert pause.status_code == (200 if may_pause else 403)
    rollback = world[role].client().post("/v1/dags/orders/rollback", {}, format="json")
    assert rollback.status_code == (409 if may_deploy else 403)  # 409: nothing to roll back to
    delete = world[role].client().delete("/v1/dags/orders")
    assert delete.status_code == (204 if may_deploy else 403)


def test_other_orgs_dags_are_404(world: World):
    deploy(world.outsider.client(), pipeline())
    client = world["owner"].client()
    for method, url in [
        ("get", "/v1/dags/orders"),
        ("get", "/v1/dags/orders/versions"),
        ("post", "/v1/dags/orders/pause"),
        ("post", "/v1/dags/orders/rollback"),
        ("delete", "/v1/dags/orders"),
    ]:
        assert getattr(client, method)(url, {}, format="json").status_code == 404, url
    assert client.get("/v1/dags").json()["results"] == []


def test_config_over_one_megabyte_is_413(world: World):
    big = pipeline()
    big["nodes"][1]["config"] = {"blob": "x" * (1024 * 1024)}
    response = deploy(world["developer"].client(), big)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not Dag.objects.exists()


def test_bad_rollback_input(world: World):
    client = world["developer"].client()
    deploy(client, pipeline())
    response = client.post("/v1/dags/orders/rollback", {"version": "two"}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["path"] == "version"
    missing = client.post("/v1/dags/orders/rollback", {"version": 7}, format="json")
    assert missing.status_code == 404


def test_deploy_dag_command(world: World, tmp_path, capsys):
    good = tmp_path / "orders.json"
    good.write_text(json.dumps(pipeline()))
    call_command("deploy_dag", str(good), org="acme", dry_run=True)
    assert "orders v1 would deploy" in capsys.readouterr().out
    call_command("deploy_dag", str(good), org="acme")
    assert "orders v1 deployed" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    broken = pipeline()
    broken["nodes"][1]["inputs"] = ["ordrs_raw"]
    bad.write_text(yaml.safe_dump(broken))
    with pytest.raises(CommandError):
        call_command("deploy_dag", str(bad), org="acme")
    assert "did you mean 'orders_raw'" in capsys.readouterr().err


def test_deploy_dag_command_exit_code(world: World, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: []\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "deploy_dag", str(bad), "--org", "nosuch"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
