"""The index at / and every mirrored pair at /sync/<kind>/ and /async/<kind>/."""

from django.urls import path

from apps.showcase import pages, views

app_name = "showcase"

urlpatterns = [
    path("", views.index, name="index"),
    path("live/", pages.live, name="live"),
    path("sync/hello/", views.sync_hello, name="sync_hello"),
    path("async/hello/", views.async_hello, name="async_hello"),
    path("sync/json/", views.sync_json, name="sync_json"),
    path("async/json/", views.async_json, name="async_json"),
    path("sync/sleep/", views.sync_sleep, name="sync_sleep"),
    path("async/sleep/", views.async_sleep, name="async_sleep"),
    path("sync/upstream/", views.sync_upstream, name="sync_upstream"),
    path("async/upstream/", views.async_upstream, name="async_upstream"),
    path("sync/db/", views.sync_db, name="sync_db"),
    path("async/db/", views.async_db, name="async_db"),
    path("sync/cpu/", views.sync_cpu, name="sync_cpu"),
    path("async/cpu/", views.async_cpu, name="async_cpu"),
    path("sync/stream/", views.sync_stream, name="sync_stream"),
    path("async/stream/", views.async_stream, name="async_stream"),
    path("sync/upload/", views.sync_upload, name="sync_upload"),
    path("async/upload/", views.async_upload, name="async_upload"),
    path("async/live/", views.async_live, name="async_live"),
    path("sync/publish/", views.sync_publish, name="sync_publish"),
    path("async/publish/", views.async_publish, name="async_publish"),
]
