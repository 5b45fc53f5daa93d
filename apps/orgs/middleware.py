from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.orgs.errors import error_body


class BodySizeLimitMiddleware:
    """Refuse an API request whose declared body exceeds the cap, before anything reads it.

    Bodies without a Content-Length (chunked) are still capped by Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE when read, which the API error handler turns into the same 413.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(("/v1/", "/internal/")):
            limit = settings.SLUICE_MAX_BODY_BYTES
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse(
                    error_body("bad_request", "Content-Length is not a number."), status=400
                )
            if length > limit:
                return JsonResponse(
                    error_body(
                        "payload_too_large",
                        f"The request body is {length} bytes; the limit is {limit} bytes.",
                    ),
                    status=413,
                )
        return self.get_response(request)
