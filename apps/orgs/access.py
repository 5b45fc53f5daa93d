"""Who may do what in which org. The role grants live as guardian object permissions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardian.shortcuts import get_objects_for_user

from apps.orgs.roles import perm_name

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser
    from django.db.models import QuerySet

    from apps.orgs.models import Org, User


def orgs_with_perm(user: User | AnonymousUser, codename: str = "view_org") -> QuerySet[Org]:
    """The orgs in which `user` holds `codename`; every org for a superuser."""
    from apps.orgs.models import Org

    if not user.is_authenticated or not user.is_active:
        return Org.objects.none()
    if user.is_superuser:
        return Org.objects.all()
    return get_objects_for_user(  # type: ignore[no-any-return]
        user, perm_name(codename), klass=Org, accept_global_perms=False, with_superuser=False
    )


def has_org_perm(user: User | AnonymousUser, org: Org, codename: str) -> bool:
    """One query: roles are granted to users directly (never through groups), so the user's
    own object permission is the whole answer."""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import UserObjectPermission

    perm_name(codename)  # refuses an unknown codename
    return UserObjectPermission.objects.filter(
        user_id=user.pk,
        permission__codename=codename,
        permission__content_type=ContentType.objects.get_for_model(org),
        object_pk=str(org.pk),
    ).exists()


def org_of(obj: Any) -> Org:
    """Follow a model's `org_path` from an instance to its org."""
    from apps.orgs.models import Org

    if isinstance(obj, Org):
        return obj
    target = obj
    for part in type(obj).org_path.split("__"):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]
