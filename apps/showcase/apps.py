from django.apps import AppConfig


class ShowcaseConfig(AppConfig):
    """Mirrored sync/async views that show where each interface wins."""

    name = "apps.showcase"
