"""Log capture: what a run prints lands in its log file, per line, stamped and marked by
stream, while the run goes; bad bytes, the size cap and secrets are handled on the way.

Real runs on both executors (the docker ones need an engine: `docker_engine`), plus the
LogWriter and read_log edge cases on their own.
"""

import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import make_pipeline, require_docker
from runhelpers import execute, log_text, out_lines, trigger
from runs.executors import Job, get_executor
from runs.logs import MASK, MAX_LINE_CHARS, LogWriter, parse_line, read_log, tail_offset
from runs.models import Run
from runs.services import run_execute

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z (out|err|sys) .*$")


@pytest.fixture(params=["docker", "local"])
def executor(request):
    if request.param == "docker":
        require_docker()  # the docker_engine fixture's check: fails in CI when no engine answers
    return request.param


real_runs = pytest.mark.django_db(transaction=True)


# --- real runs ------------------------------------------------------------------------------

@real_runs
def test_stdout_and_stderr_are_kept_per_line_with_a_timestamp(pipelines_dir, executor):
    make_pipeline(pipelines_dir, "both", "import sys\n"
                  "for i in range(3):\n"
                  "    print(f'out {i}', flush=True)\n"
                  "    print(f'err {i}', file=sys.stderr, flush=True)\n"
                  "sys.stdout.write('no newline at the end')\n")
    run = execute("both", executor=executor)
    assert run.status == "succeeded"
    lines = log_text(run).splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert out_lines(run) == ["out 0", "out 1", "out 2", "no newline at the end"]
    assert out_lines(run, "err") == ["err 0", "err 1", "err 2"]
    assert [parse_line(line)[1] for line in lines][0] == "sys"  # Fast-Flow's own lines come first
    assert lines[-1].endswith(" sys run succeeded")  # after the unterminated line, not before


@real_runs
def test_invalid_utf8_is_replaced_and_the_run_goes_on(pipelines_dir, executor):
    make_pipeline(pipelines_dir, "bytes", "import sys, time\n"
                  "out = sys.stdout.buffer\n"
                  "out.write(b'bad \\xff\\xfe bytes\\n'); out.flush()\n"
                  "sys.stderr.buffer.write(b'cut \\xe2\\x82\\n'); sys.stderr.flush()\n"
                  "out.write(b'caf\\xc3'); out.flush(); time.sleep(0.2)\n"  # one character, two reads
                  "out.write(b'\\xa9 ok\\n'); out.flush()\n"
                  "print('still running')\n")
    run = execute("bytes", executor=executor)
    assert (run.status, run.exit_code) == ("succeeded", 0)
    run.log_path.read_bytes().decode("utf-8")  # the file is valid UTF-8
    assert out_lines(run) == ["bad \ufffd\ufffd bytes", "café ok", "still running"]
    assert out_lines(run, "err") == ["cut \ufffd"]


@real_runs
def test_the_size_cap_truncates_with_a_marker_and_the_run_still_succeeds(pipelines_dir, executor, settings):
    settings.FASTFLOW_LOG_MAX_BYTES = 20_000
    make_pipeline(pipelines_dir, "chatty", "import sys\n"
                  "for i in range(5000):\n"
                  "    print(f'line {i} ' + 'x' * 40)\n"
                  "print('the very end', file=sys.stderr)\n")
    run = execute("chatty", executor=executor)
    assert (run.status, run.exit_code) == ("succeeded", 0)
    text = log_text(run)
    assert run.log_path.stat().st_size == run.log_size <= 20_000
    assert text.count("[log truncated: reached the 20000 byte cap (FASTFLOW_LOG_MAX_BYTES); "
                      "later output dropped]") == 1
    assert out_lines(run)[0].startswith("line 0 ") and "the very end" not in text
    assert out_lines(run, "sys")[-1] == "run succeeded"  # how the run ended is still there
    assert all(LINE.match(line) for line in text.splitlines())


@real_runs
def test_the_log_grows_while_the_run_goes(gallery, executor):
    """Lines are in the file as they are printed, not written at the end."""
    run = trigger("delayed_success", env={"DELAY_SECONDS": "4"})
    worker = threading.Thread(target=run_execute, kwargs={"run_id": run.pk, "executor": executor})
    worker.start()
    seen = []  # (size, status) while the run goes
    deadline = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < deadline:
        status = Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()
        text = log_text(run)
        if status == "running" and "progress" in text:
            seen.append((len(text), text.count("progress"), "done" in text))
        time.sleep(0.1)
    worker.join()
    run.refresh_from_db()
    assert run.status == "succeeded"
    progress_counts = sorted({count for _, count, _ in seen})
    assert progress_counts[:3] == [1, 2, 3], seen  # each progress line seen on its own, live
    assert not any(done for _, count, done in seen if count < 4)
    assert out_lines(run)[-1] == "done"


