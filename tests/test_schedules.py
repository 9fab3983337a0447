"""Schedules: cron in a time zone across DST, intervals, the start/end window, pause and
resume (surviving a sync), the three catch-up policies, and one real scheduled run through
the dispatcher and workers. Time is controlled with time_machine; `Dispatcher.step()` is
what the loop calls every 0.5 s."""

import json
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import time_machine

from conftest import make_pipeline
from orchestrator.models import Pipeline
from orchestrator.schedules import Schedule, schedule_upcoming, schedules_fire
from orchestrator.services import pipeline_sync
from runs.loop import Dispatcher
from runs.models import Run
from stack import logs, running

pytestmark = pytest.mark.django_db(transaction=True)
UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def fired():
    return list(Run.objects.filter(trigger="schedule").order_by("scheduled_for", "id")
                .values_list("scheduled_for", "catchup", "catchup_from"))


def set_meta(root, pid, meta):
    (root / pid / "pipeline.json").write_text(json.dumps(meta))
    future = time.time() + 5  # a different mtime, whatever the file system's resolution
    import os

    os.utime(root / pid / "pipeline.json", (future, future))


# --- cron and time zones ----------------------------------------------------------------------
def test_cron_in_berlin_keeps_local_time_across_the_spring_dst_change(pipelines_dir):
    make_pipeline(pipelines_dir, "daily", "print()\n", meta={"schedule_cron": "0 9 * * *",
                                                             "schedule_timezone": "Europe/Berlin"})
    loop = Dispatcher()
    with time_machine.travel(utc(2026, 3, 27, 12, 0), tick=False) as clock:
        loop.step()  # syncs; the first fire time is tomorrow 09:00 Berlin
        pipeline = Pipeline.objects.get(pk="daily")
        assert schedule_upcoming(pipeline=pipeline, n=3) == [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7),
                                                             utc(2026, 3, 30, 7)]
        for due in [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)]:
            clock.move_to(due - timedelta(seconds=1))
            loop.step()
            assert Run.objects.filter(scheduled_for=due).count() == 0  # not yet
            clock.move_to(due + timedelta(seconds=0.4))  # the next tick
            loop.step()
            run = Run.objects.get(scheduled_for=due)
            assert run.due_at == due and run.dispatched_at is not None and run.catchup == ""
    local = [f.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for f, _, _ in fired()]
    assert local == ["03-28 09:00 CET", "03-29 09:00 CEST", "03-30 09:00 CEST"]


def test_cron_across_the_autumn_change_fixed_hours_fire_once_wildcards_in_both_hours():
    daily = Schedule(cron="30 2 * * *", tz="Europe/Berlin")
    fires = daily.upcoming(utc(2026, 10, 23, 12), 3)
    assert [f.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for f in fires] == [
        "10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"]  # 02:30 happens twice on 10-25: fired once
    half_hourly = Schedule(cron="*/30 * * * *", tz="Europe/Berlin")
    fires = half_hourly.upcoming(utc(2026, 10, 24, 23, 50), 5)  # 01:50 CEST
    assert [f.astimezone(BERLIN).strftime("%H:%M %Z") for f in fires] == [
        "02:00 CEST", "02:30 CEST", "02:00 CET", "02:30 CET", "03:00 CET"]
    assert fires[2] - fires[1] == timedelta(minutes=30)  # real time, evenly spaced
    spring = Schedule(cron="30 2 * * *", tz="Europe/Berlin")  # 02:30 does not exist on 03-29
    assert [f.astimezone(BERLIN).strftime("%m-%d %H:%M") for f in spring.upcoming(utc(2026, 3, 28, 12), 2)] == [
        "03-29 03:00", "03-30 02:30"]
    assert daily.latest_upto(utc(2026, 10, 25, 12)) == utc(2026, 10, 25, 0, 30)


# --- intervals and the window -----------------------------------------------------------------
def test_interval_schedule_within_its_start_and_end_window(pipelines_dir):
    make_pipeline(pipelines_dir, "windowed", "print()\n", meta={
        "schedule_interval_seconds": 3600, "schedule_timezone": "Europe/Berlin",
        "schedule_start": "2026-06-01T10:15:00", "schedule_end": "2026-06-01T13:15:00"})  # Berlin local
    loop = Dispatcher()
    with time_machine.travel(utc(2026, 5, 31, 12), tick=False) as clock:
        loop.step()
        pipeline = Pipeline.objects.get(pk="windowed")
        assert pipeline.schedule_next_at == utc(2026, 6, 1, 8, 15)
        assert schedule_upcoming(pipeline=pipeline) == [utc(2026, 6, 1, 8, 15), utc(2026, 6, 1, 9, 15),
                                                        utc(2026, 6, 1, 10, 15)]  # end is exclusive
        t = utc(2026, 6, 1, 7, 0)
        while t < utc(2026, 6, 1, 14, 0):  # a tick every 5 minutes of simulated time
            clock.move_to(t)
            loop.step()
            t += timedelta(minutes=5)
    assert [f for f, _, _ in fired()] == [utc(2026, 6, 1, 8, 15), utc(2026, 6, 1, 9, 15), utc(2026, 6, 1, 10, 15)]
    assert Pipeline.objects.get(pk="windowed").schedule_next_at is None  # ended


