"""Errors with the one JSON shape of DESIGN.md §6, for the public and the internal API.

Services raise `SluiceError` subclasses (plain Python, no HTTP); the DRF exception handler
and the JSON 404/500 handlers render every failure as
`{"code", "detail", "errors": [{"path", "message"}]}`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class SluiceError(Exception):
    """A failure a client can act on. `code` is stable snake_case; `detail` one sentence."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(
        self, detail: str, *, code: str | None = None, errors: Iterable[FieldError] = ()
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.errors = list(errors)

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.detail, self.errors)


class ValidationFailed(SluiceError):
    code = "validation_error"

    @classmethod
    def field(cls, path: str, message: str) -> ValidationFailed:
        return cls(f"{path}: {message}", errors=[FieldError(path, message)])


class NotFound(SluiceError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Forbidden(SluiceError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "forbidden"


class Conflict(SluiceError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class PayloadTooLarge(SluiceError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


def error_body(code: str, detail: str, errors: Iterable[FieldError] = ()) -> dict[str, Any]:
    return {"code": code, "detail": detail, "errors": [e.as_dict() for e in errors]}


def flatten_drf_errors(data: Any, prefix: str = "") -> list[FieldError]:
    """DRF's nested `{field: [messages]}` as a flat list of `path: message`."""
    if isinstance(data, Mapping):
        out: list[FieldError] = []
        for key, value in data.items():
            if key == "non_field_errors":
                out.extend(flatten_drf_errors(value, prefix))
            else:
                out.extend(flatten_drf_errors(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        if all(not isinstance(item, Mapping | list) for item in data):
            return [FieldError(prefix, str(item)) for item in data]
        out = []
        for index, item in enumerate(data):
            if item:
                out.extend(flatten_drf_errors(item, f"{prefix}[{index}]"))
        return out
    return [FieldError(prefix, str(data))]


_DRF_CODES: dict[type[Exception], tuple[int, str]] = {
    drf_exceptions.NotAuthenticated: (401, "unauthenticated"),
    drf_exceptions.AuthenticationFailed: (401, "unauthenticated"),
    drf_exceptions.PermissionDenied: (403, "forbidden"),
    drf_exceptions.NotFound: (404, "not_found"),
    drf_exceptions.MethodNotAllowed: (405, "method_not_allowed"),
    drf_exceptions.NotAcceptable: (406, "not_acceptable"),
    drf_exceptions.UnsupportedMediaType: (415, "unsupported_media_type"),
    drf_exceptions.Throttled: (429, "rate_limited"),
    drf_exceptions.ParseError: (400, "parse_error"),
}


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF exception handler: every error in the §6 shape."""
    headers: dict[str, str] = {}
    if isinstance(exc, SluiceError):
        return Response(exc.body(), status=exc.status_code)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, PermissionDenied):
        return Response(error_body("forbidden", "You may not do this."), status=403)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", str(exc)), status=413)
    if isinstance(exc, drf_exceptions.ValidationError):
        errors = flatten_drf_errors(exc.detail)
        detail = "; ".join(f"{e.path}: {e.message}" if e.path else e.message for e in errors)
        return Response(
            error_body("validation_error", detail or "Invalid input.", errors), status=400
        )
    if isinstance(exc, drf_exceptions.APIException):
        status_code, code = exc.status_code, "error"
        for klass, (mapped_status, mapped_code) in _DRF_CODES.items():
            if isinstance(exc, klass):
                status_code, code = mapped_status, mapped_code
                break
        if isinstance(exc, drf_exceptions.Throttled):
            # DRF sets `Throttled.wait` in `__init__`; djangorestframework-stubs omit it.
            wait: float | None = exc.wait  # type: ignore[attr-defined]
            if wait is not None:
                headers["Retry-After"] = str(int(wait))
        if status_code == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="sluice"'
        return Response(error_body(code, str(exc.detail)), status=status_code, headers=headers)
    return None


def _is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith(("/v1/", "/internal/"))


def json_404(request: HttpRequest, exception: Exception | None = None) -> Any:
    if _is_api_path(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def json_500(request: HttpRequest) -> Any:
    if _is_api_path(request):
        return JsonResponse(
            error_body("internal_error", "The server failed; the error is logged."), status=500
        )
    from django.views.defaults import server_error

    return server_error(request)
