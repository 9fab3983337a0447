"""`manage.py run_pipeline ID [--env K=V] [--executor local|docker] [--wait]`

Without --wait the run is queued for the workers and its id printed. With --wait the run
is executed in this process (no worker needed), its log is streamed to the terminal as
it is written, and the command exits with the pipeline's exit code (1 when it failed
without one, e.g. an infrastructure error).
"""

import sys
import threading
import time

from django.core.management.base import BaseCommand, CommandError

from orchestrator.models import Pipeline
from orchestrator.spec import ENV_NAME_RE
from runs.executors import EXECUTORS
from runs.logs import read_log
from runs.models import Status, Trigger
from runs.services import RunRefused, run_execute, run_trigger


class Command(BaseCommand):
    help = "Trigger a pipeline run; with --wait, run it here, stream its log and exit with its code."

    def add_arguments(self, parser):
        parser.add_argument("pipeline_id")
        parser.add_argument("--env", action="append", default=[], metavar="K=V")
        parser.add_argument("--executor", choices=sorted(EXECUTORS))
        parser.add_argument("--wait", action="store_true")

    def handle(self, *args, pipeline_id, env, executor, wait, **options):
        pipeline = Pipeline.objects.filter(pk=pipeline_id).first()
        if pipeline is None:
            raise CommandError(f"no pipeline {pipeline_id!r}; run `manage.py sync_pipelines` to list them")
        parsed = {}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not ENV_NAME_RE.fullmatch(key):
                raise CommandError(f"--env {item!r}: expected NAME=value with a valid variable name")
            parsed[key] = value
        try:
            run = run_trigger(pipeline=pipeline, trigger=Trigger.MANUAL, env=parsed, dispatch=not wait)
        except RunRefused as exc:
            raise CommandError(str(exc)) from None
        if not wait:
            self.stdout.write(f"run {run.pk} queued")
            return
        done = threading.Event()
        follower = threading.Thread(target=self._follow, args=(run, done), daemon=True)
        follower.start()
        run_execute(run_id=run.pk, executor=executor)
        done.set()
        follower.join()
        run.refresh_from_db()
        self.stderr.write(f"run {run.pk}: {run.status}" + (f" / {run.reason}" if run.reason else "")
                          + (f": {run.message}" if run.message else ""))
        code = run.exit_code if run.exit_code is not None else (0 if run.status == Status.SUCCEEDED else 1)
        sys.exit(code)

    def _follow(self, run, done):
        offset = 0
        while True:
            finished = done.is_set()
            data, offset = read_log(run.log_path, offset)
            if data:
                self.stdout.write(data.decode("utf-8", "replace"), ending="")
                self.stdout.flush()
            if finished and not data:
                return
            time.sleep(0.1)

