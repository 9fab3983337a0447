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
5. After the final attempt (a success, a cancel, or a failure with no retry to follow),
   `after_final` follows up once: downstream triggers, then notifications (queued as a
   q2 task, so delivery is outside the worker's critical path).
"""

import json
import logging
import socket
import time
from collections import Counter
from datetime import timedelta
from typing import Annotated, Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints, field_validator, model_validator

from orchestrator.crypto import DecryptionError
from orchestrator.services import MissingSecret, git_snapshot_for_run, secrets_for_run
from orchestrator.spec import ENV_NAME_RE
from runs.executors import ExecutorError, Job, Outcome, get_executor, resolve_kind
from runs.executors.base import exit_outcome
from runs.logs import LogWriter, lines_seen
from runs.models import FINAL, DispatchLock, Reason, Run, Status, Trigger

log = logging.getLogger("fastflow.runs")


class RunRefused(Exception):
    """The pipeline cannot run now (invalid, disabled, missing)."""


class InvalidInput(RunRefused):
    """The trigger-time input cannot be accepted (a reserved or secret env name)."""


MAX_INPUT_BYTES = 64 * 1024  # env and params together, as JSON
MAX_ENV_VARS = 100
RESERVED_PREFIX = "FASTFLOW_"


# The same rules as the validator below, for the OpenAPI schema (and so for API clients).
ENV_NAME_PATTERN = r"^(?!FASTFLOW_)[A-Za-z_][A-Za-z0-9_]{0,199}$"
ENV_VALUE_PATTERN = r"^[^\x00]*$"
EnvName = Annotated[str, StringConstraints(strict=True, pattern=ENV_NAME_PATTERN)]
EnvValue = Annotated[str, StringConstraints(strict=True, max_length=MAX_INPUT_BYTES, pattern=ENV_VALUE_PATTERN)]


def _env_schema(schema):
    """pydantic writes patternProperties, which lets other names through; say it exactly."""
    schema.pop("patternProperties", None)
    schema["propertyNames"] = {"pattern": ENV_NAME_PATTERN}
    schema["additionalProperties"] = {"type": "string", "maxLength": MAX_INPUT_BYTES, "pattern": ENV_VALUE_PATTERN}


class RunInput(BaseModel):
    """Trigger-time input: `env` reaches the run as environment variables, `params` as JSON
    in FASTFLOW_PARAMS. Both are stored on the run (secrets cannot be passed this way)."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=MAX_ENV_VARS, json_schema_extra=_env_schema,
                                         description="Environment variables for the run.")
    params: dict[StrictStr, Any] = Field(default_factory=dict, description="Any JSON object; FASTFLOW_PARAMS.")

    @field_validator("env", mode="before")
    @classmethod
    def _env_names(cls, value):
        """Readable reasons first; the annotated types above then check the same again."""
        if not isinstance(value, dict):
            return value
        if len(value) > MAX_ENV_VARS:
            raise ValueError(f"at most {MAX_ENV_VARS} variables")
        bad = [k for k in value if not isinstance(k, str) or not ENV_NAME_RE.fullmatch(k) or len(k) > 200]
        if bad:
            raise ValueError("not valid environment variable names (letters, digits and _, not starting with a "
                             f"digit): {', '.join(map(repr, bad[:5]))}")
        reserved = [k for k in value if k.startswith(RESERVED_PREFIX)]
        if reserved:
            raise ValueError(f"names starting with {RESERVED_PREFIX} are reserved: {', '.join(reserved[:5])}")
        if any(isinstance(v, str) and "\x00" in v for v in value.values()):
            raise ValueError("values cannot contain NUL characters")
        return value

    @model_validator(mode="after")
    def _size(self):
        size = len(json.dumps(self.env)) + len(json.dumps(self.params))
        if size > MAX_INPUT_BYTES:
            raise ValueError(f"env and params take {size} bytes as JSON; the limit is {MAX_INPUT_BYTES}")
        return self


