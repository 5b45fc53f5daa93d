"""Settings: the embedded default needs nothing; production refuses to guess secrets."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.smoke


def _manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SLUICE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_in_production(tmp_path: Path):
    env = {
        "SLUICE_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "SLUICE_POOL_KEY": secrets.token_urlsafe(32),
        "SLUICE_SECRET_KEYS": "ZmVybmV0LWtleS1mb3ItdGVzdHMtMDAwMDAwMDAwMDA=",
        "ALLOWED_HOSTS": "sluice.example.com",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
        "SLUICE_DATA_DIR": str(tmp_path),
    }
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (0 silenced)" in result.stdout


def test_production_without_secret_key_is_an_error(tmp_path: Path):
    result = _manage(["check"], {"SLUICE_ENV": "production", "SLUICE_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_embedded_default_is_sqlite_wal_immediate(tmp_path: Path):
    code = (
        "from django.db import connection; from django.conf import settings;"
        "c = connection.cursor();"
        "print(c.execute('PRAGMA journal_mode').fetchone()[0],"
        " c.execute('PRAGMA busy_timeout').fetchone()[0],"
        " settings.DATABASES['default']['OPTIONS']['transaction_mode'],"
        " settings.CELERY_BROKER_URL, settings.SLUICE_STORAGE_ROOT)"
    )
    result = _manage(["shell", "-c", code], {"SLUICE_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    journal, busy, mode, broker, storage = result.stdout.strip().splitlines()[-1].split()
    assert (journal, mode, broker) == ("wal", "IMMEDIATE", "filesystem://")
    assert int(busy) >= 5000
    assert storage == str(tmp_path / "storage")
    assert (tmp_path / "secret_key").exists()
    assert "Generated a development secret_key" in result.stderr


@pytest.mark.parametrize(("flag", "expected"), [("", "5"), ("false", "None")])
def test_prepared_statements_can_be_turned_off(tmp_path: Path, flag: str, expected: str):
    env = {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
        "SLUICE_DATA_DIR": str(tmp_path),
    }
    if flag:
        env["SLUICE_DB_PREPARED_STATEMENTS"] = flag
    code = (
        "from django.conf import settings; "
        "print(settings.DATABASES['default']['OPTIONS'].get('prepare_threshold'))"
    )
    result = _manage(["shell", "-c", code], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
