"""Orgs, people and credentials.

Roles live only on `Membership`; what a role may do is granted as guardian object
permissions on the `Org` by the service functions in `services.py` (see `roles.py`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from apps.orgs.roles import PERMISSIONS, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

slug_validator = RegexValidator(
    r"^[a-z][a-z0-9-]{0,62}$",
    "An org slug is 1-63 characters: a lowercase letter, then lowercase letters, digits or '-'.",
)


class User(AbstractUser):
    """A person, or a service account (`is_service_account`) that only holds API tokens."""

    is_service_account = models.BooleanField(
        default=False,
        help_text="Non-human user: a member of exactly one org, used through API tokens.",
    )

    objects: ClassVar[UserManager[User]] = UserManager()  # type: ignore[assignment]

    class Meta:
        db_table = "users"


class OrgScopedQuerySet(models.QuerySet[Any]):
    """The one access layer: every API view and admin starts from `for_user`.

    A model opts in by declaring `org_path`, the lookup from the model to its `Org`.
    """

    def for_user(self, user: User | AnonymousUser, perm: str = "view_org") -> OrgScopedQuerySet:
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_superuser:
            return self.all()
        from apps.orgs.access import orgs_with_perm

        return self.filter(**{f"{self.model.org_path}__in": orgs_with_perm(user, perm)})

    def for_org(self, org: Org) -> OrgScopedQuerySet:
        return self.filter(**{self.model.org_path: org})


class Org(models.Model):
    org_path: ClassVar[str] = "pk"

    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "orgs"
        ordering = ["slug"]
        default_permissions = ()
        permissions = [(codename, description) for codename, description in PERMISSIONS.items()]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    org_path: ClassVar[str] = "org"

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "memberships"
        constraints = [
            models.UniqueConstraint(fields=["org", "user"], name="membership_one_per_org_user"),
        ]
        ordering = ["org_id", "user_id"]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} as {self.role}"


class CredentialQuerySet(OrgScopedQuerySet):
    def usable(self) -> CredentialQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)


class Credential(models.Model):
    """A bearer secret stored only as its sha256; the raw value is shown once, at creation."""

    org_path: ClassVar[str] = "org"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Org, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = CredentialQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_usable(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class ApiToken(Credential):
    """A person's or service account's token for the public API, valid in one org."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="api_tokens")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")

    class Meta(Credential.Meta):
        db_table = "api_tokens"


class WorkerKey(Credential):
    """An org's key for the internal worker API: it fetches only that org's tasks."""

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="worker_keys")
    created_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta(Credential.Meta):
        db_table = "worker_keys"
