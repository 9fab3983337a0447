"""REST routes for pipelines and webhooks (mounted under /api/ by fastflow_site/api.py).

Auth for everything but the webhook: `Authorization: Bearer <token>` (ApiToken) or the
admin's session. Reading is open to any active user; changing anything (sync, triggering,
cancelling, retrying) is for staff users only.
"""

from datetime import datetime
from typing import Literal

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Header, Path, Query, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status as Answer
from ninja.security import HttpBearer, SessionAuth

from orchestrator.models import ApiToken, Pipeline
from orchestrator.schedules import schedule_upcoming
from orchestrator.services import pipeline_sync
from orchestrator.spec import PIPELINE_ID_RE
from orchestrator.webhooks import WebhookError, webhook_deliver

router = Router(tags=["pipelines"])
webhooks = Router(tags=["webhooks"])
MAX_PAGE = 500
PipelineId = Path(..., pattern=PIPELINE_ID_RE.pattern, max_length=100, description="The pipeline's folder name.")


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
    report = pipeline_sync()
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
