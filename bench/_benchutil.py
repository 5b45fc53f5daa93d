"""Helpers shared by the benchmark scripts: percentiles, bounded child processes, HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (0 for an empty list)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def gunicorn_command(app: str, port: int, workers: int, threads: int) -> list[str]:
    """gunicorn serving `app` on 127.0.0.1:`port` with `workers` processes of `threads`."""
    return [
        str(ROOT / ".venv/bin/gunicorn"),
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]


def celery_worker_command(
    app: str, name: str, *, pool: str = "solo", slots: int = 1, python: str = PYTHON
) -> list[str]:
    """A Celery worker as every benchmark runs one: warnings only, no mingle, gossip or
    heartbeat; `pool` "solo" with one slot runs each message in the process that took it."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-c",
        str(slots),
        "--pool",
        pool,
        "--loglevel",
        "WARNING",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        "-n",
        f"{name}@%h",
    ]


def cpu_by_group(group_of: Callable[[str], str | None]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the live processes of each group, grouped
    by their command line; processes `group_of` names None are left out."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, UnicodeDecodeError):
            continue
        group = group_of(cmdline)
        if group is not None:
            used[group] = used.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def recreate_database(url: str) -> None:
    """Drop and create the PostgreSQL database named in `url` (through the `postgres` one)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Child processes, each bounded by coreutils `timeout` and stopped on `stop_all()`.

    Each child runs in its own session, so stopping it (by its pid's process group) also stops
    the workers it forked (gunicorn, Celery prefork) and nothing else.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, max_seconds: int) -> None:
        self.env = env
        self.log_dir = log_dir
        self.max_seconds = max_seconds
        self.children: list[tuple[str, subprocess.Popen[bytes], TextIO]] = []
        self.reported: set[str] = set()
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("a")
        bounded = ["timeout", "--kill-after=10", str(self.max_seconds), *cmd]
        process = subprocess.Popen(
            bounded,
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append((name, process, log))
        return process

    def check_alive(self) -> list[str]:
        """Names of children that exited early (reported once each; the run goes on)."""
        dead = []
        for name, process, _ in self.children:
            if process.poll() is not None and name not in self.reported:
                self.reported.add(name)
                dead.append(f"{name} exited with {process.returncode}; see {self.log_dir}")
        return dead

    def stop_all(self) -> None:
        for _, process, _ in self.children:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process, log in self.children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
        self.children = []


class JsonClient:
    """A minimal keep-alive JSON client (one per thread): less client CPU than requests."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        payload = json.dumps(body).encode()
        for attempt in range(3):
            try:
                self.conn.request("POST", path, body=payload, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def wait_http(port: int, path: str = "/healthz", timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port}{path}")
