"""Health and metrics endpoints.

- `/healthz`: liveness. The process answers; nothing else is checked.
- `/readyz`: readiness. The database, the django-q2 broker and (when runs use Docker) the
  engine each answer; 503 with the failing checks named otherwise.
- `/metrics`: Prometheus text format. Gauges are computed from the database at scrape time
  (so every web instance reports the same numbers); optional bearer protection with
  FASTFLOW_METRICS_TOKEN.
"""

import hmac
import time

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database():
    with connection.cursor() as cur:
        cur.execute("SELECT 1")


def _check_broker():
    from django_q.brokers import get_broker

    if not get_broker().ping():
        raise RuntimeError("broker does not answer")


def _check_engine():
    from runs.executors import executor_class

    if settings.FASTFLOW_EXECUTOR == "local":
        return "skipped (local executor)"
    if not executor_class("docker").available():
        if settings.FASTFLOW_EXECUTOR == "docker":
            raise RuntimeError("no Docker engine answers")
        return "no engine: runs fall back to the local executor"
    return None


def readyz(request):
    checks, ok = {}, True
    for name, check in (("database", _check_database), ("broker", _check_broker), ("engine", _check_engine)):
        t0 = time.perf_counter()
        try:
            note = check()
            checks[name] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}
            if note:
                checks[name]["note"] = note
        except Exception as exc:
            ok = False
            checks[name] = {"ok": False, "error": str(exc)[:300]}
    return JsonResponse({"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503)


def _authorised(request):
    token = getattr(settings, "FASTFLOW_METRICS_TOKEN", "")
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def metrics(request):
    if not _authorised(request):
        return HttpResponse("metrics need Authorization: Bearer <FASTFLOW_METRICS_TOKEN>\n", status=401,
                            content_type="text/plain")
    from runs.models import Run, Status

    registry = CollectorRegistry()
    runs = Gauge("fastflow_runs", "Runs by pipeline and status", ["pipeline", "status"], registry=registry)
    for row in Run.objects.values("pipeline_id", "status").annotate(n=Count("id")):
        runs.labels(row["pipeline_id"], row["status"]).set(row["n"])
    Gauge("fastflow_queue_depth", "Runs queued and due", registry=registry).set(
        Run.objects.filter(status=Status.QUEUED).count())
    Gauge("fastflow_running", "Runs running now", registry=registry).set(
        Run.objects.filter(status=Status.RUNNING).count())
    hist = Histogram("fastflow_run_duration_seconds", "Duration of finished runs (last 10,000)", ["pipeline"],
                     buckets=DURATION_BUCKETS, registry=registry)
    finished = (Run.objects.filter(started_at__isnull=False, finished_at__isnull=False)
                .order_by("-id").values_list("pipeline_id", "started_at", "finished_at")[:10_000])
    for pipeline_id, started, finished_at in finished:
        hist.labels(pipeline_id).observe((finished_at - started).total_seconds())
    webhooks = Gauge("fastflow_webhook_responses", "Webhook responses by status code (this process)", ["code"],
                     registry=registry)
    for code, n in WEBHOOK_RESPONSES.items():
        webhooks.labels(str(code)).set(n)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


# Incremented by the webhook view: {status code: count}, per process.
WEBHOOK_RESPONSES: dict[int, int] = {}


def count_webhook_response(code: int):
    WEBHOOK_RESPONSES[code] = WEBHOOK_RESPONSES.get(code, 0) + 1
