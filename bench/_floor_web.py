"""The web side of bench/floor_one_per_call.py: a Django app with no middleware, no auth and
no models, whose two views each do one conditional UPDATE of a one-table PostgreSQL database
in autocommit, the least a task-fetch and a task-complete can do. Served by gunicorn as
`bench._floor_web:application`; the database URL comes from FLOOR_DATABASE_URL."""

from __future__ import annotations

import json
import os

import environ
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

SECRET_KEY = "floor-bench-secret-key-not-for-production-0123456789abcdef"
settings.configure(
    DEBUG=False,
    SECRET_KEY=SECRET_KEY,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={
        "default": {
            **environ.Env.db_url_config(os.environ["FLOOR_DATABASE_URL"]),
            "CONN_MAX_AGE": None,
        }
    },
)

import django  # noqa: E402

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.db import connection  # noqa: E402

JSON = "application/json"


def _move(task_id: int, old: str, new: str, stamp: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE floor_tasks SET state = %s, {stamp} = clock_timestamp() "
            "WHERE id = %s AND state = %s RETURNING id",
            [new, task_id, old],
        )
        return cursor.fetchone() is not None


def task_fetch(request: HttpRequest) -> HttpResponse:
    task_id = int(json.loads(request.body)["task_id"])
    if not _move(task_id, "queued", "running", "started_at"):
        return HttpResponse(b'{"code": "not_leasable"}', status=409, content_type=JSON)
    lease = {"task": {"id": task_id, "attempt": 1}, "lease_token": "t" * 43, "input": {}}
    return HttpResponse(json.dumps(lease), content_type=JSON)


def task_complete(request: HttpRequest) -> HttpResponse:
    task_id = int(json.loads(request.body)["task_id"])
    if not _move(task_id, "running", "done", "finished_at"):
        return HttpResponse(b'{"code": "lease_expired"}', status=409, content_type=JSON)
    return HttpResponse(b'{"status": "succeeded"}', content_type=JSON)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"{}", content_type=JSON)


urlpatterns = [
    path("internal/task-fetch", task_fetch),
    path("internal/task-complete", task_complete),
    path("healthz", healthz),
]
application = get_wsgi_application()
