"""The DagVersion state machine (DESIGN.md §4), in one place.

    validated -> active | building;  building -> active | failed | abandoned
    active -> superseded | retired;  superseded -> active (rollback)

Each transition takes a version row locked with `select_for_update` by the caller's
transaction and refuses any move the machine does not allow.
"""

from __future__ import annotations

from django.utils import timezone

from apps.dags.models import DagVersion, VersionState
from apps.orgs.errors import Conflict

S = VersionState
ALLOWED: dict[str, frozenset[str]] = {
    S.VALIDATED: frozenset({S.ACTIVE, S.BUILDING}),
    S.BUILDING: frozenset({S.ACTIVE, S.FAILED, S.ABANDONED}),
    S.ACTIVE: frozenset({S.SUPERSEDED, S.RETIRED}),
    S.SUPERSEDED: frozenset({S.ACTIVE}),
    S.FAILED: frozenset(),
    S.ABANDONED: frozenset(),
    S.RETIRED: frozenset(),
}


class IllegalTransition(Conflict):
    code = "illegal_transition"


def _move(version: DagVersion, to: str) -> DagVersion:
    if to not in ALLOWED[version.state]:
        raise IllegalTransition(
            f"{version.dag.name} v{version.number} cannot go from {version.state} to {to}."
        )
    version.state = to
    now = timezone.now()
    fields = ["state"]
    if to == S.ACTIVE:
        version.activated_at, version.deactivated_at = now, None
        fields += ["activated_at", "deactivated_at"]
    elif to in {S.SUPERSEDED, S.RETIRED}:
        version.deactivated_at = now
        fields.append("deactivated_at")
    version.save(update_fields=fields)
    return version


def version_activate(version: DagVersion) -> DagVersion:
    """validated -> active, building -> active (cutover) or superseded -> active (rollback)."""
    return _move(version, S.ACTIVE)


def version_start_building(version: DagVersion) -> DagVersion:
    return _move(version, S.BUILDING)


def version_fail(version: DagVersion) -> DagVersion:
    return _move(version, S.FAILED)


def version_abandon(version: DagVersion) -> DagVersion:
    return _move(version, S.ABANDONED)


def version_supersede(version: DagVersion) -> DagVersion:
    return _move(version, S.SUPERSEDED)


def version_retire(version: DagVersion) -> DagVersion:
    return _move(version, S.RETIRED)
