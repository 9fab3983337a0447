"""Discovery: the pipelines dir -> Pipeline rows, through `pipeline_sync()`.

Every rule of DESIGN.md "Pipelines / Discovery" is exercised on a real temporary folder and
the real database: what counts as a pipeline, metadata file resolution, invalid metadata,
cross-pipeline conflicts, skipped folders, the add/update/missing life cycle, effective-value
precedence, and a 1,000-pipeline tree.
"""

import json
import os
import shutil

import pytest
from conftest import make_pipeline

from orchestrator.models import Pipeline, SyncState
from orchestrator.services import pipeline_sync
from runs.models import Run

pytestmark = pytest.mark.django_db

MiB = 1024**2


def ids():
    return sorted(Pipeline.objects.values_list("id", flat=True))


def get(pid):
    return Pipeline.objects.get(id=pid)


def write_json(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def bump_mtime(path, seconds=5):
    """The fingerprint is mtime_ns + size: make an equal-size edit visible."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


# --- what is a pipeline -------------------------------------------------------------------------

def test_folder_with_main_py_is_a_pipeline_named_after_the_folder(pipelines_dir):
    for pid in ("alpha", "Beta-2", "gamma_3", "0"):
        make_pipeline(pipelines_dir, pid)
    (pipelines_dir / "assets").mkdir()
    (pipelines_dir / "assets" / "helper.py").write_text("x = 1\n")
    (pipelines_dir / "only_meta").mkdir()
    write_json(pipelines_dir / "only_meta" / "pipeline.json", {"name": "no code"})
    (pipelines_dir / "main.py").write_text("print('top-level main.py is not a pipeline')\n")
    (pipelines_dir / "nested").mkdir()
    make_pipeline(pipelines_dir / "nested", "deeper")

    report = pipeline_sync()

    assert sorted(report.created) == ["0", "Beta-2", "alpha", "gamma_3"]
    assert ids() == ["0", "Beta-2", "alpha", "gamma_3"]
    assert report.skipped == []
    alpha = get("alpha")
    assert alpha.name == "alpha"
    assert alpha.metadata_file == ""
    assert alpha.errors == [] and alpha.warnings == []
    assert alpha.runnable
    assert alpha.path == pipelines_dir / "alpha"


def test_root_argument_overrides_the_setting(tmp_path, pipelines_dir):
    other = tmp_path / "elsewhere"
    make_pipeline(other, "from_root_arg")
    make_pipeline(pipelines_dir, "from_setting")
    report = pipeline_sync(root=other)
    assert report.created == ["from_root_arg"]
    assert ids() == ["from_root_arg"]


def test_missing_pipelines_dir_is_reported(tmp_path, settings):
    settings.FASTFLOW_PIPELINES_DIR = tmp_path / "does-not-exist"
    report = pipeline_sync()
    assert report.created == []
    assert [s["reason"] for s in report.skipped] == ["the pipelines dir does not exist"]


def test_requirements_txt_is_recorded(pipelines_dir):
    make_pipeline(pipelines_dir, "with_req", requirements="humanize==4.9.0\n")
    make_pipeline(pipelines_dir, "without_req")
    pipeline_sync()
    assert get("with_req").has_requirements is True
    assert get("without_req").has_requirements is False


# --- metadata file resolution -------------------------------------------------------------------

@pytest.mark.parametrize(
    "files, expected_file, expected_name",
    [
        # pipeline.json wins over everything
        ({"pipeline.json": {"name": "P"}, "demo.json": {"name": "F"}, "other.json": {"name": "O"}}, "pipeline.json", "P"),
        ({"pipeline.json": {"name": "P"}, "other.json": {"name": "O"}}, "pipeline.json", "P"),
        # a broken extra JSON file is irrelevant once pipeline.json exists
        ({"pipeline.json": {"name": "P"}, "data.json": "{not json"}, "pipeline.json", "P"),
        # then <folder>.json
        ({"demo.json": {"name": "F"}, "other.json": {"name": "O"}}, "demo.json", "F"),
        ({"demo.json": {"name": "F"}}, "demo.json", "F"),
        # then the only other *.json (pipeline_b/data_processor.json)
        ({"data_processor.json": {"name": "D"}}, "data_processor.json", "D"),
        # no metadata at all: defaults, name = id
        ({}, "", "demo"),
        # files that are not *.json do not count
        ({"config.yaml": "name: y", "notes.txt": "hi"}, "", "demo"),
    ],
)
def test_metadata_resolution_order(pipelines_dir, files, expected_file, expected_name):
    folder = make_pipeline(pipelines_dir, "demo")
    for name, content in files.items():
        write_json(folder / name, content)

    pipeline_sync()

    p = get("demo")
    assert p.metadata_file == expected_file
    assert p.name == expected_name
    assert p.errors == []
    assert p.runnable


@pytest.mark.parametrize("names", [["a.json", "b.json"], ["data.json", "extra.json", "more.json"]])
def test_several_metadata_candidates_is_an_error_on_that_pipeline(pipelines_dir, names):
    folder = make_pipeline(pipelines_dir, "ambiguous")
    for name in names:
        write_json(folder / name, {"name": name})
    make_pipeline(pipelines_dir, "fine", meta={"name": "Fine"})

    pipeline_sync()

    p = get("ambiguous")
    assert p.metadata_file == ""
    assert p.errors == [f"several metadata candidates ({', '.join(sorted(names))}): name one pipeline.json"]
    assert p.name == "ambiguous"
    assert not p.runnable
    assert "several metadata candidates" in p.why_not_runnable()
    assert get("fine").runnable and get("fine").errors == []


def test_a_folder_named_like_json_is_not_a_candidate(pipelines_dir):
    folder = make_pipeline(pipelines_dir, "demo")
    (folder / "fixtures.json").mkdir()
    write_json(folder / "settings.json", {"name": "From settings.json"})
    pipeline_sync()
    p = get("demo")
    assert p.metadata_file == "settings.json"
    assert p.name == "From settings.json"
    assert p.errors == []


def test_metadata_is_parsed_into_the_spec(pipelines_dir):
    make_pipeline(
        pipelines_dir,
        "etl",
        meta={
            "name": "ETL",
            "description": "moves rows",
            "tags": ["a", "b"],
            "mem_hard_limit": "1.5g",
            "cpu_hard_limit": 0.5,
            "timeout": 90,
            "webhook_key": "k" * 16,
            "default_env": {"MODE": "full"},
        },
    )
    pipeline_sync()
    p = get("etl")
    assert (p.name, p.description, p.tags, p.webhook_key) == ("ETL", "moves rows", ["a", "b"], "k" * 16)
    assert p.spec.mem_hard_limit == 1536 * MiB
    assert p.value("mem_hard_limit") == 1536 * MiB
    assert p.value("cpu_hard_limit") == 0.5
    assert p.value("timeout") == 90
    assert p.spec.default_env == {"MODE": "full"}
    assert json.loads(p.spec_text)["name"] == "ETL"


# --- invalid metadata ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "meta_name, content, expected_error",
    [
        ("pipeline.json", '{\n  "name": "x",\n  "timeout": ,\n}', "pipeline.json: invalid JSON at line 3, column 14: "),
        ("pipeline.json", '{"name": "x"', "pipeline.json: invalid JSON at line 1, column 13: "),
        ("pipeline.json", "[1, 2]", "pipeline.json: must be a JSON object, not list"),
        ("pipeline.json", "", "pipeline.json: file is empty"),
        ("pipeline.json", {"enabled": "false"}, "pipeline.json: enabled: Input should be a valid boolean"),
        ("pipeline.json", {"cpu_hard_limit": "1"}, 'pipeline.json: cpu_hard_limit: must be a number, not "1"'),
        ("pipeline.json", {"cpu_hard_limit": True}, "pipeline.json: cpu_hard_limit: must be a number, not true"),
        ("pipeline.json", {"mem_hard_limit": "lots"}, "pipeline.json: mem_hard_limit: 'lots' is not a memory size"),
        ("pipeline.json", {"timeout": "60"}, "pipeline.json: timeout: "),
        ("pipeline.json", {"retry_strategy": {"type": "fixed_delay", "delay": "x"}}, "pipeline.json: retry_strategy.delay: "),
        ("pipeline.json", {"downstream_triggers": [{"pipeline": "bad name"}]}, "pipeline.json: downstream_triggers[0].pipeline: "),
        ("pipeline.json", {"schedule_cron": "* * *"}, "pipeline.json: schedule_cron: "),
        ("pipeline.json", {"default_env": {"1BAD": "x"}}, "pipeline.json: default_env: not valid environment variable names: '1BAD'"),
        # the error names the file that was actually read
        ("data_processor.json", {"timeout": -5}, "data_processor.json: timeout: "),
        ("data_processor.json", "{oops}", "data_processor.json: invalid JSON at line 1, column 2: "),
    ],
)
def test_invalid_metadata_is_listed_with_readable_errors(pipelines_dir, meta_name, content, expected_error):
    folder = make_pipeline(pipelines_dir, "broken")
    write_json(folder / meta_name, content)

    report = pipeline_sync()

    assert report.created == ["broken"]
    p = get("broken")
    assert p.metadata_file == meta_name
    assert len(p.errors) == 1 and p.errors[0].startswith(expected_error), p.errors
    assert p.all_errors == p.errors
    assert p.name == "broken"
    assert p.runnable is False
    assert p.why_not_runnable() == f"pipeline 'broken' has errors: {p.errors[0]}"


def test_invalid_metadata_with_enabled_override_is_still_not_runnable(pipelines_dir):
    make_pipeline(pipelines_dir, "broken", meta="{nope")
    pipeline_sync()
    Pipeline.objects.filter(id="broken").update(enabled_override=True)
    assert get("broken").runnable is False


def test_non_utf8_metadata_is_an_error_not_a_crash(pipelines_dir):
    folder = make_pipeline(pipelines_dir, "latin1")
    (folder / "pipeline.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    make_pipeline(pipelines_dir, "ok")
    pipeline_sync()
    p = get("latin1")
    assert len(p.errors) == 1 and p.errors[0].startswith("pipeline.json: cannot read: ")
    assert not p.runnable
    assert get("ok").runnable


def test_fixing_invalid_metadata_makes_it_runnable(pipelines_dir):
    folder = make_pipeline(pipelines_dir, "broken", meta='{"timeout": "60"}')
    pipeline_sync()
    assert not get("broken").runnable
    write_json(folder / "pipeline.json", {"timeout": 60, "name": "Fixed"})
    report = pipeline_sync()
    assert report.updated == ["broken"]
    p = get("broken")
    assert p.errors == [] and p.runnable and p.name == "Fixed" and p.value("timeout") == 60


def test_one_bad_schedule_does_not_break_the_whole_sync(pipelines_dir):
    make_pipeline(
        pipelines_dir, "bad_bounds",
        meta={"schedule_start": "2024-01-02T00:00:00", "schedule_end": "2024-01-03T00:00:00Z"},
    )
    make_pipeline(pipelines_dir, "innocent")
    pipeline_sync()
    assert get("innocent").runnable


# --- unknown keys -------------------------------------------------------------------------------

def test_unknown_keys_are_warnings_and_the_pipeline_still_runs(pipelines_dir):
    make_pipeline(pipelines_dir, "typo", meta={"name": "Typo", "retires": 3, "colour": "red"})
    pipeline_sync()
    p = get("typo")
    assert p.errors == [] and p.all_errors == []
    assert p.warnings == [
        "pipeline.json: unknown key 'retires' is ignored",
        "pipeline.json: unknown key 'colour' is ignored",
    ]
    assert p.runnable
    assert p.name == "Typo"


# --- duplicate webhook keys ---------------------------------------------------------------------

def test_duplicate_webhook_key_is_an_error_on_both_and_fixing_one_clears_both(pipelines_dir):
    shared = "shared-key-0001"
    make_pipeline(pipelines_dir, "one", meta={"webhook_key": shared})
    two = make_pipeline(pipelines_dir, "two", meta={"webhook_key": shared})
    make_pipeline(pipelines_dir, "three", meta={"webhook_key": "unique-key-0003"})
    make_pipeline(pipelines_dir, "four")

    pipeline_sync()

    one, two_row, three, four = get("one"), get("two"), get("three"), get("four")
    assert one.errors == [] and two_row.errors == []  # the file itself is fine...
    assert one.all_errors == ["webhook_key is also used by: two"]  # ...the clash is the error
    assert two_row.all_errors == ["webhook_key is also used by: one"]
    assert not one.runnable and not two_row.runnable
    assert "webhook_key is also used by" in one.why_not_runnable()
    assert three.all_errors == [] and three.runnable
    assert four.all_errors == [] and four.runnable

    # an equal-size edit: only the mtime tells the sync it changed
    write_json(two / "pipeline.json", {"webhook_key": "shared-key-0002"})
    bump_mtime(two / "pipeline.json")
    report = pipeline_sync()

    assert report.updated == ["two"]
    assert get("one").all_errors == [] and get("one").runnable
    assert get("two").all_errors == [] and get("two").runnable
    assert get("two").webhook_key == "shared-key-0002"


def test_three_way_webhook_clash_names_all_others(pipelines_dir):
    for pid in ("a", "b", "c"):
        make_pipeline(pipelines_dir, pid, meta={"webhook_key": "same-key-xyz"})
    pipeline_sync()
    assert get("a").conflicts == ["webhook_key is also used by: b, c"]
    assert get("b").conflicts == ["webhook_key is also used by: a, c"]
    assert get("c").conflicts == ["webhook_key is also used by: a, b"]


def test_webhook_clash_clears_when_the_other_folder_goes_away(pipelines_dir):
    make_pipeline(pipelines_dir, "stay", meta={"webhook_key": "same-key-xyz"})
    make_pipeline(pipelines_dir, "leave", meta={"webhook_key": "same-key-xyz"})
    pipeline_sync()
    assert not get("stay").runnable
    shutil.rmtree(pipelines_dir / "leave")
    report = pipeline_sync()
    assert report.missing == ["leave"]
    assert get("stay").all_errors == [] and get("stay").runnable


# --- skipped folders ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "folder, reason",
    [
        ("bad name", "not a valid pipeline id"),
        ("ümlaut", "not a valid pipeline id"),
        ("a.b", "not a valid pipeline id"),
        ("semi;colon", "not a valid pipeline id"),
        ("x" * 101, "not a valid pipeline id"),
        (".hidden", "hidden folder"),
        (".git", "hidden folder"),
    ],
)
def test_invalid_and_hidden_folders_are_skipped_and_reported(pipelines_dir, folder, reason):
    make_pipeline(pipelines_dir, folder)
    make_pipeline(pipelines_dir, "good")

    report = pipeline_sync()

    assert ids() == ["good"]
    assert report.created == ["good"]
    assert len(report.skipped) == 1
    assert report.skipped[0]["folder"] == folder
    assert report.skipped[0]["reason"].startswith(reason)
    assert SyncState.load().skipped == report.skipped


def test_longest_valid_id_is_accepted(pipelines_dir):
    make_pipeline(pipelines_dir, "x" * 100)
    report = pipeline_sync()
    assert report.created == ["x" * 100] and report.skipped == []


def test_hidden_folder_without_main_py_is_silently_ignored(pipelines_dir):
    (pipelines_dir / ".cache").mkdir()
    (pipelines_dir / "not a pipeline").mkdir()
    make_pipeline(pipelines_dir, "good")
    report = pipeline_sync()
    assert report.skipped == []
    assert ids() == ["good"]


def test_folder_name_with_trailing_newline_is_skipped(pipelines_dir):
    make_pipeline(pipelines_dir, "evil\n")
    report = pipeline_sync()
    assert ids() == []
    assert [s["folder"] for s in report.skipped] == ["evil\n"]


def test_symlink_leading_outside_the_pipelines_dir_is_skipped(tmp_path, pipelines_dir):
    outside = make_pipeline(tmp_path / "outside", "secret_project", meta={"name": "Outside"})
    (pipelines_dir / "linked_abs").symlink_to(outside)
    (pipelines_dir / "linked_rel").symlink_to(os.path.relpath(outside, pipelines_dir))
    make_pipeline(pipelines_dir, "good")

    report = pipeline_sync()

    assert ids() == ["good"]
    assert {s["folder"]: s["reason"] for s in report.skipped} == {
        "linked_abs": "symlink leads outside the pipelines dir",
        "linked_rel": "symlink leads outside the pipelines dir",
    }


def test_symlink_to_a_folder_inside_the_pipelines_dir_works(pipelines_dir):
    # _store has no main.py, so it is not a pipeline itself; the link to its child is.
    target = make_pipeline(pipelines_dir / "_store", "impl", meta={"name": "Linked", "timeout": 42})
    (pipelines_dir / "linked").symlink_to(target)
    (pipelines_dir / "relative").symlink_to("_store/impl")

    report = pipeline_sync()

    assert report.skipped == []
    assert sorted(report.created) == ["linked", "relative"]
    p = get("linked")
    assert p.metadata_file == "pipeline.json"
    assert p.name == "Linked" and p.value("timeout") == 42
    assert p.runnable
    assert get("relative").name == "Linked"


def test_symlink_retargeted_to_outside_is_no_longer_a_pipeline(tmp_path, pipelines_dir):
    inside = make_pipeline(pipelines_dir / "_store", "impl")
    outside = make_pipeline(tmp_path / "outside", "impl")
    link = pipelines_dir / "linked"
    link.symlink_to(inside)
    pipeline_sync()
    assert get("linked").runnable

    link.unlink()
    link.symlink_to(outside)
    report = pipeline_sync()

    assert report.missing == ["linked"]
    assert get("linked").missing and not get("linked").runnable
    assert [s["folder"] for s in report.skipped] == ["linked"]


def test_metadata_symlink_leading_outside_is_not_read(tmp_path, pipelines_dir):
    secret = tmp_path / "private" / "secret.json"
    secret.parent.mkdir()
    secret.write_text('{"name": "TOPSECRET"}')
    folder = make_pipeline(pipelines_dir, "leaky")
    (folder / "pipeline.json").symlink_to(secret)

    report = pipeline_sync()

    p = get("leaky")
    assert "TOPSECRET" not in p.spec_text and p.name != "TOPSECRET"
    assert p.errors or any(s["folder"] == "leaky" for s in report.skipped)


# --- the sync life cycle ------------------------------------------------------------------------

def test_sync_adds_updates_marks_missing_and_unmisses(pipelines_dir):
    alpha = make_pipeline(pipelines_dir, "alpha", meta={"name": "Alpha", "timeout": 10})
    beta = make_pipeline(pipelines_dir, "beta", meta={"name": "Beta"})

    report = pipeline_sync()
    assert sorted(report.created) == ["alpha", "beta"]
    assert (report.updated, report.missing, report.unchanged) == ([], [], 0)
    first_seen = get("alpha").first_seen_at

    # an edit to pipeline.json of equal size: the new value takes effect
    write_json(alpha / "pipeline.json", {"name": "Alpha", "timeout": 20})
    bump_mtime(alpha / "pipeline.json")
    report = pipeline_sync()
    assert (report.created, report.updated, report.missing, report.unchanged) == ([], ["alpha"], [], 1)
    assert get("alpha").value("timeout") == 20
    assert get("alpha").first_seen_at == first_seen

    # a new folder appears
    make_pipeline(pipelines_dir, "gamma")
    report = pipeline_sync()
    assert (report.created, report.updated, report.unchanged) == (["gamma"], [], 2)

    # beta goes away: the row and its run history stay
    run = Run.objects.create(pipeline=get("beta"))
    shutil.rmtree(beta)
    report = pipeline_sync()
    assert report.missing == ["beta"]
    assert report.unchanged == 2
    b = get("beta")
    assert b.missing is True
    assert b.runnable is False
    assert "missing" in b.why_not_runnable()
    assert list(b.runs.values_list("id", flat=True)) == [run.id]
    assert b.name == "Beta"

    # still gone: not reported as newly missing again
    report = pipeline_sync()
    assert (report.created, report.updated, report.missing, report.unchanged) == ([], [], [], 2)
    assert get("beta").missing

    # beta comes back (with a different pipeline.json): un-missed, same row, same history
    make_pipeline(pipelines_dir, "beta", meta={"name": "Beta again"})
    report = pipeline_sync()
    assert report.created == [] and report.updated == ["beta"] and report.missing == []
    b = get("beta")
    assert b.missing is False and b.runnable and b.name == "Beta again"
    assert list(b.runs.values_list("id", flat=True)) == [run.id]
    assert Pipeline.objects.count() == 3


def test_folder_returning_unchanged_is_unmissed(tmp_path, pipelines_dir):
    folder = make_pipeline(pipelines_dir, "bounce", meta={"name": "Bounce"})
    pipeline_sync()
    parked = tmp_path / "parked"
    shutil.move(folder, parked)  # rename keeps the mtimes: same fingerprint on return
    assert pipeline_sync().missing == ["bounce"]
    shutil.move(parked, folder)
    report = pipeline_sync()
    assert report.updated == ["bounce"]
    assert not get("bounce").missing and get("bounce").runnable


@pytest.mark.parametrize(
    "change, check",
    [
        (lambda f: (f / "main.py").write_text("print('a new version')\n"), lambda p: p.runnable and p.name == "Demo"),
        (lambda f: (f / "requirements.txt").write_text("rich\n"), lambda p: p.has_requirements),
        (lambda f: (f / "pipeline.json").unlink(), lambda p: p.metadata_file == "" and p.name == "demo"),
        (lambda f: write_json(f / "pipeline.json", "{broken"), lambda p: not p.runnable and "invalid JSON" in p.errors[0]),
        (lambda f: write_json(f / "pipeline.json", {"name": "Renamed!"}), lambda p: p.name == "Renamed!"),
    ],
    ids=["edit-main", "add-requirements", "remove-metadata", "break-metadata", "rename"],
)
def test_a_change_in_the_folder_is_an_update(pipelines_dir, change, check):
    folder = make_pipeline(pipelines_dir, "demo", meta={"name": "Demo"})
    make_pipeline(pipelines_dir, "other")
    pipeline_sync()
    change(folder)
    report = pipeline_sync()
    assert (report.created, report.updated, report.missing, report.unchanged) == ([], ["demo"], [], 1)
    assert check(get("demo"))


def test_removing_requirements_is_an_update(pipelines_dir):
    folder = make_pipeline(pipelines_dir, "demo", requirements="rich\n")
    pipeline_sync()
    assert get("demo").has_requirements
    (folder / "requirements.txt").unlink()
    assert pipeline_sync().updated == ["demo"]
    assert not get("demo").has_requirements


def test_unchanged_resync_reports_nothing(pipelines_dir):
    for i in range(7):
        make_pipeline(pipelines_dir, f"p{i}", meta={"name": f"P{i}"})
    make_pipeline(pipelines_dir, "bad name")
    first = pipeline_sync()
    assert len(first.created) == 7
    synced_at = {p.id: p.synced_at for p in Pipeline.objects.all()}

    again = pipeline_sync()

    assert (again.created, again.updated, again.missing) == ([], [], [])
    assert again.unchanged == 7
    assert again.changed is False
    assert [s["folder"] for s in again.skipped] == ["bad name"]  # still reported every time
    assert {p.id: p.synced_at for p in Pipeline.objects.all()} == synced_at


def test_admin_overrides_survive_a_resync(pipelines_dir):
    folder = make_pipeline(pipelines_dir, "demo", meta={"timeout": 10})
    pipeline_sync()
    Pipeline.objects.filter(id="demo").update(timeout_override=99, enabled_override=False)
    write_json(folder / "pipeline.json", {"timeout": 20, "name": "Edited"})
    assert pipeline_sync().updated == ["demo"]
    p = get("demo")
    assert p.name == "Edited"
    assert p.effective("timeout") == (99, "admin")
    assert p.effective("enabled") == (False, "admin")


# --- effective values ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "meta, override, expected",
    [
        (None, None, (777, "default")),
        ({}, None, (777, "default")),
        ({"name": "x"}, None, (777, "default")),
        ({"timeout": 60}, None, (60, "pipeline.json")),
        ({"timeout": 0}, None, (0, "pipeline.json")),  # 0 = no timeout, a real value
        ({"timeout": 60}, 5, (5, "admin")),
        ({"timeout": 60}, 0, (0, "admin")),
        (None, 5, (5, "admin")),
    ],
)
def test_timeout_precedence(pipelines_dir, settings, meta, override, expected):
    settings.FASTFLOW_DEFAULT_TIMEOUT = 777
    make_pipeline(pipelines_dir, "demo", meta=meta)
    pipeline_sync()
    Pipeline.objects.filter(id="demo").update(timeout_override=override)
    p = get("demo")
    assert p.effective("timeout") == expected
    assert p.value("timeout") == expected[0]


def test_source_label_names_the_metadata_file_read(pipelines_dir):
    make_pipeline(pipelines_dir, "pipeline_b", meta={"timeout": 30, "mem_hard_limit": "256m"}, meta_name="data_processor.json")
    pipeline_sync()
    p = get("pipeline_b")
    assert p.effective("timeout") == (30, "data_processor.json")
    assert p.effective("mem_hard_limit") == (256 * MiB, "data_processor.json")


@pytest.mark.parametrize(
    "field, meta, override, setting, expected",
    [
        ("mem_hard_limit", {}, None, ("FASTFLOW_DEFAULT_MEM_LIMIT", "1g"), (1024 * MiB, "default")),
        ("mem_hard_limit", {}, None, ("FASTFLOW_DEFAULT_MEM_LIMIT", ""), (None, "default")),
        ("mem_hard_limit", {"mem_hard_limit": "512m"}, None, ("FASTFLOW_DEFAULT_MEM_LIMIT", "1g"), (512 * MiB, "pipeline.json")),
        ("mem_hard_limit", {"mem_hard_limit": "512m"}, 64 * MiB, ("FASTFLOW_DEFAULT_MEM_LIMIT", "1g"), (64 * MiB, "admin")),
        ("cpu_hard_limit", {}, None, ("FASTFLOW_DEFAULT_CPU_LIMIT", "2"), (2.0, "default")),
        ("cpu_hard_limit", {}, None, ("FASTFLOW_DEFAULT_CPU_LIMIT", ""), (None, "default")),
        ("cpu_hard_limit", {"cpu_hard_limit": 0.5}, None, ("FASTFLOW_DEFAULT_CPU_LIMIT", "2"), (0.5, "pipeline.json")),
        ("cpu_hard_limit", {"cpu_hard_limit": 0.5}, 1.5, ("FASTFLOW_DEFAULT_CPU_LIMIT", "2"), (1.5, "admin")),
        ("cpu_soft_limit", {}, None, ("FASTFLOW_DEFAULT_CPU_LIMIT", "2"), (None, "default")),
        ("cpu_soft_limit", {"cpu_soft_limit": 0.25}, None, ("FASTFLOW_DEFAULT_CPU_LIMIT", "2"), (0.25, "pipeline.json")),
        ("mem_soft_limit", {"mem_soft_limit": "100m"}, 200 * MiB, ("FASTFLOW_DEFAULT_MEM_LIMIT", "1g"), (200 * MiB, "admin")),
    ],
)
def test_limit_precedence(pipelines_dir, settings, field, meta, override, setting, expected):
    setattr(settings, *setting)
    make_pipeline(pipelines_dir, "demo", meta=meta)
    pipeline_sync()
    Pipeline.objects.filter(id="demo").update(**{f"{field}_override": override})
    assert get("demo").effective(field) == expected


@pytest.mark.parametrize(
    "meta, override, expected, runnable",
    [
        (None, None, (True, "default"), True),
        ({"name": "x"}, None, (True, "default"), True),
        ({"enabled": True}, None, (True, "pipeline.json"), True),
        ({"enabled": False}, None, (False, "pipeline.json"), False),
        ({"enabled": False}, True, (True, "admin"), True),
        ({"enabled": True}, False, (False, "admin"), False),
        (None, False, (False, "admin"), False),
    ],
)
def test_enabled_precedence_and_runnable(pipelines_dir, meta, override, expected, runnable):
    make_pipeline(pipelines_dir, "demo", meta=meta)
    pipeline_sync()
    Pipeline.objects.filter(id="demo").update(enabled_override=override)
    p = get("demo")
    assert p.effective("enabled") == expected
    assert p.is_enabled is expected[0]
    assert p.runnable is runnable
    assert p.why_not_runnable() == ("" if runnable else "pipeline 'demo' is disabled")


# --- scale --------------------------------------------------------------------------------------

def _generate(root, n):
    """n pipelines, a third each with pipeline.json, <id>.json, or no metadata."""
    expected = {}
    for i in range(n):
        pid = f"pipe_{i:04d}"
        kind = i % 3
        if kind == 0:
            make_pipeline(root, pid, meta={"name": f"Pipeline {i}", "timeout": i, "tags": [f"t{i % 7}"]})
            expected[pid] = (f"Pipeline {i}", "pipeline.json", i)
        elif kind == 1:
            make_pipeline(root, pid, meta={"name": f"Own file {i}", "mem_hard_limit": f"{i}m"}, meta_name=f"{pid}.json",
                          requirements="rich\n" if i % 2 else None)
            expected[pid] = (f"Own file {i}", f"{pid}.json", None)
        else:
            make_pipeline(root, pid)
            expected[pid] = (pid, "", None)
    return expected


def test_a_thousand_pipelines_in_one_sync(pipelines_dir, settings, django_assert_max_num_queries):
    settings.FASTFLOW_DEFAULT_TIMEOUT = 3600
    expected = _generate(pipelines_dir, 1000)

    report = pipeline_sync()

    assert len(report.created) == 1000 and report.skipped == []
    rows = {p.id: p for p in Pipeline.objects.all()}
    assert sorted(rows) == sorted(expected)
    assert {pid: (p.name, p.metadata_file) for pid, p in rows.items()} == {
        pid: (name, meta) for pid, (name, meta, _) in expected.items()
    }
    assert all(p.errors == [] and p.conflicts == [] and not p.missing for p in rows.values())
    for i in (0, 1, 2, 3, 499, 500, 501, 997, 998, 999):
        pid = f"pipe_{i:04d}"
        p = rows[pid]
        if i % 3 == 0:
            assert p.effective("timeout") == (i, "pipeline.json")
            assert p.tags == [f"t{i % 7}"]
        elif i % 3 == 1:
            assert p.effective("mem_hard_limit") == (i * MiB, f"{pid}.json")
            assert p.has_requirements is bool(i % 2)
        else:
            assert p.effective("timeout") == (3600, "default")
        assert p.runnable

    # nothing changed: nothing written, and the cost does not grow with the number of pipelines
    with django_assert_max_num_queries(8):
        again = pipeline_sync()
    assert (again.created, again.updated, again.missing, again.unchanged) == ([], [], [], 1000)

    # touch three: exactly those three are re-read
    for i in (5, 500, 994):
        bump_mtime(pipelines_dir / f"pipe_{i:04d}" / "main.py")
    assert sorted(pipeline_sync().updated) == ["pipe_0005", "pipe_0500", "pipe_0994"]


# --- the example gallery ------------------------------------------------------------------------

GALLERY_IDS = [
    "delayed_random", "delayed_success", "failing_pipeline", "pipeline_a", "pipeline_b",
    "pipeline_c", "ram_limit_fail", "ram_limit_success",
]


def test_gallery(gallery):
    report = pipeline_sync()

    assert sorted(report.created) == GALLERY_IDS
    assert report.skipped == []
    rows = {p.id: p for p in Pipeline.objects.all()}
    assert sorted(rows) == GALLERY_IDS
    for p in rows.values():
        assert p.all_errors == [], (p.id, p.all_errors)
        assert p.warnings == [], (p.id, p.warnings)
        assert p.runnable, p.id

    assert rows["pipeline_a"].metadata_file == "pipeline.json"
    assert rows["pipeline_a"].has_requirements
    assert set(rows["pipeline_a"].spec.default_env) == {"GREETING", "TARGET"}
    assert rows["pipeline_b"].metadata_file == "data_processor.json"
    assert rows["pipeline_b"].name == "Data processor"
    assert rows["pipeline_b"].effective("mem_hard_limit") == (256 * MiB, "data_processor.json")
    assert rows["pipeline_c"].metadata_file == ""
    assert rows["pipeline_c"].name == "pipeline_c"
    assert rows["ram_limit_fail"].value("mem_hard_limit") == 50 * MiB
    assert rows["ram_limit_success"].value("mem_hard_limit") == 256 * MiB
    delayed_random = rows["delayed_random"].spec
    assert delayed_random.retry_attempts == 3
    assert [delayed_random.retry_delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert all(not rows[pid].has_requirements for pid in GALLERY_IDS if pid != "pipeline_a")

    assert pipeline_sync().unchanged == 8
