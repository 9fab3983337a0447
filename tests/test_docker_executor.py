"""Docker executor specifics, against a real engine: hardening, limits, cached environments,
labels, clean-up, and the errors that name their cause."""

import threading
import time

import docker
import pytest

from conftest import make_pipeline
from runhelpers import execute, log_text, out_lines, trigger
from runs import environments
from runs.executors.docker import LABEL_RUN
from runs.services import run_execute

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("docker_engine")]

PROBE = """
import os
print("uid", os.getuid())
for line in open("/proc/self/status"):
    if line.startswith(("CapEff", "NoNewPrivs")):
        print(line.split()[0].rstrip(":"), line.split()[1])
for target in ["/etc/probe", "/pipeline/probe", "/tmp/probe"]:
    try:
        open(target, "w").write("x")
        print("write", target, "ok")
    except OSError as exc:
        print("write", target, "refused")
import socket
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
socket.create_connection(server.getsockname(), timeout=2).close()
print("loopback ok")
print("localhost is", socket.gethostbyname("localhost"))
try:  # no route: the connect fails in the kernel, nothing is sent
    socket.create_connection(("198.51.100.1", 443), timeout=2)
    print("outside reachable")
except OSError as exc:
    print("outside unreachable", type(exc).__name__)
"""


def _labelled(run_id):
    client = docker.from_env()
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


def test_container_is_locked_down(pipelines_dir):
    make_pipeline(pipelines_dir, "probe", PROBE)
    run = execute("probe", executor="docker")
    assert run.status == "succeeded", log_text(run)
    lines = out_lines(run)
    assert "uid 1000" in lines
    assert "CapEff 0000000000000000" in lines
    assert "NoNewPrivs 1" in lines
    assert "write /etc/probe refused" in lines  # read-only root filesystem
    assert "write /pipeline/probe refused" in lines  # code mounted read-only
    assert "write /tmp/probe ok" in lines  # writable tmpfs
    assert "interfaces ['lo']" in lines  # network mode none by default
    assert "loopback ok" in lines
    assert "localhost is 127.0.0.1" in lines  # /etc/hosts is there, though the engine's networking is off
    assert any(line.startswith("outside unreachable") for line in lines), lines
    assert run.image == "fastflow-runner:latest"


def test_limits_and_labels_reach_the_engine_and_the_container_is_removed(pipelines_dir):
    make_pipeline(pipelines_dir, "sleeper", "import time\nprint('up', flush=True)\ntime.sleep(20)\n",
                  meta={"cpu_hard_limit": 0.5, "mem_hard_limit": "300m", "timeout": 60})
    run = trigger("sleeper")
    seen = {}

    def inspect_then_cancel():
        from runs.models import Run
        from runs.services import run_cancel

        for _ in range(300):
            found = _labelled(run.pk)
            if found and "up" in log_text(run):
                seen["attrs"] = found[0].attrs
                break
            time.sleep(0.05)
        run_cancel(run=Run.objects.get(pk=run.pk))

    t = threading.Thread(target=inspect_then_cancel)
    t.start()
    run_execute(run_id=run.pk, executor="docker")
    t.join()
    host = seen["attrs"]["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 300 * 2**20 and host["MemorySwap"] == 300 * 2**20
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] > 0
    assert host["NetworkMode"] == "none"
    assert seen["attrs"]["Config"].get("NetworkDisabled") is True  # no engine network sandbox
    assert seen["attrs"]["Config"]["Labels"]["org.fastflow.pipeline"] == "sleeper"
    assert seen["attrs"]["Config"]["User"] == "1000:1000"
    assert _labelled(run.pk) == []  # removed after the run


