"""What every benchmark needs: a scratch installation, a free loopback port, and the real
Fast-Flow processes started and stopped as `up` runs them.

`scratch(prefix, **env)` points Django at a fresh data dir and pipelines dir, and drops
DATABASE_URL and REDIS_URL, so a benchmark never writes to a real database or queue: it
always measures a scratch SQLite database with the ORM broker (bench/webhook_load.py sets
its own DATABASE_URL per child process when it measures PostgreSQL).
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastflow_site.children import child_env  # noqa: E402


def scratch(prefix, **env) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "fastflow_site.settings",
        "FASTFLOW_DATA_DIR": str(path / "data"),
        "FASTFLOW_PIPELINES_DIR": str(path / "pipelines"),
        **{k: str(v) for k, v in env.items()},
    })
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(parts, env, log_dir, port=None):
    """Start "web" (daphne on `port`), "qcluster" and/or "dispatcher", each leading its own
    process group with its output in `<log_dir>/<part>.log` and the environment `up` gives
    it (fastflow_site/children.py). Returns once the web server (if any) accepts connections."""
    manage = [sys.executable, str(REPO / "manage.py")]
    commands = {
        "web": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "fastflow_site.asgi:application"],
        "qcluster": manage + ["qcluster"],
        "dispatcher": manage + ["dispatcher"],
    }
    procs = {}
    for part in parts:
        procs[part] = subprocess.Popen(commands[part], cwd=REPO, env=child_env(part, env),
                                       stdout=open(log_dir / f"{part}.log", "wb"), stderr=subprocess.STDOUT,
                                       start_new_session=True)
    if "web" in procs:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or procs["web"].poll() is not None:
                    stop(procs)
                    raise SystemExit("daphne did not listen:\n" + (log_dir / "web.log").read_text()[-3000:])
                time.sleep(0.1)
    return procs


def stop(procs):
    """SIGTERM to each process group (q2's worker processes too), SIGKILL after 15 s."""
    for p in procs.values():
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
