"""The lean paths (ADR 0010, ADR 0013) ahead of the middleware their requests do not use."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse

from apps.tasks.internal_views import lean_worker_call
from apps.tasks.lean import lean_possible
from apps.tasks.views import lean_events_post
from apps.tasks.worker_lean import lean_task_complete, lean_task_fetch

LeanPath = Callable[[HttpRequest], HttpResponse | None]


class LeanPathsMiddleware:
    """Answer a plain POST to a hot path over its lean path, or pass the request on.

    Placed right after the body size cap: a lean request reads no session, user, messages
    or CSRF token, and resolves no URL, and the middleware below it (and DRF's view) cost a
    quarter of a web process's time per single-event POST. What they would add to a JSON
    answer is the `X-Frame-Options` header and `CommonMiddleware`'s `Content-Length`, added
    here: without a length, gunicorn sends the answer chunked, in two writes, and the client
    parses the chunks."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    @functools.cached_property
    def routes(self) -> dict[str, LeanPath]:
        # Resolved on first use: the URLconf may import what imports this module.
        return {
            reverse("events"): lean_events_post,
            reverse("task-fetch"): functools.partial(lean_worker_call, call=lean_task_fetch),
            reverse("task-complete"): functools.partial(lean_worker_call, call=lean_task_complete),
        }

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        # Where no lean path can run (SQLite, another trigger), nothing is parsed twice.
        if (
            request.method == "POST"
            and (lean := self.routes.get(request.path)) is not None
            and lean_possible()
        ):
            response = lean(request)
            if response is not None:
                response.headers.setdefault("X-Frame-Options", settings.X_FRAME_OPTIONS)
                response.headers["Content-Length"] = str(len(response.content))
                return response
        return self.get_response(request)
