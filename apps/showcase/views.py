from django.http import HttpRequest, HttpResponse


def index(request: HttpRequest) -> HttpResponse:
    """Placeholder until the showcase lands."""
    return HttpResponse("dualserve\n", content_type="text/plain")