def test_interval_without_start_is_aligned_to_the_epoch():
    every_15_min = Schedule(interval=900)
    assert every_15_min.next_after(utc(2026, 1, 1, 10, 7, 3)) == utc(2026, 1, 1, 10, 15)
    assert every_15_min.latest_upto(utc(2026, 1, 1, 10, 15)) == utc(2026, 1, 1, 10, 15)


# --- pause and resume ---------------------------------------------------------------------------
def test_a_pause_in_the_admin_survives_a_sync_and_resume_skips_the_paused_time(pipelines_dir, admin_client):
    make_pipeline(pipelines_dir, "ticker", "print()\n", meta={"schedule_interval_seconds": 60})
    loop = Dispatcher()
    with time_machine.travel(utc(2026, 2, 1, 12, 0, 30), tick=False) as clock:
        loop.step()
        page = admin_client.get("/admin/orchestrator/pipeline/ticker/change/").content.decode()
        assert "Next 5 fire times" in page and "Sun 2026-02-01 12:05 UTC" in page and "Pause schedule" in page
        response = admin_client.post("/admin/orchestrator/pipeline/ticker/schedule/pause/")
        assert response.status_code == 302 and Pipeline.objects.get(pk="ticker").schedule_paused
        set_meta(pipelines_dir, "ticker", {"schedule_interval_seconds": 120, "description": "edited"})
        report = pipeline_sync()
        assert report.updated == ["ticker"]
        pipeline = Pipeline.objects.get(pk="ticker")
        assert pipeline.schedule_paused and pipeline.description == "edited"  # the sync did not undo the pause
        for _ in range(10):
            clock.shift(60)
            loop.step()
        assert fired() == []
        assert "Resume schedule" in admin_client.get("/admin/orchestrator/pipeline/ticker/change/").content.decode()
        admin_client.post("/admin/orchestrator/pipeline/ticker/schedule/resume/")
        assert Pipeline.objects.get(pk="ticker").schedule_next_at == utc(2026, 2, 1, 12, 12)
        clock.move_to(utc(2026, 2, 1, 12, 12, 0, 300_000))
        loop.step()
    assert fired() == [(utc(2026, 2, 1, 12, 12), "", None)]  # no catch-up for the paused time


def test_pause_and_resume_actions_on_the_changelist(pipelines_dir, admin_client):
    make_pipeline(pipelines_dir, "a", "print()\n", meta={"schedule_cron": "*/5 * * * *"})
    pipeline_sync()
    admin_client.post("/admin/orchestrator/pipeline/", {"action": "pause_schedules", "_selected_action": ["a"]})
    assert Pipeline.objects.get(pk="a").schedule_paused
    assert "paused" in admin_client.get("/admin/orchestrator/pipeline/").content.decode()
    admin_client.post("/admin/orchestrator/pipeline/", {"action": "resume_schedules", "_selected_action": ["a"]})
    assert not Pipeline.objects.get(pk="a").schedule_paused


# --- catch-up after downtime ---------------------------------------------------------------------
def _down_for_an_hour(pipelines_dir, catchup, settings=None):
    """Every 10 minutes; the scheduler was down from 12:00:30 until 13:00:20."""
    meta = {"schedule_interval_seconds": 600}
    if catchup:
        meta["schedule_catchup"] = catchup
    make_pipeline(pipelines_dir, "tenmin", "print()\n", meta=meta)
    with time_machine.travel(utc(2026, 4, 1, 12, 0, 30), tick=False) as clock:
        Dispatcher().step()
        assert Pipeline.objects.get(pk="tenmin").schedule_next_at == utc(2026, 4, 1, 12, 10)
        clock.move_to(utc(2026, 4, 1, 13, 0, 20))
        Dispatcher().step()  # back up: 12:10 ... 13:00 were missed
        clock.shift(1)
        Dispatcher().step()
        assert Pipeline.objects.get(pk="tenmin").schedule_next_at == utc(2026, 4, 1, 13, 10)
    return fired()


def test_catchup_latest_is_the_default_one_run_for_the_window(pipelines_dir):
    assert _down_for_an_hour(pipelines_dir, None) == [(utc(2026, 4, 1, 13, 0), "latest", utc(2026, 4, 1, 12, 10))]


