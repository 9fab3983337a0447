"""Webhooks: every status code, idempotency, rate limits, and input reaching a real run."""

import json
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from django.core.cache import cache
from django.test import Client

from conftest import make_pipeline
from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runhelpers import out_lines
from runs.models import Run
from runs.services import run_execute

pytestmark = pytest.mark.django_db(transaction=True)
KEY = "s3cret-webhook-key"
URL = f"/api/webhooks/hook/{KEY}"
T0 = datetime(2026, 5, 4, 12, 0, 30, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def hooks(pipelines_dir):
    make_pipeline(pipelines_dir, "hook", "import json, os\nprint(os.environ.get('WHO'), json.dumps(json.loads(os.environ['FASTFLOW_PARAMS']), sort_keys=True))\n",
                  meta={"webhook_key": KEY, "max_instances": 1})
    make_pipeline(pipelines_dir, "off", "print()\n", meta={"webhook_key": "disabled-key-1", "enabled": False})
    make_pipeline(pipelines_dir, "keyless", "print()\n")
    make_pipeline(pipelines_dir, "twin_a", "print()\n", meta={"webhook_key": "same-key-twice"})
    make_pipeline(pipelines_dir, "twin_b", "print()\n", meta={"webhook_key": "same-key-twice"})
    pipeline_sync()
    return pipelines_dir


def deliver(body=None, url=URL, client=None, **headers):
    client = client or Client()
    data = body if isinstance(body, (str, bytes)) else (json.dumps(body) if body is not None else "")
    return client.post(url, data, content_type="application/json", **headers)


def test_202_queues_a_run_whose_input_reaches_the_process(hooks):
    response = deliver({"env": {"WHO": "github"}, "params": {"ref": "main", "n": [1, 2]}})
    assert response.status_code == 202, response.content
    body = response.json()
    assert set(body) == {"run_id", "status_url", "replayed"} and body["replayed"] is False
    assert body["status_url"] == f"http://testserver/api/runs/{body['run_id']}"
    run = Run.objects.get(pk=body["run_id"])
    assert (run.trigger, run.env, run.params, run.triggered_by) == (
        "webhook", {"WHO": "github"}, {"ref": "main", "n": [1, 2]}, None)
    run_execute(run_id=run.pk, executor="local")
    run.refresh_from_db()
    assert run.status == "succeeded" and out_lines(run) == ['github {"n": [1, 2], "ref": "main"}']


def test_202_without_a_body(hooks):
    response = Client().generic("POST", URL)  # no content type, no body
    assert response.status_code == 202
    assert Run.objects.get(pk=response.json()["run_id"]).env == {}


@pytest.mark.parametrize("url", [
    "/api/webhooks/nope/whatever-key",  # unknown pipeline
    "/api/webhooks/off/disabled-key-1",  # disabled
    "/api/webhooks/keyless/anything-at-all",  # no webhook_key
])
def test_404(hooks, url):
    response = deliver(url=url)
    assert response.status_code == 404 and response.json() == {"detail": "no such webhook"}


def test_404_once_the_folder_is_gone(hooks):
    import shutil

    shutil.rmtree(hooks / "hook")
    pipeline_sync()
    assert deliver().status_code == 404


@pytest.mark.parametrize("key", ["wrong-key-of-the-same-size"[: len(KEY)], "x", KEY + "extra", KEY.upper()])
def test_403_for_a_wrong_key(hooks, key):
    response = deliver(url=f"/api/webhooks/hook/{key}")
    assert response.status_code == 403 and response.json() == {"detail": "wrong webhook key"}
    assert Run.objects.count() == 0


@pytest.mark.parametrize("body, words", [
    ("{not json", "not valid JSON: Expecting property name"),
    (b"\xff\xfe", "not valid JSON"),
    ("[1, 2]", "must be a JSON object with env and params, not list"),
    ('"text"', "not str"),
    ({"env": {"9LIVES": "x"}}, "env: not valid environment variable names"),
    ({"env": {"A": 1}}, "env.A: Input should be a valid string"),
    ({"params": "x"}, "params: Input should be a valid dictionary"),
    ({"ref": "main"}, "ref: Extra inputs are not permitted"),
    ("[" * 100_000 + "]" * 100_000, "the body is larger than"),
])
def test_400_for_a_bad_body_with_the_reason(hooks, settings, body, words):
    settings.FASTFLOW_WEBHOOK_MAX_BODY = 10**6
    response = deliver(body)
    assert response.status_code in (400, 413)
    if "larger" in words:
        assert response.status_code == 400  # a deeply nested body within the size limit is still refused
        assert "not valid JSON" in response.json()["detail"] or "maximum recursion" in response.json()["detail"]
    else:
        assert response.status_code == 400 and words in response.json()["detail"], response.json()
    assert Run.objects.count() == 0


def test_400_for_a_malformed_idempotency_key(hooks):
    response = deliver(HTTP_IDEMPOTENCY_KEY="has spaces in it")
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["detail"]


def test_413_for_an_oversized_body(hooks, settings):
    settings.FASTFLOW_WEBHOOK_MAX_BODY = 1000
    response = deliver({"params": {"blob": "x" * 2000}})
    assert response.status_code == 413 and response.json() == {"detail": "the body is larger than 1000 bytes"}
    assert deliver({"params": {"blob": "x" * 500}}).status_code == 202


def test_409_when_the_key_is_shared_by_two_pipelines(hooks):
    response = deliver(url="/api/webhooks/twin_a/same-key-twice")
    assert response.status_code == 409 and "webhook_key is also used by: twin_b" in response.json()["detail"]


def test_429_per_pipeline_with_retry_after(hooks, settings):
    settings.FASTFLOW_WEBHOOK_RATE = 3
    with time_machine.travel(T0, tick=False) as clock:
        assert [deliver().status_code for _ in range(3)] == [202, 202, 202]
        response = deliver()
        assert response.status_code == 429 and response["Retry-After"] == "30"
        assert "too many webhook deliveries for hook" in response.json()["detail"]
        clock.shift(30)
        assert deliver().status_code == 202  # a new window
    assert Run.objects.count() == 4


def test_429_per_address_counts_wrong_keys_too(hooks, settings):
    settings.FASTFLOW_WEBHOOK_IP_RATE = 2
    guesser, other = Client(REMOTE_ADDR="203.0.113.9"), Client(REMOTE_ADDR="203.0.113.10")
    with time_machine.travel(T0, tick=False):
        assert deliver(url="/api/webhooks/hook/guess-1", client=guesser).status_code == 403
        assert deliver(url="/api/webhooks/hook/guess-2", client=guesser).status_code == 403
        response = deliver(client=guesser)  # even the right key, from that address
        assert response.status_code == 429 and int(response["Retry-After"]) == 30
        assert deliver(client=other).status_code == 202


def test_idempotency_key_returns_the_same_run_within_24_hours(hooks):
    with time_machine.travel(T0, tick=False) as clock:
        first = deliver({"params": {"n": 1}}, HTTP_IDEMPOTENCY_KEY="delivery-1")
        again = deliver({"params": {"n": 1}}, HTTP_IDEMPOTENCY_KEY="delivery-1")
        assert first.status_code == again.status_code == 202
        assert again.json() == {**first.json(), "replayed": True}
        other = deliver(HTTP_IDEMPOTENCY_KEY="delivery-2")
        assert other.json()["run_id"] != first.json()["run_id"]
        clock.shift(timedelta(hours=23, minutes=59))
        assert deliver(HTTP_IDEMPOTENCY_KEY="delivery-1").json()["run_id"] == first.json()["run_id"]
        clock.shift(timedelta(minutes=2))  # past 24 h: a new delivery
        late = deliver(HTTP_IDEMPOTENCY_KEY="delivery-1")
        assert late.json()["replayed"] is False and late.json()["run_id"] not in (first.json()["run_id"],
                                                                                  other.json()["run_id"])
    assert Run.objects.count() == 3
    assert Run.objects.get(pk=late.json()["run_id"]).idempotency_key == "delivery-1"


def test_the_same_idempotency_key_on_another_pipeline_is_another_delivery(hooks, pipelines_dir):
    make_pipeline(pipelines_dir, "hook2", "print()\n", meta={"webhook_key": "another-key-2"})
    pipeline_sync()
    a = deliver(HTTP_IDEMPOTENCY_KEY="k1").json()["run_id"]
    b = deliver(url="/api/webhooks/hook2/another-key-2", HTTP_IDEMPOTENCY_KEY="k1").json()["run_id"]
    assert a != b


def test_a_pipeline_at_its_concurrency_limit_queues_the_delivery(hooks):
    first = deliver().json()["run_id"]
    second = deliver()
    assert second.status_code == 202
    assert Run.objects.get(pk=first).dispatched_at is not None
    waiting = Run.objects.get(pk=second.json()["run_id"])
    assert waiting.status == "queued" and waiting.dispatched_at is None
    run_execute(run_id=first, executor="local")  # frees the slot...
    waiting.refresh_from_db()
    assert waiting.dispatched_at is not None  # ...and the delivery's run gets it


def test_the_key_is_not_exposed(hooks, admin_client):
    assert KEY not in json.dumps(Client().get("/api/openapi.json").json())
    assert KEY.encode() not in admin_client.get("/admin/orchestrator/pipeline/hook/change/").content
    assert Pipeline.objects.get(pk="hook").webhook_key == KEY
