"""Git sync against a real bare repository in a temp dir, cloned over file:// and pushed to
with real commits; then the whole workflow (pipelines_sync_all: git sync, SyncState, discovery)."""

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from orchestrator import gitsync
from orchestrator.models import Pipeline, SyncState
from orchestrator.services import git_snapshot_for_run, git_sync_due, pipelines_sync_all

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}


def git(cwd, *args):
    import os

    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


class Remote:
    """A bare repo plus a working clone that pushes to it."""

    def __init__(self, tmp: Path):
        self.bare = tmp / "remote.git"
        self.work = tmp / "author"
        git(tmp, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(tmp, "init", "--quiet", "--initial-branch=main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    @property
    def url(self):
        return f"file://{self.bare}"

    def write(self, rel, text):
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def commit(self, message="change", force=False):
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message)
        git(self.work, "push", "--quiet", *(["--force"] if force else []), "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path, settings):
    r = Remote(tmp_path)
    settings.FASTFLOW_GIT_URL = r.url
    settings.FASTFLOW_GIT_BRANCH = "main"
    settings.FASTFLOW_GIT_TOKEN = ""
    return r


def test_first_sync_clones_and_later_syncs_fast_forward(remote):
    remote.write("etl/main.py", "print('v1')\n")
    first = remote.commit("v1")
    result = gitsync.git_sync()
    assert (result.commit, result.previous, result.forced) == (first, "", False)
    assert (gitsync.checkout_dir() / "etl" / "main.py").read_text() == "print('v1')\n"
    remote.write("etl/main.py", "print('v2')\n")
    second = remote.commit("v2")
    result = gitsync.git_sync()
    assert (result.commit, result.previous, result.forced) == (second, first, False)
    assert (gitsync.checkout_dir() / "etl" / "main.py").read_text() == "print('v2')\n"
    assert gitsync.git_sync().changed is False


def test_force_push_is_handled_by_a_reset(remote):
    remote.write("a/main.py", "print(1)\n")
    remote.commit("one")
    remote.write("a/main.py", "print(2)\n")
    remote.commit("two")
    gitsync.git_sync()
    git(remote.work, "reset", "--quiet", "--hard", "HEAD~1")
    remote.write("a/main.py", "print('rewritten')\n")
    rewritten = remote.commit("rewritten history", force=True)
    result = gitsync.git_sync()
    assert result.forced is True and result.commit == rewritten
    assert (gitsync.checkout_dir() / "a" / "main.py").read_text() == "print('rewritten')\n"


def test_unreachable_remote_keeps_the_last_good_tree(remote, settings, tmp_path):
    remote.write("a/main.py", "print('good')\n")
    good = remote.commit()
    gitsync.git_sync()
    settings.FASTFLOW_GIT_URL = f"file://{tmp_path}/gone.git"
    git(gitsync.checkout_dir(), "remote", "set-url", "origin", settings.FASTFLOW_GIT_URL)
    with pytest.raises(gitsync.GitSyncError, match="git fetch failed"):
        gitsync.git_sync()
    assert gitsync.head() == good
    assert (gitsync.checkout_dir() / "a" / "main.py").read_text() == "print('good')\n"


def test_token_never_reaches_git_config_or_messages(remote, settings, tmp_path):
    remote.write("a/main.py", "print()\n")
    remote.commit()
    settings.FASTFLOW_GIT_TOKEN = "ghp_supersecrettoken123"
    gitsync.git_sync()
    config = (gitsync.checkout_dir() / ".git" / "config").read_text()
    assert "supersecret" not in config
    settings.FASTFLOW_GIT_URL = "https://ghp_supersecrettoken123@127.0.0.1:9/nothing.git"
    git(gitsync.checkout_dir(), "remote", "set-url", "origin", settings.FASTFLOW_GIT_URL)
    with pytest.raises(gitsync.GitSyncError) as exc:
        gitsync.git_sync()
    assert "supersecret" not in str(exc.value) and "127.0.0.1" in str(exc.value)
    assert gitsync.redact("fatal: ghp_supersecrettoken123 rejected") == "fatal: *** rejected"
    assert "supersecret" not in (gitsync.checkout_dir() / ".git" / "config").read_text().replace(
        settings.FASTFLOW_GIT_URL, "")  # only the URL we set by hand holds it


def test_snapshot_is_a_stable_export_of_one_commit(remote):
    remote.write("a/main.py", "print('old')\n")
    old = remote.commit()
    gitsync.git_sync()
    snap = gitsync.snapshot(old)
    remote.write("a/main.py", "print('new')\n")
    remote.commit()
    gitsync.git_sync()
    assert (snap / "a" / "main.py").read_text() == "print('old')\n"
    assert gitsync.snapshot(old) == snap


# --- the whole workflow: pipelines_sync_all() = git sync, record SyncState, discovery ------------------


@pytest.fixture
def live(remote, settings, db):
    """Git sync on, with the pipelines dir being the checkout's `flows/` sub-directory."""
    settings.FASTFLOW_GIT_SUBDIR = "flows"
    settings.FASTFLOW_PIPELINES_DIR = gitsync.checkout_dir() / "flows"
    return remote


def test_pushes_add_change_and_remove_pipelines(live):
    live.write("flows/etl/main.py", "print('etl')\n")
    live.write("flows/etl/pipeline.json", '{"timeout": 60}')
    live.write("README.md", "not a pipeline\n")
    first = live.commit("etl")
    report = pipelines_sync_all()
    assert report.created == ["etl"] and Pipeline.objects.get(pk="etl").value("timeout") == 60
    state = SyncState.load()
    assert (state.git_commit, state.git_ok, state.git_error) == (first, True, "")
    assert state.git_synced_at and state.git_attempted_at

    live.write("flows/report/main.py", "print('report')\n")  # a new pipeline appears
    live.write("flows/etl/pipeline.json", '{"timeout": 120, "tags": ["nightly"]}')  # a changed spec takes effect
    second = live.commit("report, etl timeout")
    report = pipelines_sync_all()
    assert report.created == ["report"] and report.updated == ["etl"]
    etl = Pipeline.objects.get(pk="etl")
    assert etl.value("timeout") == 120 and etl.tags == ["nightly"]
    assert SyncState.load().git_commit == second

    git(live.work, "rm", "-r", "--quiet", "flows/etl")  # a deleted pipeline is marked missing
    live.commit("drop etl")
    report = pipelines_sync_all()
    assert report.missing == ["etl"] and Pipeline.objects.get(pk="etl").missing
    assert not Pipeline.objects.get(pk="report").missing


def test_force_push_through_sync_all_resets_the_tree(live):
    live.write("flows/a/main.py", "print(1)\n")
    live.commit("one")
    live.write("flows/b/main.py", "print(2)\n")
    live.commit("two")
    pipelines_sync_all()
    git(live.work, "reset", "--quiet", "--hard", "HEAD~1")
    live.write("flows/c/main.py", "print(3)\n")
    rewritten = live.commit("rewrite", force=True)
    report = pipelines_sync_all()
    assert report.created == ["c"] and report.missing == ["b"]
    assert SyncState.load().git_commit == rewritten


def test_an_unreachable_remote_keeps_the_last_good_tree_and_records_the_redacted_error(live, settings):
    live.write("flows/etl/main.py", "print('good')\n")
    good = live.commit()
    pipelines_sync_all()
    settings.FASTFLOW_GIT_TOKEN = "ghp_supersecrettoken123"
    settings.FASTFLOW_GIT_URL = "https://ghp_supersecrettoken123@127.0.0.1:9/nothing.git"
    report = pipelines_sync_all()  # does not raise: discovery still runs, on the old tree
    assert report.missing == [] and not Pipeline.objects.get(pk="etl").missing
    state = SyncState.load()
    assert state.git_ok is False and "git fetch failed" in state.git_error and "127.0.0.1" in state.git_error
    assert "supersecret" not in state.git_error
    assert state.git_commit == good and gitsync.head() == good
    assert (gitsync.checkout_dir() / "flows" / "etl" / "main.py").read_text() == "print('good')\n"

    settings.FASTFLOW_GIT_URL, settings.FASTFLOW_GIT_TOKEN = live.url, ""  # the remote is back: retried
    live.write("flows/late/main.py", "print()\n")
    live.commit()
    assert pipelines_sync_all().created == ["late"] and SyncState.load().git_ok is True


def test_a_run_snapshot_keeps_its_code_across_a_sync(live):
    live.write("flows/etl/main.py", "print('old')\n")
    old = live.commit()
    pipelines_sync_all()
    sha, root = git_snapshot_for_run()
    assert sha == old and root == gitsync.git_root() / "snapshots" / old / "flows"
    live.write("flows/etl/main.py", "print('new')\n")
    new = live.commit()
    pipelines_sync_all()
    assert (root / "etl" / "main.py").read_text() == "print('old')\n"  # the running one's files stay
    assert git_snapshot_for_run()[0] == new


def test_sync_is_due_every_interval_and_only_with_git(live, settings):
    settings.FASTFLOW_GIT_SYNC_INTERVAL = 60
    assert git_sync_due(timezone.now())
    live.write("flows/a/main.py", "print()\n")
    live.commit()
    pipelines_sync_all()
    attempted = SyncState.load().git_attempted_at
    assert not git_sync_due(attempted + timedelta(seconds=59))
    assert git_sync_due(attempted + timedelta(seconds=60))
    settings.FASTFLOW_GIT_URL = ""
    assert not git_sync_due(attempted + timedelta(hours=1)) and git_snapshot_for_run() == (None, None)


def test_admin_shows_the_commit_and_result_and_syncs_now(live, admin_client):
    from django.urls import reverse

    live.write("flows/etl/main.py", "print()\n")
    sha = live.commit()
    changelist = reverse("admin:orchestrator_syncstate_changelist")
    page = admin_client.post(changelist, {"action": "sync_now", "_selected_action": ["1"]}, follow=True)
    assert f"Git: at commit {sha[:12]}" in page.content.decode()
    assert Pipeline.objects.filter(pk="etl").exists()
    page = admin_client.get(changelist).content.decode()
    assert sha[:12] in page and "ok" in page
    live.write("flows/more/main.py", "print()\n")  # the pipeline list's action syncs git first, too
    live.commit()
    admin_client.post(reverse("admin:orchestrator_pipeline_changelist"),
                      {"action": "sync_now", "_selected_action": ["etl"]})
    assert Pipeline.objects.filter(pk="more").exists()
