"""`/internal/*`: the worker protocol over HTTP, single and batch forms (DESIGN.md §6)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.orgs.authentication import WorkerKeyAuthentication, WorkerPrincipal
from apps.orgs.errors import SluiceError, ValidationFailed
from apps.tasks import worker_api
from apps.tasks.lean import lean_json_request
from apps.tasks.worker_api import MAX_BATCH
from apps.tasks.worker_lean import Principal


def _body(request: Request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ValidationFailed("The body must be a JSON object.")
    return request.data


def _items(body: dict[str, Any], key: str) -> list[Any] | None:
    if key not in body:
        return None
    items = body[key]
    if not isinstance(items, list) or not items:
        raise ValidationFailed.field(key, "must be a non-empty list")
    if len(items) > MAX_BATCH:
        raise ValidationFailed.field(key, f"at most {MAX_BATCH} items per call")
    return items


def _run_batch(
    items: list[Any], call: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each item in its own short transaction (the service's), so one batch never holds the
    locks of a hundred tasks at once, and each item succeeds or fails on its own."""
    results = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            results.append(
                {
                    "index": index,
                    "code": "validation_error",
                    "detail": "each item must be an object",
                }
            )
            continue
        try:
            results.append(call(item))
        except SluiceError as exc:
            results.append(
                {
                    "task_id": worker_api.task_id_of(item),
                    "index": index,
                    "code": exc.code,
                    "detail": exc.detail,
                }
            )
    return results


def lean_worker_call(
    request: HttpRequest, call: Callable[[Principal, bytes], Any]
) -> HttpResponse | None:
    """A plain call answered over its lean path (`worker_lean`), or None: the request goes on
    to its view. Called by `LeanPathsMiddleware`."""
    lean = lean_json_request(request)
    if lean is None:
        return None

    @functools.cache
    def principal() -> WorkerPrincipal | None:
        try:
            authenticated = WorkerKeyAuthentication().authenticate(request)  # type: ignore[arg-type]
        except AuthenticationFailed:  # the full path answers 401
            return None
        return authenticated[0] if authenticated else None

    answer = call(principal, lean[1])
    if answer is None:
        return None
    return HttpResponse(json.dumps(answer), content_type="application/json")


class InternalView(APIView):
    authentication_classes = [WorkerKeyAuthentication]

    def principal(self, request: Request) -> WorkerPrincipal:
        return request.user  # type: ignore[return-value]


class TaskFetchView(InternalView):
    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        body = _body(request)
        principal = self.principal(request)
        worker_id = str(body.get("worker_id") or "")
        tasks = _items(body, "tasks")
        if tasks is None:
            lease = worker_api.task_fetch(
                principal, body.get("task_id", ""), body.get("dispatch_token", ""), worker_id
            )
            return Response(lease)
        results = worker_api.task_fetch_many(principal, tasks, worker_id)
        leases = [r for r in results if "code" not in r]
        refused = [{"task_id": r.get("task_id"), "code": r["code"]} for r in results if "code" in r]
        return Response({"leases": leases, "refused": refused})


class _ItemView(InternalView):
    call: Callable[[WorkerPrincipal, dict[str, Any]], dict[str, Any]]
    single_status: int = status.HTTP_200_OK

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        body = _body(request)
        principal = self.principal(request)
        call = type(self).call
        items = _items(body, "items")
        if items is None:
            return Response(call(principal, body), status=self.single_status)
        return Response({"results": self.batch(principal, items)})

    def batch(self, principal: WorkerPrincipal, items: list[Any]) -> list[dict[str, Any]]:
        """Each item in its own short transaction unless the view has a bulk form."""
        call = type(self).call
        return _run_batch(items, lambda item: call(principal, item))


class TaskHeartbeatView(_ItemView):
    call = staticmethod(  # type: ignore[assignment]
        lambda principal, body: worker_api.task_heartbeat(
            principal, body.get("lease_token", ""), body.get("progress")
        )
    )


class TaskEventsView(_ItemView):
    call = staticmethod(worker_api.task_checkpoint)  # type: ignore[assignment]
    single_status = status.HTTP_202_ACCEPTED


class TaskCompleteView(_ItemView):
    call = staticmethod(worker_api.task_complete)  # type: ignore[assignment]

    def batch(self, principal: WorkerPrincipal, items: list[Any]) -> list[dict[str, Any]]:
        return worker_api.task_complete_many(principal, items)


class TaskFailView(_ItemView):
    call = staticmethod(worker_api.task_fail)  # type: ignore[assignment]
