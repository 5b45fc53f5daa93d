from __future__ import annotations

from pathlib import Path

import pytest

from apps.orgs.roles import PERMISSIONS, ROLE_PERMISSIONS, Role

ROOT = Path(__file__).resolve().parent.parent


def role_table() -> str:
    roles = list(Role)
    lines = [
        "| permission | meaning | " + " | ".join(r.value for r in roles) + " |",
        "|---|---|" + "---|" * len(roles),
    ]
    for codename, meaning in PERMISSIONS.items():
        marks = " | ".join("yes" if codename in ROLE_PERMISSIONS[r] else "" for r in roles)
        lines.append(f"| `{codename}` | {meaning} | {marks} |")
    return "\n".join(lines)


@pytest.mark.smoke
def test_roles_doc_matches_code():
    text = (ROOT / "docs" / "roles.md").read_text()
    assert role_table() in text, "docs/roles.md is stale; paste in tests.test_docs.role_table()"
