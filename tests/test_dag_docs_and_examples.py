"""The published DAG schema, the examples, the admin and the overview page for DAGs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from django.db import connection
from django.test import Client

from apps.dags import services
from apps.dags.models import Dag
from apps.dags.schema import dag_json_schema
from apps.secrets import services as secret_services
from tests.conftest import World
from tests.dag_configs import pipeline
from tests.factories import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.smoke


def test_schema_endpoint_and_doc_are_the_schema(db: None):
    response = Client().get("/v1/schema/dag.json")
    assert response.status_code == 200
    assert response.json() == dag_json_schema()
    published = json.loads((ROOT / "docs" / "dag-schema.json").read_text())
    assert published == dag_json_schema(), "regenerate docs/dag-schema.json"


def test_design_example_validates(world: World):
    config = yaml.safe_load((ROOT / "examples" / "orders.yaml").read_text())
    for name in ("warehouse_token", "pd_routing_key"):
        secret_services.secret_put(org=world.acme, name=name, value="v", actor=None)
    if connection.vendor == "sqlite":
        config["nodes"][1]["output"]["backend"] = "parquet"
    result = services.dag_deploy(org=world.acme, config=config, actor=None, dry_run=True)
    assert result.diff["added"] == [
        "orders_raw",
        "orders_clean",
        "hourly",
        "revenue",
        "revenue_drop",
    ]


def test_orders_clean_handler():
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from orders import clean_orders
    finally:
        sys.path.pop(0)
    table = pa.table(
        {
            "order_id": ["a", "b", None, "a", "c"],
            "amount": [10.004, -1.0, 5.0, 12.499, 7.0],
        }
    )
    cleaned = clean_orders(table)
    assert cleaned.to_pydict() == {"order_id": ["a", "c"], "amount": [12.5, 7.0]}


def test_admin_dag_actions_follow_roles(world: World):
    services.dag_deploy(org=world.acme, config=pipeline(), actor=None)
    second = pipeline()
    second["nodes"][1]["timeout_s"] = 60
    services.dag_deploy(org=world.acme, config=second, actor=None)
    services.dag_deploy(org=world.globex, config=pipeline(name="theirs"), actor=None)
    dag = Dag.objects.get(name="orders")
    operator = Client()
    assert operator.login(username="operator-acme", password=PASSWORD)
    listing = operator.get("/admin/dags/dag/")
    assert listing.status_code == 200 and b"theirs" not in listing.content
    operator.post("/admin/dags/dag/", {"action": "pause", "_selected_action": [dag.pk]})
    dag.refresh_from_db()
    assert dag.paused
    operator.post("/admin/dags/dag/", {"action": "rollback", "_selected_action": [dag.pk]})
    assert Dag.objects.get(pk=dag.pk).active_version.number == 2  # refused: not a deployer
    developer = Client()
    assert developer.login(username="developer-acme", password=PASSWORD)
    developer.post("/admin/dags/dag/", {"action": "rollback", "_selected_action": [dag.pk]})
    assert Dag.objects.get(pk=dag.pk).active_version.number == 1
    version = dag.active_version
    detail = operator.get(f"/admin/dags/dagversion/{version.pk}/change/")
    assert detail.status_code == 200 and b"orders_clean" in detail.content
    assert operator.get("/admin/datasets/dataset/").status_code == 200


def test_overview_lists_dags_and_datasets(world: World):
    services.dag_deploy(org=world.acme, config=pipeline(), actor=None)
    client = Client()
    assert client.login(username="viewer-acme", password=PASSWORD)
    page = client.get("/o/acme/").content.decode()
    assert "orders" in page and "sales.orders_clean" in page
