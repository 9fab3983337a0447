"""REST routes for runs (mounted under /api/ by fastflow_site/api.py): trigger, list, read,
logs, cancel, retry. Reading is open to any authenticated user; the rest is staff only."""

import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Path, Query, Router, Schema
from pydantic import AfterValidator, BeforeValidator
from ninja.responses import Status as Answer

from orchestrator.api import AUTH, MAX_PAGE, Error, PipelineId, staff_only
from orchestrator.models import Pipeline
from runs.logs import read_log
from runs.models import FINAL, Catchup, Reason, Run, Status, Trigger
from runs.services import RunInput, RunRefused, run_cancel, run_retry, run_trigger

router = Router(tags=["runs"])
MAX_ID = 2**63 - 1
RunId = Path(..., ge=1, le=MAX_ID)
MAX_LOG_CHUNK = 1024 * 1024


def _iso_only(value):
    # pydantic also reads numbers as Unix timestamps; the schema says ISO 8601 date-time.
    if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}", value):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-05-04T12:00:00Z")
    return value


def _as_utc(value):
    # In UTC before it reaches the database: PostgreSQL refuses offsets past ±15:59, and a
    # naive time means UTC here. A time whose UTC equivalent leaves the calendar is refused.
    try:
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("date-time out of range") from None


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_as_utc)]


class RunOut(Schema):
    id: int
    pipeline: str
    status: Literal[tuple(Status.values)]
    reason: Literal[tuple([""] + Reason.values)]
    message: str
    trigger: Literal[tuple(Trigger.values)]
    attempt: int
    retry_of: int | None
    caused_by: int | None
    chain_depth: int
    triggered_by: str | None = Field(description="The username, for runs made by a person or a token.")
    env: dict[str, str]
    params: dict
    scheduled_for: datetime | None
    catchup: Literal[tuple(Catchup.values)]
    catchup_from: datetime | None
    queued_at: datetime
    due_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    exit_code: int | None
    setup_seconds: float | None
    peak_memory_bytes: int | None
    cpu_seconds: float | None
    warnings: list[str]
    executor: str
    image: str
    git_sha: str
    log_size: int
    retry_scheduled: bool
    url: str
    logs_url: str


class RunPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[RunOut]


class RunFilters(Schema):
    pipeline: str | None = Field(None, max_length=100)
    status: Literal[tuple(Status.values)] | None = None
    trigger: Literal[tuple(Trigger.values)] | None = None
    since: IsoDatetime | None = Field(None, description="Queued at or after this time (ISO 8601).")
    until: IsoDatetime | None = Field(None, description="Queued before this time (ISO 8601).")
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=10**9)


class LogChunk(Schema):
    run_id: int
    offset: int
    next_offset: int = Field(description="Pass as ?offset= to read on; equals size once all is read.")
    size: int
    text: str = Field(description="Log lines: `<UTC time> <out|err|sys> <text>`.")
    complete: bool = Field(description="The run is final and everything written has been read.")


def run_out(request, run):
    url = request.build_absolute_uri(reverse("api:run", kwargs={"run_id": run.pk}))
    return {
        "id": run.pk, "pipeline": run.pipeline_id, "status": run.status, "reason": run.reason,
        "message": run.message, "trigger": run.trigger, "attempt": run.attempt, "retry_of": run.retry_of_id,
        "caused_by": run.caused_by_id, "chain_depth": run.chain_depth,
        "triggered_by": run.triggered_by.get_username() if run.triggered_by else None,
        "env": run.env, "params": run.params, "scheduled_for": run.scheduled_for, "catchup": run.catchup,
        "catchup_from": run.catchup_from, "queued_at": run.queued_at, "due_at": run.due_at,
        "started_at": run.started_at, "finished_at": run.finished_at, "duration_seconds": run.duration,
        "exit_code": run.exit_code, "setup_seconds": run.setup_seconds, "peak_memory_bytes": run.peak_memory_bytes,
        "cpu_seconds": run.cpu_seconds, "warnings": run.warnings, "executor": run.executor, "image": run.image,
        "git_sha": run.git_sha, "log_size": run.log_size, "retry_scheduled": run.retry_scheduled,
        "url": url, "logs_url": url + "/logs",
    }


