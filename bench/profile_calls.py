"""SQL queries, in-process time and WAL written per call of the hot paths, one call at a time
(no HTTP, no concurrency): where the time of one ingest, one claim tick, one fetch and one
complete goes, and of a fetch and a complete of 100 tasks in their batch forms.

    .venv/bin/python bench/profile_calls.py [--calls N]

It recreates the database sluice_bench_profile (or --database-url) and migrates it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._benchutil import PYTHON, ROOT, percentile
from bench.dispatch import (
    POOL_KEY,
    SECRET_KEY,
    RecordingAdapter,
    deploy,
    event,
    install_recording_send,
    recreate_database,
    setup_org,
    wal_position,
)

console = Console()


class Captured:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        self.queries.append(sql)
        return execute(sql, *args)


@dataclass
class Series:
    """What the calls of one label took: wall and CPU time, queries, WAL."""

    label: str
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    wal: int = 0

    def timed(self, call: Callable[[int], object], i: int) -> None:
        from django.db import connection

        captured = Captured()
        wal_before = wal_position()
        with connection.execute_wrapper(captured):
            start, cpu_start = time.perf_counter(), time.process_time()
            call(i)
            self.times.append(time.perf_counter() - start)
            self.cpu_times.append(time.process_time() - cpu_start)
        self.wal += wal_position() - wal_before
        self.counts.append(len(captured.queries))
        self.kinds.update(q.split()[0].upper() for q in captured.queries)

    def add_row(self, table: Table) -> None:
        calls = len(self.times)
        per_call = {k: v / calls for k, v in self.kinds.most_common()}
        table.add_row(
            self.label,
            f"{sum(self.counts) / calls:.1f}",
            ", ".join(f"{k} {v:.1f}" for k, v in per_call.items()),
            f"{percentile(self.times, 50) * 1000:.2f}",
            f"{percentile(self.times, 99) * 1000:.2f}",
            f"{percentile(self.cpu_times, 50) * 1000:.2f}",
            f"{self.wal / calls:,.0f}",
        )


def measure(label: str, call: Callable[[int], object], calls: int, table: Table) -> None:
    alternated([(label, call)], calls, table)


def alternated(forms: list[tuple[str, Callable[[int], object]]], calls: int, table: Table) -> None:
    """Each form called `calls` times, the forms taking turns (first one, then the other), so
    that what changes along the run (a checkpoint, the tables' growth) falls on all of them."""
    series = [Series(label) for label, _ in forms]
    for i in range(calls):
        turn = list(zip(series, forms, strict=True))
        for one, (_, call) in turn if i % 2 == 0 else reversed(turn):
            one.timed(call, i)
    for one in series:
        one.add_row(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/sluice_bench_profile"
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-profile-"))
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",
        "SECRET_KEY": SECRET_KEY,
        "SLUICE_POOL_KEY": POOL_KEY,
        "SLUICE_API_URL": "http://127.0.0.1:9",
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_STORAGE_ROOT": str(data_dir / "storage"),
        "SLUICE_DISPATCH_TRIGGER": "off",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    recreate_database(args.database_url)
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=os.environ, check=True)
    import django

    django.setup()
    from apps.orgs.authentication import WorkerPrincipal
    from apps.tasks import worker_api
    from apps.tasks.dispatch import claim, dispatch_once
    from apps.tasks.ingest import events_ingest
    from apps.tasks.models import NodeLane
    from apps.tasks.reaper import reap_once

    setup = setup_org()
    version = deploy(setup.org, "chain")
    install_recording_send()
    table = Table(title=f"per call, {args.calls} sequential calls, in-process")
    for column in ("call", "queries", "by kind", "p50 ms", "p99 ms", "CPU ms p50", "WAL bytes"):
        table.add_column(column)

    measure(
        "events_ingest(), 1 event",
        lambda i: events_ingest(setup.org, event("chain", f"s{i}", i)),
        args.calls,
        table,
    )
    measure(
        "events_ingest(), 1,000 events",
        lambda i: events_ingest(
            setup.org,
            {"events": [event("chain", f"b{i}-{j}", j) for j in range(1000)]},
        ),
        10,
        table,
    )
    NodeLane.objects.filter(dag_version_id=version).update(cap=1_000_000_000)
    measure("dispatch_once() (claim ≤ 100 + recording send)", lambda i: dispatch_once(), 20, table)
    RecordingAdapter.sent = 0
    dispatched = [t for c in claim(batch=100) for t in c.tasks]
    dispatched += [t for c in claim(batch=100) for t in c.tasks]
    pool = WorkerPrincipal(org=None, key_id=None)
    leases: list[dict[str, Any]] = []
    measure(
        "task_fetch(), 1 task",
        lambda i: leases.append(
            worker_api.task_fetch(
                pool, str(dispatched[i].task_id), dispatched[i].dispatch_token, "w"
            )
        ),
        min(len(dispatched), args.calls),
        table,
    )

    measure(
        "task_heartbeat(), 1 task",
        lambda i: worker_api.task_heartbeat(pool, leases[i]["lease"]["token"], None),
        len(leases),
        table,
    )

    def complete(i: int) -> None:
        lease = leases[i]
        worker_api.task_complete(
            pool, {"lease_token": lease["lease"]["token"], "outputs": [], "logs": ""}
        )

    measure("task_complete(), 1 task (emits 1 event, fans out)", complete, len(leases), table)
    batches = [[t.as_message() for c in claim(batch=100) for t in c.tasks] for _ in range(10)]
    fetched: list[list[dict[str, Any]]] = []
    measure(
        "task_fetch_many(), 100 tasks",
        lambda i: fetched.append(worker_api.task_fetch_many(pool, batches[i], "w")),
        len(batches),
        table,
    )
    measure(
        "task_complete_many(), 100 tasks (100 events, fanned out)",
        lambda i: worker_api.task_complete_many(
            pool,
            [
                {"lease_token": lease["lease"]["token"], "outputs": [], "logs": ""}
                for lease in fetched[i]
            ],
        ),
        len(fetched),
        table,
    )
    measure("reap_once(), idle", lambda i: reap_once(), 50, table)
    _measure_lean(setup.org, setup.token, pool, table, args.calls)
    console.print(table)


def _wsgi_post(handler: Any, path: str, token: str, value: Any) -> str:
    """POST `value` as JSON through Django's WSGI handler, as gunicorn calls it: the status."""
    body = json.dumps(value).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_ACCEPT": "application/json",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
    }
    status: list[str] = []
    response = handler(environ, lambda line, headers: status.append(line))
    b"".join(response)
    response.close()
    return status[0]


