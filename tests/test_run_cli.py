"""`manage.py run_pipeline ID [--env K=V] [--executor] [--wait]`."""

import pytest
from django.core.management import CommandError, call_command

from runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        call_command("run_pipeline", *args)
    return exc.value.code, capsys.readouterr()


def test_wait_streams_the_log_and_exits_with_the_run_code(gallery, capsys):
    from orchestrator.services import pipeline_sync

    pipeline_sync()
    code, out = _run(capsys, "failing_pipeline", "--executor", "local", "--wait")
    assert code == 1
    assert "err ValueError: config value 'threshold' is missing" in out.out
    assert "failed / exit_code" in out.err
    code, out = _run(capsys, "pipeline_a", "--executor", "local", "--wait", "--env", "GREETING=Hiya")
    assert code == 0 and "out Hiya, Fast-Flow!" in out.out


def test_without_wait_the_run_is_queued_for_workers(gallery, capsys):
    from orchestrator.services import pipeline_sync

    pipeline_sync()
    call_command("run_pipeline", "pipeline_c")
    run = Run.objects.get()
    assert run.status == "queued" and f"run {run.pk} queued" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["nope"], "no pipeline 'nope'"),
    (["pipeline_c", "--env", "1BAD=x"], "--env '1BAD=x'"),
    (["pipeline_c", "--env", "novalue"], "expected NAME=value"),
])
def test_bad_input_is_a_clear_error(gallery, args, words):
    from orchestrator.services import pipeline_sync

    pipeline_sync()
    with pytest.raises(CommandError, match=words):
        call_command("run_pipeline", *args)
