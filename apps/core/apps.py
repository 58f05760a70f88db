from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Serving glue shared by both interfaces: middleware, health, checks, ASGI lifespan."""

    name = "apps.core"

    def ready(self) -> None:
        from apps.core import checks  # noqa: F401  (registers the system checks)
