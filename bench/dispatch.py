"""Sluice dispatch benchmark: ingest, fan-out, claims, end-to-end, latency, reaper, scale.

    .venv/bin/python bench/dispatch.py [--events N] [--workers W] [--scale]

It recreates the database named in --database-url (default sluice_bench), migrates it, sets
up an org, an operator and an API token, deploys chains of no-op python operators
(`demo_ops:noop`), starts the real processes (gunicorn, `manage.py dispatch --loop`,
`manage.py reap --loop`, W single-slot Celery workers over Redis db 14), and prints each
figure with its unit. Every child process is bounded by `timeout` and stopped before the
script ends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._benchutil import (
    PYTHON,
    ROOT,
    JsonClient,
    Processes,
    celery_worker_command,
    cpu_by_group,
    free_port,
    gunicorn_command,
    percentile,
    recreate_database,
    wait_http,
)

console = Console()
BROKER = "redis://127.0.0.1:6379/14"
SECRET_KEY = "bench-secret-key-not-for-production-0123456789abcdefghijklmnop"
POOL_KEY = "bench-pool-key-0123456789"
CAPS = {"live": 1000, "backfill": 100}


@dataclass
class Results:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, target: str = "") -> None:
        shown = (
            f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
        )
        self.rows.append((name, shown, unit, target))
        console.print(
            f"[bold]{name}[/]: {shown} {unit}" + (f"  (target {target})" if target else "")
        )

    def table(self) -> Table:
        table = Table(title="Sluice dispatch benchmark")
        for column in ("measure", "value", "unit", "target"):
            table.add_column(column)
        for row in self.rows:
            table.add_row(*row)
        return table


RESULTS = Results()
DEATHS: list[str] = []


# --- setup ----------------------------------------------------------------------------------


def chain_config(name: str, nodes: int = 3) -> dict[str, Any]:
    """A source and a chain of no-op python operators: src -> op1 -> op2 -> …"""
    config: dict[str, Any] = {
        "name": name,
        "nodes": [
            {
                "id": "src",
                "kind": "source",
                "output": {"dataset": f"{name}.src", "range_type": "int"},
            }
        ],
    }
    upstream = "src"
    for i in range(1, nodes + 1):
        config["nodes"].append(
            {
                "id": f"op{i}",
                "kind": "operator",
                "runtime": "python",
                "handler": "demo_ops:noop",
                "inputs": [upstream],
                "output": {"dataset": f"{name}.op{i}"},
                "retry": {"max_attempts": 3, "backoff_s": 0, "max_backoff_s": 0},
                "concurrency": CAPS,
            }
        )
        upstream = f"op{i}"
    return config


@dataclass
class Setup:
    org: Any
    token: str


def setup_org() -> Setup:
    from apps.orgs import services
    from apps.orgs.models import User

    org = services.org_create(slug="bench", name="Bench")
    user = User.objects.create_user(username="bench-operator", password=None)
    services.membership_add(org=org, user=user, role="operator", actor=None)
    _, token = services.api_token_issue(user=user, org=org, name="bench")
    return Setup(org, token)


def deploy(org: Any, name: str, nodes: int = 3) -> int:
    from apps.dags.models import DagVersion
    from apps.dags.services import dag_deploy

    dag_deploy(org=org, config=chain_config(name, nodes), actor=None)
    return int(DagVersion.objects.get(dag__org=org, dag__name=name, state="active").pk)


def event(dag: str, key: str, i: int) -> dict[str, Any]:
    return {"dataset": f"{dag}.src", "idempotency_key": key, "range_start": i, "range_end": i + 1}


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


# --- the platform's processes ---------------------------------------------------------------


@dataclass
class Platform:
    port: int
    env: dict[str, str]
    log_dir: Path
    max_seconds: int
    celery_pool: str = "solo"
    web_threads: int = 4

    @contextmanager
    def running(
        self,
        *,
        web_workers: int,
        dispatchers: int,
        celery_concurrency: int,
        trigger: str,
        message_size: int | None = None,
    ) -> Iterator[Processes]:
        """Start web, dispatcher(s), a reaper and a Celery worker; stop them all on exit."""
        import redis

        redis.Redis.from_url(BROKER).flushdb()
        # Every process shares the trigger: with "notify" the dispatcher loops also pace.
        env = {**self.env, "SLUICE_DISPATCH_TRIGGER": trigger}
        procs = Processes(env, self.log_dir, self.max_seconds)
        try:
            procs.start(
                "web",
                gunicorn_command(
                    "config.wsgi:application", self.port, web_workers, self.web_threads
                ),
            )
            for i in range(dispatchers):
                if message_size is None:
                    cmd = [PYTHON, "manage.py", "dispatch", "--loop", "--idle-sleep", "0.05"]
                else:
                    cmd = [
                        PYTHON,
                        "bench/_dispatch_loop.py",
                        "--message-size",
                        str(message_size),
                        "--seconds",
                        str(self.max_seconds),
                    ]
                procs.start(f"dispatch{i}", cmd)
            procs.start("reap", [PYTHON, "manage.py", "reap", "--loop", "--idle-sleep", "1.0"])
            # solo: `celery_concurrency` single-slot workers, each running its messages itself
            # (ADR 0022); prefork or threads: one worker with that many pool slots.
            solo = self.celery_pool == "solo"
            for i in range(celery_concurrency if solo else min(celery_concurrency, 1)):
                procs.start(
                    f"celery{i}",
                    celery_worker_command(
                        "config",
                        f"bench{i}",
                        pool=self.celery_pool,
                        slots=1 if solo else celery_concurrency,
                    ),
                )
            wait_http(self.port)
            yield procs
        finally:
            procs.stop_all()


# --- ingest ---------------------------------------------------------------------------------


def post_concurrently(
    port: int, token: str, bodies: list[Any], clients: int, label: str
) -> tuple[float, list[float], list[Any]]:
    """POST every body to /v1/events from `clients` threads; (seconds, latencies, answers)."""
    counter = itertools.count()
    latencies: list[float] = [0.0] * len(bodies)
    answers: list[Any] = [None] * len(bodies)
    errors: list[str] = []

    def work() -> None:
        client = JsonClient(port, token)
        try:
            while True:
                i = next(counter)
                if i >= len(bodies):
                    return
                start = time.perf_counter()
                status, answer = client.post("/v1/events", bodies[i])
                latencies[i] = time.perf_counter() - start
                if status != 202:
                    errors.append(f"{status} {answer}")
                answers[i] = answer
                bar.advance(task)
        finally:
            client.close()

    with progress() as bar:
        task = bar.add_task(label, total=len(bodies))
        threads = [threading.Thread(target=work) for _ in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} POSTs failed, first: {errors[0]}")
    return elapsed, latencies, answers


def bench_ingest(args: argparse.Namespace, port: int, token: str) -> None:
    warm = [event("chain", f"w{i}", i) for i in range(200)]
    post_concurrently(port, token, warm, args.clients, "warm-up")
    singles = [event("chain", f"s{i}", i) for i in range(args.single_events)]
    elapsed, latencies, _ = post_concurrently(
        port, token, singles, args.clients, f"single-event POSTs, {args.clients} clients"
    )
    RESULTS.add(
        f"ingest: single-event POSTs, {args.clients} clients",
        len(singles) / elapsed,
        "events/s",
        "≥ 1,000",
    )
    RESULTS.add("ingest: single-event POST latency p50", percentile(latencies, 50) * 1000, "ms")
    RESULTS.add(
        "ingest: single-event POST latency p99", percentile(latencies, 99) * 1000, "ms", "≤ 50"
    )
    size = 1000
    batches = [
        {
            "events": [
                event("chain", f"b{i}", i) for i in range(start, min(start + size, args.events))
            ]
        }
        for start in range(0, args.events, size)
    ]
    elapsed, latencies, _ = post_concurrently(
        port, token, batches, args.batch_clients, f"batched POSTs of {size}"
    )
    RESULTS.add(
        f"ingest: batched POSTs of {size}, {args.batch_clients} clients",
        args.events / elapsed,
        "events/s",
        "≥ 10,000",
    )
    RESULTS.add("ingest: batched POST latency p50", percentile(latencies, 50) * 1000, "ms")


def bench_fanout_waiting() -> None:
    """With the notify trigger ingestion leaves fan-out to the dispatcher loops: time their
    `fan_out_pending_events()` (≤ 1,000 events a transaction) over what the ingest runs left."""
    from apps.tasks.fanout import fan_out_pending_events

    events = 0
    start = time.perf_counter()
    while fanned := fan_out_pending_events():
        events += fanned
    elapsed = time.perf_counter() - start
    RESULTS.add(
        f"fan-out: fan_out_pending_events() in-process, {events:,} events waiting "
        "(1 task per event)",
        events / elapsed,
        "tasks/s",
        "≥ 10,000",
    )


def bench_fanout_inprocess(setup: Setup, events: int) -> None:
    """events_ingest() called in-process (no HTTP): validation, insert, fan-out, one tx."""
    from apps.tasks.ingest import events_ingest

    size = 1000
    start = time.perf_counter()
    for offset in range(0, events, size):
        body = {"events": [event("chain", f"f{i}", i) for i in range(offset, offset + size)]}
        events_ingest(setup.org, body)
    elapsed = time.perf_counter() - start
    RESULTS.add(
        "fan-out: events_ingest() in-process, batches of 1,000 (1 task per event)",
        events / elapsed,
        "tasks/s",
        "≥ 10,000",
    )


# --- claims (in-process, recording send) ----------------------------------------------------


class RecordingAdapter:
    sent = 0

    def send(self, node: dict[str, Any], tasks: list[Any]) -> set[Any]:
        RecordingAdapter.sent += len(tasks)
        return set()


def install_recording_send() -> None:
    from apps.tasks.runtimes import runtimes

    runtimes.register("python", RecordingAdapter)


def uncap(version_id: int) -> None:
    from apps.tasks.models import NodeLane

    NodeLane.objects.filter(dag_version_id=version_id).update(cap=1_000_000_000)


@dataclass
class ClaimTiming:
    sent: int
    rate: float  # tasks/s over the whole run of ticks
    median_tick_rate: float  # tasks/s of the median tick: what a stall of the machine leaves


def time_claims(target: int, label: str) -> ClaimTiming:
    """dispatch_once() (claim, commit, recording send) until `target` tasks went."""
    from apps.tasks.dispatch import dispatch_once

    sent = 0
    ticks: list[tuple[int, float]] = []
    start = time.perf_counter()
    while sent < target:
        tick_began = time.perf_counter()
        went = dispatch_once()
        ticks.append((went, time.perf_counter() - tick_began))
        if not went:
            break
        sent += went
    elapsed = time.perf_counter() - start
    rates = sorted(went / seconds for went, seconds in ticks if went)
    median = rates[len(rates) // 2] if rates else 0.0
    console.print(
        f"  {label}: {sent:,} tasks in {len(ticks)} ticks, {elapsed:.2f} s "
        f"(median tick {median:,.0f} tasks/s)"
    )
    return ClaimTiming(sent, sent / elapsed if elapsed else 0.0, median)


def finish_all(version_ids: list[int]) -> None:
    """Mark every open task of these versions succeeded and zero their counters (SQL)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tasks SET state = 'succeeded', finished_at = now(), lease_token = NULL, "
            "lease_expires_at = NULL, deadline_at = NULL, next_attempt_at = NULL "
            "WHERE dag_version_id = ANY(%s) AND state <> 'succeeded'",
            [version_ids],
        )
        cursor.execute(
            "UPDATE node_lanes SET pending = 0, in_flight = 0 WHERE dag_version_id = ANY(%s)",
            [version_ids],
        )


