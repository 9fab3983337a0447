"""Run workflows: trigger, dispatch, execute, cancel, retry.

Life of a run:
1. `run_trigger` writes a `queued` row due now; after commit it asks the dispatcher to act.
2. `runs_dispatch` (under a lock) hands free concurrency slots to due runs, oldest first,
   respecting FASTFLOW_MAX_CONCURRENT_RUNS and each pipeline's max_instances, and enqueues
   one django-q2 task per run. Runs that do not fit stay `queued`, in order.
3. `run_execute` (in a q2 worker) claims the run atomically (queued -> running; a
   redelivered task finds nothing to claim), runs it through the executor, and records the
   outcome with a conditional update.
4. A failed attempt with attempts left schedules a new Run due later; waiting holds no
   worker and no slot, because only due runs are dispatched.
"""

import logging
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from runs.executors import ExecutorError, Job, Outcome, get_executor, resolve_kind
from runs.logs import LogWriter
from runs.models import FINAL, DispatchLock, Reason, Run, Status, Trigger

log = logging.getLogger("fastflow.runs")


class RunRefused(Exception):
    """The pipeline cannot run now (invalid, disabled, missing)."""


def _now():
    return timezone.now()


def run_trigger(*, pipeline, trigger, env=None, params=None, user=None, caused_by=None,
                retry_of=None, attempt=1, due_at=None, dispatch=True) -> Run:
    """Queue a run. With dispatch=False the caller executes it itself (the CLI's --wait):
    the row is born dispatched, so no worker takes it, and it still counts against limits."""
    if not pipeline.runnable:
        raise RunRefused(pipeline.why_not_runnable())
    now = _now()
    run = Run.objects.create(
        pipeline=pipeline, trigger=trigger, env=env or {}, params=params or {},
        triggered_by=user if user and user.is_authenticated else None,
        caused_by=caused_by, retry_of=retry_of, attempt=attempt,
        queued_at=now, due_at=due_at or now, dispatched_at=None if dispatch else now,
    )
    if dispatch:
        transaction.on_commit(runs_dispatch)
    return run


def runs_dispatch(*, now=None) -> list[int]:
    """Give free slots to due queued runs and enqueue them. Returns the run ids enqueued."""
    from django_q.tasks import async_task

    now = now or _now()
    with transaction.atomic():
        DispatchLock.objects.select_for_update().get_or_create(pk=1)
        active = Run.objects.filter(Q(status=Status.RUNNING) | Q(status=Status.QUEUED, dispatched_at__isnull=False))
        per_pipeline = Counter(active.values_list("pipeline_id", flat=True))
        free = settings.FASTFLOW_MAX_CONCURRENT_RUNS - sum(per_pipeline.values())
        if free <= 0:
            return []
        waiting = (Run.objects.filter(status=Status.QUEUED, dispatched_at__isnull=True, due_at__lte=now)
                   .select_related("pipeline").order_by("due_at", "id")[: free * 4 + 100])
        chosen = []
        for run in waiting:
            if len(chosen) >= free:
                break
            limit = run.pipeline.spec.max_instances
            if limit and per_pipeline[run.pipeline_id] >= limit:
                continue
            per_pipeline[run.pipeline_id] += 1
            chosen.append(run.pk)
        if chosen:
            Run.objects.filter(pk__in=chosen, status=Status.QUEUED).update(dispatched_at=now)
    for run_id in chosen:
        async_task("runs.tasks.execute_run", run_id, task_name=f"run-{run_id}", group="runs")
    return chosen


def _job_env(run: Run):
    pipeline = run.pipeline
    env = dict(pipeline.spec.default_env)
    env.update(run.env)
    env.update({
        "FASTFLOW_RUN_ID": str(run.pk),
        "FASTFLOW_PIPELINE": pipeline.id,
        "FASTFLOW_ATTEMPT": str(run.attempt),
    })
    return env


def _cancel_requested(run_id):
    return Run.objects.filter(pk=run_id, cancel_requested=True).exists()


