"""URL configuration: the showcase at /, the admin at /admin/."""

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

# Typed as Django's docs grow it: `urlpatterns += debug_toolbar_urls()` adds URLPatterns.
urlpatterns: list[URLPattern | URLResolver] = [
    path("admin/", admin.site.urls),
    path("", include("apps.showcase.urls")),
]