def _measure_lean(org: Any, token: str, pool: Any, table: Table, calls: int) -> None:
    """The lean paths of the single-event POST (ADR 0010, through the WSGI handler and its
    middleware, ADR 0018) and of the single and batch worker calls (ADR 0013): statements of
    their own per call (not counted as queries), under the notify trigger they need."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    from apps.tasks.dispatch import claim
    from apps.tasks.fanout import fan_out_pending_events
    from apps.tasks.ingest import events_ingest
    from apps.tasks.worker_lean import lean_task_complete, lean_task_fetch

    def caller() -> Any:
        return pool

    def body(value: dict[str, Any]) -> bytes:
        return json.dumps(value).encode()

    def completion(lease: dict[str, Any]) -> dict[str, Any]:
        return {"lease_token": lease["lease"]["token"], "outputs": [], "logs": ""}

    with override_settings(SLUICE_DISPATCH_TRIGGER="notify"):
        handler = WSGIHandler()
        for i in range(-20, 0):  # the first calls prepare the statement and learn the range type
            _wsgi_post(handler, "/v1/events", token, event("chain", f"wsgi{i}", i))
        measure(
            "single-event POST through the WSGI handler (lean)",
            lambda i: _wsgi_post(handler, "/v1/events", token, event("chain", f"wsgi{i}", i)),
            calls,
            table,
        )
        for round_ in range(2):
            events = [event("chain", f"lean{round_}-{j}", j) for j in range(1000)]
            events_ingest(org, {"events": events})
        while fan_out_pending_events():
            pass
        messages = [t.as_message() for _ in range(3) for c in claim(batch=100) for t in c.tasks]
        singles = messages[: min(calls, len(messages))]
        leases: list[dict[str, Any]] = []
        measure(
            "lean task-fetch, 1 task",
            lambda i: leases.append(lean_task_fetch(caller, body(singles[i]))),
            len(singles),
            table,
        )
        measure(
            "lean task-complete, 1 task",
            lambda i: lean_task_complete(caller, body(completion(leases[i]))),
            len(leases),
            table,
        )
        batches: list[list[dict[str, Any]]] = []  # one claim's tasks: one message
        while len(batches) < 10 and (claims := claim(batch=100)):
            batches += [[t.as_message() for t in c.tasks] for c in claims]
        batches = batches[:10]
        fetched: list[list[dict[str, Any]]] = []
        measure(
            "lean task-fetch, 100 tasks",
            lambda i: fetched.append(
                lean_task_fetch(caller, body({"tasks": batches[i], "worker_id": "w"}))["leases"]
            ),
            len(batches),
            table,
        )
        measure(
            "lean task-complete, 100 tasks",
            lambda i: lean_task_complete(
                caller, body({"items": [completion(lease) for lease in fetched[i]]})
            ),
            len(fetched),
            table,
        )
        _measure_dispatcher_step(org, table, calls)
    _measure_sends(table, calls)


def _measure_dispatcher_step(org: Any, table: Table, calls: int) -> None:
    """A fan-out's memo check; a dispatcher loop's step over 3 waiting events (deferred
    fan-out, as under the notify trigger) in the one transaction it takes now and in the two
    it used to take, by turns."""
    from django.test import override_settings

    from apps.tasks.dispatch import dispatch_once, fan_out_and_claim, send
    from apps.tasks.fanout import fan_out_pending_events, memoized
    from apps.tasks.ingest import events_ingest

    keys = {f"{i:064x}" for i in range(2)}  # an output event's two consumers
    measure("fan-out's memo check, 2 keys", lambda i: memoized(keys), calls, table)

    for i in range(0, calls * 6, 100):
        events = [event("chain", f"step{j}", j) for j in range(i, min(i + 100, calls * 6))]
        events_ingest(org, {"events": events})
    with override_settings(SLUICE_DISPATCH_PACING=False):  # nothing completes here
        alternated(
            [
                (
                    "dispatcher step, 3 events: fan_out_and_claim() + send",
                    lambda i: send(fan_out_and_claim(events=3)[1]),
                ),
                (
                    "dispatcher step, 3 events: fan-out, then claim + send",
                    lambda i: (fan_out_pending_events(3), dispatch_once()),
                ),
            ],
            calls,
            table,
        )


def _measure_sends(table: Table, calls: int) -> None:
    """A tick's send of three one-task messages to Redis: pushed by the python runtime's
    adapter (ADR 0021), and through Celery's `apply_async` as it used to be, by turns."""
    import redis
    from django.conf import settings

    from apps.tasks.runtimes import (
        CeleryPoolAdapter,
        Dispatched,
        pool_message_args,
        publish_through_celery,
    )

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()
    node = {"id": "op1"}
    ticks = [[[Dispatched(uuid.uuid4(), 1, "t" * 40)] for _ in range(3)] for _ in range(calls)]
    adapter = CeleryPoolAdapter()

    alternated(
        [
            (
                "a tick's send, 3 messages: pushed to Redis",
                lambda i: adapter.send_many([(node, tasks) for tasks in ticks[i]]),
            ),
            (
                "a tick's send, 3 messages: through apply_async",
                lambda i: publish_through_celery([pool_message_args(t) for t in ticks[i]]),
            ),
        ],
        calls,
        table,
    )
    assert broker.llen("celery") == 6 * calls, "every message reached the queue"
    broker.flushdb()


if __name__ == "__main__":
    main()
