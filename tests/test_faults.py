"""Fault tests with real processes and a real engine: a worker killed with -9 mid-run, the
Docker engine stopped and started again during a run. Every run ends in exactly one final
state, with no duplicate attempt."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run
from runs.services import run_trigger
from stack import logs, running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("docker_engine")]
REPO = Path(__file__).resolve().parent.parent


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _log_has(run, text):
    return run.log_path.exists() and text in run.log_path.read_text(errors="replace")


def test_worker_killed_with_sigkill_mid_run_is_finalised_once(gallery):
    pipeline_sync()
    fast = {"FASTFLOW_EXECUTOR": "docker", "FASTFLOW_HEARTBEAT_TIMEOUT": "3"}
    with running("workers", "dispatcher", **fast) as procs:
        run = run_trigger(pipeline=Pipeline.objects.get(pk="delayed_success"), trigger="api",
                          env={"DELAY_SECONDS": "8"})
        _wait(lambda: _log_has(run, "progress 2/8"), 60, "the run to make progress")
        os.killpg(procs["workers"].pid, signal.SIGKILL)  # the whole q2 cluster, no goodbye
        procs["workers"].wait()
        assert Run.objects.get(pk=run.pk).status == "running"
    # A new worker host comes up: its reconciler re-attaches (the container is still going)
    # or finalises from the container's exit state.
    with running("workers", "dispatcher", **fast):
        _wait(lambda: Run.objects.get(pk=run.pk).is_final, 90, "the run to be finalised: " + logs("dispatcher")[-2000:])
    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("succeeded", 0), run.message
    lines = [ln.split(" ", 2)[2] for ln in run.log_path.read_text().splitlines() if " out " in ln]
    assert [ln for ln in lines if ln.startswith("progress")] == [f"progress {i}/8" for i in range(1, 9)]
    assert Run.objects.filter(pipeline_id="delayed_success").count() == 1  # no duplicate attempt
    assert subprocess.run(["docker", "ps", "-aq", "--filter", f"label=org.fastflow.run={run.pk}"],
                          capture_output=True, text=True).stdout.strip() == ""


def test_engine_stopped_during_a_run_then_started_again(gallery):
    pipeline_sync()
    with running("workers", "dispatcher", FASTFLOW_EXECUTOR="docker", FASTFLOW_HEARTBEAT_TIMEOUT="3"):
        run = run_trigger(pipeline=Pipeline.objects.get(pk="delayed_success"), trigger="api",
                          env={"DELAY_SECONDS": "30"})
        _wait(lambda: _log_has(run, "progress 2/30"), 60, "the run to make progress")
        pid = int(Path("/var/run/docker.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        _wait(lambda: not os.path.exists(f"/proc/{pid}"), 60, "the engine to stop")
        _wait(lambda: Run.objects.get(pk=run.pk).is_final, 90, "the run to end")
        run.refresh_from_db()
        assert (run.status, run.reason) in {("failed", "infrastructure"), ("failed", "lost")}
        assert run.message
        subprocess.run(["bash", str(REPO / "deploy" / "start-dockerd.sh")], check=True, capture_output=True)
        # the product was not restarted: the next run works
        again = run_trigger(pipeline=Pipeline.objects.get(pk="pipeline_c"), trigger="api")
        _wait(lambda: Run.objects.get(pk=again.pk).is_final, 90, "a run after the engine came back")
        assert Run.objects.get(pk=again.pk).status == "succeeded"


def test_engine_down_wait_policy_keeps_runs_queued_until_it_answers(pipelines_dir, settings, monkeypatch):
    from conftest import make_pipeline
    from runs.services import runs_dispatch

    settings.FASTFLOW_EXECUTOR, settings.FASTFLOW_ENGINE_DOWN = "docker", "wait"
    make_pipeline(pipelines_dir, "p", "print('x')\n")
    pipeline_sync()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # the engine is "down"
    run = run_trigger(pipeline=Pipeline.objects.get(pk="p"), trigger="api")
    assert runs_dispatch() == []
    assert Run.objects.get(pk=run.pk).dispatched_at is None  # waiting, not failed
    monkeypatch.delenv("DOCKER_HOST")  # it answers again: no restart needed
    assert runs_dispatch() == [run.pk]
