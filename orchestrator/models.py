from functools import cached_property
from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

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

    @classmethod
    def load(cls):
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj
