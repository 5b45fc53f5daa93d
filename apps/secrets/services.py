"""Write, rotate, delete and hand out secrets. Values never leave this module except as the
decrypted hand-out to a leased task; every write and hand-out is audited."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.orgs.errors import Conflict, NotFound, ValidationFailed
from apps.orgs.models import Org, User
from apps.secrets import crypto
from apps.secrets.models import AuditAction, Scope, Secret, SecretAudit, SecretVersion

NAME_RULE = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_VALUE_BYTES = 64 * 1024

# Higher layers (dags) register how to find the nodes that name a secret: org, name -> labels.
reference_finders: list[Callable[[Org, str], list[str]]] = []


def references(org: Org, name: str) -> list[str]:
    return sorted({label for finder in reference_finders for label in finder(org, name)})


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ValidationFailed.field(
            "name", "a secret name is a lowercase letter, then lowercase letters, digits or _"
        )
    return name


def _validate_value(value: object) -> str:
    # The messages never repeat the value.
    if not isinstance(value, str) or not value:
        raise ValidationFailed.field("value", "must be a non-empty string")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValidationFailed.field("value", f"must be at most {MAX_VALUE_BYTES} bytes")
    return value


def _audit(
    secret: Secret,
    action: str,
    version: int | None,
    actor: User | None = None,
    task_id: uuid.UUID | None = None,
) -> SecretAudit:
    return SecretAudit(
        org_id=secret.org_id,
        scope=secret.scope,
        secret_name=secret.name,
        version=version,
        action=action,
        actor=actor,
        task_id=task_id,
    )


def _put(
    scope: str, org: Org | None, name: str, value: object, actor: User | None
) -> tuple[Secret, bool]:
    validate_name(name)
    plain = _validate_value(value)
    with transaction.atomic():
        try:
            with transaction.atomic():
                secret, created = Secret.objects.get_or_create(
                    scope=scope,
                    org=org,
                    name=name,
                    defaults={"created_by": actor, "updated_by": actor},
                )
        except IntegrityError:
            secret, created = Secret.objects.get(scope=scope, org=org, name=name), False
        locked = Secret.objects.select_for_update().get(pk=secret.pk)
        locked.version += 1
        locked.updated_at, locked.updated_by = timezone.now(), actor
        locked.save(update_fields=["version", "updated_at", "updated_by"])
        SecretVersion.objects.create(
            secret=locked,
            version=locked.version,
            ciphertext=crypto.encrypt(plain),
            created_by=actor,
        )
        action = AuditAction.CREATE if created else AuditAction.ROTATE
        _audit(locked, action, locked.version, actor).save()
    return locked, created


def secret_put(*, org: Org, name: str, value: object, actor: User | None) -> tuple[Secret, bool]:
    """Create the org secret (version 1) or add a new version; returns (secret, created)."""
    return _put(Scope.ORG, org, name, value, actor)


def platform_secret_put(*, name: str, value: object, actor: User | None) -> tuple[Secret, bool]:
    """The platform's own credentials (e.g. the Delivery Service's); never handed to workers."""
    return _put(Scope.PLATFORM, None, name, value, actor)


def secret_delete(*, org: Org, name: str, actor: User | None) -> None:
    with transaction.atomic():
        secret = (
            Secret.objects.select_for_update().filter(scope=Scope.ORG, org=org, name=name).first()
        )
        if secret is None:
            raise NotFound(f"No secret {name!r}.")
        users = references(org, name)
        if users:
            raise Conflict(
                f"Secret {name!r} is named by {', '.join(users)}; deploy without it first.",
                code="secret_in_use",
            )
        _audit(secret, AuditAction.DELETE, secret.version, actor).save()
        secret.delete()


def known_names(org: Org) -> set[str]:
    return set(Secret.objects.filter(scope=Scope.ORG, org=org).values_list("name", flat=True))


def handout(org_id: int, names: Iterable[str], task_id: uuid.UUID) -> dict[str, str]:
    """The newest values of the org secrets `names`, for a task that has just been leased.
    Platform secrets are never returned. Each value handed out is audited. No query when
    the node names none (most leases)."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    secrets = list(Secret.objects.filter(scope=Scope.ORG, org_id=org_id, name__in=wanted))
    newest = {
        v.secret_id: v
        for v in SecretVersion.objects.filter(secret__in=secrets, version=F("secret__version"))
    }
    values = {}
    audits = []
    for secret in secrets:
        version = newest.get(secret.pk)
        if version is None:
            continue
        values[secret.name] = crypto.decrypt(version.ciphertext)
        audits.append(_audit(secret, AuditAction.HANDOUT, version.version, task_id=task_id))
    SecretAudit.objects.bulk_create(audits)
    return values


def rotate_keys(batch: int = 500) -> int:
    """Re-encrypt every stored value under the newest key; returns how many were rewritten."""
    rewritten = 0
    last_id = 0
    while True:
        with transaction.atomic():
            rows = list(
                SecretVersion.objects.select_for_update(of=("self",))
                .select_related("secret")
                .filter(pk__gt=last_id)
                .order_by("pk")[:batch]
            )
            if not rows:
                return rewritten
            for row in rows:
                row.ciphertext = crypto.reencrypt(row.ciphertext)
            SecretVersion.objects.bulk_update(rows, ["ciphertext"])
            SecretAudit.objects.bulk_create(
                [_audit(r.secret, AuditAction.REENCRYPT, r.version) for r in rows]
            )
            rewritten += len(rows)
            last_id = rows[-1].pk
