"""Schedules: when a pipeline fires, and the scheduler step that fires it.

A pipeline's schedule comes from pipeline.json (`schedule_cron` in `schedule_timezone`, or
`schedule_interval_seconds`), bounded by `schedule_start` / `schedule_end`. The state the
scheduler keeps is one column, `Pipeline.schedule_next_at`: the next fire time not yet
handled. `schedule_key` remembers which definition that time was computed for, so a sync
that changes the definition starts it afresh (no catch-up across a change).

`schedules_fire()` steps (called by the dispatcher loop every tick):
1. select pipelines whose `schedule_next_at` is due and that are not paused (one indexed query);
2. for each, claim the tick with a conditional update of `schedule_next_at` to the next
   fire time after now, so two dispatchers never fire the same tick twice;
3. decide which fire times get a run: one fire time that is at most the grace late is on
   time; anything else means the scheduler was down, and `schedule_catchup` decides:
   `latest` (default) one run for the whole missed window, `none` only a fire time still
   within the grace, `all` one run per missed fire time, the most recent ones up to a cap;
4. queue those runs due at their fire times, recording the fire time and the policy.

Fire times, by kind:
- cron: evaluated in the pipeline's time zone, so `0 9 * * *` is 09:00 local on both sides
  of a DST change. A wall-clock time skipped by a spring-forward fires at the jump (as cron
  does); a fixed-hour time repeated by a fall-back fires once (the first time), while an
  expression with a wildcard hour (`*/30 * * * *`) fires in both repeated hours.
- interval: every N seconds of real time from `schedule_start`, or from the Unix epoch when
  there is no start (so a 3600 s interval fires on the hour, UTC, and needs no stored anchor).
"""

import json
import logging
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

from croniter import croniter
from django.conf import settings
from django.db import transaction
from django.utils import timezone

log = logging.getLogger("fastflow.schedules")

EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
ONE_SECOND = timedelta(seconds=1)


def grace_seconds():
    """How late a fire time may be handled and still count as on time, not as missed."""
    return getattr(settings, "FASTFLOW_SCHEDULE_GRACE", 60)


def catchup_cap():
    """At most this many runs for the `all` catch-up policy; older missed fire times are dropped."""
    return getattr(settings, "FASTFLOW_SCHEDULE_CATCHUP_MAX", 20)


