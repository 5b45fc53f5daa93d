"""The lean paths (ADR 0010, ADR 0013) ahead of the middleware their requests do not use."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse

from apps.tasks.internal_views import lean_complete, lean_fetch
from apps.tasks.views import lean_events_post

LeanPath = Callable[[HttpRequest], HttpResponse | None]


class LeanPathsMiddleware:
    """Answer a plain POST to a hot path over its lean path, or pass the request on.

    Placed right after the body size cap: a lean request reads no session, user, messages
    or CSRF token, and resolves no URL, and the middleware below it (and DRF's view) cost a
    quarter of a web process's time per single-event POST. What they would add to a JSON
    answer is the `X-Frame-Options` header, added here."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    @functools.cached_property
    def routes(self) -> dict[str, LeanPath]:
        # Resolved on first use: the URLconf may import what imports this module.
        return {
            reverse("events"): lean_events_post,
            reverse("task-fetch"): lean_fetch,
            reverse("task-complete"): lean_complete,
        }

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method == "POST" and (lean := self.routes.get(request.path)) is not None:
            response = lean(request)
            if response is not None:
                response.headers.setdefault("X-Frame-Options", settings.X_FRAME_OPTIONS)
                return response
        return self.get_response(request)
