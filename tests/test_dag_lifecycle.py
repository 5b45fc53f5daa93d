"""The DagVersion state machine refuses every move §4 does not list."""

from __future__ import annotations

import itertools

import pytest

from apps.dags import lifecycle
from apps.dags.models import Dag, DagVersion, VersionState
from tests.conftest import World

pytestmark = pytest.mark.smoke

LEGAL = {
    ("validated", "active"),
    ("validated", "building"),
    ("building", "active"),
    ("building", "failed"),
    ("building", "abandoned"),
    ("active", "superseded"),
    ("active", "retired"),
    ("superseded", "active"),
}
MOVES = {
    "active": lifecycle.version_activate,
    "building": lifecycle.version_start_building,
    "failed": lifecycle.version_fail,
    "abandoned": lifecycle.version_abandon,
    "superseded": lifecycle.version_supersede,
    "retired": lifecycle.version_retire,
}
ALL = list(itertools.product(VersionState.values, MOVES))


@pytest.mark.parametrize(("start", "target"), ALL)
def test_transition_table(world: World, start: str, target: str):
    dag = Dag.objects.create(org=world.acme, name="d")
    version = DagVersion.objects.create(dag=dag, number=1, config={}, config_hash="x", state=start)
    if (start, target) in LEGAL:
        MOVES[target](version)
        version.refresh_from_db()
        assert version.state == target
    else:
        with pytest.raises(lifecycle.IllegalTransition):
            MOVES[target](version)
        version.refresh_from_db()
        assert version.state == start


def test_the_table_in_code_matches_the_design():
    allowed = {(a, b) for a, targets in lifecycle.ALLOWED.items() for b in targets}
    assert allowed == LEGAL
