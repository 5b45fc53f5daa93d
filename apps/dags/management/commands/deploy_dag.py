"""Deploy a DAG config file (YAML or JSON) into an org; prints the problems or the diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.dags import services
from apps.orgs.cli import org_by_slug
from apps.orgs.errors import SluiceError


class Command(BaseCommand):
    help = "Validate and deploy a DAG config file. Exit code 1 when it is invalid."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--org", required=True)
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument(
            "--postgres-only",
            action="store_true",
            help="Deploy only when the platform runs on PostgreSQL (e.g. a postgres-backend "
            "dataset); elsewhere say so and succeed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        org = org_by_slug(options["org"])
        path: Path = options["file"]
        if options["postgres_only"] and connection.vendor != "postgresql":
            self.stdout.write(f"{path} skipped: it needs PostgreSQL (set DATABASE_URL)")
            return
        try:
            text = path.read_text()
            config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        try:
            result = services.dag_deploy(
                org=org, config=config, actor=None, dry_run=options["dry_run"]
            )
        except SluiceError as exc:
            for error in exc.errors:
                self.stderr.write(f"{error.path}: {error.message}" if error.path else error.message)
            raise CommandError(f"{path} was not deployed ({exc.code})") from exc
        verb = "would deploy" if result.dry_run else ("deployed" if result.created else "unchanged")
        self.stdout.write(f"{result.dag} v{result.version} {verb} ({result.state})")
        for key, nodes in result.diff.items():
            if nodes:
                self.stdout.write(f"  {key}: {', '.join(nodes)}")
