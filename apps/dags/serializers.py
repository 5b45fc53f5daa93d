from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.dags.models import Dag, DagVersion, Lane
from apps.orgs.serializers import StrictSerializer


class DiffOutput(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    changed = serializers.ListField(child=serializers.CharField())
    rebuild = serializers.ListField(child=serializers.CharField())


class DeployOutput(serializers.Serializer):
    dag = serializers.CharField()
    version = serializers.IntegerField()
    state = serializers.CharField()
    created = serializers.BooleanField()
    dry_run = serializers.BooleanField()
    diff = DiffOutput()


class VersionSummaryOutput(serializers.ModelSerializer):
    version = serializers.IntegerField(source="number")

    class Meta:
        model = DagVersion
        fields = ["version", "state", "created_at", "activated_at"]


class VersionDetailOutput(VersionSummaryOutput):
    dag = serializers.CharField(source="dag.name")
    created_by = serializers.CharField(source="created_by.username", default=None)
    diff = serializers.SerializerMethodField()
    nodes = serializers.SerializerMethodField()

    class Meta(VersionSummaryOutput.Meta):
        fields = [
            "dag",
            *VersionSummaryOutput.Meta.fields,
            "config",
            "config_hash",
            "created_by",
            "deactivated_at",
            "diff",
            "nodes",
        ]

    def get_diff(self, obj: DagVersion) -> dict[str, list[str]]:
        return dict(self.context["diff"])

    def get_nodes(self, obj: DagVersion) -> list[dict[str, Any]]:
        return [
            {"id": n.node_id, "kind": n.kind, "node_hash": n.node_hash} for n in obj.nodes.all()
        ]


class DagSummaryOutput(serializers.ModelSerializer):
    active_version = serializers.IntegerField(source="active_version.number", default=None)
    state = serializers.CharField(source="active_version.state", default="retired")

    class Meta:
        model = Dag
        fields = ["name", "active_version", "state", "paused", "pauses", "updated_at"]


class DagDetailOutput(DagSummaryOutput):
    config = serializers.JSONField(source="active_version.config", default=None)
    versions = serializers.SerializerMethodField()

    class Meta(DagSummaryOutput.Meta):
        fields = [*DagSummaryOutput.Meta.fields, "config", "versions", "retired_at"]

    def get_versions(self, obj: Dag) -> list[dict[str, Any]]:
        versions = obj.versions.order_by("-number")
        return list(VersionSummaryOutput(versions, many=True).data)


class RollbackInput(StrictSerializer):
    version = serializers.IntegerField(required=False, min_value=1)


class PauseInput(StrictSerializer):
    node = serializers.CharField(required=False, max_length=63)
    lane = serializers.ChoiceField(choices=Lane.choices, required=False)
