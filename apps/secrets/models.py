"""Secrets: encrypted at rest, written and rotated but never read back (DESIGN.md D8)."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.orgs.models import Org, OrgScopedQuerySet


class Scope(models.TextChoices):
    PLATFORM = "platform", "Platform"
    ORG = "org", "Org"


class Secret(models.Model):
    org_path: ClassVar[str] = "org"

    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.ORG)
    org = models.ForeignKey(
        Org, on_delete=models.CASCADE, null=True, blank=True, related_name="secrets"
    )
    name = models.CharField(max_length=63)
    version = models.PositiveIntegerField(default=0, help_text="The newest version.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "secrets"
        constraints = [
            models.UniqueConstraint(
                fields=["org", "name"], condition=Q(scope="org"), name="secret_name_per_org"
            ),
            models.UniqueConstraint(
                fields=["name"], condition=Q(scope="platform"), name="platform_secret_name"
            ),
            models.CheckConstraint(
                condition=(Q(scope="org") & Q(org__isnull=False))
                | (Q(scope="platform") & Q(org__isnull=True)),
                name="secret_scope_matches_org",
            ),
        ]
        ordering = ["scope", "org_id", "name"]

    def __str__(self) -> str:
        org = self.org if self.org_id else None
        return f"{org.slug if org is not None else 'platform'}:{self.name}"


class SecretVersion(models.Model):
    """One value, encrypted with the newest Fernet key at the time (or since rotation)."""

    org_path: ClassVar[str] = "secret__org"

    secret = models.ForeignKey(Secret, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    ciphertext = models.BinaryField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "secret_versions"
        constraints = [
            models.UniqueConstraint(fields=["secret", "version"], name="secret_version_number"),
        ]
        ordering = ["secret_id", "-version"]

    def __str__(self) -> str:
        return f"{self.secret} v{self.version}"


class AuditAction(models.TextChoices):
    CREATE = "create", "Created"
    ROTATE = "rotate", "New version"
    DELETE = "delete", "Deleted"
    HANDOUT = "handout", "Handed to a task"
    REENCRYPT = "reencrypt", "Re-encrypted (key rotation)"


class SecretAudit(models.Model):
    """Who wrote, deleted or received which version, and when. Kept when the secret goes."""

    org_path: ClassVar[str] = "org"

    org = models.ForeignKey(Org, on_delete=models.CASCADE, null=True, blank=True)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    secret_name = models.CharField(max_length=63)
    version = models.PositiveIntegerField(null=True, blank=True)
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    task_id = models.UUIDField(null=True, blank=True, help_text="The task it was handed to.")
    at = models.DateTimeField(default=timezone.now)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        db_table = "secret_audit"
        indexes = [models.Index(fields=["org", "secret_name", "-at"], name="secret_audit_idx")]
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.secret_name} {self.action} {self.at:%Y-%m-%d %H:%M:%S}"
