"""`manage.py sync_pipelines`: a table of what discovery found, with errors and skips."""

import shutil
from io import StringIO

import pytest
from conftest import make_pipeline
from django.core.management import call_command

from orchestrator.models import Pipeline

pytestmark = pytest.mark.django_db


def sync():
    out = StringIO()
    call_command("sync_pipelines", stdout=out)
    return out.getvalue().splitlines()


def table(lines):
    """{id: (name, metadata, status)} parsed by the header's column offsets."""
    header = lines[0]
    assert header.split() == ["ID", "NAME", "METADATA", "STATUS"]
    name_at, meta_at, status_at = (header.index(col) for col in ("NAME", "METADATA", "STATUS"))
    rows = {}
    for line in lines[1:]:
        if len(line) <= status_at or line[name_at - 2:name_at] != "  " or line[status_at - 2:status_at] != "  ":
            break  # the table ends where the missing/skipped/summary lines begin
        rows[line[:name_at].rstrip()] = (
            line[name_at:meta_at].rstrip(), line[meta_at:status_at].rstrip(), line[status_at:],
        )
    return rows


def test_table_of_the_gallery_plus_broken_pipelines(gallery):
    make_pipeline(gallery, "broken_json", meta='{\n  "name": "x",\n  "timeout": ,\n}')
    make_pipeline(gallery, "wrong_types", meta={"enabled": "false", "cpu_hard_limit": "2"})
    make_pipeline(gallery, "bad name")
    make_pipeline(gallery, ".hidden")

    lines = sync()
    rows = table(lines)

    assert sorted(rows) == [
        "broken_json", "delayed_random", "delayed_success", "failing_pipeline", "pipeline_a",
        "pipeline_b", "pipeline_c", "ram_limit_fail", "ram_limit_success", "wrong_types",
    ]
    assert rows["pipeline_b"] == ("Data processor", "data_processor.json", "valid")
    assert rows["pipeline_c"] == ("pipeline_c", "-", "valid")
    assert rows["ram_limit_fail"] == ("RAM limit: fail", "pipeline.json", "valid")
    assert rows["pipeline_a"][:2] == ("Pipeline A (env + requirements)", "pipeline.json")

    name, meta, status = rows["broken_json"]
    assert (name, meta) == ("broken_json", "pipeline.json")
    assert status.startswith("ERRORS: pipeline.json: invalid JSON at line 3, column 14: ")

    name, meta, status = rows["wrong_types"]
    assert (name, meta) == ("wrong_types", "pipeline.json")
    assert status.startswith("ERRORS: ")
    assert "pipeline.json: enabled: Input should be a valid boolean" in status
    assert 'pipeline.json: cpu_hard_limit: must be a number, not "2"' in status

    for pid in ("delayed_random", "delayed_success", "failing_pipeline", "pipeline_a", "ram_limit_success"):
        assert rows[pid][2] == "valid", pid

    skipped = [line for line in lines if line.startswith("skipped ")]
    assert skipped == [
        "skipped .hidden: hidden folder",
        "skipped bad name: not a valid pipeline id (letters, digits, '_' and '-' only, at most 100)",
    ]
    assert lines[-1] == "10 new, 0 updated, 0 newly missing, 0 unchanged"
    assert Pipeline.objects.count() == 10


def test_second_run_reports_everything_unchanged(gallery):
    sync()
    lines = sync()
    assert len(table(lines)) == 8
    assert lines[-1] == "0 new, 0 updated, 0 newly missing, 8 unchanged"


def test_disabled_warnings_and_missing_are_shown(pipelines_dir):
    make_pipeline(pipelines_dir, "off", meta={"enabled": False})
    make_pipeline(pipelines_dir, "typo", meta={"name": "Typo", "retires": 3})
    gone = make_pipeline(pipelines_dir, "gone")
    sync()
    shutil.rmtree(gone)

    lines = sync()
    rows = table(lines)

    assert sorted(rows) == ["off", "typo"]
    assert rows["off"][2] == "valid (disabled)"
    assert rows["typo"] == ("Typo", "pipeline.json", "valid  (warnings: pipeline.json: unknown key 'retires' is ignored)")
    assert "gone: missing (folder removed; history kept)" in lines
    assert lines[-1] == "0 new, 0 updated, 1 newly missing, 2 unchanged"


def test_duplicate_webhook_keys_are_shown_as_errors(pipelines_dir):
    make_pipeline(pipelines_dir, "one", meta={"webhook_key": "same-key-123"})
    make_pipeline(pipelines_dir, "two", meta={"webhook_key": "same-key-123"})
    rows = table(sync())
    assert rows["one"][2] == "ERRORS: webhook_key is also used by: two"
    assert rows["two"][2] == "ERRORS: webhook_key is also used by: one"


def test_several_metadata_candidates_are_shown(pipelines_dir):
    folder = make_pipeline(pipelines_dir, "ambiguous")
    (folder / "a.json").write_text("{}")
    (folder / "b.json").write_text("{}")
    rows = table(sync())
    assert rows["ambiguous"] == (
        "ambiguous", "-", "ERRORS: several metadata candidates (a.json, b.json): name one pipeline.json",
    )
