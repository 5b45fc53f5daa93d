"""A backlog of overdue attempts shared among connections (PostgreSQL, ADR 0019): every
lease ends exactly once, the lane counters stay right, and the helpers' connections close."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.orgs.authentication import WorkerPrincipal
from apps.tasks import lifecycle, reaper, worker_api
from apps.tasks.ingest import events_ingest
from apps.tasks.models import Attempt, Task
from tests.conftest import RecordingAdapter, World
from tests.flow import chain_config, deploy

pytestmark = pytest.mark.django_db(transaction=True)
RUNNING = 30


@pytest.fixture
def overdue(world: World, recorder: RecordingAdapter) -> list[str]:
    """RUNNING leased op1 tasks whose leases have expired: their ids."""
    assert connection.vendor == "postgresql", "shares are PostgreSQL's"
    deploy(world.acme, chain_config(nodes=1))
    events = [
        {"dataset": "chain.src", "idempotency_key": f"e{i}", "range_start": i, "range_end": i + 1}
        for i in range(RUNNING)
    ]
    events_ingest(world.acme, {"events": events})
    messages = recorder.take("op1")
    assert len(messages) == RUNNING
    pool = WorkerPrincipal(org=None, key_id=None)
    leases = worker_api.task_fetch_many(pool, messages, "w1")
    assert all("lease" in lease for lease in leases)
    Task.objects.filter(state="running").update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    return [lease["task"]["id"] for lease in leases]


@pytest.fixture
def shares(monkeypatch) -> list[tuple[int, int, int]]:
    """Each share of a pass, as it ran: (thread, PostgreSQL backend, tasks moved)."""
    ran: list[tuple[int, int, int]] = []
    end_overdue = lifecycle.task_attempts_end_overdue

    def recorded(*args: Any, **kwargs: Any) -> int:
        moved = end_overdue(*args, **kwargs)
        backend = connection.connection.info.backend_pid
        ran.append((threading.get_ident(), backend, moved))
        return moved

    monkeypatch.setattr(lifecycle, "task_attempts_end_overdue", recorded)
    monkeypatch.setattr(reaper, "PARALLEL_FROM", 10)
    return ran


def backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def test_a_backlog_is_shared_and_every_lease_ends_once(settings, overdue, shares):
    settings.SLUICE_REAPER_CONNECTIONS = 3
    before = backends()
    assert reaper.reap_expired_leases(limit=RUNNING) == RUNNING
    assert len(shares) == 3
    assert len({thread for thread, _, _ in shares}) == 3
    assert len({backend for _, backend, _ in shares}) == 3
    assert sorted(moved for _, _, moved in shares) == [10, 10, 10]  # SKIP LOCKED kept them apart
    assert set(Task.objects.filter(pk__in=overdue).values_list("state", flat=True)) == {
        "retry_wait"
    }
    attempts = Attempt.objects.filter(task_id__in=overdue)
    assert attempts.count() == RUNNING
    assert set(attempts.values_list("outcome", flat=True)) == {"lease_expired"}
    assert reaper.reconcile_lanes() == 0  # each share's counter changes, applied once
    deadline = time.monotonic() + 5
    while backends() > before and time.monotonic() < deadline:
        time.sleep(0.05)  # a closed connection's backend exits on its own time
    assert backends() == before


def test_a_small_backlog_keeps_one_connection(settings, monkeypatch, overdue, shares):
    settings.SLUICE_REAPER_CONNECTIONS = 3
    monkeypatch.setattr(reaper, "PARALLEL_FROM", RUNNING + 1)  # fewer overdue: one share
    assert reaper.reap_expired_leases(limit=3 * RUNNING) == RUNNING
    assert [(thread, moved) for thread, _, moved in shares] == [(threading.get_ident(), RUNNING)]


def test_inside_a_transaction_the_pass_is_not_shared(settings, overdue, shares):
    settings.SLUICE_REAPER_CONNECTIONS = 3
    with transaction.atomic():  # other connections could not see its rows
        assert reaper.reap_expired_leases(limit=RUNNING) == RUNNING
    assert [(thread, moved) for thread, _, moved in shares] == [(threading.get_ident(), RUNNING)]


def test_one_connection_turns_sharing_off(settings, overdue, shares):
    settings.SLUICE_REAPER_CONNECTIONS = 1
    assert reaper.reap_expired_leases(limit=RUNNING) == RUNNING
    assert len(shares) == 1
