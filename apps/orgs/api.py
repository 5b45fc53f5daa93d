"""Shared API plumbing: pagination, the request's org, and org permission checks.

Every `/v1` view resolves its org through `request_org` or `org_from_slug`, so the rules
"another org's object is a 404" and "a token acts only in its own org" live here once.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from drf_spectacular.utils import inline_serializer
from rest_framework import pagination, serializers
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from apps.orgs.access import has_org_perm
from apps.orgs.errors import Forbidden, NotFound, ValidationFailed
from apps.orgs.models import ApiToken, Org, User
from apps.orgs.roles import PERMISSIONS

ORG_HEADER = "X-Sluice-Org"


def acting_user(request: HttpRequest | Request) -> User:
    """`request.user` as a `User`, for the services' `actor`.

    API views sit behind `IsAuthenticated` and the admin and browser pages behind a login, so
    an anonymous user never gets here; the check narrows the type (and refuses if it did).
    """
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated
    return user


class CursorPagination(pagination.CursorPagination):
    """`{"results": [...], "next": url|null}`: pages as fast at a million rows as at ten."""

    ordering = "-created_at"
    page_size = 100
    page_size_query_param = "limit"
    max_page_size = 1000

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.get_next_link()})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results", "next"],
            "properties": {
                "results": schema,
                "next": {"type": "string", "nullable": True, "format": "uri"},
            },
        }


def _require(request: Request, org: Org, perm: str) -> Org:
    if perm not in PERMISSIONS:
        raise ValueError(f"unknown org permission {perm!r}")
    if not has_org_perm(request.user, org, perm):
        raise Forbidden(f"This needs the {perm} permission in {org.slug}.")
    return org


def request_org(request: Request, perm: str = "view_org") -> Org:
    """The org a request acts in: the token's org, or the session user's `X-Sluice-Org`."""
    if isinstance(request.auth, ApiToken):
        return _require(request, request.auth.org, perm)
    slug = request.headers.get(ORG_HEADER)
    if not slug:
        raise ValidationFailed.field(
            ORG_HEADER, "name the org with this header (a session spans orgs)"
        )
    org = Org.objects.for_user(request.user).filter(slug=slug).first()
    if org is None:
        raise NotFound(f"No org {slug!r}.")
    return _require(request, org, perm)


def org_from_slug(request: Request, slug: str, perm: str = "view_org") -> Org:
    """An org named in the URL: a 404 unless the caller belongs to it (and its token is for it)."""
    org = Org.objects.for_user(request.user).filter(slug=slug).first()
    if org is None or (isinstance(request.auth, ApiToken) and request.auth.org_id != org.pk):
        raise NotFound(f"No org {slug!r}.")
    return _require(request, org, perm)


def paginate(
    view: Any, request: Request, queryset: Any, serializer: type, ordering: str | None = None
) -> Response:
    """One cursor page of `queryset`, serialized, in the list shape of §6."""
    paginator = CursorPagination()
    if ordering:
        paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


def paginated(serializer: type[serializers.Serializer]) -> serializers.Serializer:
    """The OpenAPI shape of a cursor-paginated list of `serializer`."""
    name = serializer.__name__.removesuffix("Output")
    return inline_serializer(
        name=f"Paginated{name}List",
        fields={
            "results": serializer(many=True),
            "next": serializers.URLField(allow_null=True),
        },
    )
