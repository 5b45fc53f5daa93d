"""Hot statements keep the plans they were written for (PostgreSQL only, ADR 0014, 0015,
0016, 0017): the lean fetch and completion, their reads included, reach their rows through
their items, whatever plan is kept, and keep one plan for calls of a few items;
the memo check reads the memo index whatever the number of keys; a claim starts at its
lane's floor; a dispatcher step's prepared statements keep the indexes they were written for
(ADR 0023)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.dags.models import DagVersion
from apps.orgs.authentication import WorkerPrincipal
from apps.tasks import dispatch
from apps.tasks.fanout import fan_out_pending_events, memoized
from apps.tasks.ingest import events_ingest
from apps.tasks.models import NodeLane
from apps.tasks.worker_lean import lean_task_complete, lean_task_fetch
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.django_db(transaction=True)
POOL = WorkerPrincipal(org=None, key_id=None)


def _lean_chain(settings: Any, world: World) -> None:
    """The chain deployed, under the notify trigger the lean paths need (PostgreSQL)."""
    assert connection.vendor == "postgresql"
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    deploy(world.acme, chain_config())


def _queued(world: World, recorder: RecordingAdapter, count: int, prefix: str) -> list[dict]:
    """`count` op1 tasks dispatched: their fetch items."""
    events = [{"dataset": "chain.src", "idempotency_key": f"{prefix}{i}"} for i in range(count)]
    events_ingest(world.acme, {"events": events})
    fan_out_pending_events()
    items = [{k: m[k] for k in ("task_id", "dispatch_token")} for m in recorder.take("op1")]
    assert len(items) == count
    return items


@contextmanager
def _explained(*settings: tuple[str, str]) -> Iterator[list[str]]:
    """Collect the plans of the statements run inside (auto_explain's, sent to this session
    as notices), with these settings for the time; every setting is reset after."""
    plans: list[str] = []
    connection.ensure_connection()

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        plans.append(diagnostic.message_primary or "")

    applied = (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_level", "notice"),
        *settings,
    )
    with connection.cursor() as cursor:
        cursor.execute("LOAD 'auto_explain'")
        for name, value in applied:
            cursor.execute(f"SET {name} = {value}")
    connection.connection.add_notice_handler(collect)
    try:
        yield plans
    finally:
        connection.connection.remove_notice_handler(collect)
        with connection.cursor() as cursor:
            for name, _ in applied:
                cursor.execute(f"RESET {name}")


def _generic_plans() -> AbstractContextManager[list[str]]:
    """Run prepared statements on their generic plans, as the plan cache keeps them."""
    return _explained(("plan_cache_mode", "force_generic_plan"))


def _plan_of(plans: list[str], *, touching: str, reading: str = "") -> str:
    [plan] = [p for p in plans if touching in p and reading in p]
    return plan


@contextmanager
def _finished_tasks(version_id: int, count: int) -> Iterator[None]:
    """`count` succeeded tasks of `version_id`, each with its attempt, and fresh statistics:
    tables of some size, whose statistics say that no task is queued or running. The rows
    go again after, and the statistics with them (a truncation keeps them)."""
    tables = ("tasks", "task_attempts")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks (id, org_id, dag_version_id, node_id, event_id, state, lane, mode,"
            " attempt, attempts_base, max_attempts, dispatch_count, created_at, memo_key)"
            " SELECT gen_random_uuid(), v.org_id, v.id, 'op1', gen_random_uuid(), 'succeeded',"
            " 'live', 'live', 1, 0, 3, 1, now(), 'filler' FROM generate_series(1, %s),"
            " (SELECT v.id, g.org_id FROM dag_versions v JOIN dags g ON g.id = v.dag_id"
            "  WHERE v.id = %s) v",
            [count, version_id],
        )
        cursor.execute(
            "INSERT INTO task_attempts (task_id, number, worker_id, lease_token, started_at,"
            " outcome, logs, metrics, progress) SELECT id, 1, 'w', md5(id::text), now(),"
            " 'succeeded', '', '{}', '{}' FROM tasks WHERE memo_key = 'filler'",
        )
        for table in tables:
            cursor.execute(f"ANALYZE {table}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM task_attempts WHERE task_id IN"
                " (SELECT id FROM tasks WHERE memo_key = 'filler')"
            )
            cursor.execute("DELETE FROM tasks WHERE memo_key = 'filler'")
            cursor.execute(
                "DELETE FROM pg_statistic WHERE starelid = ANY(%s::regclass[])", [list(tables)]
            )


def test_the_lean_fetch_and_completion_find_each_task_by_its_item(
    settings, world: World, recorder: RecordingAdapter
):
    """Generic plans made while the statistics say no task is queued or running: free to
    start from the tasks, the planner had scanned every queued (or running) task at each
    call, as many as the lanes' caps allow. The lateral joins leave it the items' keys."""
    _lean_chain(settings, world)
    caller: Callable[[], WorkerPrincipal] = lambda: POOL  # noqa: E731
    with _finished_tasks(DagVersion.objects.get(dag__org=world.acme).pk, 3000):
        batch = _queued(world, recorder, 4, "g")
        with _generic_plans() as plans:
            answer = lean_task_fetch(caller, json.dumps({"tasks": batch}).encode())
            assert answer is not None and len(answer["leases"]) == 4
            items = [{"lease_token": lease["lease"]["token"]} for lease in answer["leases"]]
            done = lean_task_complete(caller, json.dumps({"items": items}).encode())
            assert done is not None and [r["state"] for r in done["results"]] == ["succeeded"] * 4
    start = _plan_of(plans, touching="Insert on task_attempts")
    assert "Index Scan using tasks_pkey on tasks" in start, start
    assert "task_queued_idx" not in start, start
    complete = _plan_of(plans, touching="Insert on dataset_commits")
    assert "Index Scan using attempt_lease_token_unique" in complete, complete
    assert "Index Scan using tasks_pkey on tasks" in complete, complete
    assert "task_lease_idx" not in complete, complete
    # The reads before them: the tasks to lease with their events, the nodes of the leases.
    to_lease = _plan_of(plans, touching="Function Scan on unnest", reading="events_pkey")
    assert "Index Scan using tasks_pkey on tasks" in to_lease, to_lease
    assert "Seq Scan" not in to_lease, to_lease
    nodes = _plan_of(plans, touching="Function Scan on unnest", reading="attempt_lease_token")
    assert "Index Scan using tasks_pkey on tasks" in nodes, nodes
    assert "Seq Scan" not in nodes, nodes


def test_calls_of_a_few_items_keep_one_plan(settings, world: World, recorder: RecordingAdapter):
    """Fetches and completions of three tasks each: after the plan cache's five custom plans,
    each statement runs the generic plan it keeps (planning the completion takes about a
    millisecond, each read about half of one)."""
    _lean_chain(settings, world)
    messages = _queued(world, recorder, 24, "f")
    caller: Callable[[], WorkerPrincipal] = lambda: POOL  # noqa: E731
    for first in range(0, 24, 3):
        batch = {"tasks": messages[first : first + 3]}
        answer = lean_task_fetch(caller, json.dumps(batch).encode())
        assert answer is not None and len(answer["leases"]) == 3
        items = [{"lease_token": lease["lease"]["token"]} for lease in answer["leases"]]
        assert lean_task_complete(caller, json.dumps({"items": items}).encode()) is not None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%%unnest(%%LATERAL%%'"
        )
        prepared = cursor.fetchall()
    names = {
        "LEFT JOIN datasets d ON d.id = c.dataset_id": "read of the tasks to lease",
        "INSERT INTO task_attempts": "fetch",
        "WHERE a.lease_token = i.token": "read of the leases' nodes",
        "INSERT INTO dataset_commits": "completion",
    }
    plans = {
        name: (generic, custom)
        for statement, generic, custom in prepared
        for marker, name in names.items()
        if marker in statement
    }
    assert len(prepared) == 4 and plans == dict.fromkeys(names.values(), (3, 5)), prepared


def test_the_memo_check_reads_the_memo_index_for_any_number_of_keys(world: World):
    """PostgreSQL proves a partial index's predicate from an IN list of at most 100 values;
    the check names the predicate itself, so a fan-out of 1,000 events reads the index."""
    assert connection.vendor == "postgresql"
    keys = [f"{i:064x}" for i in range(1000)]
    with CaptureQueriesContext(connection) as captured:
        assert memoized(keys) == set()
    [check] = [q["sql"] for q in captured.captured_queries]  # its values bound in
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a scan only where no index serves
        try:
            cursor.execute(f"EXPLAIN {check}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
    assert "task_memo_idx" in plan, plan


def _claim_buffers() -> int:
    """Run one claim with EXPLAIN (ANALYZE, BUFFERS): the pages its scan of the claim index
    read (heap pages and the move's own writes aside)."""
    with CaptureQueriesContext(connection) as captured:
        dispatch.claim(lanes_per_tick=1, batch=1)  # only to learn the statement and values
    [claim] = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("WITH picked")]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {claim}")
        plan = cursor.fetchone()[0]
    text = json.dumps(plan)
    assert "task_claimable_idx" in text, text

    def pages(node: dict) -> int:
        if node.get("Index Name") == "task_claimable_idx":
            return int(node["Shared Hit Blocks"] + node["Shared Read Blocks"])
        return sum(pages(child) for child in node.get("Plans", []))

    return pages(plan[0]["Plan"])


