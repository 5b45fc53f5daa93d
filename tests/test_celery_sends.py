"""The python runtime's sends (`CeleryPoolAdapter.send_many`) through a real Redis broker:
a tick's messages go in one pipeline, one message per claim, each the message Celery's own
`apply_async` would have pushed (ADR 0021), and a broker that cannot be reached fails every
send of the tick (their tasks go back to pending). A worker's delivery keeps no bookkeeping in
Redis (ADR 0017)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BROKER = "redis://127.0.0.1:6379/12"

# Three claims of one tick: 1, 2 and 3 tasks of three nodes. Run in a process of its own, so
# that Celery connects to the broker given here (the test settings use the filesystem one).
SENDS = r"""
import json, uuid
import django
django.setup()
from apps.tasks.runtimes import CeleryPoolAdapter, Dispatched
sends = [
    ({"id": f"op{n}"}, [Dispatched(uuid.UUID(int=10 * n + i), 1, f"t{n}{i}") for i in range(n)])
    for n in (1, 2, 3)
]
print(json.dumps(sorted(str(task_id) for task_id in CeleryPoolAdapter().send_many(sends))))
"""

# The same pool message pushed by the adapter and by Celery's `apply_async`, in that order.
BOTH = r"""
import json, uuid
import django
django.setup()
from apps.tasks.runtimes import (
    CeleryPoolAdapter, Dispatched, pool_message_args, publish_through_celery,
)
tasks = [Dispatched(uuid.UUID(int=7), 2, "t7")]
failed = CeleryPoolAdapter().send_many([({"id": "op1"}, tasks)])
publish_through_celery([pool_message_args(tasks)])
print(json.dumps(sorted(map(str, failed))))
"""
# The embedded default's broker (a folder): what the adapter's send leaves there.
ON_DISK = r"""
import json, os, uuid
import django
django.setup()
from django.conf import settings
from apps.tasks.celery_publish import redis_publisher
from apps.tasks.celery_tasks import run_pool_message
from apps.tasks.runtimes import CeleryPoolAdapter, Dispatched
tasks = [Dispatched(uuid.UUID(int=9), 1, "t9")]
failed = CeleryPoolAdapter().send_many([({"id": "op1"}, tasks)])
folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_out"]
print(json.dumps({
    "failed": sorted(map(str, failed)),
    "pushed_directly": redis_publisher(run_pool_message.app, run_pool_message.name) is not None,
    "files": [open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))],
}))
"""

# A worker's consumer takes one message off a queue, unacknowledged, as Celery's does, then
# reports what the broker holds meanwhile.
DELIVERY = r"""
import json
import django
django.setup()
import redis
from config.celery import app
with app.connection_for_read() as connection:
    queue = connection.SimpleQueue("probe")
    queue.put({"n": 1})
    message = queue.get(timeout=5)
    keys = sorted(k.decode() for k in redis.Redis.from_url(app.conf.broker_url).keys("*"))
    print(json.dumps({"body": message.payload, "keys": keys}))
    message.ack()
"""


def run_with_broker(script: str, broker: str, tmp_path: Path) -> Any:
    """Run `script` in a process whose Celery uses `broker`; the JSON of its last line."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "DJANGO_"))},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CELERY_BROKER_URL": broker,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_API_URL": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def send_a_tick(broker: str, tmp_path: Path) -> list[str]:
    """The ids whose send failed."""
    return list(run_with_broker(SENDS, broker, tmp_path))


def queued_messages(client: redis.Redis) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(headers, the pool message) of each message in Celery's default queue."""
    found = []
    for raw in client.lrange("celery", 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        found.append((envelope["headers"], args[0]))
    return found


def test_a_ticks_sends_reach_redis_as_one_message_per_claim(tmp_path):
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    try:
        assert send_a_tick(BROKER, tmp_path) == []
        messages = queued_messages(client)
    finally:
        client.flushdb()
    assert len(messages) == 3
    by_size = sorted(messages, key=lambda m: len(m[1]["tasks"]))
    for n, (headers, message) in enumerate(by_size, start=1):
        assert headers["task"] == "apps.tasks.celery_tasks.run_pool_message"
        assert headers["argsrepr"] == f"[{n} task(s)]"
        assert message["api_url"] == "http://127.0.0.1:9"
        assert message["tasks"] == [
            {
                "task_id": f"00000000-0000-0000-0000-{10 * n + i:012x}",
                "attempt": 1,
                "dispatch_token": f"t{n}{i}",
            }
            for i in range(n)
        ]


def test_the_adapters_message_is_the_one_celery_would_push(tmp_path):
    """Celery's worker reads what `apply_async` pushes; the adapter pushes it itself, so the
    two must agree on everything but the message's own ids (an upgrade of Celery or kombu
    that changes the format fails here)."""
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    try:
        assert run_with_broker(BOTH, BROKER, tmp_path) == []
        # LPUSH puts the newest first: Celery's, then the adapter's.
        celerys, adapters = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
    finally:
        client.flushdb()
    for envelope in (celerys, adapters):
        message_id = envelope["headers"].pop("id")
        assert envelope["headers"].pop("root_id") == message_id
        assert envelope["properties"].pop("correlation_id") == message_id
        envelope["properties"].pop("delivery_tag")
        envelope["headers"].pop("origin")  # the sending process's name
    # Celery also copies the reprs into the properties and names its app for replies, which a
    # task that ignores its result never gets.
    assert celerys["properties"].pop("argsrepr") == "[1 task(s)]"
    assert celerys["properties"].pop("kwargsrepr") == "{}"
    assert celerys["properties"].pop("reply_to")
    assert adapters["properties"].pop("reply_to") == ""
    assert adapters == celerys


def test_another_broker_gets_the_message_through_apply_async(tmp_path):
    """Only Redis is pushed to directly; the embedded default's folder broker gets Celery's."""
    sent = run_with_broker(ON_DISK, "filesystem://", tmp_path)
    assert sent["failed"] == []
    assert sent["pushed_directly"] is False
    (envelope,) = [json.loads(text) for text in sent["files"]]
    assert envelope["headers"]["task"] == "apps.tasks.celery_tasks.run_pool_message"
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    assert args[0]["tasks"] == [
        {"task_id": "00000000-0000-0000-0000-000000000009", "attempt": 1, "dispatch_token": "t9"}
    ]


def test_an_unreachable_broker_fails_every_send_of_the_tick(tmp_path):
    failed = send_a_tick("redis://127.0.0.1:1/0", tmp_path)
    assert failed == sorted(
        f"00000000-0000-0000-0000-{10 * n + i:012x}" for n in (1, 2, 3) for i in range(n)
    )


def test_a_delivered_message_leaves_no_unacked_copy_in_redis(tmp_path):
    """No ack emulation: a message a worker holds is in its memory only. One lost with its
    worker leaves its task queued, which the reaper's queued_timeout sends again (D11)."""
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    try:
        delivered = run_with_broker(DELIVERY, BROKER, tmp_path)
    finally:
        client.flushdb()
    assert delivered["body"] == {"n": 1}
    assert not [key for key in delivered["keys"] if key.startswith("unacked")]