def test_catchup_none_runs_only_a_fire_time_still_within_the_grace(pipelines_dir, settings):
    assert _down_for_an_hour(pipelines_dir, "none") == [(utc(2026, 4, 1, 13, 0), "none", utc(2026, 4, 1, 12, 10))]
    Run.objects.all().delete()
    Pipeline.objects.all().delete()
    settings.FASTFLOW_SCHEDULE_GRACE = 10  # 13:00 is 20 s late: missed too
    assert _down_for_an_hour(pipelines_dir, "none") == []


def test_catchup_all_runs_each_missed_fire_time_up_to_the_cap(pipelines_dir, settings):
    assert [f for f, c, _ in _down_for_an_hour(pipelines_dir, "all")] == [
        utc(2026, 4, 1, 12, m) for m in (10, 20, 30, 40, 50)] + [utc(2026, 4, 1, 13, 0)]
    assert {c for _, c, _ in fired()} == {"all"}
    Run.objects.all().delete()
    Pipeline.objects.all().delete()
    settings.FASTFLOW_SCHEDULE_CATCHUP_MAX = 3
    assert [f for f, _, _ in _down_for_an_hour(pipelines_dir, "all")] == [
        utc(2026, 4, 1, 12, 40), utc(2026, 4, 1, 12, 50), utc(2026, 4, 1, 13, 0)]  # the most recent 3


def test_catch_up_runs_are_dispatched_oldest_first_within_the_limits(pipelines_dir, settings):
    settings.FASTFLOW_MAX_CONCURRENT_RUNS = 2
    _down_for_an_hour(pipelines_dir, "all")
    dispatched = list(Run.objects.filter(dispatched_at__isnull=False).order_by("scheduled_for")
                      .values_list("scheduled_for", flat=True))
    assert dispatched == [utc(2026, 4, 1, 12, 10), utc(2026, 4, 1, 12, 20)]


def test_two_schedulers_never_fire_the_same_tick_twice(pipelines_dir):
    make_pipeline(pipelines_dir, "once", "print()\n", meta={"schedule_interval_seconds": 60})
    with time_machine.travel(utc(2026, 4, 1, 12, 0, 30), tick=False) as clock:
        pipeline_sync()
        stale = list(Pipeline.objects.filter(pk="once"))  # both read the row before either fires
        clock.move_to(utc(2026, 4, 1, 12, 1, 0, 200_000))
        from orchestrator.schedules import _fire

        now = utc(2026, 4, 1, 12, 1, 0, 200_000)
        assert len(_fire(stale[0], now)) == 1
        assert _fire(stale[0], now) == []  # the claim of the same tick fails
        assert schedules_fire() == []
    assert len(fired()) == 1


def test_an_invalid_or_disabled_pipeline_does_not_fire(pipelines_dir):
    make_pipeline(pipelines_dir, "off", "print()\n", meta={"schedule_interval_seconds": 60, "enabled": False})
    with time_machine.travel(utc(2026, 4, 1, 12, 0, 30), tick=False) as clock:
        Dispatcher().step()
        clock.shift(60)
        Dispatcher().step()
        assert Pipeline.objects.get(pk="off").schedule_next_at == utc(2026, 4, 1, 12, 2)  # moved on
    assert fired() == []


# --- for real: dispatcher + workers, wall clock -----------------------------------------------
def test_scheduled_runs_fire_on_time_with_real_workers(pipelines_dir):
    # How late a run starts is a figure for benchmarks, not for a timed test on a shared
    # machine: here the dispatcher itself must judge each tick on time (no catch-up), never
    # start one early, and keep the interval exact.
    make_pipeline(pipelines_dir, "every3", "print('tick')\n", meta={"schedule_interval_seconds": 3})
    pipeline_sync()
    with running("workers", "dispatcher", FASTFLOW_EXECUTOR="local"):
        deadline = time.monotonic() + 45
        while Run.objects.filter(trigger="schedule", status="succeeded").count() < 3:
            assert time.monotonic() < deadline, logs("dispatcher")[-2000:] + logs("workers")[-2000:]
            time.sleep(0.2)
    runs = list(Run.objects.filter(trigger="schedule", status="succeeded").order_by("scheduled_for")[:3])
    for run in runs:
        late = (run.started_at - run.scheduled_for).total_seconds()
        assert late >= 0 and run.catchup == "", (run.pk, late, run.catchup)
    gaps = {(b.scheduled_for - a.scheduled_for).total_seconds() for a, b in zip(runs, runs[1:])}
    assert gaps == {3.0}


def test_fire_times_are_kept_in_utc_whatever_the_offset_written(pipelines_dir):
    make_pipeline(pipelines_dir, "odd", "print()\n", meta={"schedule_interval_seconds": 3600,
                                                           "schedule_start": "2026-06-01T10:00:00-16:32"})
    with time_machine.travel(utc(2026, 5, 1), tick=False):
        pipeline_sync()
    next_at = Pipeline.objects.get(pk="odd").schedule_next_at
    assert next_at == utc(2026, 6, 2, 2, 32) and next_at.utcoffset() == timedelta(0)
