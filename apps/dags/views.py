"""DAG API: deploy, read, roll back, pause, resume, delete (DESIGN.md §6)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.dags import services
from apps.dags.models import Dag, DagVersion
from apps.dags.schema import dag_json_schema
from apps.dags.serializers import (
    DagDetailOutput,
    DagSummaryOutput,
    DeployOutput,
    PauseInput,
    RollbackInput,
    VersionDetailOutput,
    VersionSummaryOutput,
)
from apps.orgs.api import acting_user, paginate, paginated, request_org
from apps.orgs.errors import NotFound
from apps.orgs.models import Org
from apps.orgs.parsers import TextYAMLParser, XYAMLParser, YAMLParser


def dag_schema_view(request: HttpRequest) -> JsonResponse:
    """`GET /v1/schema/dag.json`: the DAG config schema, public like the OpenAPI schema."""
    return JsonResponse(dag_json_schema(), json_dumps_params={"indent": 2})


def _dag(request: Request, org: Org, name: str) -> Dag:
    dag = (
        Dag.objects.for_user(request.user)
        .for_org(org)
        .select_related("active_version", "org")
        .filter(name=name)
        .first()
    )
    if dag is None:
        raise NotFound(f"No DAG {name!r}.")
    return dag


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in {"1", "true", "yes"}


class DagsView(APIView):
    parser_classes = [JSONParser, YAMLParser, TextYAMLParser, XYAMLParser]

    @extend_schema(responses=paginated(DagSummaryOutput), operation_id="dags_list")
    def get(self, request: Request) -> Response:
        org = request_org(request)
        dags = Dag.objects.for_user(request.user).for_org(org).select_related("active_version")
        return paginate(self, request, dags, DagSummaryOutput)

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT, "application/yaml": OpenApiTypes.STR},
        responses={200: DeployOutput, 201: DeployOutput},
        parameters=[OpenApiParameter("dry_run", bool, description="Validate and diff only.")],
        description="Deploy a DAG config (JSON, or YAML with Content-Type: application/yaml). "
        "The same config again answers 200 with the existing version.",
    )
    def post(self, request: Request) -> Response:
        org = request_org(request, "deploy_dags")
        dry_run = _truthy(request.query_params.get("dry_run"))
        result = services.dag_deploy(
            org=org, config=request.data, actor=acting_user(request), dry_run=dry_run
        )
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return Response(DeployOutput(result.as_dict()).data, status=code)


class DagDetailView(APIView):
    @extend_schema(responses=DagDetailOutput)
    def get(self, request: Request, name: str) -> Response:
        dag = _dag(request, request_org(request), name)
        return Response(DagDetailOutput(dag).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        dag = _dag(request, request_org(request, "deploy_dags"), name)
        services.dag_delete(dag=dag, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DagVersionsView(APIView):
    @extend_schema(responses=paginated(VersionSummaryOutput), operation_id="dag_versions_list")
    def get(self, request: Request, name: str) -> Response:
        dag = _dag(request, request_org(request), name)
        return paginate(self, request, dag.versions.all(), VersionSummaryOutput, "-number")


class DagVersionDetailView(APIView):
    @extend_schema(responses=VersionDetailOutput)
    def get(self, request: Request, name: str, number: int) -> Response:
        dag = _dag(request, request_org(request), name)
        version = (
            DagVersion.objects.filter(dag=dag, number=number)
            .select_related("dag", "created_by")
            .first()
        )
        if version is None:
            raise NotFound(f"{name} has no version {number}.")
        context = {"diff": services.version_diff(version)}
        return Response(VersionDetailOutput(version, context=context).data)


class DagRollbackView(APIView):
    @extend_schema(request=RollbackInput, responses=DagSummaryOutput)
    def post(self, request: Request, name: str) -> Response:
        dag = _dag(request, request_org(request, "deploy_dags"), name)
        data = RollbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.dag_rollback(
            dag=dag, version=data.validated_data.get("version"), actor=acting_user(request)
        )
        return Response(DagSummaryOutput(_dag(request, dag.org, name)).data)


class _PauseView(APIView):
    paused: bool

    @extend_schema(request=PauseInput, responses=DagSummaryOutput)
    def post(self, request: Request, name: str) -> Response:
        dag = _dag(request, request_org(request, "pause_dags"), name)
        data = PauseInput(data=request.data)
        data.is_valid(raise_exception=True)
        action = services.dag_pause if self.paused else services.dag_resume
        action(dag=dag, node=data.validated_data.get("node"), lane=data.validated_data.get("lane"))
        return Response(DagSummaryOutput(_dag(request, dag.org, name)).data)


class DagPauseView(_PauseView):
    paused = True


class DagResumeView(_PauseView):
    paused = False
