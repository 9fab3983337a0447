"""Run notifications: a registry of transports, and the service that sends through them.

Flow:
1. when a run's final attempt ends, `runs.services.after_final` asks `notification_event`
   what happened (`failure`, `success` or `recovery`: a success after a final failure);
2. if an enabled channel (global, or of that pipeline) wants that event, it enqueues one
   django-q2 task after commit, so delivery is outside the worker's critical path;
3. the task (`orchestrator.tasks.send_notifications`) calls `notifications_send`, which
   delivers to each channel in turn; a failure is logged and recorded on the channel
   (`last_error`) and never reaches the run, which is already final by then.

Transports follow healthchecks' `hc/api/transports.py`: one small class per kind, a dict
from kind to dotted path imported lazily, and one error type with a `permanent` flag.
"""

import importlib
import json
import logging
import ssl
import urllib.error
import urllib.request

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

log = logging.getLogger("fastflow.notifications")

TRANSPORTS = {
    "email": "orchestrator.notifications.Email",
    "webhook": "orchestrator.notifications.Webhook",
    "slack": "orchestrator.notifications.Slack",
    "teams": "orchestrator.notifications.Teams",
}
KIND_CHOICES = [("email", "E-mail"), ("webhook", "Generic JSON webhook"), ("slack", "Slack incoming webhook"),
                ("teams", "Microsoft Teams incoming webhook")]
EVENTS = ("failure", "success", "recovery")
HTTP_TIMEOUT = 10


class NotifyError(Exception):
    """A delivery failed. `permanent`: trying again cannot help (a 4xx, a bad address)."""

    def __init__(self, message, *, permanent=False):
        super().__init__(message)
        self.permanent = permanent


def transport_class(kind):
    module, _, name = TRANSPORTS[kind].rpartition(".")
    return getattr(importlib.import_module(module), name)


def base_url():
    explicit = getattr(settings, "FASTFLOW_BASE_URL", "")
    return (explicit or f"http://{settings.FASTFLOW_HOST}:{settings.FASTFLOW_PORT}").rstrip("/")


def run_summary(run, event):
    """The facts every transport shows, as plain data."""
    url = f"{base_url()}/admin/runs/run/{run.pk}/change/"
    words = {"failure": "failed", "success": "succeeded", "recovery": "recovered (succeeded after a failure)"}
    title = f"{run.pipeline_id}: run {run.pk} {words[event]}"
    detail = run.message or (f"exit code {run.exit_code}" if run.exit_code is not None else "")
    return {
        "event": event,
        "title": title,
        "text": f"{title}" + (f" ({run.reason})" if run.reason else "") + (f": {detail}" if detail else ""),
        "url": url,
        "run": {
            "id": run.pk, "pipeline": run.pipeline_id, "status": run.status, "reason": run.reason,
            "message": run.message, "exit_code": run.exit_code, "attempt": run.attempt, "trigger": run.trigger,
            "queued_at": run.queued_at.isoformat() if run.queued_at else None,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "duration_seconds": run.duration, "url": url,
        },
    }


class Transport:
    def __init__(self, channel):
        self.channel = channel

    def notify(self, *, run, event):
        raise NotImplementedError


class _HttpJson(Transport):
    def payload(self, summary):
        raise NotImplementedError

    def notify(self, *, run, event):
        body = json.dumps(self.payload(run_summary(run, event))).encode()
        request = urllib.request.Request(self.channel.target, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "Fast-Flow notifications"})
        context = ssl.create_default_context(cafile=settings.FASTFLOW_CA_BUNDLE or None)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT, context=context) as response:
                response.read(4096)
        except urllib.error.HTTPError as exc:
            raise NotifyError(f"{self.channel.kind} webhook answered HTTP {exc.code}",
                              permanent=400 <= exc.code < 500 and exc.code != 429) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotifyError(f"{self.channel.kind} webhook unreachable: {reason}") from None


class Webhook(_HttpJson):
    """POSTs the run summary as JSON: {"event", "title", "text", "url", "run": {...}}."""

    def payload(self, summary):
        return summary


