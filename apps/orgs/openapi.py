"""OpenAPI generation that documents the error responses every operation can give."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from apps.orgs.serializers import ErrorSerializer

_ERRORS = {
    "400": "Invalid input: `errors` names each field.",
    "401": "Missing, malformed, unknown, revoked or expired credentials.",
    "403": "Authenticated, but the role does not allow this.",
    "404": "Unknown, or belongs to another org.",
    "409": "Conflicts with the current state.",
    "413": "The request body is over the byte cap.",
}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class SluiceAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, description in _ERRORS.items():
            if self.method in _SAFE_METHODS and code in {"400", "409", "413"}:
                continue
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = description
                responses[code] = response
        return responses


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "apps.orgs.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "An org's API token."}


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "apps.orgs.authentication.SessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": "Browser login; name the org with the X-Sluice-Org header.",
        }


class WorkerKeyScheme(OpenApiAuthenticationExtension):
    target_class = "apps.orgs.authentication.WorkerKeyAuthentication"
    name = "workerKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "A worker key or the pool key."}
