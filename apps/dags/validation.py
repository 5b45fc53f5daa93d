"""DAG config validation: every problem at once, each with a path and a plain sentence.

Structure comes from the JSON Schema (`schema.py`); the rest is checked here: node
references and cycles, producers, runtimes and their fields, handlers, SQL, Arrow types,
backends, secrets. The result is the normalized config (defaults filled in, dataset ids in
lowercase) that a deploy hashes and stores.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError

from apps.dags import hooks
from apps.dags import schema as dag_schema
from apps.dags.catalog import DatasetCatalog
from apps.orgs.errors import Conflict, FieldError, ValidationFailed
from apps.orgs.models import Org
from sluice_worker.arrow_types import parse_arrow_type
from sluice_worker.handlers import HandlerNotFound, check_handler

_VALIDATOR = Draft202012Validator(dag_schema.dag_json_schema())
_ALL_NODE_FIELDS = {name for kind in dag_schema.NODE_KINDS for name in dag_schema.node_fields(kind)}
_TYPE_NAMES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
}


@dataclass
class ValidationContext:
    org: Org | None
    catalog: DatasetCatalog | None
    using_sqlite: bool
    handler_dirs: list[Path]
    known_secrets: set[str] | None = None  # None: the org's secrets are not checked


@dataclass
class ValidatedDag:
    name: str
    config: dict[str, Any]
    # node id -> the node ids (same DAG) and dataset ids (other DAGs) it reads
    node_inputs: dict[str, list[str]] = field(default_factory=dict)
    external_inputs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.config["nodes"])


def format_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def normalize_dataset_id(value: str) -> str:
    return value.strip().lower()


# --- structure (JSON Schema) ----------------------------------------------------------------------


def _schema_errors(error: SchemaError) -> list[FieldError]:
    path = list(error.absolute_path)
    where = format_path(path)
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if custom and error.validator in {"enum", "pattern"}:
        return [FieldError(where, custom.format(value=error.instance))]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        errors = []
        for key in sorted(set(error.instance) - allowed):
            is_node = len(path) == 2 and path[0] == "nodes"
            if is_node and key in _ALL_NODE_FIELDS:
                kind = error.instance.get("kind")
                message = f"{key!r} is not a field of a {kind} node"
            else:
                message = f"unknown key {key!r}{did_you_mean(key, allowed)}"
            errors.append(FieldError(format_path([*path, key]), message))
        return errors
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        kind = error.instance.get("kind")
        owner = f" of a {kind} node" if kind and path and path[0] == "nodes" else ""
        return [
            FieldError(format_path([*path, key]), f"missing required field {key!r}{owner}")
            for key in missing
        ]
    if error.validator == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else expected
        wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        return [FieldError(where, f"must be {wanted}")]
    if error.validator == "minItems":
        return [FieldError(where, f"must have at least {error.validator_value} item(s)")]
    if error.validator == "maxItems":
        return [FieldError(where, f"must have at most {error.validator_value} item(s)")]
    if error.validator == "minimum":
        return [FieldError(where, f"must be at least {error.validator_value}")]
    if error.validator == "maximum":
        return [FieldError(where, f"must be at most {error.validator_value}")]
    if error.validator == "maxLength":
        return [FieldError(where, f"must be at most {error.validator_value} characters")]
    if error.validator == "minLength":
        return [FieldError(where, "must not be empty")]
    if error.validator == "uniqueItems":
        return [FieldError(where, "must not repeat an item")]
    return [FieldError(where, error.message)]


def _structural_errors(config: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    for error in sorted(_VALIDATOR.iter_errors(config), key=lambda e: list(e.absolute_path)):
        errors.extend(_schema_errors(error))
    unique: dict[tuple[str, str], FieldError] = {}
    for err in errors:
        unique.setdefault((err.path, err.message), err)
    return list(unique.values())


# --- semantics ---------------------------------------------------------------------------------


class _Checker:
    def __init__(self, config: dict[str, Any], ctx: ValidationContext) -> None:
        self.config = config
        self.ctx = ctx
        self.errors: list[FieldError] = []
        self.conflicts: list[FieldError] = []
        self.nodes: list[dict[str, Any]] = [
            n for n in config.get("nodes", []) if isinstance(n, dict)
        ]
        self.index: dict[str, int] = {}
        self.node_inputs: dict[str, list[str]] = {}
        self.external_inputs: dict[str, list[str]] = {}

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def run(self) -> None:
        self._ids()
        produced = self._outputs()
        for position, node in enumerate(self.nodes):
            self._node_fields(position, node)
        self._inputs(produced)
        self._cycles()
        self._producers(produced)

    def _ids(self) -> None:
        for position, node in enumerate(self.nodes):
            node_id = node.get("id")
            if not isinstance(node_id, str):
                continue
            if node_id in self.index:
                first = self.index[node_id]
                self.error(
                    f"nodes[{position}].id",
                    f"duplicate node id {node_id!r} (first at nodes[{first}])",
                )
            else:
                self.index[node_id] = position

    def _outputs(self) -> dict[str, int]:
        """dataset id -> position of the node producing it, after normalizing the ids."""
        produced: dict[str, int] = {}
        for position, node in enumerate(self.nodes):
            output = node.get("output")
            if not isinstance(output, dict) or not isinstance(output.get("dataset"), str):
                continue
            dataset = normalize_dataset_id(output["dataset"])
            output["dataset"] = dataset
            if dataset in produced:
                other = self.nodes[produced[dataset]].get("id")
                self.error(
                    f"nodes[{position}].output.dataset",
                    f"dataset {dataset!r} is also produced by node {other!r}",
                )
            else:
                produced[dataset] = position
        return produced

    def _node_fields(self, position: int, node: dict[str, Any]) -> None:
        kind = node.get("kind")
        where = f"nodes[{position}]"
        if kind == "operator":
            self._operator_runtime(where, node)
        if kind == "sql":
            self._sql(where, node)
        if kind == "alert" and isinstance(node.get("condition"), str):
            self._parse_sql(f"{where}.condition", node["condition"])
        output = node.get("output")
        if isinstance(output, dict):
            self._output(f"{where}.output", output)
        for check in hooks.node_checks:
            for field_name, message in check(node):
                self.error(f"{where}.{field_name}", message)
        if self.ctx.known_secrets is not None:
            for i, name in enumerate(node.get("secrets") or []):
                if isinstance(name, str) and name not in self.ctx.known_secrets:
                    self.error(
                        f"{where}.secrets[{i}]",
                        f"the org has no secret {name!r}"
                        f"{did_you_mean(name, self.ctx.known_secrets)}",
                    )
            for i, route in enumerate(node.get("routes") or []):
                secret = route.get("secret") if isinstance(route, dict) else None
                if isinstance(secret, str) and secret not in self.ctx.known_secrets:
                    self.error(f"{where}.routes[{i}].secret", f"the org has no secret {secret!r}")

    def _operator_runtime(self, where: str, node: dict[str, Any]) -> None:
        runtime = node.get("runtime")
        needs = {"python": "handler", "ecs": "queue", "lambda": "function"}
        if runtime not in needs:
            return
        required = needs[runtime]
        if required not in node:
            self.error(f"{where}.{required}", f"a {runtime} operator needs {required!r}")
        allowed = {"python": {"handler"}, "ecs": {"queue", "image"}, "lambda": {"function"}}
        for misplaced in sorted({"handler", "queue", "function", "image"} - allowed[runtime]):
            if misplaced in node:
                self.error(
                    f"{where}.{misplaced}", f"{misplaced!r} does not apply to the {runtime} runtime"
                )
        if runtime == "python" and isinstance(node.get("handler"), str):
            try:
                check_handler(node["handler"], self.ctx.handler_dirs)
            except HandlerNotFound as exc:
                self.error(f"{where}.handler", str(exc))

    def _sql(self, where: str, node: dict[str, Any]) -> None:
        if isinstance(node.get("query"), str):
            self._parse_sql(f"{where}.query", node["query"])
        materialize = node.get("materialize", False)
        if materialize and "output" not in node:
            self.error(f"{where}.output", "a materialized sql node needs 'output'")
        if not materialize and "output" in node:
            self.error(f"{where}.output", "'output' needs 'materialize: true'")

    def _parse_sql(self, path: str, query: str) -> None:
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else "syntax error"
            self.error(path, f"DuckDB cannot parse the SQL: {first_line}")
            return
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            self.error(path, "must be exactly one SELECT statement")

    def _output(self, where: str, output: dict[str, Any]) -> None:
        columns = output.get("schema")
        if isinstance(columns, dict):
            for column, type_name in columns.items():
                if isinstance(type_name, str):
                    try:
                        parse_arrow_type(type_name)
                    except ValueError as exc:
                        self.error(f"{where}.schema.{column}", str(exc))
            for i, key in enumerate(output.get("unique_key") or []):
                if isinstance(key, str) and key not in columns:
                    self.error(
                        f"{where}.unique_key[{i}]",
                        f"column {key!r} is not in the declared schema{did_you_mean(key, columns)}",
                    )
        if output.get("backend") == "postgres" and self.ctx.using_sqlite:
            self.error(
                f"{where}.backend",
                "the postgres backend needs PostgreSQL; this platform runs on SQLite",
            )

    def _inputs(self, produced: dict[str, int]) -> None:
        external: set[str] = set()
        for node in self.nodes:
            for ref in node.get("inputs") or []:
                if isinstance(ref, str) and "." in ref:
                    dataset = normalize_dataset_id(ref)
                    if dataset not in produced:
                        external.add(dataset)
        registered = (
            self.ctx.catalog.lookup(self.ctx.org, external)
            if external and self.ctx.catalog and self.ctx.org
            else {}
        )
        for position, node in enumerate(self.nodes):
            node_id = node.get("id")
            refs = node.get("inputs")
            if not isinstance(node_id, str) or not isinstance(refs, list):
                continue
            own: list[str] = []
            outside: list[str] = []
            for i, ref in enumerate(refs):
                path = f"nodes[{position}].inputs[{i}]"
                if not isinstance(ref, str):
                    continue
                if "." not in ref:
                    if ref not in self.index:
                        self.error(path, f"unknown node {ref!r}{did_you_mean(ref, self.index)}")
                        continue
                    own.append(ref)
                    upstream = self.nodes[self.index[ref]]
                    self._check_feeds(path, node, upstream)
                    continue
                dataset = normalize_dataset_id(ref)
                refs[i] = dataset
                if dataset in produced:
                    upstream_id = self.nodes[produced[dataset]].get("id")
                    if isinstance(upstream_id, str):
                        own.append(upstream_id)
                    continue
                if dataset not in registered or registered[dataset].producer_dag is None:
                    known = (
                        self.ctx.catalog.known_ids(self.ctx.org)
                        if (self.ctx.catalog and self.ctx.org)
                        else []
                    )
                    self.error(
                        path,
                        f"unknown dataset {dataset!r}: no node of this DAG or DAG of the org "
                        f"produces it{did_you_mean(dataset, known)}",
                    )
                    continue
                outside.append(dataset)
            self.node_inputs[node_id] = own
            self.external_inputs[node_id] = outside

    def _check_feeds(self, path: str, node: dict[str, Any], upstream: dict[str, Any]) -> None:
        kind = upstream.get("kind")
        if kind == "alert":
            self.error(path, f"node {upstream.get('id')!r} is an alert and has no output")
        elif kind == "sql" and not upstream.get("materialize", False) and node.get("kind") != "sql":
            self.error(
                path,
                f"node {upstream.get('id')!r} is virtual (materialize: false) and emits no "
                "events; only sql nodes can read it",
            )

    def _cycles(self) -> None:
        white, grey, black = 0, 1, 2
        colour = dict.fromkeys(self.node_inputs, white)
        reported: set[frozenset[str]] = set()

        def visit(node_id: str, trail: list[str]) -> None:
            colour[node_id] = grey
            trail.append(node_id)
            for upstream in self.node_inputs.get(node_id, []):
                if colour.get(upstream) == grey:
                    cycle = trail[trail.index(upstream) :]
                    key = frozenset(cycle)
                    if key not in reported:
                        reported.add(key)
                        # The trail follows inputs upstream; print it the way data flows.
                        loop = " -> ".join([cycle[0], *reversed(cycle[1:]), cycle[0]])
                        self.error(f"nodes[{self.index[upstream]}].inputs", f"cycle: {loop}")
                elif colour.get(upstream) == white:
                    visit(upstream, trail)
            trail.pop()
            colour[node_id] = black

        for node_id in list(self.node_inputs):
            if colour[node_id] == white:
                visit(node_id, [])

    def _producers(self, produced: dict[str, int]) -> None:
        if not (self.ctx.catalog and self.ctx.org and produced):
            return
        name = self.config.get("name")
        registered = self.ctx.catalog.lookup(self.ctx.org, produced)
        for dataset, position in produced.items():
            entry = registered.get(dataset)
            if entry and entry.producer_dag not in (None, name):
                self.conflicts.append(
                    FieldError(
                        f"nodes[{position}].output.dataset",
                        f"dataset {dataset!r} is already produced by DAG "
                        f"{entry.producer_dag!r}, node {entry.producer_node!r}",
                    )
                )


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    normalized = copy.deepcopy(config)
    for node in normalized["nodes"]:
        kind = node["kind"]
        if kind in {"operator", "sql", "alert"}:
            node["retry"] = {**dag_schema.DEFAULT_RETRY, **node.get("retry", {})}
            node.setdefault("timeout_s", dag_schema.DEFAULT_TIMEOUT_S)
            node["concurrency"] = {**dag_schema.DEFAULT_CONCURRENCY, **node.get("concurrency", {})}
        if kind == "operator":
            node.setdefault("secrets", [])
            node.setdefault("config", {})
        if kind == "sql":
            node.setdefault("materialize", False)
        if kind == "alert":
            node.setdefault("severity", "error")
            node.setdefault("max_event_age_s", dag_schema.DEFAULT_MAX_EVENT_AGE_S)
        output = node.get("output")
        if output is not None:
            output.setdefault("backend", "parquet")
            output.setdefault("range_type", "timestamp")
            output.setdefault("update_strategy", "append")
            output["retention"] = {**dag_schema.DEFAULT_RETENTION, **output.get("retention", {})}
    return normalized


def validate_dag_config(raw: Any, ctx: ValidationContext) -> ValidatedDag:
    """The normalized config, or ValidationFailed (400) / Conflict producer_conflict (409)."""
    if not isinstance(raw, dict):
        raise ValidationFailed(
            "The DAG config must be an object.", errors=[FieldError("", "must be an object")]
        )
    config = copy.deepcopy(raw)
    errors = _structural_errors(config)
    checker = _Checker(config, ctx)
    checker.run()
    errors.extend(checker.errors)
    if errors:
        all_errors = [*errors, *checker.conflicts]
        summary = "; ".join(f"{e.path}: {e.message}" if e.path else e.message for e in all_errors)
        raise ValidationFailed(
            f"The DAG config has {len(all_errors)} problem(s): {summary}", errors=all_errors
        )
    if checker.conflicts:
        raise Conflict(
            "; ".join(e.message for e in checker.conflicts),
            code="producer_conflict",
            errors=checker.conflicts,
        )
    return ValidatedDag(
        name=config["name"],
        config=_with_defaults(config),
        node_inputs=checker.node_inputs,
        external_inputs=checker.external_inputs,
    )
