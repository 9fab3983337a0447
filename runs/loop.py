"""The dispatcher loop: the one long-running loop besides the q2 cluster.

Each `step()` hands free slots to due runs (new ones, and retries whose delay is over) and,
every FASTFLOW_SYNC_INTERVAL seconds, re-syncs the pipelines dir (cheap when unchanged).
Tests call `step()` directly; `manage.py dispatcher` calls it forever.
"""

import logging
import time

from django.conf import settings
from django.db import close_old_connections

from orchestrator.services import pipeline_sync
from runs.services import runs_dispatch

log = logging.getLogger("fastflow.loop")


class Dispatcher:
    def __init__(self, interval=0.5):
        self.interval = interval
        self._next_sync = 0.0
        self.stopping = False

    def step(self, now=None):
        dispatched = runs_dispatch(now=now)
        if time.monotonic() >= self._next_sync:
            self._next_sync = time.monotonic() + settings.FASTFLOW_SYNC_INTERVAL
            pipeline_sync()
        return dispatched

    def forever(self):
        while not self.stopping:
            try:
                self.step()
            except Exception:  # keep the loop alive; the error is logged with its traceback
                log.exception("dispatcher step failed")
                close_old_connections()
            time.sleep(self.interval)
