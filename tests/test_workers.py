"""End to end through real django-q2 workers and the dispatcher loop, as `up` runs them."""

import time

import pytest

from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run
from runs.services import run_trigger
from stack import logs, running

pytestmark = pytest.mark.django_db(transaction=True)


def _wait_final(run_ids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(Run.objects.filter(pk__in=run_ids))
        if all(r.is_final for r in runs):
            return {r.pk: r for r in runs}
        time.sleep(0.1)
    raise AssertionError(f"runs not final after {timeout} s: " + logs("workers")[-3000:])


def test_workers_execute_queued_runs_and_retries(gallery):
    (gallery / "delayed_random" / "pipeline.json").write_text(
        '{"retry_attempts": 2, "retry_strategy": {"type": "fixed_delay", "delay": 1}}')
    pipeline_sync()
    with running("workers", "dispatcher", FASTFLOW_EXECUTOR="local"):
        ok = run_trigger(pipeline=Pipeline.objects.get(pk="pipeline_c"), trigger="api")
        flaky = run_trigger(pipeline=Pipeline.objects.get(pk="delayed_random"), trigger="api",
                            env={"DELAY_SECONDS": "0", "FAIL_PROBABILITY": "1"})
        _wait_final([ok.pk, flaky.pk])
        deadline = time.monotonic() + 60
        while Run.objects.filter(pipeline_id="delayed_random", status__in=["queued", "running"]).exists() \
                or Run.objects.filter(pipeline_id="delayed_random").count() < 3:
            assert time.monotonic() < deadline, logs("dispatcher")[-3000:]
            time.sleep(0.1)
    assert Run.objects.get(pk=ok.pk).status == "succeeded"
    chain = list(Run.objects.filter(pipeline_id="delayed_random").order_by("attempt"))
    assert [(r.attempt, r.status, r.trigger) for r in chain] == [
        (1, "failed", "api"), (2, "failed", "retry"), (3, "failed", "retry")]
    assert all(r.worker_host for r in chain)
