"""Shared fixtures: personas, a temporary pipelines dir, and the Docker requirement.

FASTFLOW_REQUIRE_DOCKER=1 (set by .ci/run) turns every "no Docker engine" skip into a
failure, so CI can never pass by skipping the Docker tests.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GALLERY = REPO / "pipelines"


def docker_available():
    from runs.executors.docker import DockerExecutor

    return DockerExecutor.available()


def require_docker():
    if docker_available():
        return
    if os.environ.get("FASTFLOW_REQUIRE_DOCKER") == "1":
        pytest.fail("FASTFLOW_REQUIRE_DOCKER=1 but no Docker engine answers")
    pytest.skip("no Docker engine (set FASTFLOW_REQUIRE_DOCKER=1 to make this a failure)")


@pytest.fixture
def docker_engine():
    require_docker()


@pytest.fixture
def pipelines_dir(tmp_path, settings):
    """An empty pipelines dir, set as FASTFLOW_PIPELINES_DIR."""
    root = tmp_path / "pipelines"
    root.mkdir()
    settings.FASTFLOW_PIPELINES_DIR = root
    return root


@pytest.fixture
def gallery(tmp_path, settings):
    """A copy of the example gallery, set as FASTFLOW_PIPELINES_DIR."""
    root = tmp_path / "gallery"
    shutil.copytree(GALLERY, root, ignore=shutil.ignore_patterns("__pycache__"))
    settings.FASTFLOW_PIPELINES_DIR = root
    return root


def make_pipeline(root, pid, main="print('hi')\n", meta=None, meta_name="pipeline.json", requirements=None):
    folder = Path(root) / pid
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text(main)
    if meta is not None:
        (folder / meta_name).write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Environments and uv's cache survive across tests, as they do across real runs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path, settings, shared_cache):
    """Every test gets its own data dir (logs, keys); the env caches are shared."""
    data = tmp_path / "data"
    data.mkdir()
    settings.FASTFLOW_DATA_DIR = data
    settings.FASTFLOW_ENV_CACHE_DIR = shared_cache / "envs"
    settings.FASTFLOW_UV_CACHE_DIR = shared_cache / "uv-cache"
    return data


# Test files that CI runs a second time against PostgreSQL + Redis (`pytest -m production`).
PRODUCTION_FILES = {
    "test_run_outcomes.py", "test_retries.py", "test_concurrency.py", "test_workers.py",
    "test_docker_executor.py", "test_logs_ws.py", "test_log_capture.py", "test_webhooks.py",
    "test_schedules.py", "test_api.py", "test_downstream.py", "test_production.py", "test_reconciler.py",
    "test_web_restart.py", "test_secret_injection.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PRODUCTION_FILES:
            item.add_marker(pytest.mark.production)
