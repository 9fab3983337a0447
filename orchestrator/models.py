import hashlib
import secrets
from datetime import timedelta
from functools import cached_property
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator, URLValidator, validate_email
from django.db import models
from django.utils import timezone

from orchestrator.notifications import KIND_CHOICES
from orchestrator.spec import PipelineSpec, parse_memory, parse_spec

# Fields whose effective value is: admin override > pipeline.json > global default.
OVERRIDABLE = ("enabled", "cpu_hard_limit", "mem_hard_limit", "cpu_soft_limit", "mem_soft_limit", "timeout")


def _global_default(field):
    if field == "timeout":
        return settings.FASTFLOW_DEFAULT_TIMEOUT
    if field == "mem_hard_limit":
        return parse_memory(settings.FASTFLOW_DEFAULT_MEM_LIMIT) if settings.FASTFLOW_DEFAULT_MEM_LIMIT else None
    if field == "cpu_hard_limit":
        return float(settings.FASTFLOW_DEFAULT_CPU_LIMIT) if settings.FASTFLOW_DEFAULT_CPU_LIMIT else None
    if field == "enabled":
        return True
    return None


class Pipeline(models.Model):
    """A folder under the pipelines dir holding main.py. Never deleted: a folder that goes
    away marks its pipeline `missing`, so its run history stays."""

    id = models.CharField(primary_key=True, max_length=100)
    name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    metadata_file = models.CharField(max_length=255, blank=True)
    spec_text = models.TextField(blank=True, help_text="The metadata file as last read.")
    errors = models.JSONField(default=list, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    conflicts = models.JSONField(default=list, blank=True, help_text="Errors that involve other pipelines.")
    cross_warnings = models.JSONField(default=list, blank=True,
                                      help_text="Warnings that involve other pipelines (downstream cycles).")
    webhook_key = models.CharField(max_length=200, blank=True, db_index=True)
    has_requirements = models.BooleanField(default=False)
    fingerprint = models.CharField(max_length=64, blank=True)
    missing = models.BooleanField(default=False)
    first_seen_at = models.DateTimeField(default=timezone.now)
    synced_at = models.DateTimeField(default=timezone.now)

    enabled_override = models.BooleanField(
        null=True, blank=True, verbose_name="enabled (override)",
        help_text="Leave unknown to use pipeline.json.")
    cpu_hard_limit_override = models.FloatField(null=True, blank=True, help_text="Cores, e.g. 0.5")
    mem_hard_limit_override = models.BigIntegerField(null=True, blank=True, help_text="Bytes")
    cpu_soft_limit_override = models.FloatField(null=True, blank=True, help_text="Cores")
    mem_soft_limit_override = models.BigIntegerField(null=True, blank=True, help_text="Bytes")
    timeout_override = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds, 0 = none")

    # Scheduler state. pipeline.json defines the schedule; these columns are not spec fields,
    # so a sync never touches them (a pause survives any later sync).
    schedule_paused = models.BooleanField(default=False, help_text="Paused in the admin: the schedule does not fire.")
    schedule_next_at = models.DateTimeField(null=True, blank=True, db_index=True,
                                            help_text="The next fire time not yet handled.")
    schedule_key = models.CharField(max_length=500, blank=True,
                                    help_text="The schedule definition schedule_next_at was computed for.")

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return self.id

    # --- spec ---------------------------------------------------------------------------
    @cached_property
    def parsed(self):
        if not self.metadata_file:
            return parse_spec(None)
        return parse_spec(self.spec_text, source=self.metadata_file)

    @property
    def spec(self) -> PipelineSpec:
        """The typed spec; defaults when the metadata is invalid (it cannot run then)."""
        return self.parsed.spec or PipelineSpec()

    @property
    def all_errors(self):
        return list(self.errors) + list(self.conflicts)

    @property
    def all_warnings(self):
        return list(self.warnings) + list(self.cross_warnings)

    @property
    def schedule(self):
        """The typed schedule (orchestrator.schedules.Schedule), or None."""
        from orchestrator.schedules import Schedule

        return Schedule.from_spec(self.spec)

    @property
    def path(self) -> Path:
        return settings.FASTFLOW_PIPELINES_DIR / self.id

    @property
    def display_name(self):
        return self.name or self.id

    # --- effective settings ---------------------------------------------------------------
    def effective(self, field):
        """(value, source) for an overridable field; source is admin, pipeline.json or default."""
        override = getattr(self, f"{field}_override")
        if override is not None:
            return override, "admin"
        value = getattr(self.spec, field)
        if field == "enabled" and self.parsed.spec is not None and "enabled" in self.parsed.raw:
            return value, self.metadata_file
        if field != "enabled" and value is not None:
            return value, self.metadata_file or "pipeline.json"
        return _global_default(field), "default"

    def value(self, field):
        return self.effective(field)[0]

    @property
    def is_enabled(self):
        return bool(self.value("enabled"))

    @property
    def runnable(self):
        return not self.missing and not self.all_errors and self.is_enabled

    def why_not_runnable(self):
        if self.missing:
            return f"pipeline {self.id!r} is missing: its folder is gone from the pipelines dir"
        if self.all_errors:
            return f"pipeline {self.id!r} has errors: " + "; ".join(self.all_errors)
        if not self.is_enabled:
            return f"pipeline {self.id!r} is disabled"
        return ""

    def read_file(self, name, limit=200_000):
        """A file of the pipeline's folder as text; None when absent or leading outside."""
        from orchestrator.services import inside_pipelines_dir

        path = self.path / name
        if not inside_pipelines_dir(path):
            return None
        try:
            data = path.read_bytes()[:limit]
        except OSError:
            return None
        return data.decode("utf-8", errors="replace")


class SyncState(models.Model):
    """One row: what the last discovery pass saw that is not a pipeline."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    skipped = models.JSONField(default=list, blank=True)
    # Git sync (FASTFLOW_GIT_URL): the commit checked out, and how the last attempt went.
    git_commit = models.CharField(max_length=64, blank=True, help_text="The commit the checkout is at.")
    git_synced_at = models.DateTimeField(null=True, blank=True, help_text="The last successful git sync.")
    git_attempted_at = models.DateTimeField(null=True, blank=True, help_text="The last git sync attempt.")
    git_ok = models.BooleanField(null=True, blank=True, help_text="Whether the last attempt succeeded.")
    git_error = models.TextField(blank=True, help_text="The git error of the last attempt (credentials redacted).")

    def __str__(self):
        return "pipelines sync"

    @classmethod
    def load(cls):
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj


ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*\Z"


class Secret(models.Model):
    """A named value, encrypted at rest (Fernet via MultiFernet), global or scoped to one
    pipeline. The plaintext leaves the row only through `reveal()`: never into forms, API
    answers, run rows or logs (runs mask every injected value)."""

    name = models.CharField(max_length=200, validators=[RegexValidator(ENV_NAME_RE,
                            "must be a valid environment variable name (letters, digits, _; not starting with a digit)")])
    pipeline = models.ForeignKey(Pipeline, null=True, blank=True, on_delete=models.CASCADE, related_name="scoped_secrets",
                                 help_text="Empty = global. A pipeline-scoped secret wins over a global one.")
    value_encrypted = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["name", "pipeline_id"]
        constraints = [
            models.UniqueConstraint(fields=["name", "pipeline"], name="secret_unique_per_pipeline"),
            models.UniqueConstraint(fields=["name"], condition=models.Q(pipeline__isnull=True),
                                    name="secret_unique_global"),
        ]

    def __str__(self):
        return f"{self.name} ({self.pipeline_id or 'global'})"

    @property
    def scope(self):
        return self.pipeline_id or "global"

    def set_value(self, value: str):
        from orchestrator import crypto

        self.value_encrypted = crypto.encrypt(value)

    def reveal(self) -> str:
        from orchestrator import crypto

        return crypto.decrypt(self.value_encrypted)

    def used_by(self):
        """Ids of the (present) pipelines whose spec.secrets lists this name and that would
        get this row: for a global secret, those without a pipeline-scoped one of the name."""
        if self.pipeline_id:
            candidates = Pipeline.objects.filter(pk=self.pipeline_id, missing=False)
        else:
            shadowed = Secret.objects.filter(name=self.name, pipeline__isnull=False).values_list("pipeline_id", flat=True)
            candidates = Pipeline.objects.filter(missing=False).exclude(pk__in=list(shadowed))
        return [p.id for p in candidates.only("id", "metadata_file", "spec_text") if self.name in p.spec.secrets]

    @classmethod
    def resolve(cls, name, *, pipeline=None):
        """The value a run of `pipeline` gets for `name`: pipeline scope first, then global."""
        rows = {s.pipeline_id: s for s in cls.objects.filter(name=name).filter(
            models.Q(pipeline=pipeline) | models.Q(pipeline__isnull=True))}
        row = rows.get(getattr(pipeline, "pk", pipeline)) or rows.get(None)
        return row.reveal() if row else None


class SecretAudit(models.Model):
    """Who created, changed or deleted which secret, when, and from where. Never the value."""

    ACTIONS = [("create", "create"), ("change", "change"), ("delete", "delete")]
    name = models.CharField(max_length=200)
    pipeline_id = models.CharField(max_length=100, blank=True, help_text="Empty = global.")
    action = models.CharField(max_length=10, choices=ACTIONS)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    source = models.CharField(max_length=20, default="admin", help_text="admin, api or command.")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "secret audit entry"
        verbose_name_plural = "secret audit log"

    def __str__(self):
        return f"{self.action} {self.name} ({self.pipeline_id or 'global'})"

    @classmethod
    def record(cls, secret, *, action, user=None, source="admin"):
        user = user if getattr(user, "is_authenticated", False) else None
        return cls.objects.create(name=secret.name, pipeline_id=secret.pipeline_id or "", action=action, user=user,
                                  source=source)


class ApiToken(models.Model):
    """A bearer token for the REST API (and the log websocket). Only the sha256 of the token
    is stored; the token itself is shown once, when it is made. Looking a token up by its
    hash is safe against timing attacks: the token is 256 random bits, so learning a prefix
    of its hash tells nothing about any other valid token."""

    PREFIX = "ff_"
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for, e.g. \"CI deploys\".")
    hint = models.CharField(max_length=16, editable=False, help_text="The first characters, to recognise it.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.hint}… ({self.user})"

    @staticmethod
    def _hash(raw):
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, *, user, name=""):
        """(token row, raw token). The raw token is not stored anywhere: show it once."""
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name[:100], hint=raw[:10], token_hash=cls._hash(raw))
        return token, raw

    @classmethod
    def authenticate(cls, raw):
        """The active user a raw token belongs to, or None (unknown, revoked, inactive user)."""
        if not raw or len(raw) > 200:
            return None
        token = (cls.objects.select_related("user")
                 .filter(token_hash=cls._hash(raw), revoked_at__isnull=True, user__is_active=True).first())
        if token is None:
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            cls.objects.filter(pk=token.pk).update(last_used_at=now)  # at most one write a minute
        return token.user

    @property
    def is_active(self):
        return self.revoked_at is None

    def revoke(self):
        if ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
            self.refresh_from_db()


class NotificationChannel(models.Model):
    """Where run notifications go. A channel with no pipeline is global (every pipeline).
    `kind` picks a transport from orchestrator.notifications.TRANSPORTS."""

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=KIND_CHOICES)
    target = models.CharField(max_length=2000, help_text="An https:// URL (webhook, Slack, Teams) or e-mail "
                                                         "addresses, comma-separated (email).")
    pipeline = models.ForeignKey(Pipeline, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="notification_channels", help_text="Empty: every pipeline.")
    enabled = models.BooleanField(default=True)
    on_failure = models.BooleanField(default=True, help_text="A run failed and no retry follows.")
    on_success = models.BooleanField(default=False, help_text="Every successful run.")
    on_recovery = models.BooleanField(default=False, help_text="A success after a final failure.")
    last_notified_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False, help_text="Why the last delivery failed, if it did.")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.kind})"

    def clean(self):
        target = (self.target or "").strip()
        if self.kind == "email":
            for address in filter(None, (a.strip() for a in target.split(","))):
                validate_email(address)
            if not target.strip(", "):
                raise ValidationError({"target": "give at least one e-mail address"})
        else:
            try:
                URLValidator(schemes=["http", "https"])(target)
            except ValidationError:
                raise ValidationError({"target": "give the http(s) URL of the webhook"}) from None
        self.target = target

    def wants(self, event):
        return {"failure": self.on_failure, "success": self.on_success,
                "recovery": self.on_recovery or self.on_success}[event]

    def transport(self):
        from orchestrator.notifications import transport_class

        return transport_class(self.kind)(self)
