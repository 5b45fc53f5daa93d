from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.orgs.models import ApiToken, Membership
from apps.orgs.roles import Role


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is a 400 naming it rather than a silent no-op."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


class ErrorItemSerializer(serializers.Serializer):
    path = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """The body of every 4xx and 5xx answer."""

    code = serializers.CharField(help_text="Stable snake_case identifier, e.g. validation_error.")
    detail = serializers.CharField(help_text="One plain sentence.")
    # DRF's metaclass moves declared fields into `_declared_fields`, so this field does not
    # replace the `Serializer.errors` property at runtime; mypy cannot see that.
    errors = ErrorItemSerializer(many=True)  # type: ignore[assignment]


class MemberOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    is_service_account = serializers.BooleanField(source="user.is_service_account")

    class Meta:
        model = Membership
        fields = ["username", "role", "is_service_account", "created_at"]


class MemberCreateInput(StrictSerializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)
    service_account = serializers.BooleanField(
        default=False,
        help_text="Create a service account named `<username>@<org>` instead of adding a user.",
    )


class MemberUpdateInput(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class TokenOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    org = serializers.CharField(source="org.slug")

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "username",
            "org",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
        ]


class TokenCreatedOutput(TokenOutput):
    token = serializers.SerializerMethodField(help_text="The raw token, shown only in this answer.")

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "token"]

    def get_token(self, obj: ApiToken) -> str:
        return str(self.context["raw_token"])


class TokenCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    username = serializers.CharField(
        required=False,
        help_text="Issue the token for this member (e.g. a service account); admins only.",
    )
