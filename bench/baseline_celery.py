"""Baseline: a standalone Celery app over Redis draining N no-op jobs.

    .venv/bin/python bench/baseline_celery.py [--jobs N] [--concurrency C] [--rate R]

Two runs, each with a bounded `celery worker` child (prefork, C processes):
- drain: N jobs are enqueued first, then the worker starts; jobs/s is N over the time from the
  first job's start to the last job's end (worker boot excluded);
- latency: with the worker running, jobs are enqueued at a steady R jobs/s for --seconds;
  enqueue→start is the job's start time minus the time stamped at enqueue.
Each job records its times in Redis (db 14, the broker's, under `bl:*` keys).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._benchutil import celery_worker_command

BROKER = os.environ.get("BASELINE_BROKER", "redis://127.0.0.1:6379/14")
app = Celery("baseline_celery", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_redis: redis.Redis | None = None


def _store() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER)
    return _redis


@app.task(name="baseline.noop")
def noop(enqueued_at: float, run: str) -> None:
    started = time.time()
    store = _store()
    pipe = store.pipeline(transaction=False)
    pipe.rpush(f"bl:{run}:lat", started - enqueued_at)
    pipe.set(f"bl:{run}:first", started, nx=True)
    pipe.set(f"bl:{run}:last", time.time())
    pipe.incr(f"bl:{run}:done")
    pipe.execute()


# --- the driver -----------------------------------------------------------------------------

console = Console()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))]


def start_worker(concurrency: int, log: Path, max_seconds: int) -> object:
    import subprocess

    worker = celery_worker_command(
        "baseline_celery", "baseline", pool="prefork", slots=concurrency, python=sys.executable
    )
    cmd = ["timeout", "--kill-after=10", str(max_seconds), *worker]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.Popen(
        cmd,
        cwd=HERE,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(process: object) -> None:
    import signal
    import subprocess

    assert isinstance(process, subprocess.Popen)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_done(store: redis.Redis, run: str, total: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"{run}: jobs done", total=total)
        while time.monotonic() < deadline:
            done = int(store.get(f"bl:{run}:done") or 0)
            bar.update(task, completed=done)
            if done >= total:
                return
            time.sleep(0.1)
    raise TimeoutError(f"{run}: only {store.get(f'bl:{run}:done')} of {total} jobs ran")


def main() -> None:
    parser = argparse.ArgumentParser(description="Celery + Redis no-op baseline")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=int, default=900)
    args = parser.parse_args()
    store = _store()
    store.flushdb()
    logs = Path(tempfile.mkdtemp(prefix="baseline-celery-"))

    with console.status(f"enqueueing {args.jobs:,} jobs"):
        began = time.perf_counter()
        for _ in range(args.jobs):
            noop.delay(time.time(), "drain")
        enqueue_s = time.perf_counter() - began
    worker = start_worker(args.concurrency, logs / "worker.log", args.max_seconds)
    try:
        wait_done(store, "drain", args.jobs, args.max_seconds)
        first = float(store.get("bl:drain:first") or 0)
        last = float(store.get("bl:drain:last") or 0)
        drain = args.jobs / (last - first)

        total = int(args.rate * args.seconds)
        noop.delay(time.time(), "warm")
        wait_done(store, "warm", 1, 60)
        start = time.time()
        with console.status(f"latency run: {total:,} jobs at {args.rate:g}/s"):
            for i in range(total):
                time.sleep(max(0.0, start + i / args.rate - time.time()))
                noop.delay(time.time(), "steady")
        wait_done(store, "steady", total, 120)
        latencies = [float(v) for v in store.lrange("bl:steady:lat", 0, -1)]
    finally:
        stop_worker(worker)

    table = Table(title=f"Celery {__import__('celery').__version__} + Redis, no-op jobs")
    for column in ("measure", "value", "unit"):
        table.add_column(column)
    table.add_row("enqueue (one client, .delay())", f"{args.jobs / enqueue_s:,.0f}", "jobs/s")
    table.add_row(
        f"drain of {args.jobs:,} jobs, prefork -c {args.concurrency}", f"{drain:,.0f}", "jobs/s"
    )
    table.add_row(
        f"enqueue→start p50 at {args.rate:g} jobs/s",
        f"{percentile(latencies, 50) * 1000:.1f}",
        "ms",
    )
    table.add_row(
        f"enqueue→start p99 at {args.rate:g} jobs/s",
        f"{percentile(latencies, 99) * 1000:.1f}",
        "ms",
    )
    console.print(table)
    store.flushdb()


if __name__ == "__main__":
    main()
