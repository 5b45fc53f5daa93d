"""Browser pages: the orgs a user belongs to and each org's overview. Non-members get 404."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from apps.orgs.access import has_org_perm
from apps.orgs.api import acting_user
from apps.orgs.models import Membership, Org
from apps.orgs.overview import overview_panels


@login_required
def org_list(request: HttpRequest) -> HttpResponse:
    orgs = Org.objects.for_user(request.user)
    roles = dict(
        Membership.objects.filter(user=acting_user(request), org__in=orgs).values_list(
            "org_id", "role"
        )
    )
    rows = [{"org": org, "role": roles.get(org.pk, "platform staff")} for org in orgs]
    return render(request, "orgs/list.html", {"rows": rows})


@login_required
def org_overview(request: HttpRequest, slug: str) -> HttpResponse:
    org = get_object_or_404(Org.objects.for_user(request.user), slug=slug)
    members = Membership.objects.for_org(org).select_related("user")
    context = {
        "org": org,
        "members": members,
        "panels": overview_panels.render_context(org),
        "can_manage": has_org_perm(request.user, org, "manage_members"),
    }
    return render(request, "orgs/overview.html", context)
