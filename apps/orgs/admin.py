from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from apps.orgs import services
from apps.orgs.access import orgs_with_perm
from apps.orgs.admin_base import OrgScopedAdmin, OrgScopedInline
from apps.orgs.api import acting_user
from apps.orgs.errors import SluiceError
from apps.orgs.models import ApiToken, Membership, Org, User, WorkerKey

CREDENTIAL_FIELDS: tuple[str, ...] = (
    "name",
    "prefix",
    "created_at",
    "last_used_at",
    "expires_at",
    "revoked_at",
)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):  # type: ignore[type-arg]
    """Users are platform-wide, so only superusers (platform staff) manage them here."""

    list_display = ("username", "email", "is_service_account", "is_staff", "is_superuser")
    list_filter = ("is_service_account", "is_staff", "is_superuser", "is_active")
    fieldsets = (*DjangoUserAdmin.fieldsets, ("Sluice", {"fields": ("is_service_account",)}))  # type: ignore[misc]


def _members_choice(request: HttpRequest) -> QuerySet[User]:
    if request.user.is_superuser:
        return User.objects.all()
    managed = orgs_with_perm(request.user, "manage_members")
    return User.objects.filter(memberships__org__in=managed).distinct()


class MembershipInlineForm(forms.ModelForm):  # type: ignore[type-arg]
    """Members are added by username, like the API, so no list of every user is shown."""

    username = forms.CharField(max_length=150)

    class Meta:
        model = Membership
        fields = ("role",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["username"].initial = self.instance.user.username
            self.fields["username"].disabled = True

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"]
        user = User.objects.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(f"No user named {username!r}.")
        self.instance.user = user
        return username


class MembershipInline(OrgScopedInline):
    model = Membership
    form = MembershipInlineForm
    fields = ("username", "role", "created_at")
    readonly_fields = ("created_at",)


class CredentialInline(OrgScopedInline):
    """Read-only: a raw token exists only in the answer that created it."""

    fields = CREDENTIAL_FIELDS
    readonly_fields = CREDENTIAL_FIELDS
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ApiTokenInline(CredentialInline):
    model = ApiToken
    fields = ("user", *CREDENTIAL_FIELDS)
    readonly_fields = fields


class WorkerKeyInline(CredentialInline):
    model = WorkerKey


@admin.register(Org)
class OrgAdmin(OrgScopedAdmin):
    list_display = ("slug", "name", "created_at")
    search_fields = ("slug", "name")
    inlines = (MembershipInline, ApiTokenInline, WorkerKeyInline)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def save_formset(
        self, request: HttpRequest, form: ModelForm, formset: BaseInlineFormSet, change: bool
    ) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        # Memberships change through the services, which keep the role's permissions in step.
        org: Org = form.instance
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for member_form in formset.forms:
            deleted = member_form in formset.deleted_forms
            if not member_form.has_changed() and not deleted:
                continue
            membership: Membership = member_form.instance
            username, role = membership.user.username, member_form.cleaned_data.get("role")
            try:
                if deleted:
                    if membership.pk:
                        services.membership_remove(
                            org=org, username=username, actor=acting_user(request)
                        )
                        formset.deleted_objects.append(membership)
                elif membership.pk is None:
                    membership = services.membership_add(
                        org=org, user=membership.user, role=role, actor=acting_user(request)
                    )
                    formset.new_objects.append(membership)
                else:
                    services.membership_change_role(
                        org=org, username=username, role=role, actor=acting_user(request)
                    )
                    formset.changed_objects.append((membership, ["role"]))
            except SluiceError as exc:
                self.message_user(request, exc.detail, messages.ERROR)


class ServiceCheckedForm(forms.ModelForm):  # type: ignore[type-arg]
    """Runs the service's own refusals in `clean`, so they show as form errors, not a crash."""

    request: HttpRequest

    def service_check(self, data: dict[str, Any]) -> None:
        """Subclasses call the service's check function here."""

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk is None and not self.errors:
            try:
                self.service_check(data)
            except SluiceError as exc:
                raise forms.ValidationError(exc.detail) from exc
        return data


class RequestFormMixin:
    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)  # type: ignore[misc]
        return type(form.__name__, (form,), {"request": request})


