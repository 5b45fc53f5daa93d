"""The wrapper around an operator function: fetch, heartbeat, run, write output, complete.

An operator is a plain function `handler(ctx)` that may return rows (an Arrow table, record
batches, or a list of dicts) or nothing. What it returns is written as parquet under the
attempt's staging prefix and named in task-complete. `ctx.checkpoint()` raises once the task
is canceled or the lease is lost, so long operators stop cooperatively.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sluice_worker.arrow_types import arrow_schema
from sluice_worker.client import ApiError, WorkerClient
from sluice_worker.files import filesystem_for
from sluice_worker.handlers import load_handler

logger = logging.getLogger("sluice_worker")


class TaskCanceled(Exception):
    """The platform canceled the task; stop without completing."""


class LeaseLost(Exception):
    """The lease expired (the platform will retry the task elsewhere); stop at once."""


class NonRetryable(Exception):
    """Raise from an operator to fail the task without further attempts."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def to_table(result: Any, schema: dict[str, str] | None) -> pa.Table | None:
    if result is None:
        return None
    if isinstance(result, pa.Table):
        table = result
    elif isinstance(result, pa.RecordBatch):
        table = pa.Table.from_batches([result])
    elif isinstance(result, list) and result and isinstance(result[0], pa.RecordBatch):
        table = pa.Table.from_batches(result)
    elif isinstance(result, list):
        if not result:
            return None
        target = arrow_schema(schema) if schema else None
        table = pa.Table.from_pylist(result, schema=target)
    else:
        raise TypeError(
            f"an operator returns an Arrow table, record batches, a list of dicts or None, "
            f"not {type(result).__name__}"
        )
    if schema:
        target = arrow_schema(schema)
        columns = [c for c in target.names if c in table.column_names]
        table = table.select(columns).cast(pa.schema([target.field(c) for c in columns]))
    return table


@dataclass
class TaskContext:
    """What an operator sees of its task."""

    lease: dict[str, Any]
    client: WorkerClient
    canceled: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    logs: io.StringIO = field(default_factory=io.StringIO)
    checkpoints: int = 0
    # Files written with write_output: task-complete names them with any rows returned.
    written: list[dict[str, Any]] = field(default_factory=list)
    parts: int = 0

    @property
    def task_id(self) -> str:
        return str(self.lease["task"]["id"])

    @property
    def attempt(self) -> int:
        return int(self.lease["task"]["attempt"])

    @property
    def event(self) -> dict[str, Any]:
        return dict(self.lease["input"]["event"])

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.lease["input"]["datasets"])

    @property
    def secrets(self) -> dict[str, str]:
        return dict(self.lease.get("secrets") or {})

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.lease["node"].get("config") or {})

    @property
    def output(self) -> dict[str, Any] | None:
        return self.lease.get("output")

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"sluice_worker.task.{self.task_id}")

    def log(self, message: str) -> None:
        self.logs.write(message.rstrip("\n") + "\n")

    def checkpoint(self) -> None:
        """Raise if the task was canceled or its lease lost; call it between units of work."""
        if self.canceled.is_set():
            raise TaskCanceled(self.task_id)
        if self.lost.is_set():
            raise LeaseLost(self.task_id)

    def read_input(self) -> pa.Table:
        """The rows of the input event's commit(s), concatenated."""
        tables = []
        for ref in self.inputs:
            for uri in ref["files"]:
                filesystem, path = filesystem_for(uri)
                tables.append(pq.read_table(path, filesystem=filesystem))
        if not tables:
            schema = self.inputs[0]["schema"] if self.inputs else {}
            return arrow_schema(schema).empty_table() if schema else pa.table({})
        return pa.concat_tables(tables, promote_options="default")

    def write_output(self, table: pa.Table, name: str | None = None) -> dict[str, Any]:
        """Write `table` as one parquet file under the staging prefix, to be named in the task's
        commit (call it as often as the output needs); returns its file entry."""
        entry = self._write(table, name)
        self.written.append(entry)
        return entry

    def _write(self, table: pa.Table, name: str | None) -> dict[str, Any]:
        output = self.output
        if output is None:
            raise ValueError("this node has no output dataset")
        self.checkpoint()
        self.parts += 1
        name = name or f"part-{self.parts:05d}.parquet"
        filesystem, prefix = filesystem_for(output["staging"])
        path = f"{prefix.rstrip('/')}/{name}"
        filesystem.create_dir(prefix, recursive=True)
        pq.write_table(table, path, filesystem=filesystem)
        size = filesystem.get_file_info(path).size
        uri = output["staging"].rstrip("/") + "/" + name
        return {"path": uri, "rows": table.num_rows, "bytes": int(size or 0)}

    def emit_checkpoint(self, table: pa.Table, **fields: Any) -> dict[str, Any]:
        """Commit `table` now as checkpoint n (1, 2, …): durable even if the task dies later."""
        self.checkpoints += 1
        entry = self._write(table, None)
        body = {
            "lease_token": self.lease["lease"]["token"],
            "n": self.checkpoints,
            "files": [entry],
            **fields,
        }
        return self.client.checkpoint(body)


