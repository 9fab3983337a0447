"""The admin as a person uses it: pipeline list and detail, overrides, run now, runs."""

import pytest
from django.urls import reverse

from conftest import make_pipeline
from orchestrator.models import Pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", password="pw-123456")
    client.force_login(user)
    return client


@pytest.fixture
def mixed(pipelines_dir):
    make_pipeline(pipelines_dir, "good", "print('good')\n", meta={"name": "Good one", "tags": ["etl", "daily"],
                                                                  "timeout": 60})
    make_pipeline(pipelines_dir, "broken_json", "print()\n", meta='{"name": "x",,}')
    make_pipeline(pipelines_dir, "wrong_types", "print()\n", meta={"enabled": "false", "mem_hard_limit": "lots"})
    make_pipeline(pipelines_dir, "bad name", "print()\n")
    pipeline_sync()
    return pipelines_dir


def test_pipeline_list_shows_badges_tags_and_skipped_folders(staff, mixed):
    page = staff.get(reverse("admin:orchestrator_pipeline_changelist")).content.decode()
    assert "Good one" in page and "etl, daily" in page
    assert page.count("1 error") == 1 and "2 errors" in page  # broken_json, wrong_types
    assert "Skipped folder &#x27;bad name&#x27;" in page


def test_pipeline_detail_shows_errors_spec_code_and_effective_values(staff, mixed):
    page = staff.get(reverse("admin:orchestrator_pipeline_change", args=["wrong_types"])).content.decode()
    assert "enabled: Input should be a valid boolean" in page
    assert "mem_hard_limit: &#x27;lots&#x27; is not a memory size" in page
    assert "Cannot run" in page
    good = staff.get(reverse("admin:orchestrator_pipeline_change", args=["good"])).content.decode()
    assert "print(&#x27;good&#x27;)" in good  # main.py, read-only
    assert "<td>timeout</td><td>60 s</td><td>pipeline.json</td>" in good
    assert "<td>mem_hard_limit</td><td>2g</td><td>default</td>" in good
    assert "Run now" in good


def test_overrides_win_and_say_so(staff, mixed):
    url = reverse("admin:orchestrator_pipeline_change", args=["good"])
    resp = staff.post(url, {"enabled_override": "unknown", "cpu_hard_limit_override": "0.5",
                            "mem_hard_limit_override": "512m", "timeout_override": "5",
                            "cpu_soft_limit_override": "", "mem_soft_limit_override": ""})
    assert resp.status_code == 302, resp.content.decode()[:2000]
    p = Pipeline.objects.get(pk="good")
    assert p.effective("mem_hard_limit") == (512 * 2**20, "admin")
    assert p.effective("timeout") == (5, "admin")
    assert p.effective("cpu_hard_limit") == (0.5, "admin")
    page = staff.get(url).content.decode()
    assert "<td>timeout</td><td>5 s</td><td>admin</td>" in page
    pipeline_sync()  # a later sync keeps the override
    assert Pipeline.objects.get(pk="good").effective("timeout") == (5, "admin")
    bad = staff.post(url, {"enabled_override": "unknown", "mem_hard_limit_override": "a lot"})
    assert bad.status_code == 200 and "is not a memory size" in bad.content.decode()


def test_run_now_queues_a_run_and_refuses_an_invalid_pipeline(staff, mixed):
    resp = staff.post(reverse("admin:orchestrator_pipeline_run", args=["good"]), follow=True)
    run = Run.objects.get()
    assert (run.pipeline_id, run.status, run.trigger) == ("good", "queued", "manual")
    assert f"Run <a href=\"/admin/runs/run/{run.pk}/change/\">{run.pk}</a> of good queued." in resp.content.decode()
    resp = staff.post(reverse("admin:orchestrator_pipeline_changelist"),
                      {"action": "run_now", "_selected_action": ["broken_json"]}, follow=True)
    assert "has errors" in resp.content.decode()
    assert Run.objects.count() == 1


def test_runs_list_filters_and_run_page_actions(staff, mixed):
    p = Pipeline.objects.get(pk="good")
    done = Run.objects.create(pipeline=p, status="failed", reason="oom_killed", message="out of memory")
    queued = Run.objects.create(pipeline=p, status="queued")
    page = staff.get(reverse("admin:runs_run_changelist") + "?reason=oom_killed").content.decode()
    assert f"/admin/runs/run/{done.pk}/change/" in page and f"/admin/runs/run/{queued.pk}/change/" not in page
    detail = staff.get(reverse("admin:runs_run_change", args=[done.pk])).content.decode()
    assert "failed / oom_killed" in detail and "Retry" in detail
    staff.post(reverse("admin:runs_run_cancel", args=[queued.pk]))
    queued.refresh_from_db()
    assert queued.status == "cancelled"
    resp = staff.post(reverse("admin:runs_run_retry", args=[done.pk]))
    retry = Run.objects.get(retry_of=done)
    assert retry.attempt == 2 and resp.url == reverse("admin:runs_run_change", args=[retry.pk])


def test_outsider_cannot_see_the_admin(client, mixed):
    resp = client.get(reverse("admin:orchestrator_pipeline_changelist"))
    assert resp.status_code == 302 and "/admin/login/" in resp.url
