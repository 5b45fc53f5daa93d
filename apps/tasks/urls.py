from django.urls import path

from apps.tasks import internal_views, views

public = [
    path("events", views.EventsView.as_view(), name="events"),
    path("events/<str:event_id>", views.EventDetailView.as_view(), name="event-detail"),
    path("tasks", views.TasksView.as_view(), name="tasks"),
    path(
        "datasets/<str:dataset_id>/invalidate",
        views.DatasetInvalidateView.as_view(),
        name="dataset-invalidate",
    ),
    path(
        "datasets/<str:dataset_id>/lineage",
        views.DatasetLineageView.as_view(),
        name="dataset-lineage",
    ),
    path("tasks/<str:task_id>", views.TaskDetailView.as_view(), name="task-detail"),
    path("tasks/<str:task_id>/cancel", views.TaskCancelView.as_view(), name="task-cancel"),
    path("tasks/<str:task_id>/retry", views.TaskRetryView.as_view(), name="task-retry"),
]

internal = [
    path("task-fetch", internal_views.TaskFetchView.as_view(), name="task-fetch"),
    path("task-heartbeat", internal_views.TaskHeartbeatView.as_view(), name="task-heartbeat"),
    path("events", internal_views.TaskEventsView.as_view(), name="task-events"),
    path("task-complete", internal_views.TaskCompleteView.as_view(), name="task-complete"),
    path("task-fail", internal_views.TaskFailView.as_view(), name="task-fail"),
]
