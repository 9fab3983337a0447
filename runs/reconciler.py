"""The reconciler: no run stays `running` forever, and none runs twice for one attempt.

A worker executing a run refreshes `heartbeat_at` every few seconds. `Reconciler.step()`,
called by the dispatcher loop of every worker host (and once at start-up), acts only while
it holds the `reconciler` lease, so one host acts at a time. For each `running` run whose
heartbeat is older than FASTFLOW_HEARTBEAT_TIMEOUT (its worker died or was killed):
1. docker, container still running -> take the run over (a conditional update on the old
   heartbeat, so one taker wins) and re-attach in a q2 task: logs resume where the file
   stopped, the wait and the timeout continue;
2. docker, container exited -> finalise from the container's exit state (exit code,
   OOMKilled), then remove it;
3. no container (or a local run, whose pipes died with its worker) -> `failed` / `lost`,
   kill what is left of a local process group, and retry by the pipeline's policy.
Then: labelled containers whose run is final (or unknown) are removed.
"""

import logging
import os
import signal
import socket
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from runs.models import Lease, Reason, Run, Status

log = logging.getLogger("fastflow.reconciler")


def lease_acquire(name, *, holder, ttl) -> bool:
    """Take or renew a named lease. True when `holder` holds it until now + ttl."""
    now = timezone.now()
    until = now + timedelta(seconds=ttl)
    if Lease.objects.filter(name=name, holder=holder).update(expires_at=until):
        return True
    if Lease.objects.filter(name=name, expires_at__lt=now).update(holder=holder, expires_at=until):
        return True
    try:
        with transaction.atomic():
            Lease.objects.create(name=name, holder=holder, expires_at=until)
        return True
    except IntegrityError:
        return False


def _docker():
    from runs.executors.docker import DockerExecutor

    if not DockerExecutor.available():
        return None
    return DockerExecutor()


class Reconciler:
    def __init__(self, holder=None):
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"

    def step(self, now=None) -> dict:
        done = {"reattached": [], "finalised": [], "lost": [], "removed": []}
        if not lease_acquire("reconciler", holder=self.holder, ttl=settings.FASTFLOW_HEARTBEAT_TIMEOUT):
            return done
        now = now or timezone.now()
        stale = now - timedelta(seconds=settings.FASTFLOW_HEARTBEAT_TIMEOUT)
        docker = None
        for run in Run.objects.filter(status=Status.RUNNING).select_related("pipeline"):
            last = run.heartbeat_at or run.started_at
            if last and last > stale:
                continue
            if run.executor == "docker" and run.container_id:
                docker = docker or _docker()
                if docker is None:
                    continue  # engine down: decide when it answers again
                state = docker.container_state(run.container_id)
                if state and state.get("Running"):
                    if self._take_over(run, last):
                        from django_q.tasks import async_task

                        async_task("runs.tasks.reattach_run", run.pk, task_name=f"reattach-{run.pk}", group="runs")
                        done["reattached"].append(run.pk)
                    continue
                if state is not None:
                    from runs.services import run_finalise_from_container

                    run_finalise_from_container(run=run, state=state)
                    docker.remove(run.container_id)
                    done["finalised"].append(run.pk)
                    continue
            self._lose(run)
            done["lost"].append(run.pk)
        docker = docker or _docker()
        if docker is not None:
            done["removed"] = docker.remove_orphans()
        return done

    def _take_over(self, run, last):
        """Claim a stale run for re-attachment; False when another reconciler took it."""
        field = "heartbeat_at" if run.heartbeat_at else "started_at"
        return bool(Run.objects.filter(pk=run.pk, status=Status.RUNNING, **{field: last})
                    .update(heartbeat_at=timezone.now(), worker_host=socket.gethostname()[:200]))

    def _lose(self, run):
        from runs.services import after_final

        if run.executor == "local" and run.container_id.startswith("pgid:"):
            try:
                os.killpg(int(run.container_id[5:]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        message = (f"lost: its worker on {run.worker_host or 'an unknown host'} stopped reporting "
                   f"(no heartbeat for {settings.FASTFLOW_HEARTBEAT_TIMEOUT} s) and no container holds it")
        if run.mark_finished(status=Status.FAILED, reason=Reason.LOST, message=message):
            log.warning("run %s: %s", run.pk, message)
            after_final(run=run)