def _now():
    return timezone.now()


def _check_env(pipeline, env):
    secret = sorted(set(env) & set(pipeline.spec.secrets))
    if secret:
        raise InvalidInput(f"{', '.join(secret)}: secret(s) of {pipeline.id}; set them as secrets, not as "
                           "trigger input (trigger input is stored on the run)")


def run_trigger(*, pipeline, trigger, env=None, params=None, user=None, caused_by=None,
                retry_of=None, attempt=1, due_at=None, dispatch=True, chain_depth=0,
                idempotency_key="", scheduled_for=None, catchup="", catchup_from=None) -> Run:
    """Queue a run. With dispatch=False the caller executes it itself (the CLI's --wait):
    the row is born dispatched, so no worker takes it, and it still counts against limits."""
    if not pipeline.runnable:
        raise RunRefused(pipeline.why_not_runnable())
    _check_env(pipeline, env or {})
    now = _now()
    run = Run.objects.create(
        pipeline=pipeline, trigger=trigger, env=env or {}, params=params or {},
        triggered_by=user if user and user.is_authenticated else None,
        caused_by=caused_by, retry_of=retry_of, attempt=attempt,
        queued_at=now, due_at=due_at or now, dispatched_at=None if dispatch else now,
        chain_depth=chain_depth, idempotency_key=idempotency_key, scheduled_for=scheduled_for,
        catchup=catchup, catchup_from=catchup_from,
    )
    if dispatch:
        transaction.on_commit(runs_dispatch)
    return run


def runs_dispatch(*, now=None) -> list[int]:
    """Give free slots to due queued runs and enqueue them. Returns the run ids enqueued."""
    from django_q.tasks import async_task

    now = now or _now()
    if _waiting_for_engine():
        return []
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


def _waiting_for_engine():
    """FASTFLOW_ENGINE_DOWN=wait with the docker executor: while no engine answers, runs stay
    queued (nothing is dispatched) and go as soon as it is back, with no restart."""
    if settings.FASTFLOW_ENGINE_DOWN != "wait" or settings.FASTFLOW_EXECUTOR != "docker":
        return False
    from runs.executors import executor_class

    return not executor_class("docker").available()


def _job_env(run: Run):
    pipeline = run.pipeline
    env = dict(pipeline.spec.default_env)
    env.update(run.env)
    env.update({
        "FASTFLOW_RUN_ID": str(run.pk),
        "FASTFLOW_PIPELINE": pipeline.id,
        "FASTFLOW_ATTEMPT": str(run.attempt),
        "FASTFLOW_TRIGGER": run.trigger,
        "FASTFLOW_PARAMS": json.dumps(run.params),
    })
    if run.scheduled_for:
        env["FASTFLOW_SCHEDULED_FOR"] = run.scheduled_for.isoformat()
    if run.caused_by_id:
        env["FASTFLOW_CAUSED_BY"] = str(run.caused_by_id)
    return env


class _Watch:
    """The executor's callback, every ~0.5 s while a run goes: says whether a cancel was
    requested, and every HEARTBEAT seconds records that this worker is alive (the
    reconciler takes over runs whose heartbeat stops)."""

    HEARTBEAT = 5.0

    def __init__(self, run_id):
        self.run_id, self._last = run_id, 0.0

    def __call__(self):
        now = time.monotonic()
        if now - self._last >= self.HEARTBEAT:
            self._last = now
            Run.objects.filter(pk=self.run_id, status=Status.RUNNING).update(heartbeat_at=_now())
        return _cancel_requested(self.run_id)


def _cancel_requested(run_id):
    return Run.objects.filter(pk=run_id, cancel_requested=True).exists()


