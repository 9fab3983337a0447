"""What every benchmark needs: a scratch installation and a free loopback port.

`scratch(prefix, **env)` points Django at a fresh data dir and pipelines dir, and drops
DATABASE_URL and REDIS_URL, so a benchmark never writes to a real database or queue: it
always measures a scratch SQLite database with the ORM broker (bench/webhook_load.py sets
its own DATABASE_URL per child process when it measures PostgreSQL).
"""

import os
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def scratch(prefix, **env) -> Path:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
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
