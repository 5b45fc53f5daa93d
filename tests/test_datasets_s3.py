"""Datasets on S3 (moto's standalone server on loopback): sources, a real worker
process writing its output there, and reads through the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import requests

from apps.datasets.models import Commit
from apps.orgs import services as org_services
from apps.orgs.models import Org
from tests.aws_fixtures import AWS_ENV
from tests.conftest import RecordingAdapter
from tests.factories import UserFactory
from tests.flow import deploy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("backend", ["parquet", "postgres"])
def test_s3_round_trip_through_a_worker(
    aws: str, live_server, settings, recorder: RecordingAdapter, backend: str
):
    """Sources and workers write parquet to S3; a postgres dataset is loaded from there."""
    bucket = f"sluice-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=aws).create_bucket(Bucket=bucket)
    settings.SLUICE_STORAGE_ROOT = f"s3://{bucket}/prod"
    settings.SLUICE_API_URL = live_server.url
    org = Org.objects.create(slug="s3org", name="S3")
    user = UserFactory(username="s3-dev")
    org_services.membership_add(org=org, user=user, role="developer", actor=None)
    _, token = org_services.api_token_issue(user=user, org=org, name="t")
    _, key = org_services.worker_key_issue(org=org, name="k")
    deploy(
        org,
        {
            "name": "s3",
            "nodes": [
                {
                    "id": "src",
                    "kind": "source",
                    "output": {
                        "dataset": "lake.src",
                        "backend": backend,
                        "schema": {"id": "int64", "name": "string"},
                    },
                },
                {
                    "id": "copy",
                    "kind": "operator",
                    "runtime": "python",
                    "handler": "demo_ops:sleepy",
                    "inputs": ["src"],
                    "output": {"dataset": "lake.copy", "backend": backend},
                },
            ],
        },
    )
    headers = {"Authorization": f"Bearer {token}"}
    posted = requests.post(
        f"{live_server.url}/v1/events",
        headers=headers,
        timeout=10,
        json={
            "dataset": "lake.src",
            "idempotency_key": "a",
            "payload": {"sleep_s": 0},
            "rows": [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}],
        },
    )
    assert posted.status_code == 202, posted.text
    source = Commit.objects.get(dataset__dataset_id="lake.src")
    assert source.files[0]["path"].startswith(f"s3://{bucket}/prod/s3org/lake/src/g1/_landing/")
    read = requests.get(
        f"{live_server.url}/v1/datasets/lake.src/data", headers=headers, timeout=10
    ).json()
    assert read["results"] == [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}]
    [message] = recorder.take("copy")
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluice_worker",
            "run",
            "--api-url",
            live_server.url,
            "--key",
            key,
            "--message",
            json.dumps(message),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **AWS_ENV, "SLUICE_AWS_ENDPOINT_URL": aws},
    )
    assert json.loads(worker.stdout.strip().splitlines()[-1])["completed"] == 1, worker.stderr
    output = Commit.objects.get(dataset__dataset_id="lake.copy")
    assert output.files[0]["path"].startswith(f"s3://{bucket}/prod/s3org/lake/copy/g1/_staging/")
    copy = requests.get(
        f"{live_server.url}/v1/datasets/lake.copy/data", headers=headers, timeout=10
    ).json()
    assert copy["results"] == [{"attempt": 1}]
