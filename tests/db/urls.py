"""The project's URLs plus /test/hold/."""

import time

from django.contrib.auth.models import User
from django.http import HttpRequest, JsonResponse
from django.urls import path

from project.urls import urlpatterns as project_urlpatterns


def hold(request: HttpRequest) -> JsonResponse:
    """Query the database, then keep the request (and its connection) for ?ms=N milliseconds."""
    count = User.objects.count()
    time.sleep(int(request.GET.get("ms", "0")) / 1000)
    return JsonResponse({"count": count})


urlpatterns = [path("test/hold/", hold), *project_urlpatterns]
