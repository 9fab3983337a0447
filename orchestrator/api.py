"""REST routes for pipelines and webhooks (mounted under /api/ by fastflow_site/api.py).

Auth for everything but the webhooks: `Authorization: Bearer <token>` (ApiToken) or the
admin's session. Reading is open to any active user; changing anything (sync, triggering,
cancelling, retrying) and everything about secrets is for staff users only. Secret values
go in, never out.
"""

import hashlib
import hmac

from datetime import datetime
from typing import Literal

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Header, Path, Query, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status as Answer
from ninja.security import HttpBearer, SessionAuth

from orchestrator import gitsync
from orchestrator.models import ApiToken, Pipeline, Secret, SyncState
from orchestrator.schedules import schedule_upcoming
from orchestrator.services import pipelines_sync_all, secret_delete, secret_save
from orchestrator.spec import PIPELINE_ID_RE
from orchestrator.webhooks import WebhookError, webhook_deliver

router = Router(tags=["pipelines"])
secrets = Router(tags=["secrets"])
webhooks = Router(tags=["webhooks"])
MAX_PAGE = 500
PipelineId = Path(..., pattern=PIPELINE_ID_RE.pattern, max_length=100, description="The pipeline's folder name.")
SECRET_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SecretName = Path(..., pattern=SECRET_NAME, max_length=200, description="The secret's name (an env var name).")


class BearerToken(HttpBearer):
    """`Authorization: Bearer <token>`; tokens come from the admin or `manage.py create_api_token`."""

    def authenticate(self, request, token):
        return ApiToken.authenticate(token)


class AdminSession(SessionAuth):
    """The Django admin's session (for /api/docs in a logged-in browser); CSRF-checked."""

    def authenticate(self, request, key):
        user = request.user
        return user if user.is_authenticated and user.is_active else None


AUTH = [BearerToken(), AdminSession()]


def staff_only(request):
    """Raise 403 unless the authenticated user is staff: the actions that change things."""
    if not request.auth.is_staff:
        raise HttpError(403, "staff only: this action needs a staff user's token")


# --- schemas -------------------------------------------------------------------------------------
class Error(Schema):
    detail: str | list


class Limits(Schema):
    cpu_hard_limit: float | None
    mem_hard_limit: int | None = Field(description="bytes")
    cpu_soft_limit: float | None
    mem_soft_limit: int | None = Field(description="bytes")
    timeout: int | None = Field(description="seconds, 0 = none")


class ScheduleOut(Schema):
    cron: str | None
    interval_seconds: int | None
    timezone: str
    start: datetime | None
    end: datetime | None
    catchup: Literal["latest", "none", "all"]
    paused: bool
    next_fire_times: list[datetime]


class DownstreamOut(Schema):
    pipeline: str
    on_success: bool
    on_failure: bool


class LastRun(Schema):
    id: int
    status: str
    queued_at: datetime


class PipelineOut(Schema):
    id: str
    name: str
    description: str
    tags: list[str]
    enabled: bool
    runnable: bool
    missing: bool
    errors: list[str]
    warnings: list[str]
    metadata_file: str
    has_requirements: bool
    has_webhook: bool
    limits: Limits
    retry_attempts: int
    max_instances: int | None
    schedule: ScheduleOut | None
    downstream_triggers: list[DownstreamOut]
    last_run: LastRun | None
    synced_at: datetime


class PipelinePage(Schema):
    count: int
    limit: int
    offset: int
    items: list[PipelineOut]


class PipelineFilters(Schema):
    search: str | None = Field(None, max_length=200, description="Part of the id or name.")
    tag: str | None = Field(None, max_length=200)
    runnable: bool | None = None
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=10**9)


class SyncOut(Schema):
    created: list[str]
    updated: list[str]
    missing: list[str]
    unchanged: int
    skipped: list[dict]


class SecretOut(Schema):
    name: str
    pipeline: str | None = Field(description="null = global")
    created_at: datetime
    updated_at: datetime
    updated_by: str | None
    used_by: list[str] = Field(description="Pipelines whose `secrets` list names it and that get this one.")


class SecretIn(Schema):
    name: str = Field(..., pattern=SECRET_NAME, max_length=200)
    value: str = Field(..., min_length=1, max_length=65536)
    pipeline: str | None = Field(None, max_length=100, description="null = global; a pipeline id = scoped to it")


class SecretValue(Schema):
    value: str = Field(..., min_length=1, max_length=65536)


