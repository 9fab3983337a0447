"""The reconciler against a real engine: stale runs are re-attached, finalised from their
container, or lost and retried; orphan containers are removed; one reconciler at a time."""

from datetime import timedelta

import docker
import pytest
from django.utils import timezone

from conftest import make_pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run, instance_id
from runs.reconciler import Reconciler, lease_acquire

pytestmark = pytest.mark.django_db(transaction=True)


def _running(pid, **fields):
    pipeline_sync()
    stale = timezone.now() - timedelta(minutes=5)
    return Run.objects.create(pipeline_id=pid, status="running", started_at=stale, heartbeat_at=stale,
                              dispatched_at=stale, **fields)


def _container(run_id, command):
    client = docker.from_env()
    c = client.containers.run("fastflow-runner:latest", command, detach=True, network_mode="none",
                              labels={"org.fastflow.run": str(run_id), "org.fastflow.role": "run",
                                      "org.fastflow.instance": instance_id()})
    return c


def test_a_run_with_no_container_is_lost_and_retried_by_policy(pipelines_dir):
    make_pipeline(pipelines_dir, "p", "print()\n", meta={"retry_attempts": 1})
    run = _running("p", executor="local", container_id="pgid:999999")
    done = Reconciler("test").step()
    run.refresh_from_db()
    assert done["lost"] == [run.pk]
    assert (run.status, run.reason) == ("failed", "lost") and "stopped reporting" in run.message
    retry = Run.objects.get(retry_of=run)
    assert (retry.status, retry.attempt) == ("queued", 2)


def test_a_fresh_heartbeat_is_left_alone(pipelines_dir):
    make_pipeline(pipelines_dir, "p", "print()\n")
    run = _running("p", executor="local")
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
    Reconciler("test").step()
    assert Run.objects.get(pk=run.pk).status == "running"


def test_an_exited_container_finalises_its_run(pipelines_dir, docker_engine):
    make_pipeline(pipelines_dir, "p", "print()\n")
    run = _running("p", executor="docker")
    c = _container(run.pk, ["python3", "-c", "import sys; sys.exit(3)"])
    c.wait()
    Run.objects.filter(pk=run.pk).update(container_id=c.id)
    done = Reconciler("test").step()
    run.refresh_from_db()
    assert done["finalised"] == [run.pk]
    assert (run.status, run.reason, run.exit_code) == ("failed", "exit_code", 3)
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(c.id)


def test_a_live_container_is_reattached_and_its_result_recorded(pipelines_dir, docker_engine):
    from runs.services import run_reattach

    make_pipeline(pipelines_dir, "p", "print()\n")
    run = _running("p", executor="docker")
    c = _container(run.pk, ["python3", "-u", "-c",
                            "import time\nfor i in range(4):\n    print('tick', i)\n    time.sleep(0.5)\n"])
    Run.objects.filter(pk=run.pk).update(container_id=c.id)
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    run.log_path.write_text("2026-01-01T00:00:00.000000Z out tick 0\n")  # what the dead worker wrote
    done = Reconciler("test").step()
    assert done["reattached"] == [run.pk]
    run_reattach(run_id=run.pk)  # what the q2 task does
    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("succeeded", 0)
    ticks = [ln.split(" ", 2)[2] for ln in run.log_path.read_text().splitlines() if " out " in ln]
    assert ticks == ["tick 0", "tick 1", "tick 2", "tick 3"]  # no gap, no duplicate


def test_reattach_after_a_long_line_skips_exactly_what_was_written(pipelines_dir, docker_engine):
    # A line past the writer's piece size is stored as several file lines; the engine's
    # replay has it as one. The re-attached run must neither repeat nor drop lines.
    from runs.logs import MAX_LINE_CHARS, LogWriter
    from runs.services import run_reattach

    make_pipeline(pipelines_dir, "p", "print()\n")
    run = _running("p", executor="docker")
    long_line = "x" * (MAX_LINE_CHARS + 5000)
    script = ("import sys, time\nprint('tick 0')\nprint('x' * %d)\nsys.stdout.flush()\ntime.sleep(3)\n"
              "for i in (1, 2):\n    print('tick', i, flush=True)\n" % len(long_line))
    c = _container(run.pk, ["python3", "-u", "-c", script])
    Run.objects.filter(pk=run.pk).update(container_id=c.id)
    dead = LogWriter(run.log_path)  # what the dead worker wrote: the long line came in two reads
    dead.write("out", b"tick 0\n" + long_line[:MAX_LINE_CHARS + 10].encode())
    dead.write("out", long_line[MAX_LINE_CHARS + 10:].encode() + b"\n")
    assert sum(" out " in ln for ln in run.log_path.read_text().splitlines()) == 3  # 2 pieces
    assert Reconciler("test").step()["reattached"] == [run.pk]
    run_reattach(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.exit_code) == ("succeeded", 0)
    out = [ln.split(" ", 2)[2] for ln in run.log_path.read_text().splitlines() if " out " in ln]
    assert out[0] == "tick 0" and "".join(out[1:3]) == long_line
    assert out[3:] == ["tick 1", "tick 2"]  # no gap, no duplicate


def test_orphan_containers_are_removed(pipelines_dir, docker_engine):
    make_pipeline(pipelines_dir, "p", "print()\n")
    pipeline_sync()
    done_run = Run.objects.create(pipeline_id="p", status="succeeded")
    orphan = _container(done_run.pk, ["sleep", "60"])
    unknown = _container(10**9, ["sleep", "60"])
    foreign = docker.from_env().containers.run("fastflow-runner:latest", ["sleep", "60"], detach=True,
                                               network_mode="none", labels={"org.fastflow.run": str(done_run.pk),
                                                                            "org.fastflow.instance": "another-one"})
    try:
        removed = Reconciler("test").step()["removed"]
        assert orphan.id[:12] in removed and unknown.id[:12] in removed
        assert foreign.id[:12] not in removed  # another installation's container is left alone
    finally:
        foreign.remove(force=True)


def test_only_one_reconciler_holds_the_lease(pipelines_dir):
    assert lease_acquire("reconciler", holder="a", ttl=30)
    assert not lease_acquire("reconciler", holder="b", ttl=30)
    assert lease_acquire("reconciler", holder="a", ttl=30)  # renewal
    make_pipeline(pipelines_dir, "p", "print()\n")
    run = _running("p", executor="local")
    assert Reconciler("b").step() == {"reattached": [], "finalised": [], "lost": [], "removed": []}
    assert Run.objects.get(pk=run.pk).status == "running"
