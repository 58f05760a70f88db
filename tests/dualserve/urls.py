from django.urls import path

from tests.dualserve import views

urlpatterns = [
    path("async/ok/", views.async_ok),
    path("sync/ok/", views.sync_ok),
    path("async/session/", views.async_session_write),
    path("sync/session/", views.sync_session_write),
    path("async/session/flush/", views.async_session_flush),
    path("async/post/", views.async_post),
    path("async/messages/add/", views.async_add_message),
    path("sync/messages/", views.sync_read_messages),
    path("async/whoami/", views.async_whoami),
    path("sync/log/", views.sync_log),
    path("async/log/", views.async_log),
    path("sync/thread/", views.sync_thread),
    path("async/protected/", views.async_protected),
    path("async/count/", views.async_count),
    path("async/wait/", views.async_wait),
    path("async/closing/", views.async_closing),
    path("async/stubborn-stream/", views.async_stubborn_stream),
    path("async/page/", views.async_page),
    path("async/public/", views.async_public),
    path("async/site/", views.async_site),
    path("sync/gated-stream/", views.sync_gated_stream),
    path("sync/counted-stream/", views.sync_counted_stream),
    path("sync/large/", views.sync_large),
]