def test_plain_exit_137_is_not_oom(pipelines_dir):
    make_pipeline(pipelines_dir, "selfkill", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    run = execute("selfkill", executor="docker")
    assert (run.status, run.reason) == ("failed", "exit_code")
    assert run.exit_code == 137
    assert "no out-of-memory" in run.message


def test_second_run_of_pipeline_a_builds_nothing_and_needs_no_network(gallery, settings):
    first = execute("pipeline_a", executor="docker")
    assert first.status == "succeeded", log_text(first)
    second = execute("pipeline_a", executor="docker")
    assert second.status == "succeeded", log_text(second)
    assert "building the dependency environment" not in log_text(second)
    assert second.setup_seconds < 0.5
    assert "processing 123.5 MB of data" in out_lines(second)  # humanize imported, offline
    assert settings.FASTFLOW_DOCKER_NETWORK == "none"


def test_environment_is_keyed_by_requirements_and_built_once_under_concurrency(pipelines_dir):
    # Two runs of a never-seen requirements set start together: one builds, one waits.
    marker = f"# unique {time.time_ns()}\n"
    make_pipeline(pipelines_dir, "twin", "import six\nprint('six', six.__version__)\n",
                  requirements=f"six==1.17.0\n{marker}", meta={"max_instances": 2})
    runs = [trigger("twin"), trigger("twin")]
    threads = [threading.Thread(target=run_execute, kwargs={"run_id": r.pk, "executor": "docker"}) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logs = []
    for r in runs:
        r.refresh_from_db()
        assert r.status == "succeeded", log_text(r)
        assert out_lines(r) == ["six 1.17.0"]
        logs.append(log_text(r))
    assert sum("building the dependency environment" in text for text in logs) == 1
    key_a = environments.env_key("six==1.17.0\n" + marker, "docker:img")
    key_b = environments.env_key("six==1.17.0\n" + marker + "\n", "docker:img")
    key_c = environments.env_key("six==1.16.0\n", "docker:img")
    key_d = environments.env_key("six==1.17.0\n" + marker, "docker:other-image")
    assert key_a == key_b and len({key_a, key_c, key_d}) == 3


def test_failed_build_is_an_infrastructure_failure_with_uv_output(pipelines_dir):
    make_pipeline(pipelines_dir, "badreq", "print('never')\n", requirements="this-package-does-not-exist-ff==9.9.9\n")
    run = execute("badreq", executor="docker")
    assert (run.status, run.reason) == ("failed", "infrastructure")
    assert "building the environment failed" in run.message
    assert "this-package-does-not-exist-ff" in log_text(run)  # uv's own words are in the log
    assert "never" not in out_lines(run)


def test_missing_image_says_how_to_build_it(pipelines_dir, settings):
    settings.FASTFLOW_RUNNER_IMAGE = "fastflow-runner:does-not-exist"
    make_pipeline(pipelines_dir, "noimg", "print('x')\n")
    run = execute("noimg", executor="docker")
    assert (run.status, run.reason) == ("failed", "infrastructure")
    assert "build-offline.sh" in run.message and "fastflow-runner:does-not-exist" in run.message


def test_engine_down_is_an_infrastructure_failure(pipelines_dir, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    make_pipeline(pipelines_dir, "noengine", "print('x')\n")
    run = execute("noengine", executor="docker")
    assert (run.status, run.reason) == ("failed", "infrastructure")
    assert "Docker engine" in run.message


def test_garbage_collection_removes_only_old_environments(settings, tmp_path):
    settings.FASTFLOW_ENV_CACHE_DIR = tmp_path / "envs"
    old, _ = environments.ensure("docker", "old", lambda p: (p / "x").write_text("1"))
    new, _ = environments.ensure("docker", "new", lambda p: (p / "x").write_text("1"))
    import os

    past = time.time() - 40 * 86400
    os.utime(old / environments.MARKER, (past, past))
    removed = environments.collect_garbage(max_age_days=30)
    assert removed == [old]
    assert not old.exists() and new.exists()


def test_pipeline_network_mode_host_gets_the_engine_network(pipelines_dir):
    probe = "import socket\nprint('interfaces', len(socket.if_nameindex()))\n"
    make_pipeline(pipelines_dir, "hostnet", probe, meta={"network_mode": "host"})
    make_pipeline(pipelines_dir, "nonet", probe)
    host_run, none_run = execute("hostnet", executor="docker"), execute("nonet", executor="docker")
    assert host_run.status == none_run.status == "succeeded", log_text(host_run) + log_text(none_run)
    import socket

    assert out_lines(host_run) == [f"interfaces {len(socket.if_nameindex())}"]  # the host's own interfaces
    assert out_lines(none_run) == ["interfaces 1"]  # loopback only
