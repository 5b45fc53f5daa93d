"""Content hashes and the diff between two DAG versions (DESIGN.md D4).

A node's `node_hash` covers its own normalized config and the hashes of everything upstream,
so a change anywhere changes the hash of every node below it. The rebuild set is the nodes
present in both versions whose hash changed and that produce data a task must recompute.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# Kinds without tasks (sources, virtual sql) or without datasets (alerts) are never rebuilt.
_REBUILT_KINDS = {"operator", "aggregator", "splitter"}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class NodePlan:
    node_id: str
    kind: str
    config: dict[str, Any]
    own_hash: str
    node_hash: str
    inputs: list[str]
    external_inputs: list[str]

    @property
    def rebuildable(self) -> bool:
        if self.kind == "sql":
            return bool(self.config.get("materialize"))
        return self.kind in _REBUILT_KINDS


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "rebuild": self.rebuild,
        }


def plan_nodes(
    config: dict[str, Any],
    node_inputs: dict[str, list[str]],
    external_inputs: dict[str, list[str]],
) -> dict[str, NodePlan]:
    """Hash every node in dependency order (the config is known to be acyclic)."""
    by_id = {node["id"]: node for node in config["nodes"]}
    plans: dict[str, NodePlan] = {}

    def build(node_id: str) -> NodePlan:
        if node_id in plans:
            return plans[node_id]
        node = by_id[node_id]
        own_hash = sha256(canonical_json(node))
        upstream = sorted(build(up).node_hash for up in node_inputs.get(node_id, []))
        outside = sorted(f"dataset:{d}" for d in external_inputs.get(node_id, []))
        node_hash = sha256(canonical_json([own_hash, upstream, outside]))
        plans[node_id] = NodePlan(
            node_id=node_id,
            kind=node["kind"],
            config=node,
            own_hash=own_hash,
            node_hash=node_hash,
            inputs=list(node_inputs.get(node_id, [])),
            external_inputs=list(external_inputs.get(node_id, [])),
        )
        return plans[node_id]

    for node in config["nodes"]:
        build(node["id"])
    return {node["id"]: plans[node["id"]] for node in config["nodes"]}


def diff_plans(old: dict[str, tuple[str, str]] | None, new: dict[str, NodePlan]) -> Diff:
    """`old` maps node id -> (own_hash, node_hash) of the version being replaced."""
    old = old or {}
    diff = Diff()
    for node_id, plan in new.items():
        if node_id not in old:
            diff.added.append(node_id)
            continue
        own_hash, node_hash = old[node_id]
        if own_hash != plan.own_hash:
            diff.changed.append(node_id)
        if node_hash != plan.node_hash and plan.rebuildable:
            diff.rebuild.append(node_id)
    diff.removed = [node_id for node_id in old if node_id not in new]
    return diff
