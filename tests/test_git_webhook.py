"""The push webhook, POST /api/git/webhook: GitHub's X-Hub-Signature-256 or GitLab's
X-Gitlab-Token, verified; a verified push syncs from a real bare repo at once."""

import hashlib
import hmac
import json

import pytest
from django.test import Client

from orchestrator import gitsync
from orchestrator.models import Pipeline, SyncState
from test_git_sync import Remote

pytestmark = pytest.mark.django_db

SECRET = "whsec-test-1234"
URL = "/api/git/webhook"


@pytest.fixture
def repo(tmp_path, settings):
    r = Remote(tmp_path)
    settings.FASTFLOW_GIT_URL, settings.FASTFLOW_GIT_BRANCH, settings.FASTFLOW_GIT_TOKEN = r.url, "main", ""
    settings.FASTFLOW_GIT_SUBDIR = ""
    settings.FASTFLOW_PIPELINES_DIR = gitsync.checkout_dir()
    settings.FASTFLOW_GIT_WEBHOOK_SECRET = SECRET
    r.write("first/main.py", "print(1)\n")
    r.commit()
    return r


def github(body: bytes, secret=SECRET, **headers):
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return Client().post(URL, body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=signature,
                         HTTP_X_GITHUB_EVENT="push", **headers)


def test_a_good_github_signature_syncs_at_once(repo):
    repo.write("fresh/main.py", "print('pushed')\n")
    sha = repo.commit("add fresh")
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    response = github(body)
    assert response.status_code == 202 and response.json() == {"commit": sha, "ok": True, "error": ""}
    assert set(Pipeline.objects.values_list("id", flat=True)) == {"first", "fresh"}
    assert SyncState.load().git_commit == sha


def test_a_bad_or_missing_signature_is_refused(repo):
    body = b'{"ref": "refs/heads/main"}'
    assert github(body, secret="wrong").status_code == 403
    signed = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    tampered = Client().post(URL, b'{"ref": "refs/heads/evil"}', content_type="application/json",
                             HTTP_X_HUB_SIGNATURE_256=signed)
    assert tampered.status_code == 403
    assert Client().post(URL, body, content_type="application/json").status_code == 403
    assert response_detail(github(body, secret="wrong")) == "missing or invalid webhook signature"
    assert not Pipeline.objects.exists() and not (gitsync.checkout_dir() / ".git").exists()


def test_gitlab_token_good_and_bad(repo):
    good = Client().post(URL, b"{}", content_type="application/json", HTTP_X_GITLAB_TOKEN=SECRET)
    assert good.status_code == 202 and Pipeline.objects.filter(pk="first").exists()
    bad = Client().post(URL, b"{}", content_type="application/json", HTTP_X_GITLAB_TOKEN=SECRET + "x")
    assert bad.status_code == 403


def test_no_webhook_secret_refuses_everything(repo, settings):
    settings.FASTFLOW_GIT_WEBHOOK_SECRET = ""
    assert github(b"{}", secret="").status_code == 403


def test_404_when_git_sync_is_not_configured(settings):
    settings.FASTFLOW_GIT_URL = ""
    settings.FASTFLOW_GIT_WEBHOOK_SECRET = SECRET
    assert github(b"{}").status_code == 404


def response_detail(response):
    return response.json()["detail"]
