"""Start real Fast-Flow processes (q2 cluster, dispatcher, daphne) against the test database,
as `manage.py up` would, for end-to-end tests. Everything is stopped at the end."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

from fastflow_site.children import child_env

REPO = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_env(**extra):
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        url = (f"postgres://{db['USER'] or ''}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "FASTFLOW_DATA_DIR": str(settings.FASTFLOW_DATA_DIR),
        "FASTFLOW_PIPELINES_DIR": str(settings.FASTFLOW_PIPELINES_DIR),
        "FASTFLOW_ENV_CACHE_DIR": str(settings.FASTFLOW_ENV_CACHE_DIR),
        "FASTFLOW_UV_CACHE_DIR": str(settings.FASTFLOW_UV_CACHE_DIR),
        "FASTFLOW_MAX_CONCURRENT_RUNS": str(settings.FASTFLOW_MAX_CONCURRENT_RUNS),
        "FASTFLOW_CHILD_PROCESS": "1",
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def running(*parts, port=None, **extra_env):
    """parts: any of "workers", "dispatcher", "web"."""
    env = stack_env(**extra_env)
    manage = [sys.executable, str(REPO / "manage.py")]
    commands = {
        "workers": manage + ["qcluster"],
        "dispatcher": manage + ["dispatcher"],
        "web": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port or 0),
                "fastflow_site.asgi:application"],
    }
    log_dir = Path(settings.FASTFLOW_DATA_DIR) / "stack-logs"
    log_dir.mkdir(exist_ok=True)
    procs = {}
    try:
        for part in parts:
            out = open(log_dir / f"{part}.log", "wb")
            procs[part] = subprocess.Popen(commands[part], cwd=REPO, env=child_env(part, env), stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        if "web" in parts:
            _wait_port(port, procs["web"], log_dir)
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _wait_port(port, proc, log_dir, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("web process died: " + (log_dir / "web.log").read_text()[-2000:])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"web process did not listen on {port} within {timeout} s")


def logs(part):
    return (Path(settings.FASTFLOW_DATA_DIR) / "stack-logs" / f"{part}.log").read_text(errors="replace")