class MembershipForm(ServiceCheckedForm):
    class Meta:
        model = Membership
        fields = ("org", "user", "role")

    def service_check(self, data: dict[str, Any]) -> None:
        services.membership_add_check(
            org=data["org"], user=data["user"], role=data["role"], actor=acting_user(self.request)
        )


@admin.register(Membership)
class MembershipAdmin(RequestFormMixin, OrgScopedAdmin):
    form = MembershipForm
    list_display = ("user", "org", "role", "created_at")
    list_filter = ("role", "org")
    search_fields = ("user__username", "org__slug")
    list_select_related = ("user", "org")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("org", "user") if obj else ()

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            kwargs["queryset"] = _members_choice(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        try:
            if change:
                services.membership_change_role(
                    org=obj.org,
                    username=obj.user.username,
                    role=obj.role,
                    actor=acting_user(request),
                )
                return
        except SluiceError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        obj.pk = services.membership_add(
            org=obj.org, user=obj.user, role=obj.role, actor=acting_user(request)
        ).pk

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        self.delete_queryset(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        self.act_on(
            request,
            queryset,
            self.change_perm,
            lambda m: services.membership_remove(
                org=m.org, username=m.user.username, actor=acting_user(request)
            ),
            "Removed members",
        )


class CredentialAdmin(OrgScopedAdmin):
    """Issued through the service (the raw value is shown once, in a message); then read-only."""

    list_display: tuple[str, ...] = (
        "name",
        "prefix",
        "org",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("org",)
    search_fields = ("name", "prefix")
    list_select_related: ClassVar[tuple[str, ...]] = ("org",)
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the row records who had access and when

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return self.readonly_fields
        return tuple(f.name for f in self.model._meta.fields if f.name != "key_hash")

    @admin.action(description="Revoke the selected credentials")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self.act_on(request, queryset, self.change_perm, services.credential_revoke, "Revoked")


class ApiTokenForm(ServiceCheckedForm):
    class Meta:
        model = ApiToken
        fields = ("org", "user", "name", "expires_at")

    def service_check(self, data: dict[str, Any]) -> None:
        services.api_token_issue_check(
            user=data["user"],
            org=data["org"],
            expires_at=data.get("expires_at"),
            actor=acting_user(self.request),
        )


@admin.register(ApiToken)
class ApiTokenAdmin(RequestFormMixin, CredentialAdmin):
    form = ApiTokenForm
    list_display = ("name", "prefix", "user", *CredentialAdmin.list_display[2:])
    list_select_related = ("org", "user")
    fields = ("org", "user", "name", "expires_at", *CredentialAdmin.readonly_fields)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            kwargs["queryset"] = _members_choice(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return
        token, raw = services.api_token_issue(
            user=obj.user,
            org=obj.org,
            name=obj.name,
            expires_at=obj.expires_at,
            actor=acting_user(request),
        )
        obj.pk = token.pk
        self.message_user(
            request, f"New API token (copy it now, it is not shown again): {raw}", messages.WARNING
        )


@admin.register(WorkerKey)
class WorkerKeyAdmin(CredentialAdmin):
    fields = ("org", "name", *CredentialAdmin.readonly_fields)

    def save_model(self, request: HttpRequest, obj: WorkerKey, form: Any, change: bool) -> None:
        if change:
            return
        key, raw = services.worker_key_issue(org=obj.org, name=obj.name, actor=acting_user(request))
        obj.pk = key.pk
        self.message_user(
            request, f"New worker key (copy it now, it is not shown again): {raw}", messages.WARNING
        )