class Schedule:
    """The fire times of one definition. All times in and out are aware datetimes (UTC out)."""

    def __init__(self, *, cron=None, interval=None, tz="UTC", start=None, end=None):
        self.cron, self.interval = cron, interval
        self.zone = ZoneInfo(tz)
        self.start, self.end = start, end
        # Fixed-hour cron jobs fire once when a fall-back repeats their wall-clock time.
        self._once_in_fold = bool(cron) and not cron.split()[1].startswith("*")

    @classmethod
    def from_spec(cls, spec):
        if not (spec.schedule_cron or spec.schedule_interval_seconds):
            return None
        return cls(cron=spec.schedule_cron, interval=spec.schedule_interval_seconds, tz=spec.schedule_timezone,
                   start=spec.schedule_start, end=spec.schedule_end)

    @property
    def key(self):
        """Identifies the definition: a change of any part restarts the schedule."""
        return json.dumps([self.cron, self.interval, self.zone.key,
                           self.start.isoformat() if self.start else None,
                           self.end.isoformat() if self.end else None])

    def describe(self):
        what = f"cron {self.cron!r} in {self.zone.key}" if self.cron else f"every {self.interval} s"
        if self.start:
            what += f", from {self.start.isoformat()}"
        if self.end:
            what += f", until {self.end.isoformat()}"
        return what

    # --- fire times ------------------------------------------------------------------------
    def _repeat_in_fold(self, local):
        """True for the second occurrence of a wall-clock time repeated by a fall-back."""
        return (self._once_in_fold and local.fold == 1
                and local.replace(fold=0).utcoffset() != local.utcoffset())

    def _cron_after(self, t):
        it = croniter(self.cron, t.astimezone(self.zone))
        while True:
            local = it.get_next(datetime).astimezone(self.zone)
            if local > t and not self._repeat_in_fold(local):
                return local.astimezone(dt_timezone.utc)

    def _cron_upto(self, t):
        it = croniter(self.cron, (t + ONE_SECOND).astimezone(self.zone))
        while True:
            local = it.get_prev(datetime).astimezone(self.zone)
            if local <= t and not self._repeat_in_fold(local):
                return local.astimezone(dt_timezone.utc)

    def _interval_after(self, t):
        anchor = self.start or EPOCH
        if t < anchor:
            return anchor
        n = int((t - anchor).total_seconds() // self.interval) + 1
        return anchor + timedelta(seconds=n * self.interval)

    def _interval_upto(self, t):
        anchor = self.start or EPOCH
        n = int((t - anchor).total_seconds() // self.interval)
        return anchor + timedelta(seconds=n * self.interval)

    def next_after(self, t):
        """The first fire time strictly after t, or None when the schedule has ended."""
        if self.start and t < self.start:
            t = self.start - timedelta(microseconds=1)
        fire = self._cron_after(t) if self.cron else self._interval_after(t)
        if self.end and fire >= self.end:
            return None
        return fire.astimezone(dt_timezone.utc)

    def latest_upto(self, t):
        """The last fire time at or before t inside the window, or None."""
        if self.end and t >= self.end:
            t = self.end - timedelta(microseconds=1)
        if self.start and t < self.start:
            return None
        fire = self._cron_upto(t) if self.cron else self._interval_upto(t)
        if self.start and fire < self.start:
            return None
        return fire.astimezone(dt_timezone.utc)

    def recent(self, *, since, until, limit):
        """Fire times in [since, until], newest first, at most `limit` of them, and whether
        older ones were left out."""
        fires, t = [], until
        while True:
            fire = self.latest_upto(t)
            if fire is None or fire < since:
                return fires, False
            if len(fires) == limit:
                return fires, True
            fires.append(fire)
            t = fire - timedelta(microseconds=1)

    def upcoming(self, after, n=5):
        fires, t = [], after
        while len(fires) < n:
            t = self.next_after(t)
            if t is None:
                break
            fires.append(t)
        return fires


# --- state kept on Pipeline rows -------------------------------------------------------------
def schedules_refresh(*, pipeline_ids=None, now=None):
    """(Re)start the schedules whose definition changed since their next fire time was
    computed: new pipelines, edited pipeline.json, a pipeline that lost or regained a valid
    spec. Called after a sync (changed rows only) and when the dispatcher starts (all rows)."""
    from orchestrator.models import Pipeline

    now = now or timezone.now()
    rows = Pipeline.objects.all() if pipeline_ids is None else Pipeline.objects.filter(pk__in=pipeline_ids)
    changed = []
    for pipeline in rows.only("id", "metadata_file", "spec_text", "missing", "schedule_key", "schedule_next_at"):
        schedule = None if pipeline.missing else pipeline.schedule
        key = schedule.key if schedule else ""
        if key != pipeline.schedule_key:
            pipeline.schedule_key = key
            pipeline.schedule_next_at = schedule.next_after(now) if schedule else None
            changed.append(pipeline)
    Pipeline.objects.bulk_update(changed, ["schedule_key", "schedule_next_at"], batch_size=500)
    return [p.pk for p in changed]


def schedule_pause(*, pipeline):
    """Stop firing. Kept across syncs: pipeline.json does not own this flag."""
    from orchestrator.models import Pipeline

    Pipeline.objects.filter(pk=pipeline.pk).update(schedule_paused=True)
    pipeline.schedule_paused = True


def schedule_resume(*, pipeline, now=None):
    """Fire again from the next fire time after now: time spent paused is not caught up."""
    from orchestrator.models import Pipeline

    schedule = pipeline.schedule
    next_at = schedule.next_after(now or timezone.now()) if schedule else None
    Pipeline.objects.filter(pk=pipeline.pk).update(schedule_paused=False, schedule_next_at=next_at,
                                                   schedule_key=schedule.key if schedule else "")
    pipeline.schedule_paused, pipeline.schedule_next_at = False, next_at


def schedule_upcoming(*, pipeline, n=5, now=None):
    """The next n fire times as the scheduler will see them (empty when there is no schedule)."""
    schedule = pipeline.schedule
    if schedule is None:
        return []
    now = now or timezone.now()
    start = pipeline.schedule_next_at
    if start is None or pipeline.schedule_paused or start <= now:
        return schedule.upcoming(now, n)
    return [start] + schedule.upcoming(start, n - 1)


# --- the scheduler step ----------------------------------------------------------------------
def _choose(*, schedule, policy, since, now):
    """[(fire time, catchup label)] for the fire times from `since` (the first unhandled)
    up to now."""
    grace = timedelta(seconds=grace_seconds())
    latest = schedule.latest_upto(now)
    if latest is None or latest < since:
        return []
    if latest == since and now - latest <= grace:
        return [(latest, "")]  # on time
    if policy == "latest":
        return [(latest, "latest")]
    if policy == "none":
        return [(latest, "none")] if now - latest <= grace else []
    fires, dropped = schedule.recent(since=since, until=now, limit=catchup_cap())
    if dropped:
        log.warning("catch-up: more than %d missed fire times since %s; running the latest %d",
                    catchup_cap(), since.isoformat(), len(fires))
    return [(fire, "all") for fire in reversed(fires)]


def _fire(pipeline, now):
    from orchestrator.models import Pipeline
    from runs.models import Trigger
    from runs.services import RunRefused, run_trigger

    schedule = pipeline.schedule
    since = pipeline.schedule_next_at
    next_at = schedule.next_after(now) if schedule else None
    with transaction.atomic():
        claimed = Pipeline.objects.filter(pk=pipeline.pk, schedule_next_at=since, schedule_paused=False).update(
            schedule_next_at=next_at)
        if not claimed or schedule is None:
            return []  # another scheduler took this tick, or the schedule is gone
        if not pipeline.runnable:
            log.warning("schedule of %s: not run at %s: %s", pipeline.pk, since.isoformat(),
                        pipeline.why_not_runnable())
            return []
        chosen = _choose(schedule=schedule, policy=pipeline.spec.schedule_catchup, since=since, now=now)
        if len(chosen) != 1 or chosen[0][1]:
            log.info("schedule of %s: missed fire times since %s; policy %r queues %d run(s)", pipeline.pk,
                     since.isoformat(), pipeline.spec.schedule_catchup, len(chosen))
        runs = []
        for fire, catchup in chosen:
            try:
                runs.append(run_trigger(pipeline=pipeline, trigger=Trigger.SCHEDULE, due_at=fire, scheduled_for=fire,
                                        catchup=catchup, catchup_from=since if catchup else None))
            except RunRefused as exc:  # pragma: no cover - runnable was checked above
                log.warning("schedule of %s: %s", pipeline.pk, exc)
        return runs


def schedules_fire(*, now=None):
    """Queue the runs of every due schedule. Returns the runs created."""
    from orchestrator.models import Pipeline

    now = now or timezone.now()
    due = Pipeline.objects.filter(schedule_next_at__lte=now, schedule_paused=False, missing=False)
    runs = []
    for pipeline in due:
        runs += _fire(pipeline, now)
    return runs
