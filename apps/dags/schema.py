"""The DAG config schema (DESIGN.md §5) as JSON Schema, published at /v1/schema/dag.json.

The JSON Schema settles structure: known keys, types, required fields per node kind. Rules
that need more than one node, the org or the platform (cycles, producers, handlers, SQL,
Arrow types, backends) are checked in `validation.py`. `x-message` on a subschema gives the
plain sentence used when a value fails it.
"""

from __future__ import annotations

from typing import Any

SEGMENT = r"[a-z][a-z0-9_]*"
NODE_ID_PATTERN = rf"^{SEGMENT}$"
# Dataset ids are case-insensitive on input (normalized to lowercase), so the pattern allows both.
DATASET_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$"
DAG_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"

NODE_KINDS = ("source", "operator", "sql", "aggregator", "splitter", "alert")
OPERATOR_RUNTIMES = ("python", "ecs", "lambda")
BACKENDS = ("parquet", "postgres")
RANGE_TYPES = ("timestamp", "int", "string")
UPDATE_STRATEGIES = ("append", "replace")
ALERT_CHANNELS = ("pagerduty", "slack", "webhook")
SEVERITIES = ("critical", "error", "warning", "info")
LANES = ("live", "backfill")

MAX_NODES = 500
MAX_CONFIG_BYTES = 1024 * 1024

DEFAULT_RETRY = {"max_attempts": 3, "backoff_s": 5, "max_backoff_s": 300}
DEFAULT_TIMEOUT_S = 3600
DEFAULT_CONCURRENCY = {"live": 32, "backfill": 8}
DEFAULT_RETENTION = {"keep_generations": 2, "days": 7}
DEFAULT_MAX_EVENT_AGE_S = 3600

SEGMENT_RULE = "a lowercase letter, then lowercase letters, digits or _"
DATASET_RULE = (
    "1-128 characters of dot-separated segments, each a letter, then letters, digits or _"
)


def _int(minimum: int, maximum: int | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, **extra}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _enum(values: tuple[str, ...], what: str) -> dict[str, Any]:
    return {
        "type": "string",
        "enum": list(values),
        "x-message": f"unknown {what} {{value!r}}; expected one of {', '.join(values)}",
    }


NODE_REF = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": "A node id of this DAG, or the dataset id of another DAG's dataset.",
}

DEFINITIONS: dict[str, Any] = {
    "output": _object(
        {
            "dataset": {
                "type": "string",
                "maxLength": 128,
                "pattern": DATASET_ID_PATTERN,
                "x-message": f"{{value!r}} is not a valid dataset id: {DATASET_RULE}",
            },
            "backend": _enum(BACKENDS, "backend"),
            "range_type": _enum(RANGE_TYPES, "range_type"),
            "schema": {
                "type": "object",
                "additionalProperties": {"type": "string", "minLength": 1},
                "description": "{column: Arrow type name}, e.g. int64, string, "
                "timestamp[us, tz=UTC].",
            },
            "update_strategy": _enum(UPDATE_STRATEGIES, "update_strategy"),
            "unique_key": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "retention": _object(
                {"keep_generations": _int(1, 100), "days": _int(0, 3650)},
            ),
        },
        required=("dataset",),
    ),
    "retry": _object(
        {
            "max_attempts": _int(1, 100),
            "backoff_s": {"type": "number", "minimum": 0},
            "max_backoff_s": {"type": "number", "minimum": 0},
        }
    ),
    "concurrency": _object({"live": _int(1, 10_000), "backfill": _int(1, 10_000)}),
    "route": _object(
        {
            "channel": _enum(ALERT_CHANNELS, "alert channel"),
            "secret": {
                "type": "string",
                "pattern": NODE_ID_PATTERN,
                "x-message": f"{{value!r}} is not a valid secret name: {SEGMENT_RULE}",
            },
        },
        required=("channel", "secret"),
    ),
}

_REF = {name: {"$ref": f"#/$defs/{name}"} for name in DEFINITIONS}

