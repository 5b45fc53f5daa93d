"""A small HTTP client for the internal worker API: JSON over one kept-alive connection."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class WorkerClient:
    """Thread-safe: each thread keeps its own connection (the heartbeat runs on its own)."""

    def __init__(self, api_url: str, key: str, timeout_s: float = 30.0, retries: int = 3) -> None:
        parts = urlsplit(api_url.rstrip("/"))
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"api_url must be http(s)://host[:port], not {api_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base_path = parts.path
        self.key = key
        self.timeout_s = timeout_s
        self.retries = retries
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            factory = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = factory(self.host, self.port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        last_error: Exception | None = None
        for attempt in range(self.retries):
            try:
                conn = self._connection()
                conn.request(method, self.base_path + path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                # A dropped keep-alive connection or a restarting server: reconnect and retry.
                # Every call of the protocol is idempotent for its lease, so a repeat is safe.
                self._drop_connection()
                last_error = exc
                time.sleep(min(0.2 * 2**attempt, 2.0))
                continue
            parsed = json.loads(data) if data else None
            if response.status >= 400:
                parsed = parsed or {}
                raise ApiError(
                    response.status, parsed.get("code", "error"), parsed.get("detail", "")
                )
            return parsed
        raise ConnectionError(f"cannot reach {self.host}: {last_error}") from last_error

    # --- the protocol of DESIGN.md §6 -------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/internal/whoami")  # type: ignore[no-any-return]

    def fetch(self, tasks: list[dict[str, Any]], worker_id: str) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST", "/internal/task-fetch", {"tasks": tasks, "worker_id": worker_id}
        )

    def fetch_one(self, task: dict[str, Any], worker_id: str) -> dict[str, Any]:
        body = {
            "task_id": task["task_id"],
            "dispatch_token": task["dispatch_token"],
            "worker_id": worker_id,
        }
        return self.request("POST", "/internal/task-fetch", body)  # type: ignore[no-any-return]

    def heartbeat(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST", "/internal/task-heartbeat", {"items": items}
        )

    def checkpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/internal/events", body)  # type: ignore[no-any-return]

    def complete(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST", "/internal/task-complete", {"items": items}
        )

    def complete_one(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/internal/task-complete", body)  # type: ignore[no-any-return]

    def fail(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST", "/internal/task-fail", {"items": items}
        )