def run_execute(*, run_id, executor=None) -> Run | None:
    """Claim and execute one run; never raises for a pipeline's or the engine's failure."""
    run = Run.objects.select_related("pipeline").filter(pk=run_id).first()
    if run is None or not run.claim():
        return None
    pipeline = run.pipeline
    writer = LogWriter(run.log_path, secrets=[])
    try:
        kind = resolve_kind(executor)
        writer.system(f"run {run.pk} of {pipeline.id}, attempt {run.attempt}, executor {kind}")
        job = Job(
            run_id=run.pk, pipeline_id=pipeline.id, code_dir=pipeline.path, env=_job_env(run), log=writer,
            requirements=pipeline.read_file("requirements.txt") or "",
            cpu_hard_limit=pipeline.value("cpu_hard_limit"), mem_hard_limit=pipeline.value("mem_hard_limit"),
            cpu_soft_limit=pipeline.value("cpu_soft_limit"), mem_soft_limit=pipeline.value("mem_soft_limit"),
            timeout=pipeline.value("timeout") or 0, network_mode=pipeline.spec.network_mode,
            cancelled=lambda: _cancel_requested(run.pk), on_started=run.record,
        )
        if not pipeline.path.is_dir() or not (pipeline.path / "main.py").is_file():
            raise ExecutorError(f"pipeline folder {pipeline.id!r} or its main.py is gone", permanent=True)
        outcome = get_executor(kind).execute(job)
    except ExecutorError as exc:
        outcome = Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=str(exc))
    except Exception as exc:  # a bug of ours: the run still ends, and says why
        log.exception("run %s: internal error", run.pk)
        outcome = Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=f"internal error: {exc!r}")
    if outcome.status == Status.FAILED:
        writer.system(f"run failed ({outcome.reason}): {outcome.message}")
    else:
        writer.system(f"run {outcome.status}" + (f": {outcome.message}" if outcome.message else ""))
    for warning in outcome.warnings:
        writer.system(f"warning: {warning}")
    writer.close()
    if _cancel_requested(run.pk) and outcome.status != Status.SUCCEEDED:
        outcome.status, outcome.reason = Status.CANCELLED, ""
    run.mark_finished(
        status=outcome.status, reason=outcome.reason if outcome.status == Status.FAILED else "",
        message=outcome.message, exit_code=outcome.exit_code, setup_seconds=outcome.setup_seconds,
        peak_memory_bytes=outcome.peak_memory_bytes, cpu_seconds=outcome.cpu_seconds,
        warnings=outcome.warnings, log_size=writer.size,
    )
    after_final(run=run)
    return run


def after_final(*, run: Run):
    """What follows a final attempt state: a retry when attempts are left; then free the slot."""
    if run.status == Status.FAILED and run.attempt <= run.pipeline.spec.retry_attempts:
        _schedule_retry(run=run)
    runs_dispatch()


def _schedule_retry(*, run: Run):
    delay = run.pipeline.spec.retry_delay(run.attempt)
    with transaction.atomic():
        if not Run.objects.filter(pk=run.pk, retry_scheduled=False).update(retry_scheduled=True):
            return None  # already scheduled (a redelivered finish)
        retry = Run.objects.create(
            pipeline=run.pipeline, trigger=Trigger.RETRY, env=run.env, params=run.params,
            retry_of_id=run.root_id, caused_by=run.caused_by, attempt=run.attempt + 1,
            triggered_by=run.triggered_by, due_at=_now() + timedelta(seconds=delay),
        )
    log.info("run %s failed; attempt %s due in %.1f s as run %s", run.pk, retry.attempt, delay, retry.pk)
    return retry


def run_cancel(*, run: Run) -> bool:
    """Cancel a queued run at once, or ask a running one to stop. False if already final."""
    if Run.objects.filter(pk=run.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=_now(), message="cancelled before it started"
    ):
        run.refresh_from_db()
        transaction.on_commit(runs_dispatch)
        return True
    done = Run.objects.filter(pk=run.pk, status=Status.RUNNING).update(cancel_requested=True)
    run.refresh_from_db()
    return bool(done)


def run_retry(*, run: Run, user=None) -> Run:
    """A manual retry: a new attempt of the same chain, due now."""
    if run.status not in FINAL:
        raise RunRefused(f"run {run.pk} is still {run.status}; retry it once it has finished")
    last = Run.objects.filter(Q(pk=run.root_id) | Q(retry_of_id=run.root_id)).order_by("-attempt").first()
    return run_trigger(
        pipeline=run.pipeline, trigger=Trigger.RETRY, env=run.env, params=run.params, user=user,
        retry_of=Run(pk=run.root_id), attempt=last.attempt + 1, caused_by=run.caused_by,
    )
