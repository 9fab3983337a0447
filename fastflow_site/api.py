"""The REST API: one django-ninja router per app, mounted at /api/.

OpenAPI at /api/openapi.json, interactive docs at /api/docs. Every error answers JSON
`{"detail": ...}`: 400 unreadable body, 401 no or bad token, 403 not allowed, 404 unknown,
405 wrong method (the detail and the Allow header name the allowed ones; see
fastflow_site/middleware.py), 409 refused in the current state (a disabled pipeline, a run
still going), 413 body too large, 422 invalid input (the detail lists each problem), 429
rate limited.
"""

from django.core.exceptions import RequestDataTooBig
from ninja import NinjaAPI

from orchestrator.api import router as pipelines_router
from orchestrator.api import secrets as secrets_router
from orchestrator.api import webhooks as webhooks_router
from runs.api import router as runs_router
from runs.services import InvalidInput, RunRefused

api = NinjaAPI(
    title="Fast-Flow API", version="1.0", urls_namespace="api", docs_url="/docs", openapi_url="/openapi.json",
    description="Pipelines, runs and webhooks. Authenticate with `Authorization: Bearer <token>` "
                "(`manage.py create_api_token USER`, or API tokens in the admin).",
)
api.add_router("", pipelines_router)
api.add_router("", runs_router)
api.add_router("", secrets_router)
api.add_router("", webhooks_router)


@api.exception_handler(InvalidInput)
def _invalid_input(request, exc):
    return api.create_response(request, {"detail": str(exc)}, status=422)


@api.exception_handler(RunRefused)
def _refused(request, exc):
    return api.create_response(request, {"detail": str(exc)}, status=409)


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    return api.create_response(request, {"detail": "the request body is too large"}, status=413)
