"""Baseline: Procrastinate on PostgreSQL draining N no-op jobs.

    .venv/bin/pip install procrastinate        # bench-only: pyproject's "bench" extra
    .venv/bin/python bench/baseline_procrastinate.py [--jobs N] [--processes P] [--concurrency C]

It recreates its own database (default procrastinate_bench), applies Procrastinate's schema,
and runs two measurements with P bounded `procrastinate worker` children (C concurrent jobs
each, LISTEN/NOTIFY on):
- drain: N jobs are deferred first, then the workers start; jobs/s is N over the time from
  the first `started` event to the last `succeeded` event (worker boot excluded);
- latency: with the workers running, jobs are deferred at a steady R jobs/s for --seconds;
  enqueue→start is the job's `started` event time minus its `deferred` event time (both
  stamped by PostgreSQL, from Procrastinate's own procrastinate_events table).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import procrastinate
import psycopg
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

DATABASE_URL = os.environ.get(
    "BASELINE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/procrastinate_bench"
)
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DATABASE_URL))


@app.task(name="baseline.noop")
def noop() -> None:
    return None


# --- the driver -----------------------------------------------------------------------------

console = Console()
HERE = Path(__file__).resolve().parent


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))]


def recreate_database() -> None:
    parts = urlsplit(DATABASE_URL)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def start_workers(
    processes: int, concurrency: int, logs: Path, max_seconds: int
) -> list[subprocess.Popen[bytes]]:
    children = []
    for i in range(processes):
        cmd = [
            "timeout",
            "--kill-after=10",
            str(max_seconds),
            sys.executable,
            "-m",
            "procrastinate",
            "--app=baseline_procrastinate.app",
            "worker",
            f"--concurrency={concurrency}",
            f"--name=baseline{i}",
        ]
        children.append(
            subprocess.Popen(
                cmd,
                cwd=HERE,
                env={**os.environ, "PYTHONPATH": str(HERE)},
                stdout=(logs / f"worker{i}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return children


def stop_workers(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def count_done(conn: psycopg.Connection, first_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE id >= %s AND status = 'succeeded'",
        [first_id],
    ).fetchone()
    return int(row[0]) if row else 0


def wait_done(
    conn: psycopg.Connection, first_id: int, total: int, label: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        while time.monotonic() < deadline:
            done = count_done(conn, first_id)
            bar.update(task, completed=done)
            if done >= total:
                return
            time.sleep(0.2)
    raise TimeoutError(f"{label}: only {count_done(conn, first_id)} of {total} jobs ran")


def main() -> None:
    parser = argparse.ArgumentParser(description="Procrastinate no-op baseline")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=int, default=900)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="baseline-procrastinate-"))

    with console.status("recreating the database and applying the schema"):
        recreate_database()
        with app.open():
            app.schema_manager.apply_schema()
    with app.open(), psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        with console.status(f"deferring {args.jobs:,} jobs"):
            began = time.perf_counter()
            for offset in range(0, args.jobs, 1000):
                noop.batch_defer(*({} for _ in range(min(1000, args.jobs - offset))))
            enqueue_s = time.perf_counter() - began
        workers = start_workers(args.processes, args.concurrency, logs, args.max_seconds)
        try:
            wait_done(conn, 0, args.jobs, "drain", args.max_seconds)
            row = conn.execute(
                "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') "
                "- min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events"
            ).fetchone()
            drain = args.jobs / float(row[0]) if row and row[0] else 0.0

            total = int(args.rate * args.seconds)
            first_id = noop.defer()
            wait_done(conn, first_id, 1, "warm-up", 60)
            start = time.time()
            with console.status(f"latency run: {total:,} jobs at {args.rate:g}/s"):
                for i in range(total):
                    time.sleep(max(0.0, start + i / args.rate - time.time()))
                    noop.defer()
            wait_done(conn, first_id + 1, total, "latency run", 120)
            rows = conn.execute(
                "SELECT extract(epoch FROM s.at - d.at) FROM procrastinate_events d "
                "JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started' "
                "WHERE d.type = 'deferred' AND d.job_id > %s",
                [first_id],
            ).fetchall()
            latencies = [float(r[0]) for r in rows]
        finally:
            stop_workers(workers)

    table = Table(title=f"Procrastinate {procrastinate.__version__} on PostgreSQL, no-op jobs")
    for column in ("measure", "value", "unit"):
        table.add_column(column)
    table.add_row("defer (batch_defer of 1,000)", f"{args.jobs / enqueue_s:,.0f}", "jobs/s")
    table.add_row(
        f"drain of {args.jobs:,} jobs, {args.processes} workers x concurrency {args.concurrency}",
        f"{drain:,.0f}",
        "jobs/s",
    )
    for pct in (50, 99):
        table.add_row(
            f"enqueue→start p{pct} at {args.rate:g} jobs/s",
            f"{percentile(latencies, pct) * 1000:.1f}",
            "ms",
        )
    console.print(table)


if __name__ == "__main__":
    main()
