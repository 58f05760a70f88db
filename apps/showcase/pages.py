"""The showcase's live page: the difference between the interfaces, seen in a browser."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from apps.dualserve.middleware import interface_of

# The page's defaults and bounds for a volley (the form's N and ms): N above the browser's six
# connections to one host, so that queueing shows; ms within /sync/sleep/'s own bound.
VOLLEY = {"n": 20, "n_max": 60, "ms": 500, "ms_max": 5000}


@ensure_csrf_cookie  # the Publish button reads the csrftoken cookie for X-CSRFToken
def live(request: HttpRequest) -> HttpResponse:
    """Render the live page (showcase/live.html); its script, live.js, does the rest."""
    context = {"interface": interface_of(request), "volley": VOLLEY}
    return render(request, "showcase/live.html", context)
