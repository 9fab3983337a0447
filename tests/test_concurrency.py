"""Concurrency: FASTFLOW_MAX_CONCURRENT_RUNS and max_instances; excess runs wait in order."""

import pytest

from conftest import make_pipeline
from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run
from runs.services import run_execute, run_trigger, runs_dispatch

pytestmark = pytest.mark.django_db(transaction=True)


def _trigger(pid, n=1):
    pipeline = Pipeline.objects.get(pk=pid)
    return [run_trigger(pipeline=pipeline, trigger="api") for _ in range(n)]


def _dispatched():
    return set(Run.objects.filter(dispatched_at__isnull=False).values_list("pk", flat=True))


def test_global_limit_keeps_excess_runs_queued_in_order(pipelines_dir, settings):
    settings.FASTFLOW_MAX_CONCURRENT_RUNS = 2
    make_pipeline(pipelines_dir, "p", "print('p')\n")
    pipeline_sync()
    runs = _trigger("p", 5)
    assert _dispatched() == {runs[0].pk, runs[1].pk}
    assert all(Run.objects.get(pk=r.pk).status == "queued" for r in runs)  # waiting, not refused
    run_execute(run_id=runs[0].pk, executor="local")  # finishing frees one slot...
    assert _dispatched() == {runs[0].pk, runs[1].pk, runs[2].pk}  # ...for the oldest waiting run
    assert runs_dispatch() == []  # still full: runs[1] and runs[2] hold the slots


def test_max_instances_limits_one_pipeline_but_not_others(pipelines_dir, settings):
    settings.FASTFLOW_MAX_CONCURRENT_RUNS = 10
    make_pipeline(pipelines_dir, "single", "print('s')\n", meta={"max_instances": 1})
    make_pipeline(pipelines_dir, "free", "print('f')\n")
    pipeline_sync()
    singles = _trigger("single", 3)
    frees = _trigger("free", 3)
    assert _dispatched() == {singles[0].pk} | {r.pk for r in frees}
    run_execute(run_id=singles[0].pk, executor="local")
    assert singles[1].pk in _dispatched() and singles[2].pk not in _dispatched()


def test_invalid_or_disabled_pipelines_cannot_run(pipelines_dir):
    from runs.services import RunRefused

    make_pipeline(pipelines_dir, "broken", "print()\n", meta="{oops")
    make_pipeline(pipelines_dir, "off", "print()\n", meta={"enabled": False})
    pipeline_sync()
    for pid, words in (("broken", "invalid JSON at line 1"), ("off", "disabled")):
        with pytest.raises(RunRefused, match=words):
            run_trigger(pipeline=Pipeline.objects.get(pk=pid), trigger="manual")
    assert Run.objects.count() == 0


def test_a_stray_task_cannot_run_what_the_dispatcher_held_back(pipelines_dir, settings):
    # A task for a run that was never dispatched (over the limit here; a retry not yet due,
    # or a task left in a queue from before, alike) must not start it past the limit.
    settings.FASTFLOW_MAX_CONCURRENT_RUNS = 1
    make_pipeline(pipelines_dir, "p", "print('p')\n")
    pipeline_sync()
    first, held = _trigger("p", 2)
    assert _dispatched() == {first.pk}
    assert run_execute(run_id=held.pk, executor="local") is None
    held.refresh_from_db()
    assert (held.status, held.started_at) == ("queued", None)
    run_execute(run_id=first.pk, executor="local")  # the slot frees, and the dispatcher hands it out
    assert _dispatched() == {first.pk, held.pk}
    assert run_execute(run_id=held.pk, executor="local").status == "succeeded"
