from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.orgs.serializers import StrictSerializer
from apps.secrets.models import Secret


class SecretInput(StrictSerializer):
    value = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        allow_blank=False,
        max_length=64 * 1024,
        help_text="The secret's value. Never returned by any endpoint.",
        error_messages={"blank": "must be a non-empty string"},
    )


class SecretOutput(serializers.ModelSerializer):
    updated_by = serializers.CharField(source="updated_by.username", default=None)
    referenced_by = serializers.SerializerMethodField(
        help_text="The DAG nodes (dag/node) of active versions that name this secret."
    )

    class Meta:
        model = Secret
        fields = ["name", "version", "created_at", "updated_at", "updated_by", "referenced_by"]

    def get_referenced_by(self, obj: Secret) -> list[str]:
        from apps.secrets.services import references

        return references(obj.org, obj.name) if obj.org else []

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return dict(super().to_representation(instance))
