import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from orchestrator.models import OVERRIDABLE, ApiToken, NotificationChannel, Pipeline, Secret, SecretAudit, SyncState
from orchestrator.schedules import schedule_pause, schedule_resume, schedule_upcoming
from orchestrator.services import pipelines_sync_all, secret_delete, secret_save
from orchestrator.spec import format_memory, parse_memory


class MemoryField(forms.CharField):
    """Accepts "512m", "1.5g" or bytes; stores bytes."""

    def to_python(self, value):
        value = (value or "").strip()
        if not value:
            return None
        try:
            return parse_memory(int(value) if value.isdigit() else value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def prepare_value(self, value):
        return format_memory(value) if isinstance(value, int) else value


class PipelineForm(forms.ModelForm):
    mem_hard_limit_override = MemoryField(required=False, help_text='e.g. "512m", "1.5g"; empty = pipeline.json')
    mem_soft_limit_override = MemoryField(required=False, help_text='e.g. "256m"; empty = pipeline.json')
    enabled_override = forms.NullBooleanField(
        required=False, label="Enabled (override)",
        widget=forms.Select(choices=[("unknown", "use pipeline.json"), ("true", "force enabled"),
                                     ("false", "force disabled")]))

    class Meta:
        model = Pipeline
        fields = [f"{f}_override" for f in OVERRIDABLE]


def _show(field, value):
    if value is None:
        return "none"
    if field.startswith("mem_"):
        return format_memory(value)
    if field == "timeout":
        return "none" if value == 0 else f"{value} s"
    if field.startswith("cpu_"):
        return f"{value:g} cores"
    return str(value)


@admin.register(Pipeline)
class PipelineAdmin(admin.ModelAdmin):
    form = PipelineForm
    change_form_template = "admin/orchestrator/pipeline/change_form.html"
    list_display = ["id", "name", "enabled_badge", "tag_list", "status_badge", "last_run", "success_rate",
                    "schedule_state"]
    list_filter = ["missing"]
    search_fields = ["id", "name", "description"]
    actions = ["run_now", "sync_now", "pause_schedules", "resume_schedules"]
    readonly_fields = ["id", "name", "description", "tag_list", "metadata_file", "status_badge",
                       "problems", "effective_settings", "spec_view", "main_py", "requirements_txt",
                       "synced_at", "first_seen_at", "run_chart", "schedule_view", "notification_channels"]
    fieldsets = [
        (None, {"fields": ["id", "name", "description", "tag_list", "metadata_file", "status_badge",
                           "problems", "synced_at", "run_chart"]}),
        ("Effective settings (admin override > pipeline.json > global default)",
         {"fields": ["effective_settings"]}),
        ("Overrides", {"fields": [f"{f}_override" for f in OVERRIDABLE]}),
        ("Schedule", {"fields": ["schedule_view"]}),
        ("Notifications", {"fields": ["notification_channels"]}),
        ("Spec and code (read-only)", {"fields": ["spec_view", "main_py", "requirements_txt"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_final=Count("runs", filter=Q(runs__status__in=["succeeded", "failed"])),
            n_ok=Count("runs", filter=Q(runs__status="succeeded")),
        )

    def has_add_permission(self, request):
        return False  # pipelines come from folders, not from forms

    def has_delete_permission(self, request, obj=None):
        return False  # a pipeline's history is kept; a removed folder marks it missing

    def changelist_view(self, request, extra_context=None):
        state = SyncState.objects.filter(pk=1).first()
        if state and state.skipped and request.method == "GET":
            for s in state.skipped:
                messages.warning(request, f"Skipped folder {s['folder']!r}: {s['reason']}")
        if state and state.git_ok is False and request.method == "GET":
            messages.error(request, f"Git sync failed (keeping commit {state.git_commit[:12] or 'none'}): "
                                    f"{state.git_error}")
        return super().changelist_view(request, extra_context)

    @admin.display(description="enabled", boolean=True)
    def enabled_badge(self, obj):
        return obj.is_enabled

    @admin.display(description="tags")
    def tag_list(self, obj):
        return ", ".join(obj.tags) or "-"

    @admin.display(description="status")
    def status_badge(self, obj):
        if obj.missing:
            return mark_safe('<span style="color:#888;font-weight:bold">missing</span>')
        if obj.all_errors:
            n = len(obj.all_errors)
            return format_html('<span style="background:#ba2121;color:#fff;padding:1px 6px;border-radius:8px" '
                               'title="{}">{} error{}</span>', "; ".join(obj.all_errors), n, "s" if n > 1 else "")
        if obj.all_warnings:
            return format_html('<span style="color:#b36b00" title="{}">valid, {} warning(s)</span>',
                               "; ".join(obj.all_warnings), len(obj.all_warnings))
        return mark_safe('<span style="color:#2a7a2a">valid</span>')

    @admin.display(description="last run")
    def last_run(self, obj):
        run = obj.runs.order_by("-id").first()
        if run is None:
            return "-"
        url = reverse("admin:runs_run_change", args=[run.pk])
        label = run.status + (f" / {run.reason}" if run.reason else "")
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="success rate")
    def success_rate(self, obj):
        if not getattr(obj, "n_final", 0):
            return "-"
        return f"{100 * obj.n_ok / obj.n_final:.0f}% of {obj.n_final}"

    @admin.display(description="last 50 runs")
    def run_chart(self, obj):
        from runs.admin import run_chart_svg

        return run_chart_svg(obj.runs.order_by("-id")[:50])

    @admin.display(description="errors and warnings")
    def problems(self, obj):
        items = [("color:#ba2121", e) for e in obj.all_errors] + [("color:#b36b00", w) for w in obj.all_warnings]
        if not items:
            return "none"
        return format_html("<ul style='margin:0'>{}</ul>",
                           format_html_join("", '<li style="{}">{}</li>', items))

    @admin.display(description="effective values")
    def effective_settings(self, obj):
        rows = []
        for field in OVERRIDABLE:
            value, source = obj.effective(field)
            rows.append((field, _show(field, value), source))
        spec = obj.spec
        rows += [("retry_attempts", spec.retry_attempts, obj.metadata_file or "default"),
                 ("max_instances", spec.max_instances or "unlimited", obj.metadata_file or "default")]
        return format_html("<table><tr><th>setting</th><th>value</th><th>from</th></tr>{}</table>",
                           format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows))

    @admin.display(description="parsed spec")
    def spec_view(self, obj):
        if obj.parsed.spec is None:
            return format_html("<pre>{}</pre>", obj.spec_text or "(none)")
        dumped = obj.parsed.spec.model_dump(mode="json", exclude_defaults=True, by_alias=True)
        if "webhook_key" in dumped:
            dumped["webhook_key"] = "(set; not shown)"
        return format_html("<pre>{}</pre>", json.dumps(dumped, indent=2) if dumped else "(all defaults)")

    @admin.display(description="main.py")
    def main_py(self, obj):
        return format_html('<pre style="max-height:30em;overflow:auto">{}</pre>', obj.read_file("main.py") or "(missing)")

    @admin.display(description="requirements.txt")
    def requirements_txt(self, obj):
        text = obj.read_file("requirements.txt")
        return format_html("<pre>{}</pre>", text) if text is not None else "(none)"

    # --- actions ---------------------------------------------------------------------------
    @admin.action(description="Run now")
    def run_now(self, request, queryset):
        from runs.models import Trigger
        from runs.services import RunRefused, run_trigger

        for pipeline in queryset:
            try:
                run = run_trigger(pipeline=pipeline, trigger=Trigger.MANUAL, user=request.user)
            except RunRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                url = reverse("admin:runs_run_change", args=[run.pk])
                self.message_user(request, format_html('Run <a href="{}">{}</a> of {} queued.', url, run.pk,
                                                       pipeline.id), messages.SUCCESS)

    @admin.action(description="Sync pipelines from disk")
    def sync_now(self, request, queryset=None):
        _sync_and_report(self, request)

    # --- schedules ---------------------------------------------------------------------------
    @admin.display(description="schedule")
    def schedule_state(self, obj):
        if obj.schedule is None:
            return "-"
        if obj.schedule_paused:
            return mark_safe('<span style="color:#a36a00;font-weight:bold">paused</span>')
        return f"next {obj.schedule_next_at:%Y-%m-%d %H:%M} UTC" if obj.schedule_next_at else "ended"

    @admin.display(description="schedule")
    def schedule_view(self, obj):
        schedule = obj.schedule
        if schedule is None:
            return "none (set schedule_cron or schedule_interval_seconds in pipeline.json)"
        fires = schedule_upcoming(pipeline=obj, n=5)
        rows = format_html_join("", "<li>{} <span style='color:#777'>({} UTC)</span></li>",
                                ((f.astimezone(schedule.zone).strftime("%a %Y-%m-%d %H:%M %Z"),
                                  f.strftime("%Y-%m-%d %H:%M")) for f in fires))
        state = "paused: does not fire (resuming skips the time spent paused)" if obj.schedule_paused else "active"
        button = ("Resume schedule", "resume") if obj.schedule_paused else ("Pause schedule", "pause")
        url = reverse(f"admin:orchestrator_pipeline_schedule_{button[1]}", args=[obj.pk])
        return format_html(
            "<p>{}; catch-up policy <code>{}</code>; <b>{}</b></p><p>Next {} fire times{}:</p><ol>{}</ol>"
            '<button type="submit" class="button" formaction="{}" formmethod="post" formnovalidate>{}</button>',
            schedule.describe(), obj.spec.schedule_catchup, state, len(fires),
            " (once resumed)" if obj.schedule_paused else "", rows or "-", url, button[0])

    @admin.display(description="channels")
    def notification_channels(self, obj):
        channels = NotificationChannel.objects.filter(Q(pipeline=obj) | Q(pipeline__isnull=True))
        events = ("on_failure", "on_success", "on_recovery")
        rows = format_html_join("", '<li><a href="{}">{}</a> ({}{}): {}</li>', (
            (reverse("admin:orchestrator_notificationchannel_change", args=[c.pk]), c.name, c.kind,
             "" if c.pipeline_id else ", global", ", ".join(e[3:] for e in events if getattr(c, e)) or "nothing")
            for c in channels if c.enabled))
        add = reverse("admin:orchestrator_notificationchannel_add") + f"?pipeline={obj.pk}"
        return format_html('<ul style="margin:0">{}</ul><a href="{}">Add a channel for this pipeline</a>',
                           rows or format_html("<li>{}</li>", "none"), add)

    @admin.action(description="Pause schedules")
    def pause_schedules(self, request, queryset):
        for pipeline in queryset:
            schedule_pause(pipeline=pipeline)
        self.message_user(request, f"Paused the schedule of {len(queryset)} pipeline(s); syncs keep it paused.")

    @admin.action(description="Resume schedules")
    def resume_schedules(self, request, queryset):
        for pipeline in queryset:
            schedule_resume(pipeline=pipeline)
        self.message_user(request, f"Resumed the schedule of {len(queryset)} pipeline(s).")

    def schedule_view_action(self, request, object_id, action):
        pipeline = get_object_or_404(Pipeline, pk=object_id)
        if request.method == "POST" and self.has_change_permission(request, pipeline):
            getattr(self, f"{action}_schedules")(request, Pipeline.objects.filter(pk=pipeline.pk))
        return redirect("admin:orchestrator_pipeline_change", object_id)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [path("<path:object_id>/run/", view(self.run_view), name="orchestrator_pipeline_run"),
                path("<path:object_id>/schedule/pause/", view(self.schedule_view_action), {"action": "pause"},
                     name="orchestrator_pipeline_schedule_pause"),
                path("<path:object_id>/schedule/resume/", view(self.schedule_view_action), {"action": "resume"},
                     name="orchestrator_pipeline_schedule_resume")] + super().get_urls()

    def run_view(self, request, object_id):
        pipeline = get_object_or_404(Pipeline, pk=object_id)
        if request.method != "POST" or not self.has_change_permission(request, pipeline):
            return redirect("admin:orchestrator_pipeline_change", object_id)
        self.run_now(request, Pipeline.objects.filter(pk=pipeline.pk))
        return redirect("admin:orchestrator_pipeline_change", object_id)



@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "scope", "enabled", "on_failure", "on_success", "on_recovery",
                    "last_notified_at", "last_error_short"]
    list_filter = ["kind", "enabled"]
    fields = ["name", "kind", "target", "pipeline", "enabled", "on_failure", "on_success", "on_recovery",
              "last_notified_at", "last_error"]
    readonly_fields = ["last_notified_at", "last_error"]

    @admin.display(description="pipeline")
    def scope(self, obj):
        return obj.pipeline_id or "all pipelines"

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else (obj.last_error or "-")


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["user", "name"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made here (the raw token is shown once, on the page after "Save") and
    revoked with the action; they are never edited."""

    form = ApiTokenForm
    list_display = ["hint_label", "user", "name", "created_at", "last_used_at", "active"]
    list_filter = ["revoked_at"]
    search_fields = ["user__username", "name", "hint"]
    actions = ["revoke"]
    readonly_fields = ["hint_label", "created_at", "last_used_at", "revoked_at"]

    def get_fields(self, request, obj=None):
        return ["user", "name"] if obj is None else ["user", "name", "hint_label", "created_at", "last_used_at",
                                                     "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is None else ["user", *self.readonly_fields]

    @admin.display(description="token")
    def hint_label(self, obj):
        return f"{obj.hint}…"

    @admin.display(description="active", boolean=True)
    def active(self, obj):
        return obj.is_active

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        token, raw = ApiToken.issue(user=form.cleaned_data["user"], name=form.cleaned_data["name"])
        obj.pk, obj.hint, obj.token_hash, obj.created_at = token.pk, token.hint, token.token_hash, token.created_at
        request._fastflow_raw_token = raw

    def response_add(self, request, obj, post_url_continue=None):
        """Show the raw token once, on its own page (never in a message cookie or a log)."""
        raw = getattr(request, "_fastflow_raw_token", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "title": "API token created", "token": obj,
                   "raw_token": raw, "opts": self.model._meta,
                   "changelist_url": reverse("admin:orchestrator_apitoken_changelist")}
        response = TemplateResponse(request, "admin/orchestrator/apitoken/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        n = 0
        for token in queryset.filter(revoked_at__isnull=True):
            token.revoke()
            n += 1
        self.message_user(request, f"Revoked {n} token(s).")


def _sync_and_report(model_admin, request):
    """Git sync (when FASTFLOW_GIT_URL is set), then discovery; say how both went."""
    from orchestrator import gitsync

    report = pipelines_sync_all()
    if gitsync.enabled():
        state = SyncState.load()
        if state.git_ok:
            model_admin.message_user(request, f"Git: at commit {state.git_commit[:12]}.", messages.SUCCESS)
        else:
            model_admin.message_user(request, f"Git sync failed, kept the last good tree: {state.git_error}",
                                     messages.ERROR)
    model_admin.message_user(request, f"Synced: {len(report.created)} new, {len(report.updated)} updated, "
                                      f"{len(report.missing)} newly missing.")


# --- secrets ---------------------------------------------------------------------------------------
class SecretForm(forms.ModelForm):
    """The value is write-only: "new value" is never filled in from the stored one (and a
    PasswordInput never renders what was typed either). Required on create; on change,
    empty keeps the stored value."""

    new_value = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False, strip=False,
                                max_length=65536, help_text="Write-only. When changing, leave empty to keep the "
                                                            "stored value.")

    class Meta:
        model = Secret
        fields = ["name", "pipeline"]

    def clean(self):
        data = super().clean()
        if self.instance.pk is None and not data.get("new_value"):
            self.add_error("new_value", "A new secret needs a value.")
        return data


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    form = SecretForm
    list_display = ["name", "scope", "updated_at", "updated_by", "used_by_list"]
    list_filter = [("pipeline", admin.EmptyFieldListFilter)]
    search_fields = ["name", "pipeline__id"]
    readonly_fields = ["created_at", "updated_at", "updated_by", "used_by_list"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("updated_by")

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "pipeline", "new_value"]
        return ["name", "pipeline", "new_value", "created_at", "updated_at", "updated_by", "used_by_list"]

    def get_readonly_fields(self, request, obj=None):
        # Name and scope are the secret's identity: to move one, delete it and add it anew.
        return self.readonly_fields if obj is None else ["name", "pipeline", *self.readonly_fields]

    @admin.display(description="scope", ordering="pipeline")
    def scope(self, obj):
        return f"pipeline {obj.pipeline_id}" if obj.pipeline_id else "global"

    @admin.display(description="used by")
    def used_by_list(self, obj):
        return ", ".join(obj.used_by()) or "-"

    def save_model(self, request, obj, form, change):
        """Through secret_save (encrypts, writes the audit entry); an empty "new value" on a
        change keeps the value and records nothing."""
        value = form.cleaned_data.get("new_value")
        if change and not value:
            return
        saved, _ = secret_save(name=obj.name, value=value, pipeline=obj.pipeline, user=request.user,
                               source="admin")
        obj.pk, obj.value_encrypted, obj.created_at, obj.updated_at = (saved.pk, saved.value_encrypted,
                                                                       saved.created_at, saved.updated_at)

    def delete_model(self, request, obj):
        secret_delete(secret=obj, user=request.user, source="admin")

    def delete_queryset(self, request, queryset):
        for secret in queryset:
            secret_delete(secret=secret, user=request.user, source="admin")


@admin.register(SecretAudit)
class SecretAuditAdmin(admin.ModelAdmin):
    """Read-only: entries are written by secret_save / secret_delete."""

    list_display = ["at", "action", "name", "scope", "user", "source"]
    list_filter = ["action", "source"]
    search_fields = ["name", "pipeline_id", "user__username"]

    @admin.display(description="scope")
    def scope(self, obj):
        return obj.pipeline_id or "global"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- git sync state --------------------------------------------------------------------------------
@admin.register(SyncState)
class SyncStateAdmin(admin.ModelAdmin):
    """One row: the commit checked out and how the last git sync went, with "sync now"."""

    list_display = ["__str__", "git_commit_short", "git_synced_at", "git_result", "git_attempted_at", "last_sync_at"]
    list_display_links = None
    actions = ["sync_now"]
    fields = readonly_fields = ["git_url", "git_commit", "git_synced_at", "git_result", "git_error",
                                "git_attempted_at", "last_sync_at"]

    def changelist_view(self, request, extra_context=None):
        SyncState.load()  # so there is a row to select for "sync now"
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="repository")
    def git_url(self, obj):
        from orchestrator import gitsync

        if not gitsync.enabled():
            return "git sync is off (set FASTFLOW_GIT_URL)"
        return f"{gitsync.redact(settings.FASTFLOW_GIT_URL)} ({settings.FASTFLOW_GIT_BRANCH})"

    @admin.display(description="commit")
    def git_commit_short(self, obj):
        return obj.git_commit[:12] or "-"

    @admin.display(description="last result")
    def git_result(self, obj):
        if obj.git_ok is None:
            return "-"
        if obj.git_ok:
            return mark_safe('<span style="color:#2a7a2a">ok</span>')
        return format_html('<span style="color:#ba2121" title="{}">error: {}</span>', obj.git_error,
                           obj.git_error[:200])

    @admin.action(description="Sync now (git, then discovery)")
    def sync_now(self, request, queryset=None):
        _sync_and_report(self, request)
