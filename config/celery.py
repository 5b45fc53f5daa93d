import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="celery_tasks")


@worker_process_init.connect
def _settle_worker_heap(**kwargs: Any) -> None:
    """A pool process has loaded Django and the tasks: freeze that heap (apps.orgs.heap)."""
    from apps.orgs.heap import settle_heap

    settle_heap()
