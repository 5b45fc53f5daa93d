from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.dags import views as dag_views
from apps.datasets import views as dataset_views
from apps.orgs import views as org_views
from apps.orgs import web as org_web
from apps.secrets import views as secret_views
from apps.tasks import urls as task_urls

handler404 = "apps.orgs.errors.json_404"
handler500 = "apps.orgs.errors.json_500"

v1: list[URLPattern | URLResolver] = [
    path("", include(task_urls.public)),
    path("orgs/<slug:slug>/members", org_views.MembersView.as_view(), name="members"),
    path(
        "orgs/<slug:slug>/members/<str:username>",
        org_views.MemberDetailView.as_view(),
        name="member-detail",
    ),
    path("", include("apps.dags.urls")),
    path("tokens", org_views.TokensView.as_view(), name="tokens"),
    path("datasets", dataset_views.DatasetsView.as_view(), name="datasets"),
    path(
        "datasets/<str:dataset_id>",
        dataset_views.DatasetDetailView.as_view(),
        name="dataset-detail",
    ),
    path(
        "datasets/<str:dataset_id>/commits",
        dataset_views.DatasetCommitsView.as_view(),
        name="dataset-commits",
    ),
    path(
        "datasets/<str:dataset_id>/data",
        dataset_views.DatasetDataView.as_view(),
        name="dataset-data",
    ),
    path("secrets", secret_views.SecretsView.as_view(), name="secrets"),
    path("secrets/<str:name>", secret_views.SecretDetailView.as_view(), name="secret-detail"),
    path("tokens/<uuid:token_id>", org_views.TokenDetailView.as_view(), name="token-detail"),
    path("schema/dag.json", dag_views.dag_schema_view, name="dag-schema"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("schema/ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-ui"),
]

internal: list[URLPattern | URLResolver] = [
    path("whoami", org_views.WorkerIdentityView.as_view(), name="internal-whoami"),
    path("", include(task_urls.internal)),
]

# The API first: its paths are the ones resolved on every hot request.
urlpatterns = [
    path("v1/", include(v1)),
    path("internal/", include(internal)),
    path("", RedirectView.as_view(url="/orgs/", permanent=False)),
    path("healthz", org_views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("orgs/", org_web.org_list, name="org-list"),
    path("o/<slug:slug>/", org_web.org_overview, name="org-overview"),
]
