from django.urls import path

from apps.dags import views

urlpatterns = [
    path("dags", views.DagsView.as_view(), name="dags"),
    path("dags/<str:name>", views.DagDetailView.as_view(), name="dag-detail"),
    path("dags/<str:name>/versions", views.DagVersionsView.as_view(), name="dag-versions"),
    path(
        "dags/<str:name>/versions/<int:number>",
        views.DagVersionDetailView.as_view(),
        name="dag-version-detail",
    ),
    path("dags/<str:name>/rollback", views.DagRollbackView.as_view(), name="dag-rollback"),
    path("dags/<str:name>/pause", views.DagPauseView.as_view(), name="dag-pause"),
    path("dags/<str:name>/resume", views.DagResumeView.as_view(), name="dag-resume"),
]
