"""The showcase's live page: the difference between the interfaces, seen in a browser."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def live(request: HttpRequest) -> HttpResponse:
    """The live page (apps/showcase/templates/showcase/live.html)."""
    return render(request, "showcase/live.html")
