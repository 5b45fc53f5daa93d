from django.apps import AppConfig


class OrgsConfig(AppConfig):
    name = "apps.orgs"
    label = "orgs"
    verbose_name = "Orgs and access"

    def ready(self) -> None:
        from apps.orgs import openapi  # noqa: F401  (registers the OpenAPI auth extensions)
