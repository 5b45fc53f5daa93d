"""The ecs (SQS) and lambda runtimes against moto's standalone server: a real HTTP endpoint
that boto3 talks to, started on loopback by the fixture."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.stub import ANY, Stubber

from apps.datasets.models import Commit
from apps.orgs import services as org_services
from apps.orgs.models import Org
from apps.tasks import dispatch, reaper
from apps.tasks.models import Attempt, Task
from apps.tasks.runtimes import Dispatched, runtimes
from apps.tasks.runtimes_aws import LambdaAdapter, SqsAdapter, _queue_url, lambda_retry_problems
from tests.aws_fixtures import AWS_ENV
from tests.conftest import RecordingAdapter
from tests.factories import UserFactory
from tests.flow import deploy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _client(service: str, endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client(service, region_name="us-east-1", endpoint_url=endpoint)


class Cloud:
    def __init__(self, url: str, endpoint: str, org: Org, token: str, key: str, queue: str):
        self.url, self.endpoint, self.org, self.token, self.key = url, endpoint, org, token, key
        self.queue = queue
        self.sqs = _client("sqs", endpoint)
        self.processes: list[subprocess.Popen[str]] = []

    def post_event(self, key: str, **payload: object) -> None:
        response = requests.post(
            f"{self.url}/v1/events",
            timeout=10,
            json={"dataset": "cloud.src", "idempotency_key": key, "payload": payload},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == 202, response.text

    def worker(self, *extra: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sluice_worker",
                "sqs",
                "--api-url",
                self.url,
                "--key",
                self.key,
                "--queue",
                self.queue,
                "--wait",
                "1",
                "--visibility",
                "2",
                "--handler",
                "demo_ops:sleepy",
                *extra,
            ],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **AWS_ENV, "SLUICE_AWS_ENDPOINT_URL": self.endpoint},
        )
        self.processes.append(process)
        return process

    def waiting(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


def ecs_config(queue: str) -> dict:
    return {
        "name": "cloud",
        "nodes": [
            {"id": "src", "kind": "source", "output": {"dataset": "cloud.src"}},
            {
                "id": "op1",
                "kind": "operator",
                "runtime": "ecs",
                "queue": queue,
                "image": "example/worker:1",
                "inputs": ["src"],
                "output": {"dataset": "cloud.op1"},
                "retry": {"max_attempts": 3, "backoff_s": 0, "max_backoff_s": 0},
            },
        ],
    }


@pytest.fixture
def cloud(aws: str, live_server, settings) -> Iterator[Cloud]:
    settings.SLUICE_API_URL = live_server.url
    settings.SLUICE_LEASE_TTL_S = 3.0
    settings.SLUICE_DISPATCH_TRIGGER = "off"
    sqs = _client("sqs", aws)
    name = f"sluice-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    org = Org.objects.create(slug=f"cloud{uuid.uuid4().hex[:6]}", name="Cloud")
    user = UserFactory(username=f"u-{org.slug}")
    org_services.membership_add(org=org, user=user, role="developer", actor=None)
    _, token = org_services.api_token_issue(user=user, org=org, name="t")
    _, key = org_services.worker_key_issue(org=org, name="k")
    deploy(org, ecs_config(name))  # the queue by name: resolved to its URL when sending
    env = Cloud(live_server.url, aws, org, token, key, queue)
    yield env
    for process in env.processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_sqs_task_runs_on_a_real_worker_and_the_message_is_deleted(cloud: Cloud):
    cloud.post_event("one", sleep_s=0)
    assert dispatch.dispatch_until_idle() == 1
    assert cloud.waiting() == 1
    out, err = cloud.worker("--max-messages", "1").communicate(timeout=60)
    assert json.loads(out.strip().splitlines()[-1]) == {"handled": 1}, err
    task = Task.objects.get(node_id="op1")
    assert task.state == "succeeded"
    assert Commit.objects.get(dataset__dataset_id="cloud.op1").rows == 1
    assert cloud.waiting() == 0


def test_duplicate_sqs_delivery_runs_once(cloud: Cloud):
    cloud.post_event("dup", sleep_s=0)
    dispatch.dispatch_until_idle()
    [message] = cloud.sqs.receive_message(QueueUrl=cloud.queue, VisibilityTimeout=0)["Messages"]
    cloud.sqs.send_message(QueueUrl=cloud.queue, MessageBody=message["Body"])  # at-least-once
    out, err = cloud.worker("--max-messages", "2").communicate(timeout=60)
    assert json.loads(out.strip().splitlines()[-1]) == {"handled": 2}, err
    assert Attempt.objects.count() == 1
    assert Commit.objects.filter(dataset__dataset_id="cloud.op1").count() == 1
    assert cloud.waiting() == 0


def test_killed_worker_message_reappears_and_reaper_retries(cloud: Cloud):
    cloud.post_event("kill", sleep_s=30, sleep_on_attempt=1)
    dispatch.dispatch_until_idle()
    first = cloud.worker()
    _wait(lambda: Task.objects.get(node_id="op1").state == "running")
    first.send_signal(signal.SIGKILL)
    first.wait()
    _wait(
        lambda: (
            reaper.reap_once().expired > 0 or Task.objects.get(node_id="op1").state != "running"
        ),
        timeout=15,
    )
    assert dispatch.dispatch_until_idle() == 1  # attempt 2 gets a fresh message
    # The old message reappears after its visibility timeout: refused as stale, then deleted.
    _, err = cloud.worker("--max-messages", "2", "--idle-exit", "8").communicate(timeout=90)
    task = Task.objects.get(node_id="op1")
    assert task.state == "succeeded", err
    assert list(task.attempts.values_list("outcome", flat=True)) == ["lease_expired", "succeeded"]
    assert Commit.objects.filter(dataset__dataset_id="cloud.op1").count() == 1
    _wait(lambda: cloud.waiting() == 0, timeout=10)


def test_send_errors_and_throttling_return_tasks_to_pending(cloud: Cloud, settings):
    deploy(cloud.org, ecs_config("no-such-queue"))
    cloud.post_event("lost", sleep_s=0)
    assert dispatch.dispatch_once() == 0  # the queue does not exist: the send fails
    task = Task.objects.get(node_id="op1")
    assert task.state == "pending" and task.dispatch_count == 1
    cloud.sqs.create_queue(QueueName="no-such-queue")
    _queue_url.cache_clear()
    assert dispatch.dispatch_once() == 1
    assert Task.objects.get(pk=task.pk).state == "queued"


def _dispatched(n: int) -> list[Dispatched]:
    return [Dispatched(uuid.uuid4(), 1, f"token-{i}") for i in range(n)]


def test_sqs_batches_of_ten_and_throttling_retries(aws: str, settings):
    client = _client("sqs", aws)
    adapter = SqsAdapter(client=client)
    node = {"id": "op", "queue": "https://sqs.example/123/q"}
    tasks = _dispatched(12)
    with Stubber(client) as stub:
        stub.add_client_error("send_message_batch", service_error_code="Throttling")
        stub.add_response(
            "send_message_batch",
            {"Successful": [], "Failed": []},
            {"QueueUrl": node["queue"], "Entries": ANY},
        )
        stub.add_response(
            "send_message_batch",
            {
                "Successful": [],
                "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError"}],
            },
            {"QueueUrl": node["queue"], "Entries": ANY},
        )
        failed = adapter.send(node, tasks)
        stub.assert_no_pending_responses()
    assert failed == {tasks[11].task_id}  # the second batch (tasks 10, 11) lost entry 1
    with Stubber(client) as stub:
        for _ in range(4):
            stub.add_client_error("send_message_batch", service_error_code="Throttling")
        assert adapter.send(node, tasks[:3]) == {t.task_id for t in tasks[:3]}


def test_lambda_invoke_parameters_and_payload(aws: str, settings):
    settings.SLUICE_API_URL = "https://sluice.example"
    client = _client("lambda", aws)
    adapter = LambdaAdapter(client=client)
    [task] = _dispatched(1)
    expected = json.dumps(
        {
            "task_id": str(task.task_id),
            "attempt": 1,
            "dispatch_token": "token-0",
            "api_url": "https://sluice.example",
        }
    ).encode()
    with Stubber(client) as stub:
        stub.add_client_error("invoke", service_error_code="TooManyRequestsException")
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {"FunctionName": "sluice-op", "InvocationType": "Event", "Payload": expected},
        )
        assert adapter.send({"id": "op", "function": "sluice-op"}, [task]) == set()


def _lambda_function(endpoint: str, name: str, retries: int | None) -> None:
    iam, lam = _client("iam", endpoint), _client("lambda", endpoint)
    role = iam.create_role(RoleName=f"r-{name}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "from sluice_worker.aws import lambda_handler\n")
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role,
        Handler="handler.lambda_handler",
        Code={"ZipFile": code.getvalue()},
    )
    if retries is not None:
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=retries)


def test_deploy_checks_lambda_async_retries(aws: str):
    _lambda_function(aws, "retries-2", 2)
    _lambda_function(aws, "no-config", None)
    _lambda_function(aws, "retries-0", 0)
    client = _client("lambda", aws)
    assert "retries async invocations 2 time(s)" in (
        lambda_retry_problems("retries-2", client) or ""
    )
    assert "no event invoke config" in (lambda_retry_problems("no-config", client) or "")
    assert lambda_retry_problems("retries-0", client) is None


def test_lambda_handler_completes_a_real_task(aws: str, live_server, settings, monkeypatch):
    settings.SLUICE_API_URL = live_server.url
    recorder = RecordingAdapter()
    runtimes.register("lambda", recorder)
    try:
        _lambda_function(aws, "sluice-op", 0)
        org = Org.objects.create(slug="lam", name="Lambda")
        user = UserFactory(username="lam-dev")
        org_services.membership_add(org=org, user=user, role="developer", actor=None)
        _, key = org_services.worker_key_issue(org=org, name="k")
        deploy(
            org,
            {
                "name": "lam",
                "nodes": [
                    {"id": "src", "kind": "source", "output": {"dataset": "lam.src"}},
                    {
                        "id": "op1",
                        "kind": "operator",
                        "runtime": "lambda",
                        "function": "sluice-op",
                        "inputs": ["src"],
                        "output": {"dataset": "lam.op1"},
                    },
                ],
            },
        )
        from apps.tasks.ingest import events_ingest

        events_ingest(org, {"dataset": "lam.src", "payload": {"sleep_s": 0}})
        [message] = recorder.take("op1")
        payload = {**message, "api_url": live_server.url}
        payload.pop("node")
        monkeypatch.setenv("SLUICE_WORKER_KEY", key)
        monkeypatch.setenv("SLUICE_HANDLER", "demo_ops:sleepy")
        monkeypatch.setenv("SLUICE_HANDLER_PATH", str(ROOT / "examples"))
        from sluice_worker.aws import lambda_handler

        assert lambda_handler(payload, None)["completed"] == 1
        assert Task.objects.get(node_id="op1", org=org).state == "succeeded"
    finally:
        from apps.tasks.runtimes_aws import LambdaAdapter as Real

        runtimes.register("lambda", Real)
