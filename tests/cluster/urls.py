"""tests.serving's URLs behind a mirrored pair that reads and writes the database.

GET /sync/groups/ and /async/groups/ count the auth groups; POST with `name=...` creates one and
answers 201 only once the row is committed, so a client holding a 201 knows the row exists.
"""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from tests.serving.urls import handler500 as serving_handler500
from tests.serving.urls import urlpatterns as serving_urlpatterns


def created(group: Group) -> JsonResponse:
    return JsonResponse({"name": group.name}, status=201)


def counted(count: int) -> JsonResponse:
    return JsonResponse({"count": count})


@csrf_exempt
def sync_groups(request: HttpRequest) -> HttpResponse:
    """Count the groups (GET), or create the one named in the form field `name` (POST)."""
    if request.method == "POST":
        return created(Group.objects.create(name=request.POST["name"]))
    return counted(Group.objects.count())


@csrf_exempt
async def async_groups(request: HttpRequest) -> HttpResponse:
    """Count the groups (GET), or create the one named in the form field `name` (POST)."""
    if request.method == "POST":
        return created(await Group.objects.acreate(name=request.POST["name"]))
    return counted(await Group.objects.acount())


urlpatterns = [
    path("sync/groups/", sync_groups),
    path("async/groups/", async_groups),
    *serving_urlpatterns,
]
handler500 = serving_handler500
