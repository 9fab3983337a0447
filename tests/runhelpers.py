"""Helpers for tests that execute runs for real (no mocks): trigger, then play the worker."""

from datetime import timedelta

from django.utils import timezone

from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run, Status
from runs.services import run_execute, run_trigger, runs_dispatch


def trigger(pipeline_id, *, env=None, **overrides):
    pipeline_sync()
    pipeline = Pipeline.objects.get(pk=pipeline_id)
    if overrides:
        Pipeline.objects.filter(pk=pipeline_id).update(**overrides)
        pipeline.refresh_from_db()
    return run_trigger(pipeline=pipeline, trigger="manual", env=env or {}, dispatch=False)


def execute(pipeline_id, *, executor, env=None, **overrides):
    """Run one attempt synchronously through the real executor and return the fresh row."""
    run = trigger(pipeline_id, env=env, **overrides)
    run_execute(run_id=run.pk, executor=executor)
    run.refresh_from_db()
    return run


def drain(*, executor, skip_delays=True, limit=20):
    """Act as dispatcher + worker until nothing is due: executes every dispatched run."""
    executed = []
    for _ in range(limit):
        now = timezone.now() + (timedelta(days=1) if skip_delays else timedelta(0))
        runs_dispatch(now=now)
        pending = list(Run.objects.filter(status=Status.QUEUED, dispatched_at__isnull=False).order_by("id"))
        if not pending:
            return executed
        for run in pending:
            run_execute(run_id=run.pk, executor=executor)
            executed.append(run.pk)
    raise AssertionError("drain did not settle")


def log_text(run):
    return run.log_path.read_text(errors="replace") if run.log_path.exists() else ""


def out_lines(run, stream="out"):
    """The text of each line of one stream, without the timestamp and stream prefix."""
    lines = []
    for line in log_text(run).splitlines():
        _, s, text = (line.split(" ", 2) + [""])[:3]
        if s == stream:
            lines.append(text)
    return lines
