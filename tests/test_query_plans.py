"""Hot statements keep the plans they were written for (PostgreSQL only, ADR 0014, 0015): a
lean read of one key is prepared once and an array read is planned on each call; the memo
check reads the memo index whatever the number of keys; a claim starts at its lane's floor."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.orgs.authentication import WorkerPrincipal
from apps.tasks import dispatch
from apps.tasks.fanout import fan_out_pending_events, memoized
from apps.tasks.ingest import events_ingest
from apps.tasks.models import NodeLane
from apps.tasks.worker_lean import lean_task_fetch
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.django_db(transaction=True)
POOL = WorkerPrincipal(org=None, key_id=None)


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_a_lean_read_of_one_key_is_prepared_and_of_several_is_not(
    settings, world: World, recorder: RecordingAdapter
):
    """A prepared `= ANY($1)` read either planned every call (one key) or kept a generic plan
    made while the tables were small; `= $1` keeps the one plan it needs."""
    assert connection.vendor == "postgresql"
    settings.SLUICE_DISPATCH_TRIGGER = "notify"
    deploy(world.acme, chain_config())
    events = [{"dataset": "chain.src", "idempotency_key": f"p{i}"} for i in range(4)]
    events_ingest(world.acme, {"events": events})
    fan_out_pending_events()
    messages = recorder.take("op1")
    assert len(messages) == 4
    caller = lambda: POOL  # noqa: E731
    single = {k: messages[0][k] for k in ("task_id", "dispatch_token")}
    assert lean_task_fetch(caller, json.dumps(single).encode()) is not None
    batch = [{k: m[k] for k in ("task_id", "dispatch_token")} for m in messages[1:]]
    answer = lean_task_fetch(caller, json.dumps({"tasks": batch}).encode())
    assert answer is not None and len(answer["leases"]) == 3
    statements = _prepared()
    assert any("WHERE t.id = $1" in s for s in statements), statements
    assert not any("= ANY($1)" in s for s in statements), statements


def test_the_memo_check_reads_the_memo_index_for_any_number_of_keys(world: World):
    """PostgreSQL proves a partial index's predicate from an IN list of at most 100 values;
    the check names the predicate itself, so a fan-out of 1,000 events reads the index."""
    assert connection.vendor == "postgresql"
    keys = [f"{i:064x}" for i in range(1000)]
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a scan only where no index serves
        try:
            plan = memoized(keys).explain()
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
