"""The run page: in a real browser (Debian's chromium driven by Playwright) against a live
stack started as `up` starts it (daphne, q2 workers, the dispatcher) on the test database;
and, without a browser, what the page serves to one without JavaScript, the log download,
status.json, and the pipeline page's chart of its runs.

In the browser, a staff user logs in, opens the page of a running `delayed_success`, sees
progress lines arrive while the run goes, then sees the final status without a reload.
Screenshots are kept in test-artifacts/ at the repo root.
"""

import os
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from conftest import REPO, docker_available, make_pipeline, require_docker
from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runhelpers import trigger
from runs.admin import TAIL_BYTES
from runs.logs import LogWriter
from runs.models import Run
from runs.services import run_trigger
from stack import free_port, logs, running

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
PASSWORD = "pw-browser-123"
DELAY = 12  # seconds of progress lines from delayed_success: one a second

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def executor():
    """docker when an engine answers (and always in CI, where a missing engine fails), else local."""
    if docker_available() or os.environ.get("FASTFLOW_REQUIRE_DOCKER") == "1":
        require_docker()
        return "docker"
    return "local"


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") or os.environ.get("FASTFLOW_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return CHROMIUM


def in_thread(fn):
    """Playwright's sync API runs an event loop in its thread; Django's ORM refuses to run
    in a thread with a running loop. So the browser gets a plain thread of its own."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="browser")
    thread.start()
    thread.join(240)
    assert not thread.is_alive(), "the browser session hung"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n--- workers\n{logs('workers')[-3000:]}")


def progress_numbers(page):
    texts = page.locator(".ff-line.ff-out .ff-text").all_text_contents()
    return [int(t.split()[1].split("/")[0]) for t in texts if t.startswith("progress ")]


@pytest.mark.browser
def test_run_page_follows_a_running_run_live_and_shows_the_final_status(gallery, executor, chromium,
                                                                        django_user_model):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    pipeline_sync()
    django_user_model.objects.create_superuser("watcher", password=PASSWORD)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running("workers", "dispatcher", "web", port=port, FASTFLOW_EXECUTOR=executor):
        run = run_trigger(pipeline=Pipeline.objects.get(pk="delayed_success"), trigger="manual",
                          env={"DELAY_SECONDS": str(DELAY)})
        failing = run_trigger(pipeline=Pipeline.objects.get(pk="failing_pipeline"), trigger="manual")
        wait_for(lambda: Run.objects.filter(pk=run.pk, status="running").exists(), 90, "the run to start")
        page_url = f"{base}/admin/runs/run/{run.pk}/change/"

        def browse():
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    page.set_default_timeout(60_000)
                    page.goto(f"{base}/admin/login/?next=/admin/runs/run/{run.pk}/change/")
                    page.fill("#id_username", "watcher")
                    page.fill("#id_password", PASSWORD)
                    page.click("input[type=submit]")
                    page.wait_for_url(page_url)
                    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

                    # While the run goes: the badge says running and progress lines keep arriving.
                    expect(page.locator(".ff-line.ff-out").first).to_contain_text("progress")
                    first = max(progress_numbers(page))
                    page.wait_for_function(
                        "n => [...document.querySelectorAll('.ff-line.ff-out .ff-text')].some(e => {"
                        " const m = /^progress (\\d+)\\//.exec(e.textContent); return m && +m[1] > n + 1; })",
                        arg=first)
                    live_status = page.locator(".ff-status").get_attribute("data-status")
                    arrived_live = max(progress_numbers(page))
                    assert page.locator(".ff-log-state").text_content() == "live"
                    assert page.locator(".ff-when-active").is_visible()  # Cancel, while it runs
                    page.screenshot(path=str(ARTIFACTS / "run-page-live.png"), full_page=True)

                    # Following pauses while the reader is scrolled up, and resumes on request.
                    body = page.locator(".ff-log-body")
                    page.add_style_tag(content=".ff-log-body { max-height: 2em !important; min-height: 0 !important; }")
                    body.evaluate("e => { e.scrollTop = 0; e.dispatchEvent(new Event('scroll')); }")
                    expect(page.locator(".ff-log-jump")).to_be_visible()
                    page.wait_for_function("n => document.querySelectorAll('.ff-line').length > n",
                                           arg=len(page.locator(".ff-line").all()))
                    assert body.evaluate("e => e.scrollTop") == 0  # a new line came; the view stayed
                    expect(page.locator(".ff-log-jump")).to_contain_text("new line")
                    page.click(".ff-log-jump")
                    expect(page.locator(".ff-log-jump")).to_be_hidden()
                    assert body.evaluate("e => e.scrollHeight - e.scrollTop - e.clientHeight") < 24
                    page.add_style_tag(content=".ff-log-body { max-height: 65vh !important; }")

                    # The end, without a reload: final badge, last lines, Retry instead of Cancel.
                    expect(page.locator(".ff-status")).to_have_attribute("data-status", "succeeded", timeout=90_000)
                    expect(page.locator(".ff-status")).to_have_text("succeeded")
                    expect(page.locator(".ff-line.ff-sys").last).to_contain_text("run succeeded")
                    expect(page.locator(".ff-log-state")).to_have_text("finished")
                    assert page.evaluate("window.__sameDocument") is True
                    lines = progress_numbers(page)
                    assert lines == list(range(1, DELAY + 1)), lines  # every line once, in order
                    assert page.locator(".ff-line.ff-out .ff-text").last.text_content() == "done"
                    assert page.locator(".ff-when-final").is_visible()
                    assert not page.locator(".ff-when-active").is_visible()

                    page.screenshot(path=str(ARTIFACTS / "run-page-finished.png"), full_page=True)

                    # Search highlights and filters.
                    page.fill(".ff-log-search", "progress 3/")
                    expect(page.locator(".ff-log-count")).to_have_text("1 matching line")
                    expect(page.locator(".ff-line.ff-match mark")).to_have_text("progress 3/")
                    page.check(".ff-log-bar input[type=checkbox] >> nth=0")
                    expect(page.locator(".ff-line:visible")).to_have_count(1)
                    page.locator(".ff-log").screenshot(path=str(ARTIFACTS / "run-page-search.png"))
                    page.fill(".ff-log-search", "")
                    expect(page.locator(".ff-line:visible")).to_have_count(len(lines) + 3)  # all back

                    # The download link gives the whole log as an attachment.
                    download = page.request.get(base + page.locator("a.ff-download").get_attribute("href"))
                    assert download.ok and download.headers["content-type"] == "text/plain; charset=utf-8"
                    assert download.headers["content-disposition"].startswith("attachment;")
                    assert f" out progress {DELAY}/{DELAY}\n" in download.text()

                    # A failed run: stderr lines in red, Fast-Flow's own lines apart, the reason shown.
                    page.goto(f"{base}/admin/runs/run/{failing.pk}/change/")
                    expect(page.locator(".ff-status")).to_have_text("failed / exit_code")
                    err = page.locator(".ff-line.ff-err .ff-text").last
                    expect(err).to_have_text("ValueError: config value 'threshold' is missing")
                    assert err.evaluate("e => getComputedStyle(e).color") == "rgb(255, 107, 107)"
                    sys_line = page.locator(".ff-line.ff-sys .ff-text").last
                    assert sys_line.evaluate("e => getComputedStyle(e).fontStyle") == "italic"
                    page.locator(".ff-log").screenshot(path=str(ARTIFACTS / "run-page-failed.png"))

                    # The pipeline page charts its runs.
                    page.goto(f"{base}/admin/orchestrator/pipeline/delayed_success/change/")
                    expect(page.locator("svg.ff-run-chart a.ff-bar[data-status=succeeded]")).to_have_count(1)
                    page.locator("svg.ff-run-chart").screenshot(path=str(ARTIFACTS / "pipeline-run-chart.png"))
                    return live_status, first, arrived_live
                finally:
                    browser.close()

        live_status, first, arrived_live = in_thread(browse)
    assert live_status == "running" and arrived_live > first + 1
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert (ARTIFACTS / "run-page-finished.png").stat().st_size > 10_000


# --- the same pages, without a browser ----------------------------------------------------------

@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("boss", password=PASSWORD))
    return client


@pytest.fixture
def finished_run(pipelines_dir):
    make_pipeline(pipelines_dir, "shown")
    run = trigger("shown")
    run.claim()
    log = LogWriter(run.log_path)
    log.write("out", b"<script>alert(1)</script>\n")
    log.write("err", b"something went wrong\n")
    log.system("run failed (exit_code): exited with code 3")
    log.close()
    run.mark_finished(status="failed", reason="exit_code", message="exited with code 3")
    return run


def test_without_javascript_the_run_page_shows_the_log_escaped(staff, finished_run):
    page = staff.get(reverse("admin:runs_run_change", args=[finished_run.pk])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert " err something went wrong" in page
    size = finished_run.log_path.stat().st_size
    assert f'data-offset="{size}"' in page and f'data-ws="/ws/runs/{finished_run.pk}/logs/"' in page
    assert "/static/runs/run_log.js" in page and "/static/runs/run_log.css" in page
    assert reverse("admin:runs_run_log", args=[finished_run.pk]) in page
    assert '<li class="ff-when-active" hidden>' in page and '<li class="ff-when-final">' in page  # Retry shows
    assert "failed / exit_code" in page


def test_a_long_log_shows_its_tail_from_a_line_start_and_says_so(staff, finished_run):
    log = LogWriter(finished_run.log_path, max_bytes=10**8)
    for i in range(20_000):
        log.write("out", f"line {i:05d} {'x' * 20}\n".encode())
    log.close()
    page = staff.get(reverse("admin:runs_run_change", args=[finished_run.pk])).content.decode()
    assert "of the log are not shown here" in page and "download the whole log" in page
    body = page.split('<pre class="ff-log-body">', 1)[1].split("</pre>", 1)[0]
    assert body.startswith("20") and body.split(" ", 2)[1] == "out"  # a whole line: timestamp first
    assert body.endswith("line 19999 " + "x" * 20 + "\n") and len(body) <= TAIL_BYTES


def test_the_log_downloads_whole_as_an_attachment_for_staff_only(staff, finished_run, client,
                                                                    django_user_model):
    url = reverse("admin:runs_run_log", args=[finished_run.pk])
    resp = staff.get(url)
    assert resp.status_code == 200 and resp["Content-Type"] == "text/plain; charset=utf-8"
    assert resp["Content-Disposition"] == f'attachment; filename="run-{finished_run.pk}-shown.log"'
    assert b"".join(resp.streaming_content) == finished_run.log_path.read_bytes()
    client.logout()
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(django_user_model.objects.create_user("intern", password=PASSWORD, is_staff=True))
    assert client.get(url).status_code == 403  # staff, but may not view runs
    assert client.get(reverse("admin:runs_run_status", args=[finished_run.pk])).status_code == 403
    user = django_user_model.objects.get(username="intern")
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    assert client.get(url).status_code == 200


def test_status_json_says_what_the_badge_shows(staff, finished_run):
    data = staff.get(reverse("admin:runs_run_status", args=[finished_run.pk])).json()
    assert data == {"id": finished_run.pk, "status": "failed", "reason": "exit_code", "label": "failed / exit_code",
                    "final": True, "message": "exited with code 3", "exit_code": None,
                    "log_size": finished_run.log_path.stat().st_size}


def test_the_pipeline_page_charts_its_last_50_runs(staff, pipelines_dir):
    make_pipeline(pipelines_dir, "charted")
    pipeline_sync()
    pipeline = Pipeline.objects.get(pk="charted")
    now = timezone.now()
    statuses = ["succeeded", "failed", "cancelled", "running", "queued"]
    runs = [Run.objects.create(pipeline=pipeline, status=statuses[i % 5],
                               started_at=None if i % 5 == 4 else now - timezone.timedelta(seconds=10 + i),
                               finished_at=None if i % 5 >= 3 else now - timezone.timedelta(seconds=i % 7))
            for i in range(55)]
    page = staff.get(reverse("admin:orchestrator_pipeline_change", args=["charted"])).content.decode()
    chart = page.split('<svg class="ff-run-chart"', 1)[1].split("</svg>", 1)[0]
    assert chart.count("<rect ") == 50
    assert f'/admin/runs/run/{runs[-1].pk}/change/' in chart and f'/admin/runs/run/{runs[4].pk}/change/' not in chart
    assert chart.count('fill="#2a7a2a"><title>') == 10 and chart.count('fill="#ba2121"><title>') == 10
    assert f"run {runs[-2].pk}: running" in chart and "not started" in chart
    empty = make_pipeline(pipelines_dir, "fresh")
    assert empty and pipeline_sync()
    assert "no runs yet" in staff.get(reverse("admin:orchestrator_pipeline_change", args=["fresh"])).content.decode()
