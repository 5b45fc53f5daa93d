from django.apps import AppConfig


class DagsConfig(AppConfig):
    name = "apps.dags"
    label = "dags"
