"""The one org-scoped admin base every app's admin uses.

Superusers see everything. Other staff see rows of orgs where they hold `view_perm`, and
change, add, delete or act on rows only in orgs where they hold `change_perm`. Foreign keys
to orgs offer only those orgs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import get_fields_from_path
from django.db.models import ForeignKey, QuerySet
from django.forms import ModelChoiceField
from django.http import HttpRequest

from apps.orgs.access import has_org_perm, org_of, orgs_with_perm
from apps.orgs.errors import SluiceError
from apps.orgs.models import Org


class OrgScopedAdminMixin:
    view_perm: str = "view_org"
    change_perm: str = "manage_members"

    def _staff(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def _may(self, request: HttpRequest, perm: str, obj: Any = None) -> bool:
        if not self._staff(request):
            return False
        if request.user.is_superuser:
            return True
        if obj is None:
            return orgs_with_perm(request.user, perm).exists()
        return has_org_perm(request.user, org_of(obj), perm)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)  # type: ignore[misc]
        return queryset.for_user(request.user, self.view_perm)  # type: ignore[no-any-return]

    def get_list_filter(self, request: HttpRequest) -> Any:
        """Relation filters offer only values present in the scoped rows, never other orgs'."""
        filters = super().get_list_filter(request)  # type: ignore[misc]
        model = self.model  # type: ignore[attr-defined]
        scoped: list[Any] = []
        for item in filters:
            if isinstance(item, str) and get_fields_from_path(model, item)[-1].is_relation:
                item = (item, admin.RelatedOnlyFieldListFilter)
            scoped.append(item)
        return scoped

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may(request, self.view_perm)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, self.view_perm, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, self.change_perm, obj)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, self.change_perm, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request, self.change_perm, obj)

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField | None:
        if db_field.related_model is Org:
            kwargs["queryset"] = orgs_with_perm(request.user, self.change_perm)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]

    def act_on(
        self,
        request: HttpRequest,
        queryset: Iterable[Any],
        perm: str,
        call: Callable[[Any], object],
        done: str,
    ) -> None:
        """An admin action: call one service per row the user may act on, then report."""
        succeeded, refused = 0, 0
        for obj in queryset:
            if not self._may(request, perm, obj):
                refused += 1
                continue
            try:
                call(obj)
            except SluiceError as exc:
                self.message_user(request, f"{obj}: {exc.detail}", messages.ERROR)  # type: ignore[attr-defined]
            else:
                succeeded += 1
        if succeeded:
            self.message_user(request, f"{done}: {succeeded}.", messages.SUCCESS)  # type: ignore[attr-defined]
        if refused:
            self.message_user(  # type: ignore[attr-defined]
                request,
                f"{refused} row(s) skipped: your role does not allow this.",
                messages.WARNING,
            )


class NoAddDeleteMixin:
    """Rows that only the platform creates and removes (through its services)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyAdminMixin(NoAddDeleteMixin):
    """Immutable records: viewable, never edited in the admin."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ActionsOnlyAdminMixin(NoAddDeleteMixin):
    """Rows changed only by actions that call services: the list allows actions, the detail
    page is read-only."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)  # type: ignore[misc, no-any-return]


class OrgScopedAdmin(OrgScopedAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_per_page = 50
    show_full_result_count = False


class OrgScopedInline(OrgScopedAdminMixin, admin.TabularInline):  # type: ignore[type-arg]
    extra = 0
