"""Git sync against a real bare repository in a temp dir, cloned over file:// and pushed to
with real commits."""

import subprocess
from pathlib import Path

import pytest

from orchestrator import gitsync

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