def _run(run_id):
    return get_object_or_404(Run.objects.select_related("triggered_by"), pk=run_id)


@router.post("/pipelines/{pipeline_id}/runs", auth=AUTH, url_name="trigger",
             response={201: RunOut, 400: Error, 401: Error, 403: Error, 404: Error, 409: Error, 422: Error})
def trigger(request, pipeline_id: str = PipelineId, body: RunInput = None):
    """Queue a run now (staff only). Body (optional): `{"env": {...}, "params": {...}}`.
    A pipeline at its concurrency limit queues the run; it does not refuse it."""
    staff_only(request)
    pipeline = get_object_or_404(Pipeline, pk=pipeline_id)
    body = body or RunInput()
    run = run_trigger(pipeline=pipeline, trigger=Trigger.API, env=body.env, params=body.params, user=request.auth)
    return Answer(201, run_out(request, run))


@router.get("/runs", response={200: RunPage, 401: Error, 422: Error}, auth=AUTH, url_name="runs")
def list_runs(request, filters: Query[RunFilters]):
    """Runs, newest first, filtered by pipeline, status, trigger and queue time."""
    runs = Run.objects.select_related("triggered_by")
    for field, lookup in (("pipeline", "pipeline_id"), ("status", "status"), ("trigger", "trigger"),
                          ("since", "queued_at__gte"), ("until", "queued_at__lt")):
        value = getattr(filters, field)
        if value is not None:
            runs = runs.filter(**{lookup: value})
    page = runs.order_by("-id")[filters.offset: filters.offset + filters.limit]
    return {"count": runs.count(), "limit": filters.limit, "offset": filters.offset,
            "items": [run_out(request, r) for r in page]}


@router.get("/runs/{run_id}", response={200: RunOut, 401: Error, 404: Error, 422: Error}, auth=AUTH, url_name="run")
def get_run(request, run_id: int = RunId):
    return run_out(request, _run(run_id))


@router.get("/runs/{run_id}/logs", response={200: LogChunk, 401: Error, 404: Error, 422: Error}, auth=AUTH, url_name="logs")
def logs(request, run_id: int = RunId, offset: int = Query(0, ge=0, le=MAX_ID),
         limit: int = Query(64 * 1024, ge=1, le=MAX_LOG_CHUNK)):
    """A chunk of the run's log from a byte offset, ending on a line boundary when it can."""
    run = _run(run_id)
    size = run.log_path.stat().st_size if run.log_path.exists() else 0
    offset = min(offset, size)
    data, next_offset = read_log(run.log_path, offset, limit, whole_lines=run.status not in FINAL)
    return {"run_id": run.pk, "offset": offset, "next_offset": next_offset, "size": size,
            "text": data.decode("utf-8", errors="replace"),
            "complete": run.status in FINAL and next_offset >= size}


@router.post("/runs/{run_id}/cancel", response={200: RunOut, 401: Error, 403: Error, 404: Error, 409: Error, 422: Error},
             auth=AUTH, url_name="cancel")
def cancel(request, run_id: int = RunId):
    """Cancel a queued run at once, or ask a running one to stop (staff only)."""
    staff_only(request)
    run = _run(run_id)
    if not run_cancel(run=run):
        raise RunRefused(f"run {run.pk} is already {run.status}")
    return Answer(200, run_out(request, run))


@router.post("/runs/{run_id}/retry", response={201: RunOut, 401: Error, 403: Error, 404: Error, 409: Error, 422: Error},
             auth=AUTH, url_name="retry")
def retry(request, run_id: int = RunId):
    """A new attempt of a finished run's chain, due now (staff only)."""
    staff_only(request)
    new = run_retry(run=_run(run_id), user=request.auth)
    return Answer(201, run_out(request, new))
