"""Notifications: delivered to a real HTTP server this test starts on 127.0.0.1 (and nowhere
else), by a real q2 worker; the channel registry (webhook, Slack, Teams, e-mail); which
events go out; and a failing channel that is logged without touching the run."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail
from django_q.conf import Conf

from conftest import make_pipeline
from orchestrator.models import NotificationChannel, Pipeline
from orchestrator.notifications import notification_event
from runhelpers import drain, execute
from runs.models import Run
from stack import logs, running

pytestmark = pytest.mark.django_db(transaction=True)
FAIL = "import sys\nprint('boom')\nsys.exit(4)\n"
OK = "print('fine')\n"


class Receiver:
    """A local HTTP server that records every POST; `status` is what it answers."""

    def __init__(self):
        self.requests, self.status = [], 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n, timeout=30, why=""):
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {n} notifications arrived {why}"
            time.sleep(0.05)
        return self.requests

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def sync_tasks(monkeypatch):
    """django-q2's synchronous mode: async_task runs the task in this process at once."""
    monkeypatch.setattr(Conf, "SYNC", True)


def channel(kind, target, pipeline=None, **flags):
    return NotificationChannel.objects.create(name=f"{kind} {target}", kind=kind, target=target,
                                              pipeline_id=pipeline, **flags)


def test_a_final_failure_is_delivered_by_a_real_worker_to_a_local_server(pipelines_dir, receiver):
    make_pipeline(pipelines_dir, "fragile", FAIL)
    hook = channel("webhook", receiver.url + "/hooks/fastflow")
    run = execute("fragile", executor="local")
    assert run.status == "failed" and receiver.requests == []  # queued as a task, not sent by the run's worker
    with running("workers", FASTFLOW_EXECUTOR="local"):
        (request,) = receiver.wait(1, why=logs("workers")[-2000:])
    assert request["path"] == "/hooks/fastflow" and request["headers"]["Content-Type"] == "application/json"
    body = request["json"]
    assert body["event"] == "failure" and body["title"] == f"fragile: run {run.pk} failed"
    assert body["run"]["id"] == run.pk and body["run"]["exit_code"] == 4 and body["run"]["reason"] == "exit_code"
    assert body["url"].endswith(f"/admin/runs/run/{run.pk}/change/")
    hook.refresh_from_db()
    assert hook.last_notified_at is not None and hook.last_error == ""


def test_slack_teams_and_email_payloads(pipelines_dir, receiver, sync_tasks):
    make_pipeline(pipelines_dir, "fragile", FAIL)
    channel("slack", receiver.url + "/slack")
    channel("teams", receiver.url + "/teams")
    channel("email", "ops@example.com, oncall@example.com")
    run = execute("fragile", executor="local")
    by_path = {r["path"]: r["json"] for r in receiver.wait(2)}
    assert by_path["/slack"]["text"].startswith(f"fragile: run {run.pk} failed (exit_code): exited with code 4")
    assert f"|Open run {run.pk}>" in by_path["/slack"]["text"]
    card = by_path["/teams"]["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["body"][0]["text"] == f"fragile: run {run.pk} failed"
    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "oncall@example.com"]
    assert message.subject == f"[Fast-Flow] fragile: run {run.pk} failed"


def test_success_and_recovery_are_opt_in(pipelines_dir, receiver, sync_tasks):
    make_pipeline(pipelines_dir, "flip", FAIL)
    failures = channel("webhook", receiver.url + "/failures")
    recoveries = channel("webhook", receiver.url + "/recoveries", on_failure=False, on_recovery=True)
    successes = channel("webhook", receiver.url + "/successes", on_failure=False, on_success=True)
    execute("flip", executor="local")  # failure
    (pipelines_dir / "flip" / "main.py").write_text(OK)
    execute("flip", executor="local")  # recovery
    execute("flip", executor="local")  # plain success
    time.sleep(0.2)
    seen = [(r["path"], r["json"]["event"]) for r in receiver.requests]
    assert seen == [("/failures", "failure"), ("/recoveries", "recovery"), ("/successes", "recovery"),
                    ("/successes", "success")]
    assert failures.pk and recoveries.pk and successes.pk


