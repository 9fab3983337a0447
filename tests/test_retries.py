"""Retries: each attempt is a new Run, due after the strategy's delay; waiting holds no slot.
Time is controlled with time_machine (wall clock only; the runs themselves are real)."""

from datetime import datetime, timedelta, timezone

import pytest
import time_machine

from conftest import make_pipeline
from runhelpers import drain, execute, out_lines
from runs.models import Run
from runs.services import run_execute, run_retry, run_trigger, runs_dispatch

pytestmark = pytest.mark.django_db(transaction=True)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
FAIL = "import sys\nprint('attempt', __import__('os').environ['FASTFLOW_ATTEMPT'])\nsys.exit(3)\n"


@pytest.mark.parametrize("strategy, delays", [
    ({"type": "exponential_backoff", "initial_delay": 2, "multiplier": 3, "max_delay": 10}, [2, 6, 10]),
    ({"type": "fixed_delay", "delay": 7}, [7, 7, 7]),
    ({"type": "custom_schedule", "delays": [1, 30]}, [1, 30, 30]),
])
def test_each_retry_is_due_after_the_strategy_delay(pipelines_dir, strategy, delays):
    make_pipeline(pipelines_dir, "flaky", FAIL, meta={"retry_attempts": 3, "retry_strategy": strategy})
    with time_machine.travel(T0, tick=False) as clock:
        run = execute("flaky", executor="local")
        for n, delay in enumerate(delays, start=1):
            retry = Run.objects.get(attempt=n + 1)
            assert retry.trigger == "retry" and retry.retry_of_id == run.pk
            assert retry.due_at - Run.objects.get(attempt=n).finished_at == timedelta(seconds=delay)
            clock.shift(delay - 0.5)
            assert runs_dispatch() == []  # not due yet
            clock.shift(0.5)
            assert runs_dispatch() == [retry.pk]
            run_execute(run_id=retry.pk, executor="local")
    attempts = list(Run.objects.order_by("attempt").values_list("attempt", "status", "retry_scheduled"))
    assert attempts == [(1, "failed", True), (2, "failed", True), (3, "failed", True), (4, "failed", False)]


def test_delayed_random_with_fixed_delay_makes_the_expected_attempts(gallery):
    meta = (gallery / "delayed_random" / "pipeline.json")
    meta.write_text('{"retry_attempts": 2, "retry_strategy": {"type": "fixed_delay", "delay": 1}}')
    env = {"DELAY_SECONDS": "0", "FAIL_PROBABILITY": "1"}
    first = execute("delayed_random", executor="local", env=env)
    drain(executor="local")
    chain = list(Run.objects.filter(pipeline_id="delayed_random").order_by("attempt"))
    assert [r.attempt for r in chain] == [1, 2, 3]
    assert all(r.status == "failed" and r.reason == "exit_code" for r in chain)
    assert all(r.retry_of_id == first.pk for r in chain[1:])
    assert [r.env for r in chain] == [env] * 3  # trigger input carries over
    # and with certain success, there is exactly one attempt
    Run.objects.all().delete()
    execute("delayed_random", executor="local", env={"DELAY_SECONDS": "0", "FAIL_PROBABILITY": "0"})
    drain(executor="local")
    assert list(Run.objects.values_list("attempt", "status")) == [(1, "succeeded")]


def test_waiting_retry_holds_no_concurrency_slot(pipelines_dir, settings):
    settings.FASTFLOW_MAX_CONCURRENT_RUNS = 1
    make_pipeline(pipelines_dir, "flaky", FAIL, meta={"retry_attempts": 1,
                                                      "retry_strategy": {"type": "fixed_delay", "delay": 3600}})
    make_pipeline(pipelines_dir, "other", "print('other ran')\n")
    with time_machine.travel(T0, tick=False):
        execute("flaky", executor="local")
        waiting = Run.objects.get(pipeline_id="flaky", attempt=2)
        assert waiting.status == "queued"
        from orchestrator.models import Pipeline

        other = run_trigger(pipeline=Pipeline.objects.get(pk="other"), trigger="manual")
        other.refresh_from_db()
        assert other.dispatched_at is not None  # the only slot went to `other`
        run_execute(run_id=other.pk, executor="local")
        other.refresh_from_db()
        assert other.status == "succeeded" and out_lines(other) == ["other ran"]
        waiting.refresh_from_db()
        assert waiting.dispatched_at is None


def test_manual_retry_continues_the_chain(pipelines_dir):
    make_pipeline(pipelines_dir, "once", FAIL)
    first = execute("once", executor="local")
    assert first.status == "failed" and not Run.objects.filter(retry_of=first).exists()
    again = run_retry(run=first)
    assert (again.attempt, again.retry_of_id, again.trigger) == (2, first.pk, "retry")
    run_execute(run_id=again.pk, executor="local")
    assert out_lines(Run.objects.get(pk=again.pk)) == ["attempt 2"]


def test_cancelled_runs_are_never_retried(pipelines_dir):
    make_pipeline(pipelines_dir, "flaky", FAIL, meta={"retry_attempts": 3})
    from runhelpers import trigger
    from runs.services import run_cancel

    run = trigger("flaky")
    run_cancel(run=run)
    run_execute(run_id=run.pk, executor="local")
    drain(executor="local")
    assert list(Run.objects.values_list("attempt", "status")) == [(1, "cancelled")]