def test_a_claim_starts_at_the_floor_not_at_a_drained_backlog(settings, world: World, recorder):
    """Claimed tasks keep their entries in the claim index until a vacuum; without the floor
    every claim of a lane that drained a backlog walks them again."""
    settings.SLUICE_DISPATCH_TRIGGER = "off"
    deploy(world.acme, chain_config(nodes=1))
    for chunk in range(3):
        events = [{"dataset": "chain.src", "idempotency_key": f"d{chunk}-{i}"} for i in range(1000)]
        events_ingest(world.acme, {"events": events})
    NodeLane.objects.filter(node_id="op1").update(cap=10_000)
    for _ in range(29):
        dispatch.claim(batch=100)
    lane = NodeLane.objects.get(node_id="op1")
    assert lane.claim_floor is not None and (lane.pending, lane.in_flight) == (100, 2_900)
    floored = _claim_buffers()
    NodeLane.objects.filter(pk=lane.pk).update(claim_floor=None)
    from_the_start = _claim_buffers()
    assert floored * 4 < from_the_start, (floored, from_the_start)  # 3 and 20 pages here


def _unfanned_scan() -> tuple[str, int]:
    """Fan out the waiting events: the kind of the plan node that read the unfanned-events
    index, and the pages it read."""
    analyzed = (("auto_explain.log_analyze", "on"), ("auto_explain.log_buffers", "on"))
    with _explained(*analyzed, ("auto_explain.log_format", "json")) as plans:
        fan_out_pending_events()
    [plan] = [json.loads(p[p.index("{") :])["Plan"] for p in plans if "event_unfanned_idx" in p]

    def scan(node: dict) -> dict | None:
        if node.get("Index Name") == "event_unfanned_idx":
            return node
        return next(filter(None, (scan(child) for child in node.get("Plans", []))), None)

    found = scan(plan)
    assert found is not None, plan
    return found["Node Type"], int(found["Shared Hit Blocks"] + found["Shared Read Blocks"])


