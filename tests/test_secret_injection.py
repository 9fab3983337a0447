"""A run gets exactly the secrets its pipeline allows, as env vars, and a secret's value
appears nowhere: not in the log file, not in a database dump, not in any API response."""

import io
import json

import pytest
from django.core.management import call_command

from conftest import make_pipeline, require_docker
from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync, secret_save
from personas import admin  # noqa: F401  (fixture)
from runhelpers import execute, log_text, out_lines

pytestmark = pytest.mark.django_db(transaction=True)
VALUE = "s3cr3t-Value-Ω-9f8e7d"


@pytest.fixture(params=["docker", "local"])
def executor(request):
    if request.param == "docker":
        require_docker()
    return request.param


@pytest.fixture
def leaky(pipelines_dir):
    make_pipeline(pipelines_dir, "leaky", (
        "import os, sys\n"
        "v = os.environ['DB_PASSWORD']\n"
        "print('pw=' + v)\n"
        "sys.stdout.write('half ' + v[:9]); sys.stdout.flush(); sys.stdout.write(v[9:] + '\\n')\n"
        "print('err ' + v, file=sys.stderr)\n"
        "print('other', os.environ.get('NOT_ALLOWED', '<unset>'))\n"
        "print('scoped', os.environ['API_TOKEN'])\n"),
        meta={"secrets": ["DB_PASSWORD", "API_TOKEN"]})
    pipeline_sync()
    pipeline = Pipeline.objects.get(pk="leaky")
    secret_save(name="DB_PASSWORD", value=VALUE)
    secret_save(name="NOT_ALLOWED", value="never-injected-123")
    secret_save(name="API_TOKEN", value="global-token-value")
    secret_save(name="API_TOKEN", value="scoped-token-value", pipeline=pipeline)
    return pipeline


def test_secret_is_injected_masked_and_stored_nowhere(leaky, executor, admin):  # noqa: F811
    run = execute("leaky", executor=executor)
    assert run.status == "succeeded", log_text(run)
    lines = out_lines(run)
    assert lines[:2] == ["pw=***", "half ***"]  # the value split across two writes is masked whole
    assert "other <unset>" in lines  # not in the allow-list
    assert "scoped ***" in lines  # pipeline scope won (and is masked too)
    assert "err ***" in out_lines(run, "err")
    raw = run.log_path.read_bytes().decode()
    for value in (VALUE, VALUE[:9] + VALUE[9:], "scoped-token-value"):
        assert value not in raw
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert VALUE not in dump.getvalue() and "scoped-token-value" not in dump.getvalue()
    for url in ("/api/pipelines", "/api/pipelines/leaky", "/api/runs", f"/api/runs/{run.pk}",
                f"/api/runs/{run.pk}/logs", "/api/secrets"):
        body = admin.client.get(url).content.decode()
        assert VALUE not in body and "scoped-token-value" not in body, url
    assert json.dumps(run.env).find(VALUE) == -1


def test_a_missing_secret_fails_the_run_before_it_starts(pipelines_dir, executor):
    make_pipeline(pipelines_dir, "needy", "print('started')\n", meta={"secrets": ["NOPE_SECRET"]})
    run = execute("needy", executor=executor)
    assert (run.status, run.reason) == ("failed", "infrastructure")
    assert "NOPE_SECRET" in run.message
    assert "started" not in out_lines(run) and run.executor == ""  # no executor was reached
