"""Downstream triggers, executed for real with the local executor: a chain A -> B -> C, firing
only after the final attempt, cycles reported at sync and stopped by the depth limit."""

import pytest

from conftest import make_pipeline
from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runhelpers import drain, execute, out_lines
from runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)
OK = "import os\nprint('caused by', os.environ.get('FASTFLOW_CAUSED_BY'))\n"
FAIL = "import sys\nsys.exit(2)\n"


def then(*targets, on_success=True, on_failure=False):
    return {"downstream_triggers": [{"pipeline": t, "on_success": on_success, "on_failure": on_failure}
                                    for t in targets]}


def test_chain_a_b_c_runs_in_order_and_records_its_causes(pipelines_dir):
    make_pipeline(pipelines_dir, "a", OK, meta=then("b"))
    make_pipeline(pipelines_dir, "b", OK, meta=then("c"))
    make_pipeline(pipelines_dir, "c", OK)
    a = execute("a", executor="local")
    drain(executor="local")
    runs = {r.pipeline_id: r for r in Run.objects.all()}
    assert set(runs) == {"a", "b", "c"} and all(r.status == "succeeded" for r in runs.values())
    b, c = runs["b"], runs["c"]
    assert (b.trigger, b.caused_by_id, b.chain_depth) == ("downstream", a.pk, 1)
    assert (c.trigger, c.caused_by_id, c.chain_depth) == ("downstream", b.pk, 2)
    assert out_lines(b) == [f"caused by {a.pk}"] and out_lines(c) == [f"caused by {b.pk}"]
    assert b.queued_at >= a.finished_at and c.queued_at >= b.finished_at
    assert all(not r.all_warnings for r in Pipeline.objects.all())


def test_on_failure_fires_once_after_the_final_attempt_only(pipelines_dir):
    make_pipeline(pipelines_dir, "flaky", FAIL, meta={
        "retry_attempts": 2, "retry_strategy": {"type": "fixed_delay", "delay": 30},
        **then("cleanup", on_success=False, on_failure=True)})
    make_pipeline(pipelines_dir, "cleanup", OK)
    first = execute("flaky", executor="local")
    assert first.status == "failed" and first.retry_scheduled
    assert not Run.objects.filter(pipeline_id="cleanup").exists()  # a retry follows: not final
    drain(executor="local")
    attempts = list(Run.objects.filter(pipeline_id="flaky").order_by("attempt"))
    assert [(r.attempt, r.status) for r in attempts] == [(1, "failed"), (2, "failed"), (3, "failed")]
    cleanup = Run.objects.get(pipeline_id="cleanup")
    assert cleanup.caused_by_id == attempts[-1].pk and cleanup.status == "succeeded"


def test_on_success_and_on_failure_pick_the_outcome(pipelines_dir):
    make_pipeline(pipelines_dir, "good", OK, meta=then("after_ok", on_success=True, on_failure=False))
    make_pipeline(pipelines_dir, "bad", FAIL, meta={"downstream_triggers": [
        {"pipeline": "after_ok", "on_success": True, "on_failure": False},
        {"pipeline": "after_fail", "on_success": False, "on_failure": True}]})
    make_pipeline(pipelines_dir, "after_ok", OK)
    make_pipeline(pipelines_dir, "after_fail", OK)
    good, bad = execute("good", executor="local"), execute("bad", executor="local")
    drain(executor="local")
    caused = dict(Run.objects.filter(trigger="downstream").values_list("pipeline_id", "caused_by_id"))
    assert caused == {"after_ok": good.pk, "after_fail": bad.pk}


def test_a_cycle_is_a_warning_at_sync_and_stops_at_the_depth_limit(pipelines_dir, settings):
    settings.FASTFLOW_DOWNSTREAM_MAX_DEPTH = 3
    make_pipeline(pipelines_dir, "ping", OK, meta=then("pong"))
    make_pipeline(pipelines_dir, "pong", OK, meta=then("ping"))
    make_pipeline(pipelines_dir, "self", OK, meta=then("self"))
    make_pipeline(pipelines_dir, "bystander", OK, meta=then("ping", "ghost"))
    pipeline_sync()
    warnings = {p.id: p.cross_warnings for p in Pipeline.objects.all()}
    assert warnings["ping"] == ["downstream_triggers form a cycle (ping → pong → ping): a chain stops after "
                                "FASTFLOW_DOWNSTREAM_MAX_DEPTH runs"]
    assert "(pong → ping → pong)" in warnings["pong"][0]
    assert "(self → self)" in warnings["self"][0]
    assert warnings["bystander"] == ["downstream_triggers: no pipeline 'ghost'"]  # leads into a cycle, not in one
    assert Pipeline.objects.get(pk="ping").runnable  # a warning, not an error

    execute("ping", executor="local")
    drain(executor="local")
    chain = list(Run.objects.order_by("id"))
    assert [(r.pipeline_id, r.chain_depth) for r in chain] == [("ping", 0), ("pong", 1), ("ping", 2), ("pong", 3)]
    assert all(r.status == "succeeded" for r in chain)
    assert chain[-1].warnings == ["downstream 'ping' not triggered: the chain reached the depth limit of 3 runs "
                                  "(FASTFLOW_DOWNSTREAM_MAX_DEPTH); is there a cycle?"]


def test_breaking_the_cycle_clears_the_warnings(pipelines_dir):
    make_pipeline(pipelines_dir, "ping", OK, meta=then("pong"))
    make_pipeline(pipelines_dir, "pong", OK, meta=then("ping"))
    pipeline_sync()
    assert Pipeline.objects.get(pk="ping").cross_warnings
    make_pipeline(pipelines_dir, "pong", OK, meta={"description": "no more triggers"})
    import os
    import time

    later = time.time() + 5
    os.utime(pipelines_dir / "pong" / "pipeline.json", (later, later))
    pipeline_sync()
    assert [p.cross_warnings for p in Pipeline.objects.all()] == [[], []]


def test_a_downstream_pipeline_that_cannot_run_is_a_warning_on_the_run(pipelines_dir):
    make_pipeline(pipelines_dir, "a", OK, meta=then("off", "ghost"))
    make_pipeline(pipelines_dir, "off", OK, meta={"enabled": False})
    a = execute("a", executor="local")
    a.refresh_from_db()
    assert a.status == "succeeded"
    assert a.warnings == ["downstream 'off' not triggered: pipeline 'off' is disabled",
                          "downstream 'ghost' not triggered: no pipeline 'ghost'"]
    assert Run.objects.count() == 1
