"""Public API for members and tokens: validate, call one service, serialize the result."""

from __future__ import annotations

from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.orgs import services
from apps.orgs.access import has_org_perm
from apps.orgs.api import acting_user, org_from_slug, paginate, paginated, request_org
from apps.orgs.authentication import WorkerKeyAuthentication, WorkerPrincipal
from apps.orgs.errors import NotFound, ValidationFailed
from apps.orgs.models import ApiToken, Membership, Org, User
from apps.orgs.serializers import (
    MemberCreateInput,
    MemberOutput,
    MemberUpdateInput,
    TokenCreatedOutput,
    TokenCreateInput,
    TokenOutput,
)


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness plus database reachability, for load balancers (no auth, no session)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure to reach the database means unhealthy
        return JsonResponse({"status": "unavailable", "database": str(exc)[:200]}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})


class MembersView(APIView):
    @extend_schema(responses=paginated(MemberOutput), operation_id="members_list")
    def get(self, request: Request, slug: str) -> Response:
        org = org_from_slug(request, slug)
        memberships = Membership.objects.for_org(org).select_related("user")
        return paginate(self, request, memberships, MemberOutput)

    @extend_schema(request=MemberCreateInput, responses={201: MemberOutput})
    def post(self, request: Request, slug: str) -> Response:
        org = org_from_slug(request, slug, "manage_members")
        data = MemberCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        username, role = data.validated_data["username"], data.validated_data["role"]
        if data.validated_data["service_account"]:
            user: User | None = services.service_account_create(
                org=org, name=username, role=role, actor=acting_user(request)
            )
            membership = Membership.objects.select_related("user").get(org=org, user=user)
        else:
            user = User.objects.filter(username=username).first()
            if user is None:
                raise ValidationFailed.field("username", f"no user named {username!r}")
            membership = services.membership_add(
                org=org, user=user, role=role, actor=acting_user(request)
            )
        return Response(MemberOutput(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(APIView):
    @extend_schema(responses=MemberOutput)
    def get(self, request: Request, slug: str, username: str) -> Response:
        org = org_from_slug(request, slug)
        membership = Membership.objects.for_org(org).filter(user__username=username).first()
        if membership is None:
            raise NotFound(f"{username} is not a member of {slug}.")
        return Response(MemberOutput(membership).data)

    @extend_schema(request=MemberUpdateInput, responses=MemberOutput)
    def patch(self, request: Request, slug: str, username: str) -> Response:
        org = org_from_slug(request, slug, "manage_members")
        data = MemberUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_change_role(
            org=org, username=username, role=data.validated_data["role"], actor=acting_user(request)
        )
        return Response(MemberOutput(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, username: str) -> Response:
        org = org_from_slug(request, slug, "manage_members")
        services.membership_remove(org=org, username=username, actor=acting_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _visible_tokens(request: Request, org: Org) -> QuerySet[ApiToken]:
    """Your own tokens in the org; every member's to those who manage members."""
    tokens = ApiToken.objects.for_user(request.user).for_org(org).select_related("user", "org")
    if has_org_perm(request.user, org, "manage_members"):
        return tokens
    return tokens.filter(user=request.user)


class TokensView(APIView):
    @extend_schema(responses=paginated(TokenOutput), operation_id="tokens_list")
    def get(self, request: Request) -> Response:
        org = request_org(request)
        return paginate(self, request, _visible_tokens(request, org), TokenOutput)

    @extend_schema(request=TokenCreateInput, responses={201: TokenCreatedOutput})
    def post(self, request: Request) -> Response:
        org = request_org(request)
        data = TokenCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        actor = acting_user(request)
        user = actor
        username = data.validated_data.get("username")
        if username and username != user.username:
            member = Membership.objects.for_org(org).filter(user__username=username).first()
            if member is None:
                raise ValidationFailed.field(
                    "username", f"{username} is not a member of {org.slug}"
                )
            user = member.user
        token, raw = services.api_token_issue(
            user=user,
            org=org,
            name=data.validated_data["name"],
            expires_at=data.validated_data["expires_at"],
            actor=actor,
        )
        body = TokenCreatedOutput(token, context={"raw_token": raw}).data
        return Response(body, status=status.HTTP_201_CREATED)


class TokenDetailView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, token_id: str) -> Response:
        org = request_org(request)
        token = _visible_tokens(request, org).filter(pk=token_id).first()
        if token is None:
            raise NotFound("No such token.")
        services.credential_revoke(token)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkerIdentityView(APIView):
    """`GET /internal/whoami`: lets a worker check its key and URL before it takes work."""

    authentication_classes = [WorkerKeyAuthentication]

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        principal: WorkerPrincipal = request.user  # type: ignore[assignment]
        return Response(
            {"org": principal.org.slug if principal.org else None, "pool": principal.is_pool}
        )
