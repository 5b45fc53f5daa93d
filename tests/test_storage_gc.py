"""Garbage collection of stale staging and landing files (D7), on a local root and on S3."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from io import StringIO
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from apps.datasets.models import Commit, Dataset
from apps.datasets.storage import filesystem_for, generation_prefix, write_table
from apps.orgs import services as org_services
from apps.tasks import celery_tasks, reaper
from apps.tasks.models import Task
from apps.tasks.storage_gc import collect_garbage
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy, fetch, worker_client

HOUR = 3600


def _post(client: APIClient, key: str, dataset: str = "chain.src") -> None:
    body = {"dataset": dataset, "idempotency_key": key, "range_start": 0, "range_end": 10}
    posted = client.post("/v1/events", {**body, "rows": [{"n": 1}]}, format="json")
    assert posted.status_code == 202, posted.json()


def _write(uri: str, rows: int = 1) -> dict[str, Any]:
    facts = write_table(pa.table({"n": pa.array(range(rows), pa.int64())}), uri)
    return {"path": facts.path, "rows": facts.rows, "bytes": facts.bytes}


def _complete(worker: APIClient, lease: dict[str, Any], file: dict[str, Any]) -> None:
    body = {
        "lease_token": lease["lease"]["token"],
        "outputs": [{"dataset": lease["output"]["dataset"], "files": [file]}],
    }
    answer = worker.post("/internal/task-complete", body, format="json")
    assert answer.status_code == 200, answer.json()


def _exists(uri: str) -> bool:
    filesystem, path = filesystem_for(uri)
    return bool(filesystem.get_file_info(path).is_file)


def _scene(org: Any, client: APIClient, worker: APIClient, recorder: RecordingAdapter) -> dict:
    """src -> op1. Task A's first attempt writes a file and crashes; its retry commits. Task B's
    attempt is still leased, its file written. A client left an orphan landing file."""
    _post(client, "a")
    first = fetch(worker, recorder.take("op1")[0]).json()
    crashed = _write(first["output"]["staging"] + "crashed.parquet")
    Task.objects.filter(pk=first["task"]["id"]).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    reaper.reap_once()  # lease_expired, then released at once (backoff 0)
    retry = fetch(worker, recorder.take("op1")[0]).json()
    assert retry["task"]["attempt"] == 2
    committed = _write(retry["output"]["staging"] + "part-0.parquet", rows=2)
    _complete(worker, retry, committed)
    _post(client, "b")
    leased = fetch(worker, recorder.take("op1")[0]).json()
    running = _write(leased["output"]["staging"] + "part-0.parquet")
    source = Dataset.objects.get(org=org, dataset_id="chain.src")
    orphan = _write(f"{generation_prefix(source, 1)}/_landing/{uuid.uuid4()}.parquet")
    return {
        "crashed": crashed["path"],
        "crashed_dir": first["output"]["staging"],
        "committed": committed["path"],
        "running": running["path"],
        "orphan": orphan["path"],
        "orphan_bytes": orphan["bytes"],
        "crashed_bytes": crashed["bytes"],
        "landed": Commit.objects.get(dataset=source, seq=1).files[0]["path"],
    }


@pytest.fixture
def acme(world: World, recorder: RecordingAdapter) -> tuple[APIClient, APIClient]:
    deploy(world.acme, chain_config(nodes=1))
    _, key = org_services.worker_key_issue(org=world.acme, name="w")
    return world["operator"].client(), worker_client(key)


def _age_everything(root: Path, seconds: float) -> None:
    past = time.time() - seconds
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(Path(folder) / name, (past, past))


@pytest.mark.smoke
def test_stale_files_of_ended_attempts_and_orphans_go_the_rest_stays(
    world: World, acme, recorder: RecordingAdapter, storage_root: Path
):
    client, worker = acme
    files = _scene(world.acme, client, worker, recorder)
    _age_everything(storage_root, 2 * HOUR)
    late = _write(files["crashed_dir"] + "late.parquet")["path"]  # inside the grace period
    source = Dataset.objects.get(org=world.acme, dataset_id="chain.src")
    fresh = _write(f"{generation_prefix(source, 1)}/_landing/fresh.parquet")["path"]

    result = collect_garbage(grace_s=HOUR)

    assert (result.files, result.bytes) == (2, files["crashed_bytes"] + files["orphan_bytes"])
    assert not _exists(files["crashed"]) and not _exists(files["orphan"])
    for kept in (files["committed"], files["landed"], files["running"], late, fresh):
        assert _exists(kept), kept
    assert [r["n"] for r in client.get("/v1/datasets/chain.op1/data").json()["results"]] == [0, 1]

    # Past the grace period the late files go too, and the crashed attempt's folder with them;
    # the leased attempt keeps its file however old it is.
    later = collect_garbage(grace_s=HOUR, now=timezone.now() + dt.timedelta(hours=2))
    assert later.files == 2
    assert not _exists(late) and not _exists(fresh)
    assert not Path(files["crashed_dir"]).exists()
    assert Path(files["crashed_dir"]).parent.exists()  # the task's folder stays
    assert _exists(files["running"]) and _exists(files["committed"])
    assert collect_garbage(grace_s=0).files == 0


@pytest.mark.smoke
def test_an_attempt_that_ended_loses_its_uncommitted_files(
    world: World, acme, recorder: RecordingAdapter
):
    client, worker = acme
    files = _scene(world.acme, client, worker, recorder)
    assert collect_garbage(grace_s=0, now=timezone.now() + dt.timedelta(seconds=5)).files == 2
    Task.objects.filter(state="running").update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    reaper.reap_once()
    assert _exists(files["running"])
    assert collect_garbage(grace_s=0, now=timezone.now() + dt.timedelta(seconds=5)).files == 1
    assert not _exists(files["running"]) and _exists(files["committed"])


@pytest.mark.smoke
def test_org_scope_limit_command_and_beat(world: World, acme, recorder: RecordingAdapter):
    deploy(world.globex, chain_config(name="theirs", nodes=1))
    theirs = Dataset.objects.get(org=world.globex, dataset_id="theirs.src")
    ours = Dataset.objects.get(org=world.acme, dataset_id="chain.src")
    their_orphan = _write(f"{generation_prefix(theirs, 1)}/_landing/x.parquet")["path"]
    our_orphans = [
        _write(f"{generation_prefix(ours, 1)}/_landing/{n}.parquet")["path"] for n in range(3)
    ]
    future = timezone.now() + dt.timedelta(hours=2)
    assert collect_garbage(org=world.acme, now=future, limit=2).files == 2
    assert sum(_exists(p) for p in our_orphans) == 1 and _exists(their_orphan)

    out = StringIO()
    call_command("collect_garbage", "--grace-seconds", "0", "--org", "acme", stdout=out)
    assert out.getvalue().startswith("deleted 1 files, ") and _exists(their_orphan)
    with pytest.raises(CommandError):
        call_command("collect_garbage", "--org", "nope")

    assert django_settings.CELERY_BEAT_SCHEDULE["gc"]["task"] == "apps.tasks.celery_tasks.gc_tick"
    assert django_settings.SLUICE_GC_GRACE_S == 3600
    os.utime(their_orphan, (time.time() - 2 * HOUR,) * 2)
    assert celery_tasks.gc_tick() == 1 and not _exists(their_orphan)


@pytest.mark.smoke
def test_a_nested_dataset_is_not_part_of_its_parent(world: World, recorder: RecordingAdapter):
    """`a.b.c` lives inside `a.b`'s folder; collecting `a.b` reads only its own generations."""
    config = chain_config(name="nest", nodes=1)
    inner_output = {"dataset": "nest.src.g1", "range_type": "int"}
    config["nodes"].append({"id": "inner", "kind": "source", "output": inner_output})
    deploy(world.acme, config)
    inner = Dataset.objects.get(dataset_id="nest.src.g1")
    assert inner.storage_prefix.endswith("nest/src/g1")
    client = world["operator"].client()
    _post(client, "x", dataset="nest.src.g1")
    landed = Commit.objects.get(dataset=inner).files[0]["path"]
    assert "/nest/src/g1/g1/_landing/" in landed
    future = timezone.now() + dt.timedelta(hours=2)
    assert collect_garbage(now=future).files == 0
    assert _exists(landed)


