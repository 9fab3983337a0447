"""REST API: every endpoint, as each persona (admin, operator with a token, read-only viewer,
outsider), against real runs executed by the local executor."""

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from conftest import make_pipeline
from orchestrator.models import ApiToken, Pipeline
from orchestrator.services import pipeline_sync
from personas import admin, operator, outsider, viewer  # noqa: F401  (fixtures)
from runhelpers import out_lines
from runs.models import Run
from runs.services import run_execute

pytestmark = pytest.mark.django_db(transaction=True)

ENV_PRINTER = "import json, os\nprint(os.environ['GREETING'])\nprint(json.loads(os.environ['FASTFLOW_PARAMS'])['n'])\n"


@pytest.fixture
def pipelines(pipelines_dir):
    make_pipeline(pipelines_dir, "printer", ENV_PRINTER, meta={"tags": ["demo"], "secrets": ["DB_PASSWORD"],
                                                               "webhook_key": "k" * 20})
    make_pipeline(pipelines_dir, "single", "print('s')\n", meta={"max_instances": 1, "name": "Single one"})
    make_pipeline(pipelines_dir, "off", "print()\n", meta={"enabled": False})
    make_pipeline(pipelines_dir, "broken", "print()\n", meta="{oops")
    make_pipeline(pipelines_dir, "ticker", "print()\n", meta={"schedule_cron": "0 9 * * *",
                                                              "schedule_timezone": "Europe/Berlin"})
    pipeline_sync()
    from orchestrator.services import secret_save

    secret_save(name="DB_PASSWORD", value="printer-db-password")  # printer asks for it
    return pipelines_dir


def post(persona, url, body=None, **extra):
    return persona.client.post(url, json.dumps(body) if body is not None else "", content_type="application/json",
                               **extra)


# --- reading -------------------------------------------------------------------------------
def test_list_pipelines_with_filters_and_pagination(pipelines, viewer):
    page = viewer.client.get("/api/pipelines").json()
    assert page["count"] == 5 and [p["id"] for p in page["items"]] == ["broken", "off", "printer", "single", "ticker"]
    assert [p["id"] for p in viewer.client.get("/api/pipelines?tag=demo").json()["items"]] == ["printer"]
    assert [p["id"] for p in viewer.client.get("/api/pipelines?search=one").json()["items"]] == ["single"]
    assert [p["id"] for p in viewer.client.get("/api/pipelines?runnable=false").json()["items"]] == ["broken", "off"]
    second = viewer.client.get("/api/pipelines?limit=2&offset=2").json()
    assert second["count"] == 5 and [p["id"] for p in second["items"]] == ["printer", "single"]
    assert viewer.client.get("/api/pipelines?limit=0").status_code == 422


def test_get_pipeline_shows_errors_schedule_and_never_the_webhook_key(pipelines, viewer):
    printer = viewer.client.get("/api/pipelines/printer").json()
    assert printer["has_webhook"] is True and "k" * 20 not in json.dumps(printer)
    assert printer["runnable"] and printer["tags"] == ["demo"] and printer["limits"]["timeout"] == 3600
    broken = viewer.client.get("/api/pipelines/broken").json()
    assert not broken["runnable"] and "invalid JSON at line 1" in broken["errors"][0]
    ticker = viewer.client.get("/api/pipelines/ticker").json()
    assert ticker["schedule"]["cron"] == "0 9 * * *" and len(ticker["schedule"]["next_fire_times"]) == 5
    response = viewer.client.get("/api/pipelines/nope")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_outsider_gets_401_everywhere(pipelines, outsider):
    run = Run.objects.create(pipeline_id="printer")
    for method, url in [("get", "/api/pipelines"), ("get", "/api/pipelines/printer"), ("get", "/api/runs"),
                        ("get", f"/api/runs/{run.pk}"), ("get", f"/api/runs/{run.pk}/logs"),
                        ("post", "/api/pipelines/printer/runs"), ("post", f"/api/runs/{run.pk}/cancel"),
                        ("post", f"/api/runs/{run.pk}/retry"), ("post", "/api/pipelines/sync")]:
        response = getattr(outsider.client, method)(url)
        assert response.status_code == 401, (method, url)
        assert response.json() == {"detail": "Unauthorized"}
    bogus = Client(HTTP_AUTHORIZATION="Bearer ff_not-a-token")
    assert bogus.get("/api/pipelines").status_code == 401
    assert Run.objects.get(pk=run.pk).status == "queued"


def test_viewer_reads_but_staff_only_actions_are_403(pipelines, viewer):
    run = Run.objects.create(pipeline_id="printer")
    assert viewer.client.get(f"/api/runs/{run.pk}").status_code == 200
    for url in ["/api/pipelines/printer/runs", f"/api/runs/{run.pk}/cancel", f"/api/runs/{run.pk}/retry",
                "/api/pipelines/sync"]:
        response = post(viewer, url)
        assert response.status_code == 403, url
        assert "staff only" in response.json()["detail"]
    assert Run.objects.count() == 1 and Run.objects.get(pk=run.pk).status == "queued"


