"""Secrets in the admin: metadata only, and a write-only "set new value" form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from apps.orgs.admin_base import OrgScopedAdmin, OrgScopedInline, ReadOnlyAdminMixin
from apps.orgs.api import acting_user
from apps.secrets import services
from apps.secrets.models import Scope, Secret, SecretAudit, SecretVersion


class SecretForm(forms.ModelForm):  # type: ignore[type-arg]
    new_value = forms.CharField(
        required=False,
        strip=False,
        label="Set new value",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted as a new version, never shown again.",
    )

    class Meta:
        model = Secret
        fields = ("org", "name")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None and not data.get("new_value"):
            self.add_error("new_value", "A new secret needs a value.")
        if data.get("name"):
            try:
                services.validate_name(data["name"])
            except Exception as exc:  # a SluiceError: show its sentence on the field
                self.add_error("name", str(getattr(exc, "detail", exc)))
        return data


class SecretVersionInline(ReadOnlyAdminMixin, OrgScopedInline):
    model = SecretVersion
    fields = ("version", "created_by", "created_at")
    readonly_fields = fields
    can_delete = False


@admin.register(Secret)
class SecretAdmin(OrgScopedAdmin):
    change_perm = "write_secrets"
    form = SecretForm
    list_display = ("name", "scope", "org", "version", "updated_by", "updated_at")
    list_filter = ("scope", "org")
    search_fields = ("name",)
    list_select_related = ("org", "updated_by")
    inlines = (SecretVersionInline,)

    def get_queryset(self, request: HttpRequest) -> Any:
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(scope=Scope.ORG)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        info = ("scope", "version", "created_by", "created_at", "updated_by", "updated_at")
        return ("org", "name", *info) if obj else info

    def save_model(self, request: HttpRequest, obj: Secret, form: Any, change: bool) -> None:
        value = form.cleaned_data.get("new_value")
        if not value:
            return
        org = obj.org if obj.org_id else None
        if org is None:
            secret, _ = services.platform_secret_put(
                name=obj.name, value=value, actor=acting_user(request)
            )
        else:
            secret, _ = services.secret_put(
                org=org, name=obj.name, value=value, actor=acting_user(request)
            )
        obj.pk = secret.pk

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Versions are written by the service, never through the (read-only) inline."""
        for formset in formsets:
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    def delete_model(self, request: HttpRequest, obj: Secret) -> None:
        self.act_on(
            request,
            [obj],
            self.change_perm,
            lambda s: services.secret_delete(org=s.org, name=s.name, actor=acting_user(request)),
            "Deleted",
        )

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for secret in queryset:
            self.delete_model(request, secret)


@admin.register(SecretAudit)
class SecretAuditAdmin(ReadOnlyAdminMixin, OrgScopedAdmin):
    list_display = ("at", "org", "secret_name", "version", "action", "actor", "task_id")
    list_filter = ("action", "scope", "org")
    search_fields = ("secret_name", "=task_id")
    list_select_related = ("org", "actor")
