"""The loops of `manage.py dispatch` and `manage.py reap` (`apps.tasks.loops.run_loop`): a busy
loop checks its database connection once per interval, not before every step, and a step
whose connection died is logged and retried on a new one."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.db import connection

from apps.tasks.loops import run_loop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_signals() -> Iterator[None]:
    """`run_loop` installs SIGTERM and SIGINT handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run_steps(steps: list[Callable[[], bool]]) -> None:
    """Run `steps` through `run_loop`, one a step, then stop it as SIGTERM does."""
    pending = list(reversed(steps))

    def step() -> bool:
        current = pending.pop()
        if not pending:  # the loop stops once this step is done
            os.kill(os.getpid(), signal.SIGTERM)
        return current()

    run_loop(step, loop=True, idle_sleep=0.01)


def query() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 + 1")
        return int(cursor.fetchone()[0])


def test_a_busy_loop_checks_its_connection_once_per_interval(own_signals):
    assert connection.vendor == "postgresql", "Django checks connections' health on PostgreSQL"
    checked_before: list[bool] = []

    def busy_step() -> bool:
        # False: Django will check the connection (a `SELECT 1`) before this step's query.
        checked_before.append(connection.health_check_done)
        query()
        return True

    query()  # an open connection (a new one counts as checked)
    run_steps([busy_step] * 4)
    assert checked_before == [False, True, True, True]


def test_a_step_whose_connection_died_is_retried_on_a_new_one(own_signals, caplog):
    results: list[int] = []
    db = connection.settings_dict

    def kill_own_backend() -> bool:
        results.append(query())
        pid = connection.connection.info.backend_pid
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=True
        ) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        return True

    def step() -> bool:
        results.append(query())
        return True

    run_steps([kill_own_backend, step, step])
    assert results == [2, 2]  # the second step failed, the third ran on a new connection
    assert "loop step failed; retrying" in caplog.text