def expire_leases(version_id: int, count: int) -> int:
    """Turn `count` queued tasks into running ones with an attempt whose lease expired."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "WITH picked AS (SELECT id FROM tasks WHERE dag_version_id = %s AND state = 'queued' "
            "LIMIT %s) UPDATE tasks SET state = 'running', attempt = attempt + 1, "
            "lease_token = md5(id::text), lease_expires_at = now() - interval '1 minute', "
            "deadline_at = now() + interval '1 hour', started_at = now() "
            "WHERE id IN (SELECT id FROM picked)",
            [version_id, count],
        )
        moved = cursor.rowcount
        cursor.execute(
            "INSERT INTO task_attempts (task_id, number, worker_id, lease_token, started_at, "
            "outcome, logs, metrics, progress) SELECT id, attempt, 'bench', lease_token, now(), "
            "'', '', '{}', '{}' FROM tasks WHERE dag_version_id = %s AND state = 'running'",
            [version_id],
        )
    return int(moved)


def wal_position() -> int:
    """Bytes of WAL PostgreSQL has written so far (its insert position)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')")
        return int(cursor.fetchone()[0])


def time_calls(call: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def bench_claims_and_reaper(chain_version: int) -> None:
    from apps.tasks import reaper
    from apps.tasks.models import Task

    pending = Task.objects.filter(dag_version_id=chain_version, state="pending").count()
    console.print(f"claims over a backlog of {pending:,} pending tasks (cap lifted)")
    uncap(chain_version)
    timing = time_claims(min(pending, 20_000), "claim+recording send")
    rate, sent = timing.rate, timing.sent
    RESULTS.add(
        f"claims: dispatch_once() in-process, {pending:,} pending, batch 100",
        rate,
        "tasks/s",
        "≥ 10,000",
    )
    if sent >= 10_000:
        moved = expire_leases(chain_version, 10_000)
        wal_before = wal_position()
        start = time.perf_counter()
        reaped = reaper.reap_expired_leases()
        elapsed = time.perf_counter() - start
        wal_bytes = wal_position() - wal_before
        console.print(f"  reaper: {moved:,} expired leases set up, {reaped:,} requeued")
        RESULTS.add(
            f"reaper: reap_expired_leases() of {reaped:,} expired leases",
            elapsed * 1000,
            "ms",
            "≤ 200 (10,000)",
        )
        # Not a target: the database's own work, which the machine's speed does not change.
        RESULTS.add(
            "reaper: WAL written per expired lease", wal_bytes / max(reaped, 1), "bytes", ""
        )
    finish_all([chain_version])
    rows = Task.objects.count()
    ticks = time_calls(reaper.reap_once, 20)
    RESULTS.add(
        f"reaper: idle reap_once() p50, {rows:,} task rows",
        percentile(ticks, 50) * 1000,
        "ms",
        "≤ 5 (1M rows)",
    )


# --- end to end -----------------------------------------------------------------------------


def succeeded(version_id: int) -> int:
    from apps.tasks.models import Task

    return Task.objects.filter(dag_version_id=version_id, state="succeeded").count()


def drained(version_id: int) -> bool:
    """Nothing left to run: no pending or in-flight task of the version and no event waiting
    for its fan-out (counters and events move in the same transactions: one snapshot)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COALESCE(SUM(pending + in_flight), 0) FROM node_lanes "
            "WHERE dag_version_id = %s) = 0 "
            "AND NOT EXISTS (SELECT 1 FROM events WHERE fanned_out_at IS NULL)",
            [version_id],
        )
        return bool(cursor.fetchone()[0])


def last_finish(version_id: int) -> float:
    """When the version's last task finished (epoch seconds), from the tasks' own rows."""
    from django.db.models import Max

    from apps.tasks.models import Task

    latest = Task.objects.filter(dag_version_id=version_id).aggregate(Max("finished_at"))
    return float(latest["finished_at__max"].timestamp())


def wait_for(
    version_id: int, target: int, timeout_s: float, procs: Processes, label: str
) -> float | None:
    """Wait until `target` tasks of the version succeeded; when the last one finished (epoch
    seconds, from the rows: the polling interval does not enter the figure), or None. Polls
    a cheap drained check; counts the succeeded tasks when drained, and for the progress bar
    only every five seconds (the count scans the version's tasks: ~110 ms a count of 120,000,
    a tenth of a core when it ran every second)."""
    deadline = time.monotonic() + timeout_s
    next_count = 0.0
    with progress() as bar:
        task = bar.add_task(label, total=target)
        while time.monotonic() < deadline:
            is_drained = drained(version_id)
            if is_drained or time.monotonic() >= next_count:
                done = succeeded(version_id)
                bar.update(task, completed=done)
                if done >= target:
                    return last_finish(version_id)
                next_count = time.monotonic() + 5.0
                for death in procs.check_alive():
                    console.print(f"[red]{death}[/]")
                    DEATHS.append(death)
            time.sleep(0.05 if not is_drained else 0.2)
    console.print(f"[red]{label}: timed out with {succeeded(version_id):,}/{target:,}[/]")
    return None


def warm_up(port: int, token: str, version_id: int, dag: str, procs: Processes) -> None:
    client = JsonClient(port, token)
    client.post("/v1/events", event(dag, "warm", 0))
    client.close()
    if wait_for(version_id, 3, 120, procs, f"{dag}: warm-up") is None:
        raise RuntimeError("the pipeline did not run the warm-up event; see the logs")


PLATFORM_GROUPS = ("web", "celery", "dispatcher", "reaper", "postgres", "redis")


def platform_group(cmdline: str) -> str | None:
    """Which of the platform's processes a command line is (this script's own is none)."""
    if "gunicorn" in cmdline:
        return "web"
    if "celery" in cmdline and "-A config" in cmdline:
        return "celery"
    if "manage.py dispatch" in cmdline or "_dispatch_loop.py" in cmdline:
        return "dispatcher"
    if "manage.py reap" in cmdline:
        return "reaper"
    if cmdline.startswith("postgres"):
        return "postgres"
    if cmdline.startswith("redis-server"):
        return "redis"
    return None


def bench_end_to_end(
    port: int, token: str, version_id: int, dag: str, events: int, procs: Processes, label: str
) -> None:
    warm_up(port, token, version_id, dag, procs)
    client = JsonClient(port, token)
    wal_before = wal_position()
    cpu_before = cpu_by_group(platform_group)
    start = time.time()
    for offset in range(0, events, 1000):
        body = {
            "events": [event(dag, f"e{i}", i) for i in range(offset, min(offset + 1000, events))]
        }
        status, answer = client.post("/v1/events", body)
        if status != 202:
            raise RuntimeError(f"ingest failed: {status} {answer}")
    client.close()
    target = 3 + 3 * events
    end = wait_for(version_id, target, 900, procs, f"{label}: {events:,} events x 3 nodes")
    if end is None:
        done = succeeded(version_id) - 3
        RESULTS.add(
            f"end to end, {label} (TIMED OUT, partial)",
            done / (time.time() - start),
            "tasks/s",
        )
        return
    cpu_after = cpu_by_group(platform_group)
    RESULTS.add(f"end to end, {label}", 3 * events / (end - start), "tasks/s")
    RESULTS.add(
        f"end to end, {label}: WAL written per task",
        (wal_position() - wal_before) / (3 * events),
        "bytes",
    )
    # From /proc, over the phase (its idle tail of at most a poll included): where the CPU
    # of a task goes, by process.
    for group in PLATFORM_GROUPS:
        used = cpu_after.get(group, 0.0) - cpu_before.get(group, 0.0)
        RESULTS.add(f"end to end, {label}: CPU per task, {group}", used / (3 * events) * 1000, "ms")


def bench_latency(
    port: int, token: str, version_id: int, dag: str, rate: float, seconds: float, procs: Processes
) -> None:
    """Post single events paced at `rate`/s for `seconds` (8 threads; a thread that falls behind
    posts at once), then read op1's started_at for each accepted event."""
    from apps.tasks.models import Event, Task

    warm_up(port, token, version_id, dag, procs)
    counter = itertools.count()
    accepted: dict[str, float] = {}
    refused: list[int] = []
    start = time.time() + 0.2
    stop_at = start + seconds

    def work() -> None:
        client = JsonClient(port, token)
        while (i := next(counter)) < rate * seconds and time.time() < stop_at:
            time.sleep(max(0.0, start + i / rate - time.time()))
            status, answer = client.post("/v1/events", event(dag, f"l{i}", i))
            if status == 202:
                accepted[answer["events"][0]["id"]] = time.time()
            else:
                refused.append(status)
        client.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(8)]
    with console.status(f"posting events at {rate:g}/s for {seconds:g} s"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    posted_s = time.time() - start
    RESULTS.add(
        f"latency run: events accepted (aimed at {rate:g}/s)", len(accepted) / posted_s, "events/s"
    )
    RESULTS.add("latency run: POSTs answered other than 202", len(refused), "requests", "0")
    ops = Task.objects.filter(dag_version_id=version_id, node_id="op1", event_id__in=list(accepted))
    started = ops.filter(started_at__isnull=False)
    deadline = time.monotonic() + 90
    # Count started tasks, not unstarted ones: with the notify trigger an event's task is
    # created by the dispatcher a few milliseconds after the 202, so it may not exist yet.
    with console.status("waiting for the op1 tasks of those events to start"):
        while time.monotonic() < deadline and started.count() < len(accepted):
            time.sleep(0.5)
    tasks = started.values_list("event_id", "started_at")
    created = dict(Event.objects.filter(pk__in=list(accepted)).values_list("id", "created_at"))
    from_202 = []
    from_created = []
    for event_id, started_at in tasks:
        from_202.append(started_at.timestamp() - accepted[str(event_id)])
        from_created.append((started_at - created[event_id]).total_seconds())
    unstarted = len(accepted) - len(from_202)
    if unstarted:
        RESULTS.add("latency run: op1 tasks not started 90 s after the run", unstarted, "tasks")
    label = f"{rate:g} events/s for {seconds:g} s"
    for pct, target in ((50, "≤ 15"), (99, "≤ 50")):
        RESULTS.add(
            f"latency 202 → started_at p{pct} ({label})",
            percentile(from_202, pct) * 1000,
            "ms",
            target,
        )
    for pct in (50, 99):
        RESULTS.add(
            f"latency event.created_at → started_at p{pct}",
            percentile(from_created, pct) * 1000,
            "ms",
        )


# --- scale ----------------------------------------------------------------------------------


# The product's ids (ADR 0025: UUID version 7) written in SQL, which PostgreSQL 15 lacks: the
# milliseconds of `at`, the version, then a random UUID's bits (its variant included). Ids
# of one millisecond sort at random among themselves, as ids of two processes do.
_TIME_ORDERED_ID = (
    "(lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0') || '7' || "
    "substr(replace(gen_random_uuid()::text, '-', ''), 14, 19))::uuid"
)
_TASK_CREATED = "now() + ev.range_start::bigint * interval '1 microsecond'"


# Events and one op1 task each, `%(lo)s` to `%(hi)s`, in one statement.
_BULK_TASKS = (
    "WITH ev AS (INSERT INTO events (id, org_id, dataset_id, kind, mode, idempotency_key, "
    "range_start, range_end, event_time, payload, created_at, fanned_out_at, depth) "
    f"SELECT {_TIME_ORDERED_ID.format(at='now()')}, %(org)s, %(ds)s, 'data', 'live', '', "
    "g::text, (g + 1)::text, now(), '{}', now(), now(), 0 "
    "FROM generate_series(%(lo)s, %(hi)s) g RETURNING id, range_start) "
    "INSERT INTO tasks (id, org_id, dag_version_id, node_id, event_id, state, lane, mode, "
    "attempt, attempts_base, max_attempts, dispatch_count, created_at, finished_at, memo_key) "
    f"SELECT {_TIME_ORDERED_ID.format(at=_TASK_CREATED)}, %(org)s, %(ver)s, 'op1', ev.id, "
    f"%(state)s, 'live', 'live', 0, 0, 3, 0, {_TASK_CREATED}, "
    "CASE WHEN %(state)s = 'succeeded' THEN now() END, '' FROM ev"
)


def bulk_tasks(org_id: int, version_id: int, dag: str, count: int, state: str, first: int) -> None:
    """Insert `count` events and one op1 task each, in chunks, straight in SQL."""
    from django.db import connection

    chunk = 100_000
    with progress() as bar:
        task = bar.add_task(f"inserting {count:,} {state} tasks", total=count)
        for offset in range(0, count, chunk):
            n = min(chunk, count - offset)
            lo = first + offset
            with connection.cursor() as cursor:
                cursor.execute(
                    _BULK_TASKS,
                    {
                        "org": org_id,
                        "ds": f"{dag}.src",
                        "lo": lo,
                        "hi": lo + n - 1,
                        "ver": version_id,
                        "state": state,
                    },
                )
            bar.advance(task, n)
        with connection.cursor() as cursor:
            if state == "pending":
                cursor.execute(
                    "UPDATE node_lanes SET pending = pending + %s "
                    "WHERE dag_version_id = %s AND node_id = 'op1' AND lane = 'live'",
                    [count, version_id],
                )
            cursor.execute("ANALYZE tasks")
            cursor.execute("ANALYZE events")


def bench_scale(setup: Setup, sample: int, big: int) -> None:
    from django.db import connection

    from apps.tasks import reaper
    from apps.tasks.ingest import events_ingest
    from apps.tasks.models import Task

    began = time.monotonic()
    version = deploy(setup.org, "scale", nodes=1)
    events_ingest(setup.org, event("scale", "lane", -1))  # creates the op1/live counter row
    finish_all([version])
    uncap(version)

    def vacuum(*tables: str) -> float:
        """VACUUM (ANALYZE) the tables; seconds taken."""
        began = time.perf_counter()
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f"VACUUM (ANALYZE) {table}")
        return time.perf_counter() - began

    def settle() -> None:
        """A backlog built in one statement is vacuumed and checkpointed before its claims are
        timed, as autovacuum and the checkpointer leave a backlog that built up over minutes:
        timed at once, the 50 ticks (~0.2 s) ran beside autovacuum starting on the million
        rows just inserted (−6% and −25% in two runs), or beside the checkpoint their WAL
        set off (−27% in a full run)."""
        vacuum("tasks", "events")
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")

    small = 10_000
    bulk_tasks(setup.org.pk, version, "scale", small, "pending", 0)
    settle()
    time_claims(1_000, "warm-up")  # the process's first claims compile and cache their SQL
    rate_small = time_claims(sample, f"{small:,} pending").median_tick_rate
    finish_all([version])
    bulk_tasks(setup.org.pk, version, "scale", big, "pending", small)
    settle()
    time_claims(1_000, "warm-up")
    rate_big = time_claims(sample, f"{big:,} pending").median_tick_rate
    # A lane that drains its backlog: the claimed tasks' entries stay in the claim index
    # until a vacuum (autovacuum waits for a fifth of the table to change).
    drain = big * 3 // 10
    time_claims(drain, f"draining {drain:,} more")
    rate_drained = time_claims(
        sample, f"{big - drain - sample - 1_000:,} pending after {drain:,} claimed"
    ).median_tick_rate
    finish_all([version])  # now ≥ 1M finished rows, timed at once and after a vacuum
    bulk_tasks(setup.org.pk, version, "scale", small, "pending", small + big)
    finished = Task.objects.filter(dag_version_id=version, state="succeeded").count()
    rate_finished = time_claims(
        sample, f"{small:,} pending beside {finished:,} finished"
    ).median_tick_rate
    vacuum_s = vacuum("tasks")
    rate_vacuumed = time_claims(
        sample, f"the same after VACUUM ({vacuum_s:.1f} s)"
    ).median_tick_rate
    finish_all([version])
    RESULTS.add(f"scale: claims at the median tick, {small:,} pending", rate_small, "tasks/s")
    RESULTS.add(
        f"scale: claims at the median tick, {big:,} pending", rate_big, "tasks/s", "within ±20%"
    )
    RESULTS.add(
        f"scale: claims at the median tick, after {drain:,} of the {big:,} were claimed "
        "(before a vacuum)",
        rate_drained,
        "tasks/s",
        "within ±20%",
    )
    RESULTS.add(
        f"scale: claims at the median tick, {small:,} pending + {finished:,} finished",
        rate_finished,
        "tasks/s",
        "within ±20%",
    )
    RESULTS.add(
        f"scale: claims at the median tick, {small - sample:,} pending + {finished:,} finished, "
        "after VACUUM",
        rate_vacuumed,
        "tasks/s",
        "within ±20%",
    )
    rows = Task.objects.count()
    ticks = time_calls(reaper.reap_once, 20)
    RESULTS.add(
        f"scale: idle reap_once() p50, {rows:,} task rows",
        percentile(ticks, 50) * 1000,
        "ms",
        "≤ 5",
    )
    RESULTS.add(f"scale: idle reap_once() max, {rows:,} task rows", max(ticks) * 1000, "ms")
    console.print(f"  scale phase took {time.monotonic() - began:.0f} s")


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="batched ingest events")
    parser.add_argument("--single-events", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-clients", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4, help="Celery slots")
    parser.add_argument(
        "--celery-pool",
        choices=["solo", "prefork", "threads"],
        default="solo",
        help="solo: --workers single-slot Celery workers (ADR 0022); prefork or threads: one "
        "worker with --workers pool slots",
    )
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=4, help="threads per web worker")
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument(
        "--trigger",
        default="notify",
        choices=["notify", "inline", "off"],
        help="SLUICE_DISPATCH_TRIGGER of the end-to-end and latency runs",
    )
    parser.add_argument("--e2e-events", type=int, default=2_000, help="batched e2e events")
    parser.add_argument("--e2e-single-events", type=int, default=500)
    parser.add_argument("--latency-rate", type=float, default=100.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--scale", action="store_true", help="also the 1M-row claim/reaper runs")
    parser.add_argument("--scale-rows", type=int, default=1_000_000)
    parser.add_argument("--skip", default="", help="comma list: ingest,claims,e2e,latency,single")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/sluice_bench")
    parser.add_argument("--max-process-seconds", type=int, default=1500)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    data_dir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "DJANGO_"))},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": BROKER,
        "SECRET_KEY": SECRET_KEY,
        "SLUICE_POOL_KEY": POOL_KEY,
        "SLUICE_API_URL": f"http://127.0.0.1:{port}",
        "SLUICE_DATA_DIR": str(data_dir),
        "SLUICE_STORAGE_ROOT": str(data_dir / "storage"),
        "SLUICE_DISPATCH_TRIGGER": "off",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    console.print(f"data dir and logs: {data_dir}; web on 127.0.0.1:{port}")
    with console.status("recreating and migrating the database"):
        recreate_database(args.database_url)
        import subprocess

        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    setup = setup_org()
    chain = deploy(setup.org, "chain")
    platform = Platform(
        port, env, data_dir / "logs", args.max_process_seconds, args.celery_pool, args.web_threads
    )

    if "ingest" not in skip:
        console.rule(f"ingest over HTTP (web only, trigger {args.trigger}, no dispatcher)")
        with platform.running(
            web_workers=args.web_workers,
            dispatchers=0,
            celery_concurrency=0,
            trigger="off" if args.trigger == "inline" else args.trigger,
        ):
            bench_ingest(args, port, setup.token)
        if args.trigger == "notify":
            bench_fanout_waiting()
        else:
            bench_fanout_inprocess(setup, 5_000)
    if "claims" not in skip:
        console.rule("claims and reaper (in-process)")
        install_recording_send()
        bench_claims_and_reaper(chain)
    if {"e2e", "latency"} - skip:
        console.rule(f"end to end: batched (pool messages of ≤ 100), {args.workers} Celery slots")
        from apps.tasks.runtimes import CeleryPoolAdapter, runtimes

        runtimes.register("python", CeleryPoolAdapter)
        with platform.running(
            web_workers=args.web_workers,
            dispatchers=args.dispatchers,
            celery_concurrency=args.workers,
            trigger=args.trigger,
        ) as procs:
            if "e2e" not in skip:
                version = deploy(setup.org, "e2eb")
                bench_end_to_end(
                    port, setup.token, version, "e2eb", args.e2e_events, procs, "batched"
                )
            if "latency" not in skip:
                version = deploy(setup.org, "lat")
                bench_latency(
                    port,
                    setup.token,
                    version,
                    "lat",
                    args.latency_rate,
                    args.latency_seconds,
                    procs,
                )
    if "single" not in skip:
        console.rule("end to end: one task per call (claims of ≤ 100, one task per message)")
        with platform.running(
            web_workers=args.web_workers,
            dispatchers=args.dispatchers,
            celery_concurrency=args.workers,
            trigger="off" if args.trigger == "inline" else args.trigger,
            message_size=1,
        ) as procs:
            version = deploy(setup.org, "e2es")
            bench_end_to_end(
                port, setup.token, version, "e2es", args.e2e_single_events, procs, "one per call"
            )
    if args.scale:
        console.rule(f"scale: {args.scale_rows:,} rows (in-process claims, recording send)")
        install_recording_send()
        bench_scale(setup, 5_000, args.scale_rows)

    console.print(RESULTS.table())
    for death in DEATHS:
        console.print(f"[red]process died during the run: {death}[/]")
    if args.json:
        args.json.write_text(json.dumps(RESULTS.rows, indent=1, ensure_ascii=False))
    console.print(f"finished at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
