"""Cached dependency environments, shared by both executors.

An environment is keyed by a content hash of requirements.txt and the runtime that will
use it (the runner image id for docker, the interpreter for local). It is built once,
under an exclusive file lock so concurrent runs of one hash build it once, and is marked
complete only when the build succeeded. Later runs find the marker and do nothing: no
resolving, downloading or copying. The marker's mtime records the last use, which the
garbage collector reads.
"""

import fcntl
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from django.conf import settings

MARKER = ".fastflow-complete"
log = logging.getLogger("fastflow.environments")


def env_key(requirements: str, runtime: str) -> str:
    normalised = "\n".join(line.rstrip() for line in requirements.strip().splitlines())
    return hashlib.sha256(f"{runtime}\n--\n{normalised}".encode()).hexdigest()[:32]


def cache_root(kind: str) -> Path:
    root = Path(settings.FASTFLOW_ENV_CACHE_DIR) / kind
    root.mkdir(parents=True, exist_ok=True)
    return root


def uv_cache_dir(kind: str) -> Path:
    """One uv cache per executor kind: docker builds write it as the container user, local
    builds as the host user, and neither can write the other's files."""
    path = Path(settings.FASTFLOW_UV_CACHE_DIR) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure(kind: str, key: str, build) -> tuple[Path, bool]:
    """Return (env dir, built_now). `build(path)` fills an empty dir or raises."""
    root = cache_root(kind)
    path = root / key
    marker = path / MARKER
    if marker.exists():
        os.utime(marker)
        return path, False
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # another run built it while we waited
            os.utime(marker)
            return path, False
        if path.exists():
            shutil.rmtree(path)  # a build that died half-way
        path.mkdir()
        try:
            build(path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return path, True


def collect_garbage(max_age_days=None) -> list[Path]:
    """Remove environments unused for max_age_days. Skips any whose lock is held."""
    max_age = (max_age_days or settings.FASTFLOW_ENV_MAX_AGE_DAYS) * 86400
    removed = []
    base = Path(settings.FASTFLOW_ENV_CACHE_DIR)
    if not base.exists():
        return removed
    now = time.time()
    for kind_dir in base.iterdir():
        for path in kind_dir.iterdir():
            if not path.is_dir():
                continue
            marker = path / MARKER
            age = now - (marker.stat().st_mtime if marker.exists() else path.stat().st_mtime)
            if age < max_age:
                continue
            with open(kind_dir / f"{path.name}.lock", "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            (kind_dir / f"{path.name}.lock").unlink(missing_ok=True)
    if removed:
        log.info("removed %d unused environments", len(removed))
    return removed
