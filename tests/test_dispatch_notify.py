"""SLUICE_DISPATCH_TRIGGER=notify (PostgreSQL): requests only record events and NOTIFY; the
dispatcher loops, woken at once, fan the events out and dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection, transaction

from apps.orgs import services as org_services
from apps.tasks import dispatch, fanout
from apps.tasks.models import Event, Task
from apps.tasks.triggers import CHANNEL, Wakeups, dispatch_after_commit
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, complete, deploy, fetch, worker_client

ROOT = Path(__file__).resolve().parent.parent
BROKER = "redis://127.0.0.1:6379/15"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def notify(settings) -> None:
    assert connection.vendor == "postgresql", "LISTEN/NOTIFY needs PostgreSQL"
    settings.SLUICE_DISPATCH_TRIGGER = "notify"


def post_event(world: World, key: str) -> None:
    body = {"dataset": "chain.src", "idempotency_key": key, "range_start": 0, "range_end": 1}
    response = world["operator"].client().post("/v1/events", body, format="json")
    assert response.status_code == 202, response.content


def test_requests_leave_fan_out_to_the_dispatcher(notify, world: World, recorder: RecordingAdapter):
    deploy(world.acme, chain_config(nodes=2))
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    worker = worker_client(key)
    post_event(world, "k1")
    post_event(world, "k1")  # a repeat stays one event
    event = Event.objects.get()
    assert event.fanned_out_at is None and not Task.objects.exists()

    assert fanout.fan_out_pending_events() == 1
    assert fanout.fan_out_pending_events() == 0
    assert dispatch.dispatch_once() == 1
    [message] = recorder.take("op1")
    assert complete(worker, fetch(worker, message).json()).status_code == 200

    # op1's output event waits for the dispatcher too; then op2 gets exactly one task.
    output = Event.objects.get(producer_task__node_id="op1")
    assert output.fanned_out_at is None and not Task.objects.filter(node_id="op2").exists()
    assert fanout.fan_out_pending_events() == 1
    assert dispatch.dispatch_once() == 1
    [message] = recorder.take("op2")
    assert complete(worker, fetch(worker, message).json()).status_code == 200
    assert Task.objects.get(node_id="op2").state == "succeeded"
    assert fanout.fan_out_pending_events() == 1  # op2's output: consumed by nobody
    assert Task.objects.count() == 2


def test_deferred_fan_out_reads_events_in_bulk(notify, world: World, django_assert_max_num_queries):
    """Events with rows carry a commit, which keys memoization: the fan-out of many such
    events reads them in one statement, not one per event (nor their deferred fields)."""
    deploy(world.acme, chain_config(nodes=1))
    events = [
        {
            "dataset": "chain.src",
            "idempotency_key": f"r{i}",
            "range_start": i,
            "range_end": i + 1,
            "rows": [{"n": i}],
        }
        for i in range(20)
    ]
    client = world["operator"].client()
    assert client.post("/v1/events", {"events": events}, format="json").status_code == 202
    with django_assert_max_num_queries(13):
        assert fanout.fan_out_pending_events() == 20
    keys = set(Task.objects.values_list("memo_key", flat=True))
    assert len(keys) == 20 and all(len(key) == 64 for key in keys)


def test_a_committed_notification_wakes_the_listener(notify):
    wakeups = Wakeups()
    try:
        assert wakeups.wait(0.05) is False  # nothing yet (this also starts listening)
        with transaction.atomic():
            dispatch_after_commit()
            dispatch_after_commit()
            assert wakeups.wait(0.05) is False  # not before the commit
        began = time.monotonic()
        assert wakeups.wait(5.0) is True
        assert time.monotonic() - began < 1.0
        assert wakeups.wait(0.05) is False  # one notification per transaction, drained
    finally:
        wakeups.close()


def test_a_lost_listener_falls_back_to_polling_and_reconnects(notify):
    wakeups = Wakeups()
    try:
        assert wakeups.wait(0.01) is False
        with connection.cursor() as cursor:  # an operator kills the listening backend
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query = %s AND pid <> pg_backend_pid()",
                [f"LISTEN {CHANNEL}"],
            )
        assert wakeups.wait(0.05) is False  # logged, not raised
        assert wakeups.wait(0.01) is False  # listening again
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {CHANNEL}")
        assert wakeups.wait(5.0) is True
    finally:
        wakeups.close()


def _listening(timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query = %s",
                [f"LISTEN {CHANNEL}"],
            )
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.1)
    return False


def test_an_idle_dispatcher_loop_wakes_on_ingest(notify, world: World, tmp_path):
    """The loop sleeps 60 s when idle; a posted event reaches `queued` within seconds."""
    deploy(world.acme, chain_config(nodes=1))
    db = connection.settings_dict
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER,
        "SECRET_KEY": django_settings.SECRET_KEY,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_STORAGE_ROOT": str(tmp_path / "storage"),
        "SLUICE_DISPATCH_TRIGGER": "notify",
    }
    log = (tmp_path / "dispatch.log").open("w")
    loop = subprocess.Popen(
        [sys.executable, "manage.py", "dispatch", "--loop", "--idle-sleep", "60"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _listening(60), (tmp_path / "dispatch.log").read_text()
        post_event(world, "wake")
        began = time.monotonic()
        while time.monotonic() - began < 15:
            task = Task.objects.filter(node_id="op1").first()
            if task is not None and task.state == "queued":
                break
            time.sleep(0.05)
        assert Task.objects.get(node_id="op1").state == "queued"
        assert Event.objects.get().fanned_out_at is not None
        assert time.monotonic() - began < 15  # far below the 60 s idle sleep
    finally:
        loop.terminate()
        loop.wait(timeout=30)
        log.close()
        redis.Redis.from_url(BROKER).flushdb()


def test_a_lease_and_its_completion_run_a_fixed_set_of_statements(
    notify, world: World, recorder: RecordingAdapter, django_assert_num_queries
):
    """The one-task-per-call path, statement by statement: the task rows come with their
    version, DAG, event, commit, dataset (and org) in one statement; a completion that names
    no outputs checks no files before its lock; nothing is loaded lazily."""
    from apps.orgs.authentication import WorkerPrincipal
    from apps.tasks import worker_api

    deploy(world.acme, chain_config(nodes=1))
    post_event(world, "s1")
    post_event(world, "s2")
    assert fanout.fan_out_pending_events() == 2
    assert dispatch.dispatch_once() == 2
    first, message = recorder.take("op1")
    principal = WorkerPrincipal(org=world.acme, key_id=None)
    # The first commit of a dataset also creates its generation's row; count the second.
    lease = worker_api.task_fetch(principal, first["task_id"], first["dispatch_token"], "w1")
    worker_api.task_complete(principal, {"lease_token": lease["lease"]["token"]})
    # BEGIN; the task and its relations; the move to running; the attempt; the output
    # dataset; COMMIT.
    with django_assert_num_queries(6):
        lease = worker_api.task_fetch(
            principal, message["task_id"], message["dispatch_token"], "w1"
        )
    # BEGIN; the attempt; the task and its relations; the output dataset; its seq; the
    # commit; the event; the task's and the attempt's moves; the lane counter; COMMIT; NOTIFY.
    with django_assert_num_queries(12):
        answer = worker_api.task_complete(
            principal, {"lease_token": lease["lease"]["token"], "logs": ""}
        )
    assert answer["state"] == "succeeded"
