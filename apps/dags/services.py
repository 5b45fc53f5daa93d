"""Deploy, roll back, delete, pause and resume DAGs. The API, admin and commands call these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from apps.dags import hooks, lifecycle
from apps.dags.catalog import OutputClaim, catalog_registry
from apps.dags.models import LIVE_VERSION_STATES, Dag, DagNode, DagVersion, Lane, VersionState
from apps.dags.plan import Diff, NodePlan, canonical_json, diff_plans, plan_nodes, sha256
from apps.dags.schema import MAX_CONFIG_BYTES
from apps.dags.validation import ValidatedDag, ValidationContext, validate_dag_config
from apps.orgs.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from apps.orgs.models import Org, User
from apps.secrets import services as secrets_service
from sluice_worker.handlers import handler_dirs


@dataclass
class DeployResult:
    dag: str
    version: int
    state: str
    created: bool
    dry_run: bool
    diff: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dag": self.dag,
            "version": self.version,
            "state": self.state,
            "created": self.created,
            "dry_run": self.dry_run,
            "diff": self.diff,
        }


def validation_context(org: Org) -> ValidationContext:
    return ValidationContext(
        org=org,
        catalog=catalog_registry.get(),
        using_sqlite=connection.vendor == "sqlite",
        handler_dirs=handler_dirs(settings.SLUICE_HANDLER_PATH, settings.BASE_DIR),
        known_secrets=secrets_service.known_names(org),
    )


def check_config_size(size_in_bytes: int) -> None:
    if size_in_bytes > MAX_CONFIG_BYTES:
        raise PayloadTooLarge(
            f"The DAG config is {size_in_bytes} bytes; the limit is {MAX_CONFIG_BYTES} bytes."
        )


def validate(org: Org, config: Any) -> ValidatedDag:
    check_config_size(len(canonical_json(config).encode()) if isinstance(config, dict) else 0)
    return validate_dag_config(config, validation_context(org))


def _locked_dag(org: Org, name: str, create: bool) -> Dag | None:
    if create:
        Dag.objects.get_or_create(org=org, name=name)
    return Dag.objects.select_for_update().filter(org=org, name=name).first()


def _locked_version(version: DagVersion) -> DagVersion:
    return (
        DagVersion.objects.select_for_update(of=("self",)).select_related("dag").get(pk=version.pk)
    )


def _claims(dag_name: str, nodes: list[dict[str, Any]]) -> list[OutputClaim]:
    return [
        OutputClaim(
            dag=dag_name,
            node_id=node["id"],
            dataset_id=node["output"]["dataset"],
            output=node["output"],
            path=f"nodes[{position}].output.dataset",
        )
        for position, node in enumerate(nodes)
        if node.get("output")
    ]


def _node_rows(version: DagVersion, plans: dict[str, NodePlan]) -> list[DagNode]:
    return [
        DagNode(
            version=version,
            node_id=plan.node_id,
            kind=plan.kind,
            runtime=plan.config.get("runtime", "sql" if plan.kind == "sql" else ""),
            config=plan.config,
            own_hash=plan.own_hash,
            node_hash=plan.node_hash,
            inputs=plan.inputs,
            external_inputs=plan.external_inputs,
            output_dataset=(plan.config.get("output") or {}).get("dataset", ""),
        )
        for plan in plans.values()
    ]


def _make_active(dag: Dag, version: DagVersion) -> None:
    """Flip the DAG to `version`, with its producer claims, in the caller's transaction."""
    catalog_registry.get().claim(dag.org, dag.name, _claims(dag.name, version.config["nodes"]))
    if dag.active_version_id is not None:
        lifecycle.version_supersede(_locked_version(dag.active_version))  # type: ignore[arg-type]
    lifecycle.version_activate(version)
    dag.active_version = version
    dag.retired_at = None
    dag.updated_at = timezone.now()
    dag.save(update_fields=["active_version", "retired_at", "updated_at"])


def dag_deploy(*, org: Org, config: Any, actor: User | None, dry_run: bool = False) -> DeployResult:
    """Store a new immutable version and activate it; the same config again is a no-op."""
    validated = validate(org, config)
    plans = plan_nodes(validated.config, validated.node_inputs, validated.external_inputs)
    config_hash = sha256(canonical_json(validated.config))
    with transaction.atomic():
        dag = _locked_dag(org, validated.name, create=not dry_run)
        active = dag.active_version if dag else None
        if active is not None and active.config_hash == config_hash:
            return DeployResult(
                dag=validated.name,
                version=active.number,
                state=active.state,
                created=False,
                dry_run=dry_run,
                diff=Diff().as_dict(),
            )
        old_hashes = (
            {n.node_id: (n.own_hash, n.node_hash) for n in active.nodes.all()} if active else None
        )
        diff = diff_plans(old_hashes, plans).as_dict()
        last = dag.versions.aggregate(last=Max("number"))["last"] if dag else None
        number = (last or 0) + 1
        if dry_run or dag is None:
            return DeployResult(
                dag=validated.name,
                version=number,
                state=VersionState.VALIDATED,
                created=False,
                dry_run=True,
                diff=diff,
            )
        version = DagVersion.objects.create(
            dag=dag,
            number=number,
            config=validated.config,
            config_hash=config_hash,
            diff=diff,
            created_by=actor,
        )
        DagNode.objects.bulk_create(_node_rows(version, plans))
        _make_active(dag, version)
    return DeployResult(
        dag=dag.name,
        version=version.number,
        state=version.state,
        created=True,
        dry_run=False,
        diff=diff,
    )


