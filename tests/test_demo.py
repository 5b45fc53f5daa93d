"""`make demo` really starts the platform, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

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


def test_make_demo_serves_and_stops(tmp_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SLUICE_"))}
    env.update({"PORT": str(port), "SLUICE_DATA_DIR": str(tmp_path)})
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
        assert _get(f"{base}/admin/login/") == 200
        assert _get(f"{base}/login/") == 200
        # The generator posts an event a second; both operators run and write parquet.
        token = (tmp_path / "demo-token").read_text().strip()
        url = f"{base}/v1/tasks?node=revenue_by_customer&state=succeeded"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _results(url, token):
            time.sleep(1)
        [task, *_] = _results(url, token)
        assert task["dag"] == "shop" and task["output_event"]
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
    assert f"http://127.0.0.1:{port}/" in output
    assert _get(f"{base}/healthz") == 0
