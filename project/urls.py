"""URL configuration: the admin at /admin/ (and the showcase at /, when the project has it)."""

from django.contrib import admin
from django.urls import (
    URLPattern,
    URLResolver,
    # showcase:begin
    include,
    # showcase:end
    path,
)

# Typed as Django's docs grow it: `urlpatterns += debug_toolbar_urls()` adds URLPatterns.
urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    # showcase:begin
    path("", include("apps.showcase.urls")),
    # showcase:end
]

# A database that cannot be reached answers 503 with Retry-After, every other error Django's 500.
handler500 = "apps.dualserve.errors.server_error"
