from django.contrib import admin
from django.http import JsonResponse
from django.urls import path, re_path

from fastflow_site.api import api
from runs import health


def api_not_found(request, rest=""):
    """Unknown paths under /api/ answer JSON like the rest of the API, not an HTML page."""
    return JsonResponse({"detail": "Not Found"}, status=404)


urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", health.metrics),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", api_not_found),
]
