from django.contrib import admin, messages
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from orchestrator.spec import format_memory
from runs.logs import read_log
from runs.models import Run, Status
from runs.services import RunRefused, run_cancel, run_retry

STATUS_COLOURS = {"queued": "#777", "running": "#1f6fb2", "succeeded": "#2a7a2a",
                  "failed": "#ba2121", "cancelled": "#a36a00"}


def status_badge(run):
    label = run.status + (f" / {run.reason}" if run.reason else "")
    return format_html('<span class="ff-status" data-status="{}" style="background:{};color:#fff;padding:1px 7px;'
                       'border-radius:8px">{}</span>', run.status, STATUS_COLOURS.get(run.status, "#444"), label)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    change_form_template = "admin/runs/run/change_form.html"
    list_display = ["id", "pipeline", "status_label", "trigger", "attempt", "queued_at", "duration_label",
                    "peak_memory"]
    list_filter = ["status", "reason", "trigger", "pipeline", "queued_at"]
    date_hierarchy = "queued_at"
    search_fields = ["=id", "pipeline__id", "message"]
    list_select_related = ["pipeline"]
    actions = ["cancel_runs", "retry_runs"]
    fieldsets = [
        (None, {"fields": ["pipeline", "status_label", "message", "exit_code", "trigger", "triggered_by",
                           "caused_by"]}),
        ("Attempts", {"fields": ["attempt", "attempt_chain"]}),
        ("Timings", {"fields": ["queued_at", "due_at", "started_at", "finished_at", "duration_label",
                                "setup_seconds"]}),
        ("Resources", {"fields": ["peak_memory", "cpu_seconds", "warnings"]}),
        ("Where", {"fields": ["executor", "image", "git_sha", "worker_host", "container_id", "log_size"]}),
        ("Input", {"fields": ["env", "params"]}),
        ("Log", {"fields": ["log_tail"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return request.user.is_staff if obj is None else super().has_view_permission(request, obj)

    @admin.display(description="status", ordering="status")
    def status_label(self, obj):
        return status_badge(obj)

    @admin.display(description="duration")
    def duration_label(self, obj):
        d = obj.duration
        return "-" if d is None else f"{d:.1f} s"

    @admin.display(description="peak memory")
    def peak_memory(self, obj):
        return format_memory(obj.peak_memory_bytes)

    @admin.display(description="chain")
    def attempt_chain(self, obj):
        chain = Run.objects.filter(Q(pk=obj.root_id) | Q(retry_of_id=obj.root_id)).order_by("attempt", "id")
        return format_html_join(
            " → ", '<a href="{}">#{} (attempt {}, {})</a>',
            ((reverse("admin:runs_run_change", args=[r.pk]), r.pk, r.attempt, r.status) for r in chain))

    @admin.display(description="log (last 200 KB)")
    def log_tail(self, obj):
        size = obj.log_path.stat().st_size if obj.log_path.exists() else 0
        data, _ = read_log(obj.log_path, max(0, size - 200_000), 200_000)
        return format_html('<pre id="ff-log" style="max-height:40em;overflow:auto">{}</pre>',
                           data.decode("utf-8", "replace") or "(no output yet)")

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request, queryset):
        n = sum(run_cancel(run=run) for run in queryset.exclude(status__in=["succeeded", "failed", "cancelled"]))
        self.message_user(request, f"Cancel requested for {n} run(s).")

    @admin.action(description="Retry selected runs")
    def retry_runs(self, request, queryset):
        for run in queryset:
            try:
                new = run_retry(run=run, user=request.user)
                self.message_user(request, f"Run {run.pk}: retry queued as run {new.pk}.")
            except RunRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:run_id>/cancel/", view(self.cancel_view), name="runs_run_cancel"),
            path("<int:run_id>/retry/", view(self.retry_view), name="runs_run_retry"),
        ] + super().get_urls()

    def cancel_view(self, request, run_id):
        run = get_object_or_404(Run, pk=run_id)
        if request.method == "POST":
            self.cancel_runs(request, Run.objects.filter(pk=run.pk))
        return redirect("admin:runs_run_change", run.pk)

    def retry_view(self, request, run_id):
        run = get_object_or_404(Run, pk=run_id)
        if request.method == "POST":
            try:
                new = run_retry(run=run, user=request.user)
                return redirect("admin:runs_run_change", new.pk)
            except RunRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
        return redirect("admin:runs_run_change", run.pk)


