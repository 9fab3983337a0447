"""Git sync: the pipelines dir as a checkout of a remote branch.

With FASTFLOW_GIT_URL set, the pipelines dir is `<data dir>/git/checkout[/<FASTFLOW_GIT_SUBDIR>]`.
`git_sync()` steps:
1. first time: clone the branch into a temporary dir and rename it into place (atomic);
   later: fetch the branch, then `reset --hard` to it: a fast-forward when the old commit is
   an ancestor, a reset when the remote was force-pushed (reported as such);
2. on success, record the commit and run discovery; on failure, keep the last good tree,
   record the git error (credentials redacted) and let the next interval retry.

Credentials never touch `.git/config`, logs or messages: an HTTPS token is passed per
command as an `http.extraHeader` through GIT_CONFIG_* environment variables, and an SSH
deploy key through GIT_SSH_COMMAND pointing at a 0600 file.

Runs get a consistent snapshot: `snapshot(sha)` exports a commit once into
`<data dir>/git/snapshots/<sha>` (read-only afterwards), so a sync during a run never changes
the files under it.
"""

import base64
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

log = logging.getLogger("fastflow.git")


class GitSyncError(Exception):
    pass


@dataclass
class SyncResult:
    commit: str
    previous: str
    forced: bool = False

    @property
    def changed(self):
        return self.commit != self.previous


def enabled() -> bool:
    return bool(settings.FASTFLOW_GIT_URL)


def git_root() -> Path:
    return Path(settings.FASTFLOW_DATA_DIR) / "git"


def checkout_dir() -> Path:
    return git_root() / "checkout"


def redact(text: str) -> str:
    token = settings.FASTFLOW_GIT_TOKEN
    if token:
        text = text.replace(token, "***")
        text = text.replace(base64.b64encode(f"x-access-token:{token}".encode()).decode(), "***")
    return text


def _env() -> dict:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    if settings.FASTFLOW_GIT_TOKEN:
        basic = base64.b64encode(f"x-access-token:{settings.FASTFLOW_GIT_TOKEN}".encode()).decode()
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
    key = _ssh_key_file()
    if key:
        known = git_root() / "known_hosts"
        # BatchMode: never wait on a prompt (a passphrase, a password), fail and say why.
        env["GIT_SSH_COMMAND"] = (f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
                                  f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known}")
    if settings.FASTFLOW_CA_BUNDLE:
        env["GIT_SSL_CAINFO"] = settings.FASTFLOW_CA_BUNDLE
    return env


def _ssh_key_file():
    if settings.FASTFLOW_GIT_SSH_KEY:
        return settings.FASTFLOW_GIT_SSH_KEY
    if settings.FASTFLOW_GIT_SSH_KEY_SECRET:
        from orchestrator.models import Secret

        value = Secret.resolve(settings.FASTFLOW_GIT_SSH_KEY_SECRET, pipeline=None)
        if value is None:
            raise GitSyncError(f"secret {settings.FASTFLOW_GIT_SSH_KEY_SECRET!r} (the SSH deploy key) does not exist")
        path = git_root() / "deploy_key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value.strip() + "\n")
        return str(path)
    return None


def _git(*args, cwd=None, timeout=300) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise GitSyncError(f"git {args[0]} timed out after {timeout} s") from None
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise GitSyncError(redact(f"git {args[0]} failed: " + " | ".join(message[-5:])))
    return proc.stdout.strip()


def head() -> str:
    if not (checkout_dir() / ".git").exists():
        return ""
    return _git("rev-parse", "HEAD", cwd=checkout_dir())


def git_sync() -> SyncResult:
    """Bring the checkout to the remote branch. Raises GitSyncError; the old tree stays."""
    root = git_root()
    root.mkdir(parents=True, exist_ok=True)
    url, branch = settings.FASTFLOW_GIT_URL, settings.FASTFLOW_GIT_BRANCH
    with open(root / "sync.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        checkout = checkout_dir()
        if not (checkout / ".git").exists():
            tmp = Path(tempfile.mkdtemp(prefix="clone-", dir=root))
            try:
                _git("clone", "--quiet", "--branch", branch, "--single-branch", "--", url, str(tmp / "c"))
                if checkout.exists():
                    shutil.rmtree(checkout)
                os.rename(tmp / "c", checkout)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            commit = _git("rev-parse", "HEAD", cwd=checkout)
            log.info("git: cloned %s at %s", redact(url), commit[:12])
            return SyncResult(commit=commit, previous="")
        previous = _git("rev-parse", "HEAD", cwd=checkout)
        # Fetch from the configured URL, not `origin`, so a changed FASTFLOW_GIT_URL takes effect.
        _git("fetch", "--quiet", "--", url, f"+refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=checkout)
        target = _git("rev-parse", f"refs/remotes/origin/{branch}", cwd=checkout)
        forced = False
        if target != previous:
            forced = subprocess.run(["git", "merge-base", "--is-ancestor", previous, target], cwd=checkout,
                                    env=_env(), capture_output=True).returncode != 0
            _git("reset", "--quiet", "--hard", target, cwd=checkout)
            _git("clean", "--quiet", "-fdx", cwd=checkout)
            log.info("git: %s %s -> %s", "reset (force-push)" if forced else "fast-forward", previous[:12], target[:12])
        return SyncResult(commit=target, previous=previous, forced=forced)


def snapshot(sha: str) -> Path:
    """The tree of commit `sha`, exported once; runs mount their folder from here."""
    base = git_root() / "snapshots"
    base.mkdir(parents=True, exist_ok=True)
    path = base / sha
    if (path / ".fastflow-complete").exists():
        return path
    with open(base / f"{sha}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / ".fastflow-complete").exists():
            return path
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=checkout_dir(), env=_env(),
                                 capture_output=True)
        if archive.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            raise GitSyncError(f"cannot export commit {sha[:12]}: {archive.stderr.decode(errors='replace')[-300:]}")
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
        (path / ".fastflow-complete").write_text(sha)
    return path