class Heartbeat(threading.Thread):
    """Extends the leases of running tasks every `interval`; flags cancel and lost leases."""

    def __init__(
        self, client: WorkerClient, interval: float, on_beat: Callable[[], None] | None = None
    ) -> None:
        super().__init__(daemon=True, name="sluice-heartbeat")
        self.client = client
        self.interval = interval
        self.on_beat = on_beat
        self.contexts: dict[str, TaskContext] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def watch(self, ctx: TaskContext) -> None:
        with self.lock:
            self.contexts[ctx.lease["lease"]["token"]] = ctx

    def forget(self, ctx: TaskContext) -> None:
        with self.lock:
            self.contexts.pop(ctx.lease["lease"]["token"], None)

    def beat(self) -> None:
        with self.lock:
            contexts = dict(self.contexts)
        if not contexts:
            return
        try:
            answer = self.client.heartbeat([{"lease_token": token} for token in contexts])
        except (ApiError, ConnectionError) as exc:
            logger.warning("heartbeat failed: %s", exc)
            return
        by_task = {ctx.task_id: ctx for ctx in contexts.values()}
        for result in answer.get("results", []):
            ctx = by_task.get(str(result.get("task_id")))
            if ctx is None:
                continue
            if result.get("cancel"):
                ctx.canceled.set()
            elif result.get("code") in {"lease_expired", "not_found"}:
                ctx.lost.set()
            elif result.get("code") == "task_canceled":
                ctx.canceled.set()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.beat()
            if self.on_beat is not None:
                try:
                    self.on_beat()
                except Exception as exc:  # e.g. SQS unreachable: the lease still holds
                    logger.warning("heartbeat hook failed: %s", exc)

    def stop(self) -> None:
        self.stop_event.set()


HandlerResolver = Callable[[str], Callable[..., Any]]


def _fail_body(ctx: TaskContext, exc: BaseException, retryable: bool) -> dict[str, Any]:
    return {
        "lease_token": ctx.lease["lease"]["token"],
        "error": {
            "type": type(exc).__name__,
            "message": str(exc)[:4000],
            "traceback": "".join(traceback.format_exception(exc))[-16000:],
        },
        "retryable": retryable,
        "logs": ctx.logs.getvalue()[-64 * 1024 :],
    }


def run_lease(
    ctx: TaskContext, resolve: HandlerResolver, default_handler: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Run one leased task: ("complete", body), ("fail", body) or ("stop", {}).
    `default_handler` serves nodes whose handler lives in the image (ecs, lambda)."""
    try:
        spec = ctx.lease["node"].get("handler") or default_handler
        if not spec:
            raise NonRetryable("the node names no handler and this worker has no --handler")
        handler = resolve(str(spec))
        result = handler(ctx)
        ctx.checkpoint()
        table = to_table(result, (ctx.output or {}).get("schema"))
        if ctx.output is not None and table is not None:
            ctx.write_output(table)
        outputs = []
        if ctx.output is not None and (ctx.written or table is not None):
            outputs = [{"dataset": ctx.output["dataset"], "files": ctx.written}]
        body = {
            "lease_token": ctx.lease["lease"]["token"],
            "outputs": outputs,
            "logs": ctx.logs.getvalue()[-64 * 1024 :],
        }
        return "complete", body
    except (TaskCanceled, LeaseLost):
        return "stop", {}
    except NonRetryable as exc:
        return "fail", _fail_body(ctx, exc, retryable=False)
    except Exception as exc:  # the operator's failure is reported, never crashes the worker
        return "fail", _fail_body(ctx, exc, retryable=True)


def _complete(client: WorkerClient, completes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each completion's answer: one task in the single form (the server's leanest path),
    more in the batch form."""
    if len(completes) > 1:
        return client.complete(completes)["results"]  # type: ignore[no-any-return]
    try:
        return [client.complete_one(completes[0])]
    except ApiError as exc:
        if exc.status in (404, 409):  # the lease was lost or the task canceled meanwhile
            return [{"code": exc.code}]
        raise


def run_message(
    message: dict[str, Any],
    client: WorkerClient,
    handler_dirs: list[Path],
    worker_id: str | None = None,
    on_heartbeat: Callable[[], None] | None = None,
    default_handler: str | None = None,
) -> dict[str, int]:
    """Run a queue message (one task or a batch of one node's tasks). Returns counts.
    `on_heartbeat` runs after each heartbeat (the SQS worker extends visibility there)."""
    worker_id = worker_id or default_worker_id()
    refs = message.get("tasks") or [message]
    counts = {"completed": 0, "failed": 0, "refused": 0, "stopped": 0}
    if len(refs) == 1:
        try:
            leases = [client.fetch_one(refs[0], worker_id)]
        except ApiError as exc:
            if exc.status in (404, 409):  # a duplicate delivery, or a task that moved on
                counts["refused"] = 1
                return counts
            raise
    else:
        answer = client.fetch(refs, worker_id)
        leases, counts["refused"] = answer["leases"], len(answer.get("refused", []))
    if not leases:
        return counts
    heartbeat = Heartbeat(
        client, float(leases[0]["lease"]["heartbeat_interval_s"]), on_beat=on_heartbeat
    )
    heartbeat.start()
    handlers: dict[str, Callable[..., Any]] = {}

    def resolve(spec: str) -> Callable[..., Any]:
        """Each handler looked up once per message (a batch's tasks are of one node)."""
        if spec not in handlers:
            handlers[spec] = load_handler(spec, handler_dirs)
        return handlers[spec]

    completes: list[dict[str, Any]] = []
    fails: list[dict[str, Any]] = []
    try:
        for lease in leases:
            ctx = TaskContext(lease=lease, client=client)
            heartbeat.watch(ctx)
            outcome, body = run_lease(ctx, resolve, default_handler)
            if outcome == "complete":
                completes.append(body)
            elif outcome == "fail":
                fails.append(body)
            else:
                counts["stopped"] += 1
                heartbeat.forget(ctx)
        if completes:
            results = _complete(client, completes)
            counts["completed"] = sum(1 for r in results if r.get("state") == "succeeded")
            counts["stopped"] += sum(1 for r in results if "code" in r)
        if fails:
            client.fail(fails)
            counts["failed"] = len(fails)
    finally:
        heartbeat.stop()
    return counts