class Slack(_HttpJson):
    """Slack incoming webhook: a text message with a link."""

    def payload(self, summary):
        return {"text": f"{summary['text']}\n<{summary['url']}|Open run {summary['run']['id']}>"}


class Teams(_HttpJson):
    """Teams incoming webhook (Workflows "post to a channel when a webhook request is
    received"): a message with one Adaptive Card."""

    def payload(self, summary):
        colour = "Attention" if summary["event"] == "failure" else "Good"
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4",
            "body": [{"type": "TextBlock", "text": summary["title"], "weight": "Bolder", "size": "Medium",
                      "color": colour, "wrap": True},
                     {"type": "TextBlock", "text": summary["text"], "wrap": True}],
            "actions": [{"type": "Action.OpenUrl", "title": "Open run", "url": summary["url"]}],
        }
        return {"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]}


class Email(Transport):
    """Through Django's mail backend (EMAIL_* settings)."""

    def notify(self, *, run, event):
        summary = run_summary(run, event)
        recipients = [a.strip() for a in self.channel.target.split(",") if a.strip()]
        try:
            send_mail(f"[Fast-Flow] {summary['title']}", f"{summary['text']}\n\n{summary['url']}\n",
                      settings.DEFAULT_FROM_EMAIL, recipients)
        except (OSError, ValueError) as exc:  # smtplib errors are OSErrors
            raise NotifyError(f"sending e-mail failed: {exc}") from None


# --- services --------------------------------------------------------------------------------
def _channels(pipeline_id):
    from django.db.models import Q

    from orchestrator.models import NotificationChannel

    return NotificationChannel.objects.filter(Q(pipeline__isnull=True) | Q(pipeline_id=pipeline_id), enabled=True)


def notification_event(*, run):
    """What a final run means for notifications: failure, success, recovery or None."""
    from runs.models import Run, Status

    if run.status == Status.FAILED and not run.retry_scheduled:
        return "failure"
    if run.status != Status.SUCCEEDED:
        return None
    previous = (Run.objects.filter(pipeline_id=run.pipeline_id, status__in=[Status.SUCCEEDED, Status.FAILED],
                                   retry_scheduled=False, finished_at__lte=run.finished_at)
                .exclude(pk=run.pk).order_by("-finished_at", "-id").values_list("status", flat=True).first())
    return "recovery" if previous == Status.FAILED else "success"


def notifications_enqueue(*, run):
    """After commit, queue one delivery task when some channel wants this run's event."""
    from django.db import transaction
    from django_q.tasks import async_task

    event = notification_event(run=run)
    if event is None or not any(c.wants(event) for c in _channels(run.pipeline_id)):
        return None
    transaction.on_commit(lambda: async_task("orchestrator.tasks.send_notifications", run.pk, event,
                                             task_name=f"notify-{run.pk}-{event}", group="notifications"))
    return event


def notifications_send(*, run_id, event):
    """Deliver one run's event to every channel that wants it. Never raises for a delivery
    failure: it is logged and recorded on the channel. Returns {channel id: error or ""}."""
    from orchestrator.models import NotificationChannel
    from runs.models import Run

    run = Run.objects.select_related("pipeline").filter(pk=run_id).first()
    if run is None:
        return {}
    results = {}
    for channel in _channels(run.pipeline_id):
        if not channel.wants(event):
            continue
        try:
            channel.transport().notify(run=run, event=event)
            error = ""
        except NotifyError as exc:
            error = str(exc)
            log.warning("notification %s of run %s via %r failed%s: %s", event, run.pk, channel.name,
                        " (permanent)" if exc.permanent else "", error)
        except Exception as exc:  # a bug in a transport must not stop the other channels
            error = f"internal error: {exc!r}"
            log.exception("notification %s of run %s via %r failed", event, run.pk, channel.name)
        NotificationChannel.objects.filter(pk=channel.pk).update(last_notified_at=timezone.now(),
                                                                 last_error=error[:2000])
        results[channel.pk] = error
    return results