def test_no_notification_while_a_retry_is_pending_or_for_a_cancel(pipelines_dir, receiver, sync_tasks):
    make_pipeline(pipelines_dir, "flaky", FAIL, meta={"retry_attempts": 1,
                                                      "retry_strategy": {"type": "fixed_delay", "delay": 60}})
    channel("webhook", receiver.url + "/f")
    first = execute("flaky", executor="local")
    assert first.retry_scheduled and notification_event(run=first) is None and receiver.requests == []
    drain(executor="local")
    (request,) = receiver.wait(1)
    assert request["json"]["run"]["attempt"] == 2
    from runhelpers import trigger
    from runs.services import run_cancel, run_execute

    run = trigger("flaky")
    run_cancel(run=run)
    run_execute(run_id=run.pk, executor="local")
    time.sleep(0.2)
    assert len(receiver.requests) == 1


def test_pipeline_channels_apply_to_their_pipeline_only(pipelines_dir, receiver, sync_tasks):
    make_pipeline(pipelines_dir, "mine", FAIL)
    make_pipeline(pipelines_dir, "theirs", FAIL)
    from orchestrator.services import pipeline_sync

    pipeline_sync()
    channel("webhook", receiver.url + "/mine", pipeline="mine")
    channel("webhook", receiver.url + "/everyone")
    execute("mine", executor="local")
    execute("theirs", executor="local")
    time.sleep(0.2)
    assert sorted((r["path"], r["json"]["run"]["pipeline"]) for r in receiver.requests) == [
        ("/everyone", "mine"), ("/everyone", "theirs"), ("/mine", "mine")]


def test_a_failing_channel_is_logged_and_never_fails_the_run(pipelines_dir, receiver, sync_tasks, caplog):
    make_pipeline(pipelines_dir, "fragile", FAIL)
    receiver.status = 500
    broken = channel("webhook", receiver.url + "/down")
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    unreachable = channel("slack", f"http://127.0.0.1:{closed_port}/nobody")
    channel("email", "ops@example.com")
    run = execute("fragile", executor="local")
    assert run.status == "failed" and run.reason == "exit_code" and run.exit_code == 4
    assert Run.objects.get(pk=run.pk).message == "exited with code 4"
    broken.refresh_from_db()
    unreachable.refresh_from_db()
    assert broken.last_error == "webhook webhook answered HTTP 500"
    assert unreachable.last_error.startswith("slack webhook unreachable")
    assert len(mail.outbox) == 1  # the other channels still got it
    assert "notification failure of run" in caplog.text and "HTTP 500" in caplog.text


def test_channels_are_configured_in_the_admin(pipelines_dir, admin_client):
    make_pipeline(pipelines_dir, "p", OK)
    from orchestrator.services import pipeline_sync

    pipeline_sync()
    form = {"name": "ops", "kind": "webhook", "target": "not a url", "on_failure": "on", "enabled": "on"}
    response = admin_client.post("/admin/orchestrator/notificationchannel/add/", form)
    assert response.status_code == 200 and b"give the http(s) URL of the webhook" in response.content
    form.update(target="https://hooks.example.com/x", pipeline="p")
    response = admin_client.post("/admin/orchestrator/notificationchannel/add/", form)
    assert response.status_code == 302
    assert NotificationChannel.objects.get(name="ops").pipeline == Pipeline.objects.get(pk="p")
    form.update(name="mail", kind="email", target="nope@", pipeline="")
    response = admin_client.post("/admin/orchestrator/notificationchannel/add/", form)
    assert b"Enter a valid email address" in response.content
    page = admin_client.get("/admin/orchestrator/pipeline/p/change/").content.decode()
    assert "ops</a> (webhook): failure" in page and "/admin/orchestrator/notificationchannel/add/?pipeline=p" in page
