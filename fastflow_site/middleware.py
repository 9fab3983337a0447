"""Site middleware: under /api/, a wrong HTTP method answers JSON like every other API error
(django-ninja itself answers a plain-text 405)."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import JsonResponse


def _json_405(request, response):
    if response.status_code != 405 or not request.path.startswith("/api/"):
        return response
    if response.get("Content-Type", "").startswith("application/json"):
        return response
    allowed = response.get("Allow", "")
    detail = f"method {request.method} is not allowed on {request.path}"
    if allowed:
        detail += f"; allowed: {allowed}"
    fixed = JsonResponse({"detail": detail}, status=405)
    if allowed:
        fixed["Allow"] = allowed
    return fixed


class ApiMethodNotAllowedJson:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return _json_405(request, self.get_response(request))

    async def __acall__(self, request):
        return _json_405(request, await self.get_response(request))
