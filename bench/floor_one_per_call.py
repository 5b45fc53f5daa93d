"""The floor of one task per call on this machine: the issue's architecture with none of
Sluice's work in it.

    .venv/bin/python bench/floor_one_per_call.py [--tasks N] [--runs R] [--workers W]

Each task is what bench/dispatch.py's one-per-call run asks of the machine's processes, less
everything Sluice itself does: a Celery message over Redis, taken by one of W single-slot
Celery workers (`--pool solo`, as bench/dispatch.py starts them), whose task makes the worker
protocol's two calls (task-fetch, task-complete) with the SDK's own `WorkerClient` over one
kept-alive connection, to gunicorn (2 workers x 4 threads, as bench/dispatch.py) serving a
Django app with no middleware whose two views each do one conditional UPDATE of a one-table
database in autocommit (bench/_floor_web.py, bench/_floor_worker.py). No dispatcher runs: the
messages are all queued before the workers start, so the producer costs nothing during the
drain. No authentication, lease body, commit, event, lineage row, fan-out, counter or wake-up.

It prints the drain rate (tasks over the time from the first fetch to the last complete,
stamped by PostgreSQL) and the CPU per task of web, Celery, PostgreSQL and Redis, read from
/proc between 10 % and 90 % of the drain, and what is left of the CPU that the target of
500 tasks/s allows per task on this machine's cores for everything Sluice does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._benchutil import (
    Processes,
    celery_worker_command,
    cpu_by_group,
    free_port,
    gunicorn_command,
    recreate_database,
    wait_http,
)

console = Console()
GROUPS = ("web", "celery", "postgres", "redis")
TARGET = 500.0


def group_of(cmdline: str) -> str | None:
    if "gunicorn" in cmdline:
        return "web"
    if "celery" in cmdline and "_floor_worker" in cmdline:
        return "celery"
    if cmdline.startswith("postgres"):
        return "postgres"
    if cmdline.startswith("redis-server"):
        return "redis"
    return None


def cpu_seconds() -> dict[str, float]:
    return {**dict.fromkeys(GROUPS, 0.0), **cpu_by_group(group_of)}


def done_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM floor_tasks WHERE state = 'done'").fetchone()
    return int(row[0]) if row else 0


def one_run(args: argparse.Namespace, run: int, log_dir: Path) -> dict[str, float]:
    recreate_database(args.database_url)
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE floor_tasks (id integer PRIMARY KEY, state text NOT NULL, "
            "started_at timestamptz, finished_at timestamptz)"
        )
        conn.execute(
            "INSERT INTO floor_tasks SELECT g, 'queued' FROM generate_series(1, %s) g",
            [args.tasks],
        )
    redis.Redis.from_url(args.broker).flushdb()
    port = free_port()
    env = {
        **os.environ,
        "FLOOR_DATABASE_URL": args.database_url,
        "FLOOR_BROKER_URL": args.broker,
        "FLOOR_API_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    from bench._floor_worker import run_task

    with console.status(f"run {run}: queueing {args.tasks:,} messages"):
        for task_id in range(1, args.tasks + 1):
            run_task.apply_async((task_id,))
    procs = Processes(env, log_dir / f"run{run}", args.max_seconds)
    try:
        procs.start(
            "web",
            gunicorn_command(
                "bench._floor_web:application", port, args.web_workers, args.web_threads
            ),
        )
        wait_http(port)
        for i in range(args.workers):
            procs.start(f"celery{i}", celery_worker_command("bench._floor_worker", f"floor{i}"))
        return measure_drain(args, procs)
    finally:
        procs.stop_all()


def measure_drain(args: argparse.Namespace, procs: Processes) -> dict[str, float]:
    low, high = args.tasks // 10, args.tasks * 9 // 10
    deadline = time.monotonic() + args.max_seconds
    marks: list[tuple[int, dict[str, float]]] = []
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            done = done_count(conn)
            if (not marks and done >= low) or (len(marks) == 1 and done >= high):
                marks.append((done, cpu_seconds()))
            if done >= args.tasks:
                break
            for death in procs.check_alive():
                raise RuntimeError(death)
            time.sleep(0.1)
        else:
            raise TimeoutError(f"only {done_count(conn):,} of {args.tasks:,} tasks ran")
        span = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM floor_tasks"
        ).fetchone()
    (done_a, cpu_a), (done_b, cpu_b) = marks
    assert span is not None
    figures = {"tasks/s": args.tasks / float(span[0])}
    for group in GROUPS:
        figures[group] = (cpu_b[group] - cpu_a[group]) / (done_b - done_a) * 1000
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="single-slot Celery workers")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=4)
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/sluice_bench_floor"
    )
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--max-seconds", type=int, default=600)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="sluice-floor-"))
    console.print(f"logs: {log_dir}")

    runs = []
    for run in range(1, args.runs + 1):
        figures = one_run(args, run, log_dir)
        total = sum(figures[group] for group in GROUPS)
        console.print(
            f"run {run}: [bold]{figures['tasks/s']:,.0f} tasks/s[/], CPU per task "
            + ", ".join(f"{group} {figures[group]:.2f}" for group in GROUPS)
            + f", total {total:.2f} ms"
        )
        runs.append(figures)

    cores = os.cpu_count() or 1
    budget = cores / TARGET * 1000
    table = Table(title=f"One task per call with nothing of Sluice's work, {args.tasks:,} tasks")
    for column in ("measure", "median", "runs", "unit"):
        table.add_column(column)

    def row(name: str, values: list[float], unit: str, digits: int) -> None:
        shown = [f"{value:,.{digits}f}" for value in values]
        table.add_row(name, f"{statistics.median(values):,.{digits}f}", ", ".join(shown), unit)

    row("drain", [r["tasks/s"] for r in runs], "tasks/s", 0)
    for group in GROUPS:
        row(f"CPU per task: {group}", [r[group] for r in runs], "ms", 2)
    totals = [sum(r[group] for group in GROUPS) for r in runs]
    row("CPU per task: together", totals, "ms", 2)
    row(
        f"left per task at {TARGET:,.0f} tasks/s on {cores} cores ({budget:.1f} ms)",
        [budget - total for total in totals],
        "ms",
        2,
    )
    console.print(table)


if __name__ == "__main__":
    main()
