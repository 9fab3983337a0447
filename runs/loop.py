"""The dispatcher loop: the one long-running loop besides the q2 cluster.

Each `step()`:
1. fires due schedules (queues their runs, due at their fire times);
2. hands free slots to due runs (new ones, scheduled ones, and retries whose delay is over);
3. every FASTFLOW_SYNC_INTERVAL seconds, re-syncs the pipelines dir (cheap when unchanged);
4. at start and every few seconds, runs the reconciler (runs whose worker died), and once
   an hour garbage-collects unused dependency environments.
The first step also (re)starts every schedule whose definition changed while the loop was
down. Ticking every 0.5 s, a scheduled run is enqueued within about half a second of its
fire time. Tests call `step()` directly; `manage.py dispatcher` calls it forever.
"""

import logging
import time

from django.conf import settings
from django.db import close_old_connections

from orchestrator.schedules import schedules_fire, schedules_refresh
from orchestrator.services import git_sync_due, pipeline_sync, pipelines_sync_all
from runs.environments import collect_garbage
from runs.reconciler import Reconciler
from runs.services import runs_dispatch

log = logging.getLogger("fastflow.loop")


class Dispatcher:
    def __init__(self, interval=0.5):
        self.interval = interval
        self._next_sync = 0.0
        self._next_reconcile = 0.0
        self._next_gc = 0.0
        self._refreshed = False
        self.reconciler = Reconciler()
        self.stopping = False

    def step(self, now=None):
        if not self._refreshed:
            schedules_refresh(now=now)
            self._refreshed = True
        schedules_fire(now=now)
        dispatched = runs_dispatch(now=now)
        if time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + settings.FASTFLOW_SYNC_INTERVAL
            if git_sync_due():
                pipelines_sync_all()  # git fetch (bounded by its own timeout), then discovery
            else:
                pipeline_sync()
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + min(5.0, settings.FASTFLOW_HEARTBEAT_TIMEOUT / 2)
            self.reconciler.step()
        if time.monotonic() >= self._next_gc:
            self._next_gc = time.monotonic() + 3600
            collect_garbage()
        return dispatched

    def forever(self):
        while not self.stopping:
            try:
                self.step()
            except Exception:  # keep the loop alive; the error is logged with its traceback
                log.exception("dispatcher step failed")
                close_old_connections()
            time.sleep(self.interval)