def _job_for(run: Run, writer: LogWriter, secrets: dict, code_root=None) -> Job:
    pipeline = run.pipeline
    code_dir = (code_root / pipeline.id) if code_root else pipeline.path
    if not code_dir.is_dir() or not (code_dir / "main.py").is_file():
        raise ExecutorError(f"pipeline folder {pipeline.id!r} or its main.py is gone", permanent=True)
    return Job(
        run_id=run.pk, pipeline_id=pipeline.id, code_dir=code_dir, env={**_job_env(run), **secrets}, log=writer,
        requirements=pipeline.read_file("requirements.txt") or "",
        cpu_hard_limit=pipeline.value("cpu_hard_limit"), mem_hard_limit=pipeline.value("mem_hard_limit"),
        cpu_soft_limit=pipeline.value("cpu_soft_limit"), mem_soft_limit=pipeline.value("mem_soft_limit"),
        timeout=pipeline.value("timeout") or 0, network_mode=pipeline.spec.network_mode,
        cancelled=_Watch(run.pk), on_started=run.record,
    )


def run_execute(*, run_id, executor=None) -> Run | None:
    """Claim and execute one run; never raises for a pipeline's or the engine's failure."""
    run = Run.objects.select_related("pipeline").filter(pk=run_id).first()
    if run is None or not run.claim():
        return None
    try:
        secrets = secrets_for_run(run.pipeline)
    except (MissingSecret, DecryptionError) as exc:  # fails before any container starts
        return _finish(run, Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=str(exc)),
                       LogWriter(run.log_path, secrets=[]))
    writer = LogWriter(run.log_path, secrets=list(secrets.values()))
    try:
        sha, code_root = git_snapshot_for_run()
        if sha:
            run.record(git_sha=sha)
        kind = resolve_kind(executor)
        writer.system(f"run {run.pk} of {run.pipeline_id}, attempt {run.attempt}, executor {kind}"
                      + (f", commit {sha[:12]}" if sha else ""))
        outcome = get_executor(kind).execute(_job_for(run, writer, secrets, code_root))
    except ExecutorError as exc:
        outcome = Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=str(exc))
    except Exception as exc:  # a bug of ours: the run still ends, and says why
        log.exception("run %s: internal error", run.pk)
        outcome = Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=f"internal error: {exc!r}")
    return _finish(run, outcome, writer)


def run_reattach(*, run_id) -> Run | None:
    """Follow a run whose worker died while its container lives on (the reconciler has
    taken it over): logs resume where the file stopped, then the run finishes as usual."""
    from runs.executors.docker import DockerExecutor

    run = Run.objects.select_related("pipeline").filter(pk=run_id, status=Status.RUNNING).first()
    if run is None:
        return None
    seen = lines_seen(run.log_path)
    try:
        secrets = secrets_for_run(run.pipeline)
    except (MissingSecret, DecryptionError):
        secrets = {}  # it started with them; without them now, at least nothing new leaks
    writer = LogWriter(run.log_path, secrets=list(secrets.values()))
    writer.system(f"re-attached by {socket.gethostname()} after its worker stopped reporting")
    try:
        elapsed = (_now() - run.started_at).total_seconds() if run.started_at else 0.0
        code_root = _snapshot_root(run.git_sha)
        outcome = DockerExecutor().reattach(_job_for(run, writer, secrets, code_root), run.container_id,
                                            elapsed=elapsed, seen=seen)
    except ExecutorError as exc:
        outcome = Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=str(exc))
    except Exception as exc:
        log.exception("run %s: internal error while re-attaching", run.pk)
        outcome = Outcome(Status.FAILED, Reason.INFRASTRUCTURE, message=f"internal error: {exc!r}")
    outcome.setup_seconds = run.setup_seconds
    return _finish(run, outcome, writer)


def run_finalise_from_container(*, run: Run, state: dict) -> Run:
    """A run whose worker died after its container exited: the container's state decides."""
    code = state.get("ExitCode")
    outcome = exit_outcome(code, oom=bool(state.get("OOMKilled")), cancelled=_cancel_requested(run.pk))
    writer = LogWriter(run.log_path, secrets=[])
    writer.system("finalised from the container's exit state (its worker had stopped reporting)")
    return _finish(run, outcome, writer)


