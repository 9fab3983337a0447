"""Each gallery pipeline ends as DESIGN.md says, on both executors, for real."""

import threading
import time

import pytest

from conftest import make_pipeline, require_docker
from runhelpers import execute, log_text, out_lines, trigger
from runs.models import Run
from runs.services import run_cancel, run_execute

EXECUTORS = ["docker", "local"]


@pytest.fixture(params=EXECUTORS)
def executor(request):
    if request.param == "docker":
        require_docker()
    return request.param


pytestmark = pytest.mark.django_db(transaction=True)


def test_pipeline_c_succeeds(gallery, executor):
    run = execute("pipeline_c", executor=executor)
    assert (run.status, run.reason, run.exit_code) == ("succeeded", "", 0)
    assert out_lines(run) == ["pipeline_c: hello from a folder with just main.py"]
    assert run.started_at and run.finished_at and run.finished_at >= run.started_at
    assert run.executor == executor
    assert run.log_size == run.log_path.stat().st_size > 0


def test_failing_pipeline_fails_with_its_exit_code(gallery, executor):
    run = execute("failing_pipeline", executor=executor)
    assert (run.status, run.reason, run.exit_code) == ("failed", "exit_code", 1)
    assert "exited with code 1" in run.message
    errs = out_lines(run, "err")
    assert errs[0] == "Traceback (most recent call last):"
    assert errs[-1] == "ValueError: config value 'threshold' is missing"


def test_ram_limit_fail_is_oom_killed(gallery, executor):
    run = execute("ram_limit_fail", executor=executor)
    assert (run.status, run.reason) == ("failed", "oom_killed")
    assert "out of memory" in run.message
    assert "still alive" not in log_text(run)


def test_ram_limit_success_succeeds_and_records_peak_memory(gallery, executor):
    run = execute("ram_limit_success", executor=executor)
    assert (run.status, run.exit_code) == ("succeeded", 0)
    assert run.peak_memory_bytes and 90 * 2**20 < run.peak_memory_bytes < 256 * 2**20
    assert run.cpu_seconds is not None and run.cpu_seconds > 0


def test_timeout_kills_the_run(pipelines_dir, executor):
    make_pipeline(pipelines_dir, "slow", "import time\nprint('start', flush=True)\ntime.sleep(30)\n",
                  meta={"timeout": 1})
    t0 = time.monotonic()
    run = execute("slow", executor=executor)
    assert (run.status, run.reason) == ("failed", "timed_out")
    assert time.monotonic() - t0 < 15
    assert out_lines(run) == ["start"]


def test_cancel_stops_a_running_run_and_is_not_retried(gallery, executor):
    run = trigger("delayed_success")
    Run.objects.filter(pk=run.pk).update()  # committed: visible to the cancelling thread

    def cancel_when_running():
        for _ in range(200):
            if "progress 2/20" in log_text(run):
                break
            time.sleep(0.05)
        run_cancel(run=Run.objects.get(pk=run.pk))

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    t0 = time.monotonic()
    run_execute(run_id=run.pk, executor=executor)
    canceller.join()
    run.refresh_from_db()
    assert run.status == "cancelled" and run.reason == ""
    assert time.monotonic() - t0 < 15
    assert "done" not in out_lines(run)
    assert not Run.objects.filter(retry_of=run).exists()


def test_cancel_of_a_queued_run_is_immediate_and_final(gallery, executor):
    run = trigger("pipeline_c")
    assert run_cancel(run=run)
    run_execute(run_id=run.pk, executor=executor)  # a late worker finds nothing to claim
    run.refresh_from_db()
    assert run.status == "cancelled" and run.started_at is None


def test_env_reaches_the_run(pipelines_dir, executor):
    make_pipeline(pipelines_dir, "envy",
                  "import os\nfor k in ['A', 'B', 'FASTFLOW_RUN_ID', 'FASTFLOW_PIPELINE', 'FASTFLOW_ATTEMPT']:\n"
                  "    print(k + '=' + os.environ.get(k, '<unset>'))\n",
                  meta={"default_env": {"A": "from-json", "B": "json-b"}})
    run = execute("envy", executor=executor, env={"B": "from-trigger"})
    assert out_lines(run) == ["A=from-json", "B=from-trigger", f"FASTFLOW_RUN_ID={run.pk}",
                              "FASTFLOW_PIPELINE=envy", "FASTFLOW_ATTEMPT=1"]


def test_a_redelivered_task_does_not_run_twice(gallery, executor):
    run = execute("pipeline_c", executor=executor)
    size = run.log_path.stat().st_size
    assert run_execute(run_id=run.pk, executor=executor) is None
    assert run.log_path.stat().st_size == size


def test_soft_limit_breach_is_a_warning_not_a_failure(gallery, executor):
    run = execute("ram_limit_success", executor=executor, mem_soft_limit_override=50 * 2**20)
    assert run.status == "succeeded"
    assert len(run.warnings) == 1 and run.warnings[0].startswith("memory soft limit exceeded: peak ")
    assert "warning: memory soft limit exceeded" in log_text(run)
