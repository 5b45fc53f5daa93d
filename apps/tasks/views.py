"""Public API for events and tasks (DESIGN.md §6)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import django_filters
import pyarrow as pa
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.datasets.models import Commit
from apps.datasets.parsers import (
    ARROW_FILE,
    ARROW_STREAM,
    PARQUET,
    ArrowFileParser,
    ArrowStreamParser,
    ParquetParser,
)
from apps.orgs.api import paginate, paginated, request_org
from apps.orgs.errors import NotFound, ValidationFailed
from apps.tasks import selectors, services
from apps.tasks.ingest import dataset_invalidate, events_ingest
from apps.tasks.ingest_lean import single_event_ingest
from apps.tasks.lean import lean_json_request
from apps.tasks.models import Event, Mode, Task, TaskState
from apps.tasks.serializers import EventOutput, IngestOutput, TaskDetailOutput, TaskOutput


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"No {what} {value!r}.") from None


TABLE_MEDIA_TYPES = (ARROW_STREAM, ARROW_FILE, PARQUET)
TABLE_BODY_FIELDS = [
    OpenApiParameter(name, str, description=f"With a table body: the event's {name}.")
    for name in ("dataset", "idempotency_key", "range_start", "range_end", "event_time", "mode")
] + [OpenApiParameter("payload", str, description="With a table body: a JSON object.")]


def _table_event(request: Request, table: pa.Table) -> dict[str, Any]:
    """An event whose rows came as the body (Arrow IPC or parquet): its fields are the query
    parameters."""
    item: dict[str, Any] = {name: value for name, value in request.query_params.items()}
    if "payload" in item:
        try:
            item["payload"] = json.loads(item["payload"])
        except ValueError:
            raise ValidationFailed.field("payload", "must be a JSON object") from None
    item["rows"] = table
    return item


def lean_events_post(request: HttpRequest) -> HttpResponse | None:
    """A plain single-event POST answered over the lean path (`ingest_lean`), or None: the
    request goes on to `EventsView`. Called by `LeanPathsMiddleware`, ahead of the
    middleware and the view machinery it does not use."""
    lean = lean_json_request(request)
    if lean is None:
        return None
    token, body = lean
    event_id = single_event_ingest(token, body, settings.SLUICE_TOKEN_TOUCH_INTERVAL_S)
    if event_id is None:
        return None
    return HttpResponse(
        json.dumps({"events": [{"id": str(event_id), "created": True}]}),
        status=status.HTTP_202_ACCEPTED,
        content_type="application/json",
    )


class EventsView(APIView):
    parser_classes = [JSONParser, ArrowStreamParser, ArrowFileParser, ParquetParser]

    @extend_schema(
        request={
            "application/json": OpenApiTypes.OBJECT,
            ARROW_STREAM: OpenApiTypes.BINARY,
            ARROW_FILE: OpenApiTypes.BINARY,
            PARQUET: OpenApiTypes.BINARY,
        },
        parameters=TABLE_BODY_FIELDS,
        responses={202: IngestOutput},
        description='Post one event, or `{"events": [...]}` (≤ 1,000), to source datasets. '
        "Idempotent per (dataset, idempotency_key): a repeat answers `created: false` with the "
        "original id. Always 202 once stored. An event may carry `rows` (≤ 10,000 JSON "
        "records), or `files` already written under the dataset's landing prefix; or the body "
        "may be the rows themselves as Arrow IPC or parquet, with the event's fields as query "
        "parameters.",
    )
    def post(self, request: Request) -> Response:
        org = request_org(request, "post_events")
        body = request.data
        if isinstance(body, pa.Table):
            body = _table_event(request, body)
        elif request.content_type.split(";")[0] in TABLE_MEDIA_TYPES:
            raise ValidationFailed.field("body", "empty; expected the rows as a table")
        results = events_ingest(org, body)
        return Response(
            {"events": [{"id": str(r.event_id), "created": r.created} for r in results]},
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(
        responses=paginated(EventOutput),
        parameters=[OpenApiParameter("dataset", str)],
        operation_id="events_list",
    )
    def get(self, request: Request) -> Response:
        org = request_org(request)
        events = Event.objects.for_user(request.user).for_org(org).select_related("commit__dataset")
        dataset = request.query_params.get("dataset")
        if dataset:
            events = events.filter(dataset_id=dataset.lower())
        return paginate(self, request, events, EventOutput)


class EventDetailView(APIView):
    @extend_schema(responses=EventOutput)
    def get(self, request: Request, event_id: str) -> Response:
        org = request_org(request)
        event = (
            Event.objects.for_user(request.user)
            .for_org(org)
            .select_related("commit__dataset")
            .filter(pk=_uuid(event_id, "event"))
            .first()
        )
        if event is None:
            raise NotFound(f"No event {event_id}.")
        return Response(EventOutput(event).data)


class TaskFilter(django_filters.FilterSet):
    dag = django_filters.CharFilter(field_name="dag_version__dag__name")
    node = django_filters.CharFilter(field_name="node_id")
    state = django_filters.ChoiceFilter(choices=TaskState.choices)
    lane = django_filters.ChoiceFilter(choices=Mode.choices)
    mode = django_filters.ChoiceFilter(choices=Mode.choices)
    event = django_filters.UUIDFilter(field_name="event_id")

    class Meta:
        model = Task
        fields = ["dag", "node", "state", "lane", "mode", "event"]


class TasksView(APIView):
    @extend_schema(
        responses=paginated(TaskOutput),
        parameters=[OpenApiParameter(name, str) for name in TaskFilter.Meta.fields],
        operation_id="tasks_list",
    )
    def get(self, request: Request) -> Response:
        org = request_org(request)
        tasks = Task.objects.for_user(request.user).for_org(org).select_related("dag_version__dag")
        filtered = TaskFilter(request.query_params, queryset=tasks)
        if not filtered.is_valid():
            errors = [(k, str(v[0])) for k, v in filtered.errors.items()]
            raise ValidationFailed.field(errors[0][0], errors[0][1])
        return paginate(self, request, filtered.qs, TaskOutput)


def _task(request: Request, task_id: str, perm: str = "view_org") -> Task:
    org = request_org(request, perm)
    task = (
        Task.objects.for_user(request.user)
        .for_org(org)
        .select_related("dag_version__dag")
        .prefetch_related("attempts")
        .filter(pk=_uuid(task_id, "task"))
        .first()
    )
    if task is None:
        raise NotFound(f"No task {task_id}.")
    return task


class TaskDetailView(APIView):
    @extend_schema(responses=TaskDetailOutput)
    def get(self, request: Request, task_id: str) -> Response:
        return Response(TaskDetailOutput(_task(request, task_id)).data)


class TaskCancelView(APIView):
    @extend_schema(request=None, responses=TaskOutput)
    def post(self, request: Request, task_id: str) -> Response:
        task = services.task_cancel(_task(request, task_id, "operate_tasks"))
        return Response(TaskOutput(_task(request, str(task.pk))).data)


class TaskRetryView(APIView):
    @extend_schema(request=None, responses=TaskOutput)
    def post(self, request: Request, task_id: str) -> Response:
        task = services.task_retry(_task(request, task_id, "operate_tasks"))
        return Response(TaskOutput(_task(request, str(task.pk))).data)


class DatasetInvalidateView(APIView):
    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={202: OpenApiTypes.OBJECT},
        description="Recompute a range: `{range_start, range_end}`. Consumers get an "
        "`invalidate` event; consumers that `replace` cascade it downstream.",
    )
    def post(self, request: Request, dataset_id: str) -> Response:
        org = request_org(request, "post_events")
        event = dataset_invalidate(org, dataset_id, request.data)
        return Response(
            {"event": {"id": str(event.pk), "created": True}}, status=status.HTTP_202_ACCEPTED
        )


class DatasetLineageView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "version", str, description="'<generation>.<seq>'; default the newest commit"
            )
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, dataset_id: str) -> Response:
        org = request_org(request)
        commits = (
            Commit.objects.for_user(request.user)
            .filter(dataset__org=org, dataset__dataset_id=dataset_id.lower())
            .select_related("dataset")
        )
        version = request.query_params.get("version")
        if version:
            generation, _, seq = version.partition(".")
            if not (generation.isdigit() and seq.isdigit()):
                raise ValidationFailed.field("version", "must be '<generation>.<seq>'")
            commit = commits.filter(generation=int(generation), seq=int(seq)).first()
        else:
            commit = commits.order_by("-generation", "-seq").first()
        if commit is None:
            raise NotFound(f"No commit {version or ''} of {dataset_id!r}.".replace("  ", " "))
        return Response(selectors.lineage(commit))