@real_runs
def test_a_secret_printed_by_a_real_run_is_masked_even_split_across_reads(pipelines_dir, executor):
    """The executor's real output, through a LogWriter that knows the injected secret."""
    secret = "s3cr3t-Value-42"
    folder = make_pipeline(pipelines_dir, "leaky", "import os, sys, time\n"
                           "v = os.environ['API_KEY']\n"
                           "sys.stdout.write('key=' + v[:5]); sys.stdout.flush(); time.sleep(0.3)\n"
                           "sys.stdout.write(v[5:] + ' done\\n'); sys.stdout.flush()\n"
                           "print(v, file=sys.stderr)\n")
    run = trigger("leaky")
    path = run.log_path
    writer = LogWriter(path, secrets=[secret])
    outcome = get_executor(executor).execute(Job(run_id=run.pk, pipeline_id="leaky", code_dir=folder,
                                                 env={"API_KEY": secret}, log=writer))
    writer.close()
    assert outcome.status == "succeeded"
    text = path.read_text()
    assert secret not in text and "s3cr3" not in text
    assert " out key=*** done\n" in text and " err ***\n" in text


# --- LogWriter and read_log on their own --------------------------------------------------------

def test_a_secret_across_the_cut_of_a_very_long_line_is_masked(tmp_path):
    secret = "TOPSECRET-abcdef"
    writer = LogWriter(tmp_path / "r.log", secrets=[secret], max_bytes=10**7)
    for start in range(MAX_LINE_CHARS - 40, MAX_LINE_CHARS + 5):  # a secret on every side of the cut
        writer.write("out", b"x" * start + secret.encode())
        writer.write("out", b"y" * 50 + b"\n")
    writer.close()
    text = (tmp_path / "r.log").read_text()
    assert "TOPSECRET" not in text and "abcdef" not in text
    assert text.count(MASK) == 45
    assert max(len(parse_line(line)[2]) for line in text.splitlines()) <= MAX_LINE_CHARS + 100  # pieces


def test_crlf_and_an_unterminated_last_line(tmp_path):
    writer = LogWriter(tmp_path / "r.log")
    writer.write("out", b"windows\r\nline\r\nlast")
    writer.close()
    writer.write("out", b"after close is ignored\n")
    assert [parse_line(line)[2] for line in (tmp_path / "r.log").read_text().splitlines()] == [
        "windows", "line", "last"]


def test_two_streams_written_at_once_never_mix_within_a_line(tmp_path):
    writer = LogWriter(tmp_path / "r.log")

    def pump(stream):
        for i in range(2000):
            writer.write(stream, f"{stream}-{i}-".encode() + b"z" * 30 + b"\n")

    threads = [threading.Thread(target=pump, args=(s,)) for s in ("out", "err")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    lines = [parse_line(line) for line in (tmp_path / "r.log").read_text().splitlines()]
    for stream in ("out", "err"):
        assert [text for _, s, text in lines if s == stream] == [f"{stream}-{i}-" + "z" * 30 for i in range(2000)]


chunks = st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"PASS", b"WORD-42", b"\xff", b"\xc3"]),
                  max_size=60)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=chunks, cap=st.integers(1024, 6000))
def test_any_output_gives_a_capped_valid_masked_log(tmp_path_factory, parts, cap):
    path = tmp_path_factory.mktemp("prop") / "r.log"
    writer = LogWriter(path, secrets=["PASSWORD-42"], max_bytes=cap)
    for i, part in enumerate(parts):
        writer.write("out", part)  # one stream, so a secret can span parts
        if i % 7 == 3:
            writer.write("sys", b"a dependency build line\n")
    writer.system("run succeeded")
    writer.close()
    data = path.read_bytes()
    assert len(data) <= cap and writer.size == len(data)
    text = data.decode("utf-8")
    lines = text.split("\n")  # "\n" only: str.splitlines() also splits on \v, \f, \x1c..
    assert lines.pop() == ""  # the file ends with a newline
    assert "PASSWORD-42" not in text
    assert all(LINE.match(line) for line in lines)
    assert text.count("[log truncated") == int(writer.truncated)
    assert lines[-1].endswith(" sys run succeeded")


def test_read_log_stops_at_line_boundaries(tmp_path):
    path = tmp_path / "r.log"
    assert read_log(path, 5) == (b"", 5)  # nothing written yet
    path.write_bytes(b"one\ntwo\nthr")
    assert read_log(path) == (b"one\ntwo\n", 8)  # a line still being written is held back
    assert read_log(path, 8, whole_lines=False) == (b"thr", 11)  # the run is over: all of it
    assert read_log(path, 0, 6) == (b"one\n", 4)
    assert read_log(path, 4, 100) == (b"two\n", 8)
    path.write_bytes("é".encode() * 10 + b"\n")  # one long line, read 5 bytes at a time
    assert read_log(path, 0, 5) == ("éé".encode(), 4)  # cut between characters, not inside one
    assert read_log(path, 4, 5) == ("éé".encode(), 8)


def test_tail_offset_starts_at_a_whole_line(tmp_path):
    path = tmp_path / "r.log"
    path.write_bytes(b"aaaa\nbbbb\ncccc\n")
    assert tail_offset(path, 100) == 0
    assert tail_offset(path, 7) == 10  # "cccc\n"
    assert tail_offset(path, 10) == 5  # exactly at a line start
    assert tail_offset(tmp_path / "missing.log", 10) == 0
