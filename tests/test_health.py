"""/healthz, /readyz and /metrics."""

import pytest

from conftest import make_pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run

pytestmark = pytest.mark.django_db


def test_healthz_is_liveness(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_broker_and_engine(client, settings):
    settings.FASTFLOW_EXECUTOR = "local"
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert body["checks"]["engine"]["note"] == "skipped (local executor)"


def test_readyz_is_503_naming_a_missing_engine(client, settings, monkeypatch):
    settings.FASTFLOW_EXECUTOR = "docker"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["engine"] == {"ok": False, "error": "no Docker engine answers"}


def test_metrics_reports_runs_queue_and_durations(client, pipelines_dir, settings):
    make_pipeline(pipelines_dir, "m", "print()\n")
    pipeline_sync()
    from django.utils import timezone

    now = timezone.now()
    Run.objects.create(pipeline_id="m", status="succeeded", started_at=now, finished_at=now)
    Run.objects.create(pipeline_id="m", status="queued")
    text = client.get("/metrics").content.decode()
    assert 'fastflow_runs{pipeline="m",status="succeeded"} 1.0' in text
    assert "fastflow_queue_depth 1.0" in text and "fastflow_running 0.0" in text
    assert 'fastflow_run_duration_seconds_count{pipeline="m"} 1.0' in text
    settings.FASTFLOW_METRICS_TOKEN = "m-token-123"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer m-token-123").status_code == 200