def test_a_fan_out_skips_the_events_fanned_out_before_it(settings, world: World):
    """Fanned-out events keep their entries in the unfanned-events index until a vacuum; the
    fan-out's index scan marks them dead, so the next fan-out skips them in the index (a
    bitmap scan read each of their heap pages again at every fan-out)."""
    _lean_chain(settings, world)
    for chunk in range(2):
        events = [{"dataset": "chain.src", "idempotency_key": f"u{chunk}-{i}"} for i in range(1000)]
        events_ingest(world.acme, {"events": events})
    assert fan_out_pending_events() == 1000 and fan_out_pending_events() == 1000
    for n in range(2):
        events_ingest(world.acme, {"dataset": "chain.src", "idempotency_key": f"next{n}"})
        kind, pages = _unfanned_scan()
        assert kind == "Index Scan", kind
    assert pages < 10, pages  # past 2,000 dead entries, marked by the scan before


def test_a_dispatcher_step_runs_prepared_statements_on_their_indexes(settings, world: World):
    """A step's statements go in a pipeline, which psycopg prepares once a connection has run
    them a few times (ADR 0023): the waiting-events statement and the claim are kept prepared,
    and their generic plans read the unfanned-events index and the claim index."""
    _lean_chain(settings, world)

    def step(key: str) -> None:
        events_ingest(world.acme, {"dataset": "chain.src", "idempotency_key": key})
        fanned, claims = dispatch.fan_out_and_claim()
        assert fanned == 1 and [c.node_id for c in claims] == ["op1"]

    for n in range(8):
        step(f"p{n}")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s"
            " OR statement LIKE %s",
            ["%FROM events WHERE fanned_out_at IS NULL%", "WITH picked AS (SELECT id FROM tasks%"],
        )
        assert len(cursor.fetchall()) == 2
    with _generic_plans() as plans:
        step("generic")
    take = _plan_of(plans, touching="Update on events")
    assert "Index Scan using event_unfanned_idx" in take, take
    claim = _plan_of(plans, touching="Update on tasks")
    assert "Index Scan using task_claimable_idx" in claim, claim
