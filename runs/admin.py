import asyncio
import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Q
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import content_disposition_header
from django.utils.safestring import mark_safe

from orchestrator.spec import format_memory
from runs.logs import log_size, read_log, tail_offset
from runs.models import FINAL, Run
from runs.services import RunRefused, run_cancel, run_retry

STATUS_COLOURS = {"queued": "#777", "running": "#1f6fb2", "succeeded": "#2a7a2a",
                  "failed": "#ba2121", "cancelled": "#a36a00"}


TAIL_BYTES = 256 * 1024  # what the run page shows at first; the rest is one download away


def status_label_text(run):
    return run.status + (f" / {run.reason}" if run.reason else "")


def status_badge(run):
    label = status_label_text(run)
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
        ("Log", {"fields": ["live_log"]}),
        ("Attempts", {"fields": ["attempt", "attempt_chain"]}),
        ("Timings", {"fields": ["queued_at", "due_at", "started_at", "finished_at", "duration_label",
                                "setup_seconds"]}),
        ("Resources", {"fields": ["peak_memory", "cpu_seconds", "warnings"]}),
        ("Where", {"fields": ["executor", "image", "git_sha", "worker_host", "container_id", "log_size"]}),
        ("Input", {"fields": ["env", "params"]}),
    ]

    class Media:
        js = ["runs/run_log.js"]
        css = {"all": ["runs/run_log.css"]}

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

    @admin.display(description="log")
    def live_log(self, obj):
        """The log viewer: the tail of the log rendered here (all a browser without
        JavaScript gets), then runs/static/runs/run_log.js follows the websocket from
        where the tail ends and keeps the status badge and buttons current."""
        start = tail_offset(obj.log_path, TAIL_BYTES)
        data, end = read_log(obj.log_path, start, 2 * TAIL_BYTES, whole_lines=not obj.is_final)
        skipped = format_html('<p class="ff-log-skipped">The first {} of the log are not shown here: '
                              '<a href="{}">download the whole log</a>.</p>', format_memory(start),
                              reverse("admin:runs_run_log", args=[obj.pk])) if start else ""
        return format_html(
            '<div class="ff-log" data-run="{}" data-status="{}" data-offset="{}" data-ws="{}" data-status-url="{}" '
            'data-colours="{}">{}<pre class="ff-log-body">{}</pre></div>',
            obj.pk, obj.status, end, f"/ws/runs/{obj.pk}/logs/", reverse("admin:runs_run_status", args=[obj.pk]),
            json.dumps(STATUS_COLOURS), skipped, data.decode("utf-8", "replace") or "")

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
            path("<int:run_id>/log.txt", view(self.log_view), name="runs_run_log"),
            path("<int:run_id>/status.json", view(self.status_view), name="runs_run_status"),
        ] + super().get_urls()

    def _viewable(self, request, run_id):
        run = get_object_or_404(Run.objects.select_related("pipeline"), pk=run_id)
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        return run

    def log_view(self, request, run_id):
        """The whole log as a text/plain attachment, as it is now (a running run's log is
        sent up to its size at the time of the request), streamed in chunks."""
        run = self._viewable(request, run_id)
        size = log_size(run.log_path)
        chunks = (_achunks if isinstance(request, ASGIRequest) else _chunks)(run.log_path, size)
        response = StreamingHttpResponse(chunks, content_type="text/plain; charset=utf-8")
        response["Content-Length"] = str(size)
        response["Content-Disposition"] = content_disposition_header(True, f"run-{run.pk}-{run.pipeline_id}.log")
        return response

    def status_view(self, request, run_id):
        """What the run page's script needs to refresh the badge and buttons."""
        run = self._viewable(request, run_id)
        return JsonResponse({"id": run.pk, "status": run.status, "reason": run.reason,
                             "label": status_label_text(run), "final": run.status in FINAL,
                             "message": run.message, "exit_code": run.exit_code,
                             "log_size": log_size(run.log_path)})

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




def _chunks(path, size, chunk=256 * 1024):
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        while size > 0 and (data := fh.read(min(chunk, size))):
            size -= len(data)
            yield data


async def _achunks(path, size, chunk=256 * 1024):
    """Under ASGI, Django buffers a sync iterator whole before sending; this one streams."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        while size > 0 and (data := await asyncio.to_thread(fh.read, min(chunk, size))):
            size -= len(data)
            yield data


# --- the pipeline page's chart ------------------------------------------------------------------

def run_chart_svg(runs, *, width=600, height=90):
    """An inline SVG bar chart of runs, oldest left: bar height = duration, colour = status,
    each bar a link to its run with the details in its tooltip. Rendered server-side."""
    runs = list(runs)[::-1]
    if not runs:
        return mark_safe('<span class="ff-chart-empty">no runs yet</span>')
    now = timezone.now()

    def seconds(run):
        if not run.started_at:
            return 0.0
        return ((run.finished_at or now) - run.started_at).total_seconds()

    durations = [seconds(r) for r in runs]
    longest = max(durations) or 1.0
    slot = width / max(len(runs), 50)
    top, bottom = 14, height - 2
    bars = []
    for i, (run, d) in enumerate(zip(runs, durations)):
        h = max(2.0, (bottom - top) * d / longest)
        tip = f"run {run.pk}: {status_label_text(run)}, " + (f"{d:.1f} s" if run.started_at else "not started")
        if run.queued_at:
            tip += f", queued {run.queued_at:%Y-%m-%d %H:%M:%S} UTC"
        bars.append((reverse("admin:runs_run_change", args=[run.pk]), run.status, f"{i * slot + 1:.1f}",
                     f"{bottom - h:.1f}", f"{max(slot - 2, 1):.1f}", f"{h:.1f}",
                     STATUS_COLOURS.get(run.status, "#444"), tip))
    legend = format_html_join(" ", '<tspan fill="{}">■ {}</tspan>',
                              ((c, s) for s, c in STATUS_COLOURS.items() if any(r.status == s for r in runs)))
    return format_html(
        '<svg class="ff-run-chart" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" '
        'role="img" aria-label="Durations of the last {} runs"><title>Last {} runs, oldest left; height = duration '
        '(longest {} s)</title><text x="0" y="10" font-size="10" fill="#666">longest {} s · {}</text>'
        '<line x1="0" y1="{}" x2="{}" y2="{}" stroke="#ccc"/>{}</svg>',
        width, height, width, height, len(runs), len(runs), f"{longest:.1f}", f"{longest:.1f}", legend,
        bottom + 1, width, bottom + 1,
        format_html_join("", '<a href="{}" class="ff-bar" data-status="{}"><rect x="{}" y="{}" width="{}" '
                             'height="{}" fill="{}"><title>{}</title></rect></a>', bars))
