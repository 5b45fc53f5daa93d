"""`make demo` really starts the platform, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.sql
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


def _results(url: str, token: str) -> list[dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return list(json.loads(response.read())["results"])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running_demo(tmp_path: Path, **extra_env: str) -> Iterator[tuple[str, str]]:
    """`make demo` in its own process group: yields (base URL, API token), then SIGTERMs it and
    checks that the whole group stopped."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SLUICE_"))}
    env.update({"PORT": str(port), "SLUICE_DATA_DIR": str(tmp_path), **extra_env})
    log = (tmp_path / "demo.log").open("w+")
    process = subprocess.Popen(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _get(f"{base}/healthz") != 200:
            assert process.poll() is None, Path(log.name).read_text()
            time.sleep(0.5)
        assert _get(f"{base}/healthz") == 200, Path(log.name).read_text()
        yield base, (tmp_path / "demo-token").read_text().strip()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _group_alive(process.pid):
        time.sleep(0.2)
    output = Path(log.name).read_text()
    assert not _group_alive(process.pid), output
    assert "API token:   slt_" in output
    assert "worker key:  slw_" in output
    assert f"{base}/" in output
    assert _get(f"{base}/healthz") == 0


def _wait_for_results(url: str, token: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = _results(url, token)
        if results:
            return results
        time.sleep(1)
    raise AssertionError(f"nothing at {url} after {timeout}s")


def test_make_demo_serves_and_stops(tmp_path: Path):
    with running_demo(tmp_path) as (base, token):
        assert _get(f"{base}/admin/login/") == 200
        assert _get(f"{base}/login/") == 200
        # The generator posts an event a second; both operators run and write parquet.
        url = f"{base}/v1/tasks?node=revenue_by_customer&state=succeeded"
        [task, *_] = _wait_for_results(url, token)
        assert task["dag"] == "shop" and task["output_event"]
        rows = _results(f"{base}/v1/datasets/shop.revenue_by_customer/data", token)
        assert rows and set(rows[0]) == {"customer", "orders", "revenue"}


@pytest.fixture
def demo_database() -> Iterator[str]:
    """A database of its own for the demo's processes, dropped afterwards."""
    admin_url = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    name = f"sluice_demo_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_make_demo_on_postgres_upserts_the_warehouse_table(tmp_path: Path, demo_database: str):
    with running_demo(tmp_path, DATABASE_URL=demo_database) as (base, token):
        url = f"{base}/v1/tasks?node=customer_latest&state=succeeded"
        [task, *_] = _wait_for_results(url, token, timeout=90)
        assert task["dag"] == "warehouse"
        detail = _results(f"{base}/v1/datasets?limit=50", token)
        [warehouse] = [d for d in detail if d["dataset"] == "warehouse.customer_latest"]
        assert warehouse["backend"] == "postgres" and warehouse["unique_key"] == ["customer"]
        rows = _results(f"{base}/v1/datasets/warehouse.customer_latest/data", token)
        customers = [r["customer"] for r in rows]
        assert customers and len(customers) == len(set(customers))  # one row per customer
    with psycopg.connect(demo_database) as conn:
        names = conn.execute(
            "SELECT pg_schema, pg_view FROM datasets WHERE dataset_id = %s",
            ["warehouse.customer_latest"],
        ).fetchone()
        assert names is not None
        query = psycopg.sql.SQL("SELECT count(*) FROM {}.{}").format(
            *map(psycopg.sql.Identifier, names)
        )
        count = conn.execute(query).fetchone()
    assert count is not None and count[0] >= len(customers)