def _snapshot_root(sha):
    if not sha:
        return None
    from orchestrator import gitsync

    root = gitsync.snapshot(sha)
    return root / settings.FASTFLOW_GIT_SUBDIR if settings.FASTFLOW_GIT_SUBDIR else root


def _finish(run: Run, outcome: Outcome, writer: LogWriter) -> Run:
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
    """What follows a final attempt state: a retry when attempts are left; else, once, the
    follow-ups of a final attempt (downstream triggers, notifications); then free the slot."""
    if run.status == Status.FAILED and run.attempt <= run.pipeline.spec.retry_attempts:
        _schedule_retry(run=run)
    run.refresh_from_db(fields=["retry_scheduled", "followed_up", "warnings"])
    if run.is_final and not run.retry_scheduled:
        try:
            _follow_up(run=run)
        except Exception:  # the run's outcome stands whatever happens here; the cause is logged
            log.exception("run %s: follow-up (downstream triggers, notifications) failed", run.pk)
    runs_dispatch()


def downstream_max_depth():
    """How many downstream runs may follow one another before a chain stops (cycles)."""
    return getattr(settings, "FASTFLOW_DOWNSTREAM_MAX_DEPTH", 10)


def _follow_up(*, run: Run):
    from orchestrator.notifications import notifications_enqueue

    if not Run.objects.filter(pk=run.pk, followed_up=False).update(followed_up=True):
        return  # done already (a redelivered finish)
    run_downstream(run=run)
    notifications_enqueue(run=run)


def run_downstream(*, run: Run) -> list[Run]:
    """Trigger the pipelines named by `downstream_triggers` for this final outcome. A trigger
    that cannot fire (depth limit, unknown or unrunnable pipeline) is a warning on the run."""
    from orchestrator.models import Pipeline

    wanted = [t for t in run.pipeline.spec.downstream_triggers
              if (t.on_success and run.status == Status.SUCCEEDED) or (t.on_failure and run.status == Status.FAILED)]
    depth, limit = run.chain_depth + 1, downstream_max_depth()
    started, warnings = [], []
    for item in wanted:
        if depth > limit:
            warnings.append(f"downstream {item.pipeline!r} not triggered: the chain reached the depth limit "
                            f"of {limit} runs (FASTFLOW_DOWNSTREAM_MAX_DEPTH); is there a cycle?")
            continue
        target = Pipeline.objects.filter(pk=item.pipeline).first()
        try:
            if target is None:
                raise RunRefused(f"no pipeline {item.pipeline!r}")
            started.append(run_trigger(pipeline=target, trigger=Trigger.DOWNSTREAM, caused_by=run,
                                       chain_depth=depth))
        except RunRefused as exc:
            warnings.append(f"downstream {item.pipeline!r} not triggered: {exc}")
    if warnings:
        for warning in warnings:
            log.warning("run %s: %s", run.pk, warning)
        run.record(warnings=list(run.warnings) + warnings)
    if started:
        log.info("run %s %s: triggered downstream %s", run.pk, run.status,
                 ", ".join(f"{r.pipeline_id} (run {r.pk})" for r in started))
    return started


def _schedule_retry(*, run: Run):
    delay = run.pipeline.spec.retry_delay(run.attempt)
    with transaction.atomic():
        if not Run.objects.filter(pk=run.pk, retry_scheduled=False).update(retry_scheduled=True):
            return None  # already scheduled (a redelivered finish)
        retry = Run.objects.create(
            pipeline=run.pipeline, trigger=Trigger.RETRY, env=run.env, params=run.params,
            retry_of_id=run.root_id, caused_by=run.caused_by, attempt=run.attempt + 1,
            triggered_by=run.triggered_by, due_at=_now() + timedelta(seconds=delay), chain_depth=run.chain_depth,
            scheduled_for=run.scheduled_for, catchup=run.catchup, catchup_from=run.catchup_from,
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
        chain_depth=run.chain_depth,
    )
