"""Local executor specifics: the RSS watchdog where no memory cgroup can be made, process
groups (a timeout reaches grandchildren), and `auto` executor selection."""

import os
import time

import pytest

from conftest import make_pipeline
from runhelpers import execute, out_lines
from runs.executors import local, resolve_kind

pytestmark = pytest.mark.django_db(transaction=True)


def test_rss_watchdog_gives_oom_killed_without_a_cgroup(gallery, monkeypatch):
    monkeypatch.setattr(local._MemoryCgroup, "create", classmethod(lambda cls, name, limit: None))
    run = execute("ram_limit_fail", executor="local")
    assert (run.status, run.reason) == ("failed", "oom_killed")
    assert "still alive" not in out_lines(run)


def test_a_timeout_kills_the_whole_process_group(pipelines_dir, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    make_pipeline(pipelines_dir, "forker", (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('forked', flush=True)\n"
        "time.sleep(60)\n"), meta={"timeout": 1})
    run = execute("forker", executor="local")
    assert (run.status, run.reason) == ("failed", "timed_out")
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not os.path.exists(f"/proc/{grandchild}") or "Z" in open(f"/proc/{grandchild}/stat").read().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {grandchild} outlived the run's timeout")


def test_local_runs_do_not_see_the_orchestrators_packages(pipelines_dir):
    make_pipeline(pipelines_dir, "peek", "try:\n    import django\n    print('django visible')\n"
                                         "except ImportError:\n    print('isolated packages')\n")
    assert out_lines(execute("peek", executor="local")) == ["isolated packages"]


def test_every_local_run_says_it_is_not_isolated(pipelines_dir):
    make_pipeline(pipelines_dir, "p", "print('x')\n")
    run = execute("p", executor="local")
    assert any("NOT isolated" in line for line in out_lines(run, "sys"))


def test_auto_picks_docker_when_an_engine_answers_else_local(docker_engine, monkeypatch):
    assert resolve_kind("auto") == "docker"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert resolve_kind("auto") == "local"
