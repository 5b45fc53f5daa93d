"""Two dispatchers, two reapers and Celery workers over Redis, all real processes, over 2,000
tasks: no attempt leased twice, none lost, the concurrency cap never exceeded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings as django_settings
from django.db import connection
from django.db.models import Count

from apps.datasets.models import Commit
from apps.orgs import services as org_services
from apps.orgs.models import Org
from apps.tasks.models import Attempt, NodeLane, Task
from tests.factories import UserFactory
from tests.flow import chain_config, deploy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TASKS = int(os.environ.get("SLUICE_E2E_TASKS", "2000"))
CAP = 6
BROKER = "redis://127.0.0.1:6379/15"


@pytest.mark.parametrize("trigger", ["off", "notify"])
def test_many_processes_share_the_loops(live_server, settings, tmp_path, trigger):
    """`off`: only the loops dispatch. `notify`: the web only records and notifies; the
    dispatcher loops wake, fan out and dispatch with pacing (ADR 0009)."""
    assert connection.vendor == "postgresql", "the full suite runs on PostgreSQL"
    redis.Redis.from_url(BROKER).flushdb()
    settings.SLUICE_DISPATCH_TRIGGER = trigger
    org = Org.objects.create(slug="busy", name="Busy")
    user = UserFactory(username="busy-operator")
    org_services.membership_add(org=org, user=user, role="operator", actor=None)
    _, token = org_services.api_token_issue(user=user, org=org, name="t")
    deploy(org, chain_config(nodes=1, concurrency={"live": CAP, "backfill": 1}))

    db = connection.settings_dict
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER,
        "SECRET_KEY": django_settings.SECRET_KEY,
        "SLUICE_POOL_KEY": django_settings.SLUICE_POOL_KEY,
        "SLUICE_API_URL": live_server.url,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_STORAGE_ROOT": str(tmp_path / "storage"),
        "SLUICE_DISPATCH_TRIGGER": trigger,
    }
    manage = [sys.executable, "manage.py"]
    celery = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING"]
    celery += ["--without-mingle", "--without-gossip"]
    commands = [
        [*manage, "dispatch", "--loop", "--idle-sleep", "0.05"],
        [*manage, "dispatch", "--loop", "--idle-sleep", "0.05"],
        [*manage, "reap", "--loop", "--idle-sleep", "0.2"],
        [*manage, "reap", "--loop", "--idle-sleep", "0.2"],
        [*celery, "-c", "3", "-n", "w1@%h"],
        # Two single-slot workers too, each running its messages itself (ADR 0022).
        [*celery, "--pool", "solo", "-n", "solo1@%h"],
        [*celery, "--pool", "solo", "-n", "solo2@%h"],
    ]
    logs = [(tmp_path / f"p{i}.log").open("w") for i in range(len(commands))]
    processes = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for cmd, log in zip(commands, logs, strict=True)
    ]
    try:
        for start in range(0, TASKS, 1000):
            events = [
                {
                    "dataset": "chain.src",
                    "idempotency_key": f"e{i}",
                    "range_start": i,
                    "range_end": i + 1,
                }
                for i in range(start, start + 1000)
            ]
            response = requests.post(
                f"{live_server.url}/v1/events",
                json={"events": events},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert response.status_code == 202
        peak = 0
        deadline = time.monotonic() + float(os.environ.get("SLUICE_E2E_TIMEOUT", "240"))
        while time.monotonic() < deadline:
            in_flight = Task.objects.filter(state__in=["queued", "running"]).count()
            peak = max(peak, in_flight)
            assert in_flight <= CAP, f"{in_flight} tasks in flight with a cap of {CAP}"
            if Task.objects.filter(state="succeeded").count() == TASKS:
                break
            for process in processes:
                assert process.poll() is None, "a loop process died"
            time.sleep(0.05)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    states = dict(Task.objects.values_list("state").annotate(n=Count("id")))
    assert states == {"succeeded": TASKS}, (
        states,
        [p.read_text()[-2000:] for p in (tmp_path / f"p{i}.log" for i in range(len(commands)))],
    )
    assert peak > 1  # the work did run in parallel
    # A solo worker runs its tasks in its own process: both took some.
    worker_pids = {w.split(":")[1] for w in Attempt.objects.values_list("worker_id", flat=True)}
    assert {str(p.pid) for p in processes[-2:]} <= worker_pids
    assert Attempt.objects.count() == TASKS  # no attempt leased twice, none retried
    assert Attempt.objects.values("lease_token").distinct().count() == TASKS
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == TASKS
    lane = NodeLane.objects.get(node_id="op1", lane="live")
    assert (lane.pending, lane.in_flight) == (0, 0)
