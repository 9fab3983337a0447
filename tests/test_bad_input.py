"""Bad input never gets a 5xx and never escapes its folder: path traversal in pipeline ids,
run ids and log offsets; oversized and malformed bodies on every endpoint that takes one;
a pipeline writing binary garbage to stdout."""

import pytest

from conftest import make_pipeline
from orchestrator.services import pipeline_sync
from personas import admin, operator, outsider  # noqa: F401  (fixtures)
from runhelpers import execute, log_text

pytestmark = pytest.mark.django_db

TRAVERSAL = ["..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%00b", "pipeline_c%2F..%2F..", "~root", "a" * 500]


@pytest.fixture
def pipes(pipelines_dir):
    make_pipeline(pipelines_dir, "pipeline_c", "print('c')\n", meta={"webhook_key": "hook-key-123456"})
    pipeline_sync()
    return pipelines_dir


@pytest.mark.parametrize("bad", TRAVERSAL)
def test_pipeline_ids_that_traverse_are_not_found(pipes, operator, bad):  # noqa: F811
    for method, url in (("get", f"/api/pipelines/{bad}"), ("post", f"/api/pipelines/{bad}/runs"),
                        ("post", f"/api/webhooks/{bad}/hook-key-123456")):
        response = getattr(operator.client, method)(url, content_type="application/json")
        assert response.status_code in (404, 422), (url, response.status_code)
        assert response.json()["detail"]


@pytest.mark.parametrize("bad", ["..", "-1", "1e9", "0x10", "%2e%2e%2f1", "99999999999999999999999"])
def test_run_ids_that_are_not_ids_are_rejected(pipes, operator, bad):  # noqa: F811
    for url in (f"/api/runs/{bad}", f"/api/runs/{bad}/logs"):
        response = operator.client.get(url)
        assert response.status_code in (404, 422), (url, response.status_code)


def test_log_offsets_are_validated(pipes, operator):  # noqa: F811
    run = execute("pipeline_c", executor="local")
    for offset in ["-1", "abc", "1e3", "../../etc/passwd"]:
        response = operator.client.get(f"/api/runs/{run.pk}/logs?offset={offset}")
        assert response.status_code == 422, offset
    beyond = operator.client.get(f"/api/runs/{run.pk}/logs?offset=99999999")
    assert beyond.status_code == 200


@pytest.mark.parametrize("url", ["/api/pipelines/pipeline_c/runs", "/api/webhooks/pipeline_c/hook-key-123456"])
@pytest.mark.parametrize("body", [b"{", b"\xff\xfe\x00", b"[]", b'"text"', b'{"env": "x"}',
                                  b'{"env": {"A": "' + b"x" * 2_000_000 + b'"}}'])
def test_malformed_and_oversized_bodies_get_a_4xx_with_a_reason(pipes, operator, url, body):  # noqa: F811
    response = operator.client.post(url, body, content_type="application/json")
    assert 400 <= response.status_code < 500, (url, body[:20], response.status_code)
    assert response.json()["detail"]


def test_sync_and_action_endpoints_ignore_junk_bodies(pipes, operator):  # noqa: F811
    run = execute("pipeline_c", executor="local")
    for url in ("/api/pipelines/sync", f"/api/runs/{run.pk}/cancel", f"/api/runs/{run.pk}/retry"):
        response = operator.client.post(url, b"\xff" * 10_000, content_type="application/octet-stream")
        assert response.status_code < 500, (url, response.status_code)


@pytest.mark.django_db(transaction=True)
def test_binary_garbage_on_stdout_gives_a_readable_log(pipelines_dir):
    make_pipeline(pipelines_dir, "garbage", "import os, sys\nsys.stdout.buffer.write(os.urandom(200_000))\n"
                                           "sys.stdout.buffer.write(b'\\x00\\xff end\\n')\nprint('after')\n")
    run = execute("garbage", executor="local")
    assert run.status == "succeeded"
    text = run.log_path.read_bytes().decode("utf-8")  # strictly valid UTF-8
    assert "after" in log_text(run) and "\ufffd" in text


@pytest.mark.parametrize("method, url, allowed", [
    ("put", "/api/runs", {"GET"}),
    ("delete", "/api/pipelines", {"GET"}),
    ("get", "/api/webhooks/pipeline_c/hook-key-123456", {"POST"}),
])
def test_a_wrong_method_answers_json_naming_the_allowed_ones(pipes, operator, method, url, allowed):  # noqa: F811
    response = getattr(operator.client, method)(url)
    assert response.status_code == 405
    assert response["Content-Type"].startswith("application/json")
    detail = response.json()["detail"]
    assert method.upper() in detail and url in detail
    assert {m.strip() for m in response["Allow"].split(",")} == allowed
    assert all(m in detail for m in allowed)


@pytest.mark.django_db(transaction=True)
def test_a_wrong_method_answers_json_under_asgi_too(pipes):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    response = async_to_sync(AsyncClient().put)("/api/runs")
    assert response.status_code == 405 and "PUT" in response.json()["detail"]
