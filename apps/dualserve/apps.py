from django.apps import AppConfig


class DualserveConfig(AppConfig):
    """Serving glue shared by both interfaces: middleware, health, checks, ASGI lifespan."""

    name = "apps.dualserve"

    def ready(self) -> None:
        from apps.dualserve import checks  # noqa: F401  (registers the system checks)
