"""Orgs, memberships, service accounts and credentials: every write goes through here.

The API, the admin and the management commands all call these functions, so the role's
guardian permissions can never drift from the membership row (no signals involved).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from apps.orgs.access import has_org_perm
from apps.orgs.errors import Conflict, Forbidden, NotFound, ValidationFailed
from apps.orgs.models import ApiToken, Credential, Membership, Org, User, WorkerKey
from apps.orgs.roles import PERMISSIONS, ROLE_PERMISSIONS, Role, perm_name

API_TOKEN_PREFIX = "slt_"  # noqa: S105  (a visible prefix, not a secret)
WORKER_KEY_PREFIX = "slw_"
SERVICE_ACCOUNT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")

CredentialT = TypeVar("CredentialT", bound=Credential)


# --- orgs and memberships ----------------------------------------------------------------------


def org_create(*, slug: str, name: str, owner: User | None = None) -> Org:
    with transaction.atomic():
        org = Org(slug=slug, name=name or slug)
        org.full_clean()
        org.save()
        if owner is not None:
            membership_add(org=org, user=owner, role=Role.OWNER, actor=None)
    return org


def _validate_role(role: str) -> Role:
    if role not in Role.values:
        raise ValidationFailed.field(
            "role", f"unknown role {role!r}; expected one of {', '.join(Role.values)}"
        )
    return Role(role)


def _check_actor_may_grant(actor: User | None, org: Org, *roles: str | None) -> None:
    """Admins manage members; only owners may make or unmake owners. `actor=None` is the system."""
    if actor is None:
        return
    if not has_org_perm(actor, org, "manage_members"):
        raise Forbidden("Managing members needs the admin or owner role.")
    if Role.OWNER in roles and not has_org_perm(actor, org, "manage_owners"):
        raise Forbidden("Only an owner may grant or take away the owner role.")


def _sync_role_perms(user: User, org: Org, role: str | None) -> None:
    granted = ROLE_PERMISSIONS[role] if role else frozenset()
    for codename in PERMISSIONS:
        if codename in granted:
            assign_perm(perm_name(codename), user, org)
        else:
            remove_perm(perm_name(codename), user, org)


def _lock_org(org: Org) -> Org:
    return Org.objects.select_for_update().get(pk=org.pk)


def _refuse_losing_last_owner(org: Org, membership: Membership) -> None:
    """Called with the org row locked, so two concurrent demotions cannot both pass."""
    if membership.role != Role.OWNER:
        return
    others = Membership.objects.filter(org=org, role=Role.OWNER).exclude(pk=membership.pk)
    if not others.exists():
        raise Conflict(
            f"{membership.user.username} is the last owner of {org.slug}; "
            "make someone else an owner first.",
            code="last_owner",
        )


def membership_add_check(*, org: Org, user: User, role: str, actor: User | None) -> Role:
    """The refusals of `membership_add`, callable on their own (the admin form shows them)."""
    checked = _validate_role(role)
    _check_actor_may_grant(actor, org, checked)
    if user.is_service_account and user.memberships.exclude(org=org).exists():
        raise Conflict(f"Service account {user.username} already belongs to another org.")
    return checked


def membership_add(*, org: Org, user: User, role: str, actor: User | None) -> Membership:
    with transaction.atomic():
        _lock_org(org)
        role = membership_add_check(org=org, user=user, role=role, actor=actor)
        try:
            with transaction.atomic():
                membership = Membership.objects.create(org=org, user=user, role=role)
        except IntegrityError as exc:
            raise Conflict(
                f"{user.username} is already a member of {org.slug}.", code="already_member"
            ) from exc
        _sync_role_perms(user, org, role)
    return membership


def _locked_membership(org: Org, username: str) -> Membership:
    try:
        return (
            Membership.objects.select_for_update(of=("self",))
            .select_related("user")
            .get(org=org, user__username=username)
        )
    except Membership.DoesNotExist as exc:
        raise NotFound(f"{username} is not a member of {org.slug}.") from exc


def membership_change_role(*, org: Org, username: str, role: str, actor: User | None) -> Membership:
    role = _validate_role(role)
    with transaction.atomic():
        _lock_org(org)
        membership = _locked_membership(org, username)
        _check_actor_may_grant(actor, org, membership.role, role)
        if membership.role == role:
            return membership
        if role != Role.OWNER:
            _refuse_losing_last_owner(org, membership)
        membership.role = role
        membership.save(update_fields=["role"])
        _sync_role_perms(membership.user, org, role)
    return membership


def membership_remove(*, org: Org, username: str, actor: User | None) -> None:
    with transaction.atomic():
        _lock_org(org)
        membership = _locked_membership(org, username)
        _check_actor_may_grant(actor, org, membership.role)
        _refuse_losing_last_owner(org, membership)
        user = membership.user
        membership.delete()
        _sync_role_perms(user, org, None)
        # A former member's tokens for this org stop working at once.
        ApiToken.objects.filter(org=org, user=user, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )


def service_account_create(*, org: Org, name: str, role: str, actor: User | None) -> User:
    """A non-human user that belongs to `org` alone and acts through API tokens."""
    if not SERVICE_ACCOUNT_NAME.fullmatch(name):
        raise ValidationFailed.field(
            "username",
            "a service account name is 1-40 characters: a lowercase letter, then lowercase "
            "letters, digits, - or _",
        )
    username = f"{name}@{org.slug}"
    with transaction.atomic():
        if User.objects.filter(username=username).exists():
            raise Conflict(f"Service account {username} already exists.")
        user = User(username=username, is_service_account=True)
        user.set_unusable_password()
        user.save()
        membership_add(org=org, user=user, role=role, actor=actor)
    return user


# --- credentials ---------------------------------------------------------------------------------


def hash_secret(raw: str) -> str:
    # The secrets are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def api_token_issue_check(
    *, user: User, org: Org, expires_at: dt.datetime | None, actor: User | None
) -> None:
    if not Membership.objects.filter(org=org, user=user).exists():
        raise ValidationFailed.field("username", f"{user.username} is not a member of {org.slug}")
    if actor is not None and actor != user and not has_org_perm(actor, org, "manage_members"):
        raise Forbidden("Issuing tokens for another user needs the admin or owner role.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed.field("expires_at", "must be in the future")


def api_token_issue(
    *,
    user: User,
    org: Org,
    name: str,
    expires_at: dt.datetime | None = None,
    actor: User | None = None,
) -> tuple[ApiToken, str]:
    """Return the token row and its raw value; the raw value is never stored or shown again."""
    api_token_issue_check(user=user, org=org, expires_at=expires_at, actor=actor)
    raw = _new_secret(API_TOKEN_PREFIX)
    token = ApiToken.objects.create(
        user=user,
        org=org,
        name=name,
        prefix=raw[:12],
        key_hash=hash_secret(raw),
        expires_at=expires_at,
    )
    return token, raw


def worker_key_issue(*, org: Org, name: str, actor: User | None = None) -> tuple[WorkerKey, str]:
    if actor is not None and not has_org_perm(actor, org, "manage_members"):
        raise Forbidden("Issuing worker keys needs the admin or owner role.")
    raw = _new_secret(WORKER_KEY_PREFIX)
    key = WorkerKey.objects.create(
        org=org, name=name, prefix=raw[:12], key_hash=hash_secret(raw), created_by=actor
    )
    return key, raw


def credential_revoke(credential: Credential) -> bool:
    """Revoke once; returns False when it was already revoked (a repeat is harmless)."""
    updated = (
        type(credential)
        .objects.filter(pk=credential.pk, revoked_at__isnull=True)
        .update(revoked_at=timezone.now())
    )
    credential.refresh_from_db(fields=["revoked_at"])
    return updated == 1


def _authenticate(model: type[CredentialT], raw: str, related: tuple[str, ...]) -> CredentialT:
    try:
        credential = model.objects.select_related(*related).get(key_hash=hash_secret(raw))
    except model.DoesNotExist as exc:
        raise LookupError("unknown credential") from exc
    if credential.revoked_at is not None:
        raise LookupError("revoked credential")
    now = timezone.now()
    if credential.expires_at is not None and credential.expires_at <= now:
        raise LookupError("expired credential")
    touch_after = now - dt.timedelta(seconds=settings.SLUICE_TOKEN_TOUCH_INTERVAL_S)
    if credential.last_used_at is None or credential.last_used_at < touch_after:
        # Conditional, so a burst of requests writes the row once per interval, not per request.
        model.objects.filter(pk=credential.pk).exclude(last_used_at__gte=touch_after).update(
            last_used_at=now
        )
        credential.last_used_at = now
    return credential


def api_token_authenticate(raw: str) -> ApiToken:
    """The usable token for `raw`, or LookupError saying why not."""
    token = _authenticate(ApiToken, raw, ("user", "org"))
    if not token.user.is_active:
        raise LookupError("inactive user")
    return token


def worker_key_authenticate(raw: str) -> WorkerKey:
    return _authenticate(WorkerKey, raw, ("org",))


def pool_key_matches(raw: str) -> bool:
    return secrets.compare_digest(raw.encode(), settings.SLUICE_POOL_KEY.encode())