class GitSyncAccepted(Schema):
    commit: str
    ok: bool
    error: str


class WebhookAccepted(Schema):
    run_id: int
    status_url: str
    replayed: bool = Field(description="True when an earlier delivery with this Idempotency-Key made the run.")


def pipeline_out(pipeline):
    spec = pipeline.spec
    schedule = None
    if pipeline.schedule is not None:
        schedule = {"cron": spec.schedule_cron, "interval_seconds": spec.schedule_interval_seconds,
                    "timezone": spec.schedule_timezone, "start": spec.schedule_start, "end": spec.schedule_end,
                    "catchup": spec.schedule_catchup, "paused": pipeline.schedule_paused,
                    "next_fire_times": schedule_upcoming(pipeline=pipeline, n=5)}
    last = pipeline.runs.order_by("-id").values("id", "status", "queued_at").first()
    return {
        "id": pipeline.id, "name": pipeline.display_name, "description": pipeline.description,
        "tags": pipeline.tags, "enabled": pipeline.is_enabled, "runnable": pipeline.runnable,
        "missing": pipeline.missing, "errors": pipeline.all_errors, "warnings": pipeline.all_warnings,
        "metadata_file": pipeline.metadata_file, "has_requirements": pipeline.has_requirements,
        "has_webhook": bool(pipeline.webhook_key),
        "limits": {f: pipeline.value(f) for f in ("cpu_hard_limit", "mem_hard_limit", "cpu_soft_limit",
                                                  "mem_soft_limit", "timeout")},
        "retry_attempts": spec.retry_attempts, "max_instances": spec.max_instances, "schedule": schedule,
        "downstream_triggers": [t.model_dump() for t in spec.downstream_triggers],
        "last_run": last, "synced_at": pipeline.synced_at,
    }


# --- routes ----------------------------------------------------------------------------------------
@router.get("/pipelines", response={200: PipelinePage, 401: Error, 422: Error}, auth=AUTH, url_name="pipelines")
def list_pipelines(request, filters: Query[PipelineFilters]):
    """All pipelines (missing ones too, flagged), by id."""
    rows = list(Pipeline.objects.all())
    if filters.search:
        needle = filters.search.lower()
        rows = [p for p in rows if needle in p.id.lower() or needle in p.display_name.lower()]
    if filters.tag:
        rows = [p for p in rows if filters.tag in p.tags]
    if filters.runnable is not None:
        rows = [p for p in rows if p.runnable == filters.runnable]
    page = rows[filters.offset: filters.offset + filters.limit]
    return {"count": len(rows), "limit": filters.limit, "offset": filters.offset,
            "items": [pipeline_out(p) for p in page]}


# Registered before /pipelines/{pipeline_id}: Django tries URL patterns in order.
@router.post("/pipelines/sync", response={200: SyncOut, 401: Error, 403: Error}, auth=AUTH, url_name="sync")
def sync(request):
    """Re-read the pipelines dir now (staff only)."""
    staff_only(request)
    report = pipelines_sync_all()  # git sync first when FASTFLOW_GIT_URL is set
    return {"created": report.created, "updated": report.updated, "missing": report.missing,
            "unchanged": report.unchanged, "skipped": report.skipped}


@router.get("/pipelines/{pipeline_id}", response={200: PipelineOut, 401: Error, 404: Error, 422: Error}, auth=AUTH,
            url_name="pipeline")
def get_pipeline(request, pipeline_id: str = PipelineId):
    return pipeline_out(get_object_or_404(Pipeline, pk=pipeline_id))


