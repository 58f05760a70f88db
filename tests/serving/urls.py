"""The project's URLs behind the test views' mirrored pairs at /sync/<kind>/ and /async/<kind>/.

The test views come first: the same views answer with or without the showcase, whose paths
they share.
"""

from django.urls import path

from project.urls import handler500 as project_handler500
from project.urls import urlpatterns as project_urlpatterns
from tests.serving import views

urlpatterns = [
    # A path under no prefix: the hybrid entry routes it by its Accept header alone.
    path("", views.sync_hello),
    path("sync/hello/", views.sync_hello),
    path("async/hello/", views.async_hello),
    path("sync/sleep/", views.sync_sleep),
    path("async/sleep/", views.async_sleep),
    path("sync/json/", views.sync_json),
    path("async/json/", views.async_json),
    path("sync/stream/", views.sync_stream),
    path("async/stream/", views.async_stream),
    path("sync/upload/", views.sync_upload),
    path("async/upload/", views.async_upload),
    path("sync/form/", views.sync_form),
    path("async/form/", views.async_form),
    path("sync/client/", views.sync_client),
    path("async/client/", views.async_client),
    *project_urlpatterns,
]
# The project's error handler too: a lost database answers 503 here as it does in production.
handler500 = project_handler500
