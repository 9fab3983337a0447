import socket

from django.conf import settings
from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class Reason(models.TextChoices):
    EXIT_CODE = "exit_code"
    OOM_KILLED = "oom_killed"
    TIMED_OUT = "timed_out"
    INFRASTRUCTURE = "infrastructure"
    LOST = "lost"


class Trigger(models.TextChoices):
    MANUAL = "manual"
    API = "api"
    WEBHOOK = "webhook"
    SCHEDULE = "schedule"
    RETRY = "retry"
    DOWNSTREAM = "downstream"


class Catchup(models.TextChoices):
    """How a scheduled run came about after missed fire times ("" = on time)."""

    ON_TIME = "", "on time"
    LATEST = "latest"
    NONE = "none"
    ALL = "all"


class Run(models.Model):
    """One execution attempt of a pipeline. A retry is a new Run (attempt n+1, retry_of the
    first attempt). Outcomes are written with conditional updates, never by saving a stale
    object, so a cancel can never be overwritten by a late `failed`."""

    pipeline = models.ForeignKey("orchestrator.Pipeline", on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    reason = models.CharField(max_length=16, choices=Reason.choices, blank=True)
    message = models.TextField(blank=True, help_text="How the run ended, in words.")
    trigger = models.CharField(max_length=12, choices=Trigger.choices, default=Trigger.MANUAL)
    attempt = models.PositiveIntegerField(default=1)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    caused_by = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="caused")
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    env = models.JSONField(default=dict, blank=True, help_text="Trigger-time env (never secrets).")
    params = models.JSONField(default=dict, blank=True)
    chain_depth = models.PositiveIntegerField(default=0, help_text="Downstream runs between this run and its origin.")
    idempotency_key = models.CharField(max_length=200, blank=True,
                                       help_text="Idempotency-Key of the webhook delivery that made it (24 h).")
    scheduled_for = models.DateTimeField(null=True, blank=True, help_text="The fire time of a scheduled run.")
    catchup = models.CharField(max_length=8, choices=Catchup.choices, blank=True,
                               help_text="The catch-up policy that queued it after missed fire times.")
    catchup_from = models.DateTimeField(null=True, blank=True,
                                        help_text="The first missed fire time of the window it caught up.")
    followed_up = models.BooleanField(default=False, help_text="Downstream triggers and notifications done.")

    queued_at = models.DateTimeField(default=timezone.now, db_index=True)
    due_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    executor = models.CharField(max_length=20, blank=True)
    image = models.CharField(max_length=200, blank=True)
    git_sha = models.CharField(max_length=64, blank=True)
    worker_host = models.CharField(max_length=200, blank=True)
    container_id = models.CharField(max_length=80, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    setup_seconds = models.FloatField(null=True, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    cpu_seconds = models.FloatField(null=True, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    log_size = models.BigIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life from its worker.")
    cancel_requested = models.BooleanField(default=False)
    retry_scheduled = models.BooleanField(default=False, help_text="A later attempt follows this one.")

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "due_at"]), models.Index(fields=["pipeline", "-id"])]
        constraints = [models.UniqueConstraint(fields=["pipeline", "idempotency_key"],
                                               condition=~models.Q(idempotency_key=""), name="run_idempotency_key")]

    def __str__(self):
        return f"run {self.pk} of {self.pipeline_id}"

    @property
    def is_final(self):
        return self.status in FINAL

    @property
    def root_id(self):
        return self.retry_of_id or self.pk

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        if self.started_at:
            return (timezone.now() - self.started_at).total_seconds()
        return None

    @property
    def log_path(self):
        return settings.FASTFLOW_DATA_DIR / "logs" / f"{self.pk}.log"

    def claim(self):
        """queued -> running, atomically. False when another worker (or a cancel) won, or
        when the dispatcher never handed this run out (a stray task must not jump limits,
        due times or the queue)."""
        now = timezone.now()
        won = Run.objects.filter(pk=self.pk, status=Status.QUEUED, dispatched_at__isnull=False).update(
            status=Status.RUNNING, started_at=now, worker_host=socket.gethostname()[:200]
        )
        if won:
            self.status, self.started_at = Status.RUNNING, now
        return bool(won)

    def mark_finished(self, *, status, reason="", message="", **fields):
        """Record a final state unless the run is already final (a cancel wins)."""
        fields.update(status=status, reason=reason, message=message[:10_000], finished_at=timezone.now())
        done = Run.objects.filter(pk=self.pk).exclude(status__in=FINAL).update(**fields)
        self.refresh_from_db()
        return bool(done)

    def record(self, **fields):
        Run.objects.filter(pk=self.pk).update(**fields)
        for key, value in fields.items():
            setattr(self, key, value)


class DispatchLock(models.Model):
    """One row, locked (select_for_update) while the dispatcher hands out concurrency slots,
    so two dispatchers on PostgreSQL cannot both fill the last slot. SQLite serialises
    writers already (transaction_mode IMMEDIATE)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)


class Lease(models.Model):
    """A named, expiring lease: the holder acts alone until `expires_at` (the reconciler)."""

    name = models.CharField(primary_key=True, max_length=50)
    holder = models.CharField(max_length=200)
    expires_at = models.DateTimeField()


def instance_id() -> str:
    """This installation's id (one per database), labelled on its containers so that the
    reconciler never removes containers of another installation sharing the engine."""
    import uuid

    from django.utils.dateparse import parse_datetime

    row, _ = Lease.objects.get_or_create(
        name="instance-id", defaults={"holder": uuid.uuid4().hex[:16], "expires_at": parse_datetime("9999-01-01T00:00Z")})
    return row.holder