@webhooks.post(
    "/webhooks/{pipeline_id}/{webhook_key}", auth=None, url_name="webhook",
    response={202: WebhookAccepted, 400: Error, 403: Error, 404: Error, 409: Error, 413: Error, 429: Error, 422: Error},
    openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "properties": {
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "params": {"type": "object"}}}}}}},
)
def webhook(request, response: HttpResponse, pipeline_id: str = Path(..., max_length=200),
            webhook_key: str = Path(..., max_length=500),
            idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=200)):
    """Queue a run, no login: the key in the URL is the credential. Optional JSON body
    `{"env": {...}, "params": {...}}`; an `Idempotency-Key` header makes a repeated
    delivery within 24 h answer with the run of the first one."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = None
    try:
        run, replayed = webhook_deliver(pipeline_id=pipeline_id, key=webhook_key, read_body=lambda: request.body,
                                        ip=request.META.get("REMOTE_ADDR", ""), idempotency_key=idempotency_key,
                                        content_length=length)
    except WebhookError as exc:
        if exc.retry_after:
            response["Retry-After"] = str(exc.retry_after)
        return Answer(exc.status, {"detail": exc.detail})
    url = request.build_absolute_uri(reverse("api:run", kwargs={"run_id": run.pk}))
    return Answer(202, {"run_id": run.pk, "status_url": url, "replayed": replayed})


# --- secrets (staff only; values are write-only) ------------------------------------------------
def secret_out(secret):
    return {"name": secret.name, "pipeline": secret.pipeline_id, "created_at": secret.created_at,
            "updated_at": secret.updated_at, "updated_by": secret.updated_by.username if secret.updated_by else None,
            "used_by": secret.used_by()}


def _scoped_secret(name, pipeline_id):
    return get_object_or_404(Secret.objects.select_related("updated_by"), name=name, pipeline_id=pipeline_id or None)


@secrets.get("/secrets", response={200: list[SecretOut], 401: Error, 403: Error}, auth=AUTH, url_name="secrets")
def list_secrets(request):
    """Every secret's name and scope, never its value."""
    staff_only(request)
    return [secret_out(s) for s in Secret.objects.select_related("updated_by")]


@secrets.post("/secrets", response={201: SecretOut, 400: Error, 401: Error, 403: Error, 404: Error, 409: Error, 422: Error},
              auth=AUTH)
def create_secret(request, body: SecretIn):
    staff_only(request)
    pipeline = get_object_or_404(Pipeline, pk=body.pipeline) if body.pipeline else None
    if Secret.objects.filter(name=body.name, pipeline=pipeline).exists():
        return Answer(409, {"detail": f"secret {body.name!r} already exists in that scope: use PUT to change it"})
    secret, _ = secret_save(name=body.name, value=body.value, pipeline=pipeline, user=request.auth, source="api")
    return Answer(201, secret_out(secret))


@secrets.put("/secrets/{name}", response={200: SecretOut, 400: Error, 401: Error, 403: Error, 404: Error, 422: Error},
             auth=AUTH, url_name="secret")
def update_secret(request, body: SecretValue, name: str = SecretName,
                  pipeline: str | None = Query(None, max_length=100, description="The scope; empty = global.")):
    staff_only(request)
    secret = _scoped_secret(name, pipeline)
    secret, _ = secret_save(name=name, value=body.value, pipeline=secret.pipeline, user=request.auth, source="api")
    return secret_out(secret)


@secrets.delete("/secrets/{name}", response={204: None, 401: Error, 403: Error, 404: Error, 422: Error}, auth=AUTH)
def delete_secret(request, name: str = SecretName,
                  pipeline: str | None = Query(None, max_length=100, description="The scope; empty = global.")):
    staff_only(request)
    secret_delete(secret=_scoped_secret(name, pipeline), user=request.auth, source="api")
    return Answer(204, None)


# --- git push webhook ---------------------------------------------------------------------------
def _push_verified(request) -> bool:
    """GitHub: X-Hub-Signature-256 = "sha256=" + HMAC-SHA256(raw body, secret); GitLab:
    X-Gitlab-Token = the secret. Both compared in constant time."""
    secret = settings.FASTFLOW_GIT_WEBHOOK_SECRET
    if not secret:
        return False
    signature = request.headers.get("X-Hub-Signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature.strip().encode(), expected.encode())
    token = request.headers.get("X-Gitlab-Token")
    if token is not None:
        return hmac.compare_digest(token.encode(), secret.encode())
    return False


@webhooks.post("/git/webhook", auth=None, url_name="git_webhook",
               response={202: GitSyncAccepted, 403: Error, 404: Error, 413: Error})
def git_webhook(request):
    """A push notification from GitHub or GitLab: verify it, then git sync and discover at
    once. 404 while git sync is not configured (FASTFLOW_GIT_URL); 403 without a valid
    signature (set the hook's secret to FASTFLOW_GIT_WEBHOOK_SECRET)."""
    if not gitsync.enabled():
        return Answer(404, {"detail": "git sync is not configured (FASTFLOW_GIT_URL is unset)"})
    if not _push_verified(request):
        return Answer(403, {"detail": "missing or invalid webhook signature"})
    pipelines_sync_all()
    state = SyncState.load()
    return Answer(202, {"commit": state.git_commit, "ok": bool(state.git_ok), "error": state.git_error})