COMMON_FIELDS: dict[str, Any] = {
    "id": {
        "type": "string",
        "maxLength": 63,
        "pattern": NODE_ID_PATTERN,
        "x-message": f"{{value!r}} is not a valid node id: {SEGMENT_RULE}, no dots",
    },
    "kind": _enum(NODE_KINDS, "node kind"),
    "description": {"type": "string", "maxLength": 2000},
}
_INPUTS = {"type": "array", "items": NODE_REF, "minItems": 1, "maxItems": 100}
_TASK_FIELDS: dict[str, Any] = {
    "retry": _REF["retry"],
    "timeout_s": _int(1, 7 * 86400),
    "concurrency": _REF["concurrency"],
}

# kind -> (fields beyond the common ones, required fields)
KIND_FIELDS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "source": ({"output": _REF["output"]}, ("output",)),
    "operator": (
        {
            "runtime": _enum(OPERATOR_RUNTIMES, "runtime"),
            "handler": {"type": "string", "minLength": 1, "maxLength": 200},
            "queue": {"type": "string", "minLength": 1, "maxLength": 1024},
            "function": {"type": "string", "minLength": 1, "maxLength": 1024},
            "image": {"type": "string", "minLength": 1, "maxLength": 1024},
            "inputs": _INPUTS,
            "output": _REF["output"],
            "secrets": {
                "type": "array",
                "items": {
                    "type": "string",
                    "pattern": NODE_ID_PATTERN,
                    "x-message": f"{{value!r}} is not a valid secret name: {SEGMENT_RULE}",
                },
                "uniqueItems": True,
            },
            "config": {"type": "object", "description": "Free-form, handed to the operator."},
            **_TASK_FIELDS,
        },
        ("runtime", "inputs", "output"),
    ),
    "sql": (
        {
            "inputs": _INPUTS,
            "query": {"type": "string", "minLength": 1, "maxLength": 100_000},
            "materialize": {"type": "boolean"},
            "output": _REF["output"],
            **_TASK_FIELDS,
        },
        ("inputs", "query"),
    ),
    "aggregator": (
        {
            "inputs": {**_INPUTS, "maxItems": 1},
            "batch": _object(
                {"max_events": _int(1, 1_000_000), "max_wait_s": {"type": "number", "minimum": 0}},
                required=("max_events", "max_wait_s"),
            ),
        },
        ("inputs", "batch"),
    ),
    "splitter": (
        {"inputs": {**_INPUTS, "maxItems": 1}, "chunk": _int(1, 1_000_000)},
        ("inputs", "chunk"),
    ),
    "alert": (
        {
            "inputs": _INPUTS,
            "condition": {"type": "string", "minLength": 1, "maxLength": 100_000},
            "severity": _enum(SEVERITIES, "severity"),
            "max_event_age_s": _int(0, 30 * 86400),
            "routes": {"type": "array", "items": _REF["route"], "minItems": 1},
            **_TASK_FIELDS,
        },
        ("inputs", "condition", "routes"),
    ),
}


def node_fields(kind: str) -> dict[str, Any]:
    return {**COMMON_FIELDS, **KIND_FIELDS[kind][0]}


def dag_json_schema() -> dict[str, Any]:
    per_kind = [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": _object(node_fields(kind), required=("id", "kind", *required)),
        }
        for kind, (_, required) in KIND_FIELDS.items()
    ]
    node = {
        "type": "object",
        "required": ["id", "kind"],
        "properties": COMMON_FIELDS,
        "allOf": per_kind,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://sluice.dev/schema/dag.json",
        "title": "Sluice DAG config",
        "type": "object",
        "required": ["name", "nodes"],
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "pattern": DAG_NAME_PATTERN,
                "x-message": "{value!r} is not a valid DAG name: 1-63 characters, a lowercase "
                "letter, then lowercase letters, digits, _ or -",
            },
            "description": {"type": "string", "maxLength": 2000},
            "nodes": {"type": "array", "items": node, "minItems": 1, "maxItems": MAX_NODES},
        },
        "$defs": DEFINITIONS,
    }
