"""Write-only secrets API: values go in, only metadata comes out (DESIGN.md D8)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.orgs.api import acting_user, paginate, paginated, request_org
from apps.orgs.errors import NotFound
from apps.secrets import services
from apps.secrets.models import Scope, Secret
from apps.secrets.serializers import SecretInput, SecretOutput


def _org_secrets(request: Request, perm: str = "view_org"):  # type: ignore[no-untyped-def]
    org = request_org(request, perm)
    return org, Secret.objects.for_user(request.user).for_org(org).filter(scope=Scope.ORG)


class SecretsView(APIView):
    @extend_schema(responses=paginated(SecretOutput), operation_id="secrets_list")
    def get(self, request: Request) -> Response:
        _, secrets = _org_secrets(request)
        return paginate(
            self, request, secrets.select_related("updated_by", "org"), SecretOutput, "name"
        )


class SecretDetailView(APIView):
    @extend_schema(responses=SecretOutput)
    def get(self, request: Request, name: str) -> Response:
        _, secrets = _org_secrets(request)
        secret = secrets.select_related("updated_by", "org").filter(name=name).first()
        if secret is None:
            raise NotFound(f"No secret {name!r}.")
        return Response(SecretOutput(secret).data)

    @extend_schema(request=SecretInput, responses={200: SecretOutput, 201: SecretOutput})
    def put(self, request: Request, name: str) -> Response:
        org = request_org(request, "write_secrets")
        data = SecretInput(data=request.data)
        data.is_valid(raise_exception=True)
        secret, created = services.secret_put(
            org=org, name=name, value=data.validated_data["value"], actor=acting_user(request)
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(SecretOutput(secret).data, status=code)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        org = request_org(request, "write_secrets")
        services.secret_delete(org=org, name=name, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
