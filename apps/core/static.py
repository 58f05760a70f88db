"""Static files in both interfaces (placeholder: passes every request on)."""

from apps.core.middleware import BothModesMiddleware


class StaticFilesMiddleware(BothModesMiddleware):
    def __call__(self, request):  # type: ignore[no-untyped-def]
        return self.get_response(request)
