"""Bearer authentication for the public API (API tokens) and the internal API (worker keys).

Anything that looks like a credential but is malformed, unknown, revoked or expired is a 401
with the JSON error body; a request without an Authorization header falls through to the
session (browser) or to DRF's "not authenticated".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apps.orgs import services
from apps.orgs.models import Org, User


def bearer_value(request: HttpRequest | Request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <token>'.")
    value = value.strip()
    if not value or " " in value or len(value) > 200:
        raise exceptions.AuthenticationFailed("The bearer token is malformed.")
    return value


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`request.user` is the token's user and `request.auth` the `ApiToken` (one org)."""

    def authenticate(self, request: Request) -> tuple[User, Any] | None:
        raw = bearer_value(request)
        if raw is None:
            return None
        try:
            token = services.api_token_authenticate(raw)
        except LookupError as exc:
            raise exceptions.AuthenticationFailed(
                "The API token is unknown, revoked or expired."
            ) from exc
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="sluice"'


class SessionAuthentication(authentication.SessionAuthentication):
    """Browser sessions, with the 401 (not 403) answer when nobody is logged in."""

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="sluice"'


@dataclass(frozen=True)
class WorkerPrincipal:
    """Who is calling the internal API: an org's worker key, or the platform's pool (org None)."""

    org: Org | None
    key_id: str | None

    is_authenticated = True
    is_active = True
    is_superuser = False

    @property
    def is_pool(self) -> bool:
        return self.org is None


class WorkerKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[WorkerPrincipal, Any] | None:
        raw = bearer_value(request)
        if raw is None:
            return None
        if services.pool_key_matches(raw):
            principal = WorkerPrincipal(org=None, key_id=None)
            return principal, principal
        try:
            key = services.worker_key_authenticate(raw)
        except LookupError as exc:
            raise exceptions.AuthenticationFailed(
                "The worker key is unknown, revoked or expired."
            ) from exc
        principal = WorkerPrincipal(org=key.org, key_id=str(key.pk))
        return principal, principal

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="sluice-internal"'