# --- triggering ----------------------------------------------------------------------------
def test_operator_triggers_with_input_that_reaches_the_run(pipelines, operator):
    response = post(operator, "/api/pipelines/printer/runs", {"env": {"GREETING": "hello"}, "params": {"n": 42}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["trigger"], body["triggered_by"], body["status"]) == ("api", "oscar", "queued")
    assert body["env"] == {"GREETING": "hello"} and body["params"] == {"n": 42}
    run_execute(run_id=body["id"], executor="local")
    run = Run.objects.get(pk=body["id"])
    assert run.status == "succeeded" and out_lines(run) == ["hello", "42"]
    assert operator.client.get(body["url"]).json()["status"] == "succeeded"


@pytest.mark.parametrize("body, words", [
    ({"env": {"1BAD": "x"}}, "not valid environment variable names"),
    ({"env": {"FASTFLOW_RUN_ID": "7"}}, "reserved"),
    ({"env": {"N": 1}}, "string"),
    ({"params": [1, 2]}, "dictionary"),
    ({"env": {"A": "x" * 40_000}, "params": {"b": "x" * 40_000}}, "the limit is 65536"),
    ({"env": {f"V{i}": "x" for i in range(101)}}, "at most 100"),
    ({"other": 1}, "Extra inputs are not permitted"),
])
def test_invalid_input_is_422_with_the_reason(pipelines, operator, body, words):
    response = post(operator, "/api/pipelines/printer/runs", body)
    assert response.status_code == 422
    assert words in json.dumps(response.json()["detail"])
    assert Run.objects.count() == 0


def test_secret_names_cannot_be_passed_as_input(pipelines, operator):
    response = post(operator, "/api/pipelines/printer/runs", {"env": {"DB_PASSWORD": "hunter2"}})
    assert response.status_code == 422 and "set them as secrets" in response.json()["detail"]
    assert not Run.objects.filter(env__has_key="DB_PASSWORD").exists()


def test_trigger_errors(pipelines, operator):
    assert post(operator, "/api/pipelines/nope/runs").status_code == 404
    for pid, words in (("off", "disabled"), ("broken", "has errors")):
        response = post(operator, f"/api/pipelines/{pid}/runs")
        assert response.status_code == 409 and words in response.json()["detail"]
    response = operator.client.post("/api/pipelines/printer/runs", "{nope", content_type="application/json")
    assert response.status_code == 400 and response.json() == {"detail": "Cannot parse request body"}


def test_a_pipeline_at_its_limit_queues_the_run(pipelines, operator):
    first = post(operator, "/api/pipelines/single/runs").json()
    second = post(operator, "/api/pipelines/single/runs")
    assert second.status_code == 201 and second.json()["status"] == "queued"
    assert Run.objects.get(pk=first["id"]).dispatched_at is not None
    assert Run.objects.get(pk=second.json()["id"]).dispatched_at is None  # waits for the slot


# --- runs ---------------------------------------------------------------------------------
def test_list_runs_filters_and_pages(pipelines, viewer):
    now = timezone.now()
    old = Run.objects.create(pipeline_id="printer", trigger="webhook", status="failed", queued_at=now - timedelta(days=3))
    mid = Run.objects.create(pipeline_id="single", trigger="api", status="succeeded", queued_at=now - timedelta(days=1))
    new = Run.objects.create(pipeline_id="printer", trigger="schedule", status="queued", queued_at=now)

    def ids(query):
        response = viewer.client.get("/api/runs" + query)
        assert response.status_code == 200, response.content
        return [r["id"] for r in response.json()["items"]]

    assert ids("") == [new.pk, mid.pk, old.pk]
    assert ids("?pipeline=printer") == [new.pk, old.pk]
    assert ids("?status=succeeded") == [mid.pk]
    assert ids("?trigger=webhook") == [old.pk]
    since = (now - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    assert ids(f"?since={since}") == [new.pk, mid.pk]
    assert ids(f"?until={since}") == [old.pk]
    page = viewer.client.get("/api/runs?limit=1&offset=1").json()
    assert page["count"] == 3 and [r["id"] for r in page["items"]] == [mid.pk]
    assert viewer.client.get("/api/runs?status=exploded").status_code == 422
    assert ids("?until=6827-02-06T21:50:47-16:32") == [new.pk, mid.pk, old.pk]  # an offset PostgreSQL refuses
    for bad in ("since=0.5", "until=9999-12-31T23:00:00-16:00", "since=yesterday"):
        response = viewer.client.get(f"/api/runs?{bad}")
        assert response.status_code == 422, bad
    assert viewer.client.get("/api/runs/999999").status_code == 404


def test_logs_are_read_in_chunks_with_the_next_offset(pipelines_dir, operator):
    make_pipeline(pipelines_dir, "chatty", "for i in range(200):\n    print('line', i)\n")
    pipeline_sync()
    run_id = post(operator, "/api/pipelines/chatty/runs").json()["id"]
    run_execute(run_id=run_id, executor="local")
    texts, offset = [], 0
    while True:
        chunk = operator.client.get(f"/api/runs/{run_id}/logs?offset={offset}&limit=1000").json()
        assert chunk["offset"] == offset and chunk["text"].endswith("\n") or chunk["text"] == ""
        texts.append(chunk["text"])
        offset = chunk["next_offset"]
        if chunk["complete"]:
            break
    lines = [line.split(" ", 2)[2] for line in "".join(texts).splitlines() if line.split(" ", 2)[1] == "out"]
    assert lines == [f"line {i}" for i in range(200)]
    assert len(texts) > 5 and offset == Run.objects.get(pk=run_id).log_size
    assert operator.client.get(f"/api/runs/{run_id}/logs?limit=0").status_code == 422


def test_cancel_and_retry(pipelines, operator):
    run_id = post(operator, "/api/pipelines/printer/runs").json()["id"]
    response = post(operator, f"/api/runs/{run_id}/retry")
    assert response.status_code == 409 and "still queued" in response.json()["detail"]
    response = post(operator, f"/api/runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = post(operator, f"/api/runs/{run_id}/cancel")
    assert response.status_code == 409 and response.json() == {"detail": f"run {run_id} is already cancelled"}
    response = post(operator, f"/api/runs/{run_id}/retry")
    assert response.status_code == 201
    assert (response.json()["attempt"], response.json()["retry_of"], response.json()["trigger"]) == (2, run_id, "retry")
    assert post(operator, "/api/runs/424242/cancel").status_code == 404


def test_sync_is_staff_only_and_reports(pipelines, admin):
    make_pipeline(pipelines, "fresh", "print()\n")
    response = post(admin, "/api/pipelines/sync")
    assert response.status_code == 200 and response.json()["created"] == ["fresh"]
    assert Pipeline.objects.filter(pk="fresh").exists()


# --- auth and tokens ------------------------------------------------------------------------
def test_tokens_are_stored_hashed_and_revocable(pipelines, operator):
    token = ApiToken.objects.get(user=operator.user)
    assert operator.token not in (token.token_hash, token.hint) and len(token.token_hash) == 64
    assert ApiToken.authenticate(operator.token) == operator.user
    assert operator.client.get("/api/pipelines").status_code == 200
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None
    token.revoke()
    assert operator.client.get("/api/pipelines").status_code == 401
    assert ApiToken.authenticate(operator.token) is None


def test_inactive_users_tokens_stop_working(pipelines, viewer):
    viewer.user.is_active = False
    viewer.user.save()
    assert viewer.client.get("/api/pipelines").status_code == 401


def test_create_api_token_command(pipelines, operator, capsys):
    call_command("create_api_token", "oscar", "--name", "ci")
    raw = capsys.readouterr().out.strip()
    assert raw.startswith("ff_") and ApiToken.authenticate(raw) == operator.user
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/runs").status_code == 200
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("create_api_token", "nobody")


def test_admin_creates_a_token_shown_once_and_revokes_it(pipelines, admin, viewer):
    browser = Client()
    browser.force_login(admin.user)
    response = browser.post("/admin/orchestrator/apitoken/add/", {"user": viewer.user.pk, "name": "laptop"})
    assert response.status_code == 200 and b"cannot be shown again" in response.content
    token = ApiToken.objects.get(name="laptop")
    raw = response.content.decode().split('id="ff-token" type="text" readonly value="')[1].split('"')[0]
    assert raw.startswith(token.hint) and ApiToken.authenticate(raw) == viewer.user
    assert raw.encode() not in browser.get(f"/admin/orchestrator/apitoken/{token.pk}/change/").content
    browser.post("/admin/orchestrator/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert ApiToken.authenticate(raw) is None


def test_admin_session_reads_and_unsafe_requests_need_csrf(pipelines, admin):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin.user)
    assert browser.get("/api/pipelines").status_code == 200
    assert browser.post("/api/pipelines/sync").status_code == 403  # no CSRF token


def test_openapi_and_docs(outsider):
    spec = outsider.client.get("/api/openapi.json").json()
    for path in ["/api/pipelines", "/api/pipelines/{pipeline_id}", "/api/pipelines/{pipeline_id}/runs",
                 "/api/pipelines/sync", "/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/logs",
                 "/api/runs/{run_id}/cancel", "/api/runs/{run_id}/retry", "/api/webhooks/{pipeline_id}/{webhook_key}"]:
        assert path in spec["paths"], path
    assert spec["components"]["securitySchemes"]["BearerToken"] == {"type": "http", "scheme": "bearer"}
    assert outsider.client.get("/api/docs").status_code == 200
    response = outsider.client.get("/api/no-such-endpoint")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