def dag_rollback(*, dag: Dag, version: int | None, actor: User | None) -> DagVersion:
    """Activate an earlier version again (default: the newest superseded one before the
    active). Rolling back to the version already active is a no-op."""
    with transaction.atomic():
        locked = Dag.objects.select_for_update(of=("self",)).select_related("org").get(pk=dag.pk)
        active = locked.active_version
        if version is None:
            if active is None:
                raise Conflict(f"{locked.name} has no active version to roll back from.")
            target = (
                locked.versions.filter(state=VersionState.SUPERSEDED, number__lt=active.number)
                .order_by("-number")
                .first()
            )
            if target is None:
                raise Conflict(
                    f"{locked.name} has no earlier version to roll back to.",
                    code="no_previous_version",
                )
        else:
            target = locked.versions.filter(number=version).first()
            if target is None:
                raise NotFound(f"{locked.name} has no version {version}.")
            if active is not None and target.pk == active.pk:
                return active
        _make_active(locked, _locked_version(target))
    return target


def dag_delete(*, dag: Dag, actor: User | None) -> None:
    """Retire the active version and release the DAG's datasets; the data is kept."""
    with transaction.atomic():
        locked = Dag.objects.select_for_update(of=("self",)).select_related("org").get(pk=dag.pk)
        if locked.active_version_id is not None:
            lifecycle.version_retire(_locked_version(locked.active_version))  # type: ignore[arg-type]
        catalog_registry.get().claim(locked.org, locked.name, [])
        locked.active_version = None
        locked.retired_at = locked.retired_at or timezone.now()
        locked.updated_at = timezone.now()
        locked.save(update_fields=["active_version", "retired_at", "updated_at"])


def _pause_target(dag: Dag, node: str | None, lane: str | None) -> dict[str, str | None]:
    if lane is not None and lane not in Lane.values:
        raise ValidationFailed.field("lane", f"unknown lane {lane!r}; expected live or backfill")
    if node is not None:
        version = dag.active_version
        if version is None or node not in version.node_map():
            raise ValidationFailed.field("node", f"{dag.name} has no node {node!r}")
    return {"node": node, "lane": lane}


def _set_pause(dag: Dag, node: str | None, lane: str | None, paused: bool) -> Dag:
    with transaction.atomic():
        locked = Dag.objects.select_for_update().get(pk=dag.pk)
        if node is None and lane is None:
            locked.paused = paused
        else:
            target = _pause_target(locked, node, lane)
            others = [p for p in locked.pauses if p != target]
            locked.pauses = [*others, target] if paused else others
        locked.updated_at = timezone.now()
        locked.save(update_fields=["paused", "pauses", "updated_at"])
        hooks.notify_pause_changed(locked)
    return locked


def dag_pause(*, dag: Dag, node: str | None = None, lane: str | None = None) -> Dag:
    """Stop dispatch for the DAG, one node, one lane, or one node's lane; events still arrive."""
    return _set_pause(dag, node, lane, paused=True)


def dag_resume(*, dag: Dag, node: str | None = None, lane: str | None = None) -> Dag:
    """Undo the matching pause; `{}` resumes the whole-DAG pause, not narrower ones."""
    return _set_pause(dag, node, lane, paused=False)


def version_diff(version: DagVersion) -> dict[str, list[str]]:
    """The diff of `version` against the version numbered just before it."""
    previous = (
        DagVersion.objects.filter(dag=version.dag, number__lt=version.number)
        .order_by("-number")
        .first()
    )
    old = {n.node_id: (n.own_hash, n.node_hash) for n in previous.nodes.all()} if previous else None
    new = {
        n.node_id: NodePlan(
            node_id=n.node_id,
            kind=n.kind,
            config=n.config,
            own_hash=n.own_hash,
            node_hash=n.node_hash,
            inputs=n.inputs,
            external_inputs=n.external_inputs,
        )
        for n in version.nodes.all()
    }
    return diff_plans(old, new).as_dict()


def secret_references(org: Org, name: str) -> list[str]:
    """`dag/node` of active versions' nodes that name the secret (for secrets' metadata)."""
    nodes = DagNode.objects.filter(
        version__dag__org=org, version__state__in=LIVE_VERSION_STATES
    ).select_related("version__dag")
    found = []
    for node in nodes:
        named = set(node.config.get("secrets") or [])
        named |= {r.get("secret") for r in node.config.get("routes") or []}
        if name in named:
            found.append(f"{node.version.dag.name}/{node.node_id}")
    return found
