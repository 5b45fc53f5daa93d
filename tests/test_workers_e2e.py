"""Real worker processes (the SDK command) against the real HTTP API and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from apps.datasets.models import Commit
from apps.orgs import services as org_services
from apps.orgs.models import Org
from apps.tasks import reaper
from apps.tasks.models import Attempt, Event, Task
from tests.conftest import RecordingAdapter
from tests.factories import UserFactory
from tests.flow import chain_config, deploy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("timed out waiting")


class Harness:
    def __init__(self, url: str, org: Org, token: str, key: str) -> None:
        self.url, self.org, self.token, self.key = url, org, token, key
        self.processes: list[subprocess.Popen[str]] = []

    def post_event(self, key: str, **payload: object) -> str:
        response = requests.post(
            f"{self.url}/v1/events",
            json={
                "dataset": "chain.src",
                "idempotency_key": key,
                "range_start": 0,
                "range_end": 1,
                "payload": payload,
            },
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["events"][0]["id"])

    def worker(self, message: dict) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sluice_worker",
                "run",
                "--api-url",
                self.url,
                "--key",
                self.key,
                "--message",
                json.dumps(message),
            ],
            cwd=ROOT,
            env={**os.environ, "SLUICE_HANDLER_PATH": "examples"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def harness(live_server, settings, recorder: RecordingAdapter) -> Iterator[Harness]:
    settings.SLUICE_LEASE_TTL_S = 3.0
    settings.SLUICE_API_URL = live_server.url
    org = Org.objects.create(slug="e2e", name="E2E")
    user = UserFactory(username="e2e-operator")
    org_services.membership_add(org=org, user=user, role="developer", actor=None)
    _, token = org_services.api_token_issue(user=user, org=org, name="t")
    _, key = org_services.worker_key_issue(org=org, name="k")
    deploy(org, chain_config(nodes=2, handlers={"op1": "demo_ops:sleepy", "op2": "demo_ops:noop"}))
    h = Harness(live_server.url, org, token, key)
    yield h
    h.close()


def _running(task_id: str) -> Callable[[], bool]:
    return lambda: Task.objects.get(pk=task_id).state == "running"


@pytest.mark.parametrize("when", ["mid_task", "before_first_heartbeat"])
def test_killed_worker_is_retried_and_commits_once(harness: Harness, recorder, when: str):
    harness.post_event("kill", sleep_s=30, sleep_on_attempt=1)
    [message] = recorder.take("op1")
    process = harness.worker(message)
    wait_for(_running(message["task_id"]))
    if when == "mid_task":
        wait_for(
            lambda: Attempt.objects.filter(
                task_id=message["task_id"],
                heartbeat_at__gt=Task.objects.get(pk=message["task_id"]).started_at,
            ).exists()
        )
    process.send_signal(signal.SIGKILL)
    process.wait()
    started = time.monotonic()
    wait_for(
        lambda: (
            reaper.reap_once().expired > 0
            or Task.objects.get(pk=message["task_id"]).state != "running"
        ),
        timeout=10,
    )
    assert time.monotonic() - started < 3.0 + 5  # runnable again within lease TTL + 5 s
    [retry] = recorder.take("op1")
    assert retry["attempt"] == 2
    second = harness.worker(retry)
    assert second.wait(timeout=30) == 0, second.stderr.read() if second.stderr else ""
    task = Task.objects.get(pk=message["task_id"])
    assert task.state == "succeeded"
    assert list(task.attempts.values_list("outcome", flat=True)) == ["lease_expired", "succeeded"]
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 1
    assert Event.objects.filter(dataset_id="chain.op1").count() == 1
    assert Task.objects.filter(node_id="op2").count() == 1


def test_duplicate_delivery_leases_once(harness: Harness, recorder):
    harness.post_event("dup", sleep_s=0.5)
    [message] = recorder.take("op1")
    first, second = harness.worker(message), harness.worker(message)
    outputs = [
        json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1]) for p in (first, second)
    ]
    assert sorted(o["completed"] for o in outputs) == [0, 1]
    assert sorted(o["refused"] for o in outputs) == [0, 1]
    assert Attempt.objects.filter(task_id=message["task_id"]).count() == 1
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 1


def test_cancel_stops_the_operator_at_its_next_checkpoint(harness: Harness, recorder):
    harness.post_event("cancel", sleep_s=60)
    [message] = recorder.take("op1")
    process = harness.worker(message)
    wait_for(_running(message["task_id"]))
    response = requests.post(
        f"{harness.url}/v1/tasks/{message['task_id']}/cancel",
        headers={"Authorization": f"Bearer {harness.token}"},
        timeout=10,
    )
    assert response.status_code == 200
    out, err = process.communicate(timeout=15)  # heartbeat interval 0.5 s, then checkpoint()
    assert json.loads(out.strip().splitlines()[-1])["stopped"] == 1, err
    assert Task.objects.get(pk=message["task_id"]).state == "canceled"
    assert not Event.objects.filter(dataset_id="chain.op1").exists()
    assert not Task.objects.filter(node_id="op2").exists()


def test_checkpoint_then_kill_is_seen_once_downstream(harness: Harness, recorder):
    deploy(
        harness.org,
        chain_config(nodes=2, handlers={"op1": "demo_ops:checkpointing", "op2": "demo_ops:noop"}),
    )
    harness.post_event("cp", sleep_s=30, sleep_on_attempt=1)
    [message] = recorder.take("op1")
    process = harness.worker(message)
    wait_for(lambda: Event.objects.filter(dataset_id="chain.op1", checkpoint_n=1).exists())
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_for(lambda: reaper.reap_once().expired > 0, timeout=10)
    [retry] = recorder.take("op1")
    assert harness.worker(retry).wait(timeout=30) == 0
    checkpoints = Event.objects.filter(dataset_id="chain.op1", checkpoint_n=1)
    assert checkpoints.count() == 1
    # Downstream: one task for the checkpoint, one for the final commit.
    assert Task.objects.filter(node_id="op2").count() == 2
    assert Commit.objects.filter(dataset__dataset_id="chain.op1").count() == 2


def test_sdk_writes_parquet_that_downstream_reads(harness: Harness, recorder):
    harness.post_event("rows", sleep_s=0)
    [message] = recorder.take("op1")
    assert harness.worker(message).wait(timeout=30) == 0
    commit = Commit.objects.get(dataset__dataset_id="chain.op1")
    assert commit.rows == 1 and commit.files[0]["path"].endswith(".parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(commit.files[0]["path"]).to_pylist() == [{"attempt": 1}]
