"""Two deploys of different DAGs race for one new dataset: exactly one wins (PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from apps.dags import services
from apps.datasets.models import Dataset
from apps.orgs.errors import Conflict
from apps.orgs.models import Org
from apps.secrets import services as secret_services
from tests.dag_configs import pipeline

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("attempt", range(5))
def test_concurrent_deploys_one_producer(attempt: int):
    assert connection.vendor == "postgresql", "the full suite runs on PostgreSQL"
    org = Org.objects.create(slug=f"race{attempt}", name="Race")
    secret_services.secret_put(org=org, name="slack_webhook_url", value="x", actor=None)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        config = pipeline(name=name, prefix="shared")
        try:
            barrier.wait(timeout=10)
            services.dag_deploy(org=org, config=config, actor=None)
            outcomes[name] = "deployed"
        except Conflict as exc:
            outcomes[name] = exc.code
        finally:
            connections.close_all()  # each thread has its own real connection

    threads = [threading.Thread(target=run, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["deployed", "producer_conflict"], outcomes
    winner = next(name for name, outcome in outcomes.items() if outcome == "deployed")
    assert set(Dataset.objects.filter(org=org).values_list("producer_dag", flat=True)) == {winner}
    assert connection.vendor == "postgresql"