@pytest.mark.slow
def test_collects_on_s3(aws: str, world: World, acme, recorder: RecordingAdapter, settings):
    bucket = f"sluice-gc-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=aws).create_bucket(Bucket=bucket)
    settings.SLUICE_STORAGE_ROOT = f"s3://{bucket}/prod"
    client, worker = acme
    files = _scene(world.acme, client, worker, recorder)
    assert files["crashed"].startswith(f"s3://{bucket}/prod/acme/chain/op1/g1/_staging/")

    assert collect_garbage(grace_s=HOUR).files == 0  # everything is fresh
    result = collect_garbage(grace_s=HOUR, now=timezone.now() + dt.timedelta(hours=2))

    assert (result.files, result.bytes) == (2, files["crashed_bytes"] + files["orphan_bytes"])
    assert not _exists(files["crashed"]) and not _exists(files["orphan"])
    for kept in (files["committed"], files["landed"], files["running"]):
        assert _exists(kept), kept
    keys = [
        o["Key"]
        for o in boto3.client("s3", region_name="us-east-1", endpoint_url=aws).list_objects_v2(
            Bucket=bucket
        )["Contents"]
    ]
    assert not [k for k in keys if k.startswith(files["crashed_dir"][len(f"s3://{bucket}/") :])]
    assert [r["n"] for r in client.get("/v1/datasets/chain.op1/data").json()["results"]] == [0, 1]
