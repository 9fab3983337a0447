"""pipeline.json spec: parse_spec / parse_memory, field-path errors, retry delays.

`parse_spec` never raises for bad input: every case below either yields a typed spec or a
list of readable errors, each prefixed with the metadata file and the field path.
"""

import json

import pytest

from orchestrator.spec import PipelineSpec, parse_memory, parse_spec

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


def spec_of(**fields):
    """Parse a dict as pipeline.json and insist it is valid."""
    result = parse_spec(json.dumps(fields))
    assert result.errors == [], result.errors
    assert result.spec is not None
    return result.spec


def errors_of(text):
    result = parse_spec(text if isinstance(text, str) else json.dumps(text))
    assert result.spec is None, f"expected errors, got a valid spec: {result.spec}"
    assert result.errors, "an invalid spec must explain itself"
    return result.errors


# --- memory sizes -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, expected",
    [
        ("512m", 512 * MiB),
        ("1.5g", 1536 * MiB),
        ("2G", 2 * GiB),
        ("2g", 2 * GiB),
        ("64MiB", 64 * MiB),
        ("256mb", 256 * MiB),
        ("1k", KiB),
        ("1 kb", KiB),
        ("0.5k", 512),
        ("1t", TiB),
        ("100", 100),
        (" 50m ", 50 * MiB),
        (1, 1),
        (1048576, MiB),
        (3 * GiB, 3 * GiB),
    ],
)
def test_parse_memory_accepts(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    "value",
    [0, -1, -512, True, False, 1.5, None, "", "m", "lots", "1.5x", "-5m", "0", "0m", "512 m b x", [512], {"m": 1}],
)
def test_parse_memory_rejects(value):
    with pytest.raises(ValueError):
        parse_memory(value)


@pytest.mark.parametrize(
    "field, raw, expected",
    [
        ("mem_hard_limit", "50m", 50 * MiB),
        ("mem_hard_limit", "1.5g", 1536 * MiB),
        ("mem_hard_limit", 1048576, MiB),
        ("mem_soft_limit", "2G", 2 * GiB),
    ],
)
def test_memory_fields_parse_to_bytes(field, raw, expected):
    assert getattr(spec_of(**{field: raw}), field) == expected


@pytest.mark.parametrize("raw", ["lots", 0, -1, True, "1.5x", 1.5])
def test_bad_memory_field_names_the_field(raw):
    errors = errors_of({"mem_hard_limit": raw})
    assert len(errors) == 1
    assert errors[0].startswith("pipeline.json: mem_hard_limit: ")


# --- a valid spec ---------------------------------------------------------------------------

def test_full_valid_spec():
    spec = spec_of(
        name="Nightly ETL",
        description="loads things",
        tags=["etl", "nightly"],
        enabled=False,
        cpu_hard_limit=1.5,
        mem_hard_limit="512m",
        cpu_soft_limit=1,
        mem_soft_limit="256m",
        timeout=600,
        retry_attempts=3,
        retry_strategy={"type": "fixed_delay", "delay": 10},
        webhook_key="k" * 32,
        schedule_cron="0 3 * * *",
        schedule_timezone="Europe/Berlin",
        schedule_start="2024-01-01T00:00:00Z",
        schedule_end="2025-01-01T00:00:00Z",
        default_env={"GREETING": "hi", "_PRIVATE2": ""},
        secrets=["API_TOKEN"],
        max_instances=2,
        downstream_triggers=[{"pipeline": "report-b", "on_failure": True}],
    )
    assert spec.name == "Nightly ETL"
    assert spec.tags == ["etl", "nightly"]
    assert spec.enabled is False
    assert spec.cpu_hard_limit == 1.5 and spec.cpu_soft_limit == 1.0
    assert spec.mem_hard_limit == 512 * MiB and spec.mem_soft_limit == 256 * MiB
    assert spec.timeout == 600
    assert spec.retry_attempts == 3 and spec.retry_delay(1) == 10.0
    assert spec.schedule_timezone == "Europe/Berlin"
    assert spec.schedule_end.year == 2025
    assert spec.default_env == {"GREETING": "hi", "_PRIVATE2": ""}
    assert spec.secrets == ["API_TOKEN"]
    assert spec.max_instances == 2
    (trigger,) = spec.downstream_triggers
    assert (trigger.pipeline, trigger.on_success, trigger.on_failure) == ("report-b", True, True)


def test_empty_object_is_all_defaults():
    spec = spec_of()
    assert spec.enabled is True
    assert spec.name is None
    assert spec.tags == [] and spec.default_env == {} and spec.secrets == []
    assert spec.cpu_hard_limit is None and spec.mem_hard_limit is None and spec.timeout is None
    assert spec.retry_attempts == 0
    assert spec.schedule_timezone == "UTC"


def test_no_metadata_file_is_defaults_not_an_error():
    result = parse_spec(None)
    assert result.errors == [] and result.spec == PipelineSpec()


# --- type errors carry the field path --------------------------------------------------------

@pytest.mark.parametrize(
    "raw, path",
    [
        # booleans are JSON booleans, never truthy strings or numbers
        ({"enabled": "false"}, "enabled"),
        ({"enabled": "true"}, "enabled"),
        ({"enabled": 0}, "enabled"),
        ({"enabled": 1}, "enabled"),
        # cpu limits are numbers: strings and booleans are errors
        ({"cpu_hard_limit": "1"}, "cpu_hard_limit"),
        ({"cpu_hard_limit": "0.5"}, "cpu_hard_limit"),
        ({"cpu_hard_limit": True}, "cpu_hard_limit"),
        ({"cpu_hard_limit": 0}, "cpu_hard_limit"),
        ({"cpu_hard_limit": -1}, "cpu_hard_limit"),
        ({"cpu_soft_limit": "2"}, "cpu_soft_limit"),
        ({"cpu_soft_limit": False}, "cpu_soft_limit"),
        ({"timeout": "60"}, "timeout"),
        ({"timeout": 1.5}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"retry_attempts": "3"}, "retry_attempts"),
        ({"retry_attempts": -1}, "retry_attempts"),
        ({"retry_attempts": 101}, "retry_attempts"),
        ({"name": 5}, "name"),
        ({"tags": "etl"}, "tags"),
        ({"tags": ["ok", 1]}, "tags[1]"),
        ({"max_instances": 0}, "max_instances"),
        ({"webhook_key": "short"}, "webhook_key"),
        ({"webhook_key": 12345678}, "webhook_key"),
        ({"schedule_interval_seconds": 0}, "schedule_interval_seconds"),
        ({"schedule_start": "garbage"}, "schedule_start"),
        ({"default_env": {"A": 1}}, "default_env.A"),
        ({"default_env": ["A=1"]}, "default_env"),
        ({"secrets": "API_TOKEN"}, "secrets"),
        # nested paths
        ({"retry_strategy": {"type": "exponential_backoff", "initial_delay": "5"}}, "retry_strategy.initial_delay"),
        ({"retry_strategy": {"type": "exponential_backoff", "multiplier": 0.5}}, "retry_strategy.multiplier"),
        ({"retry_strategy": {"type": "exponential_backoff", "max_delay": -1}}, "retry_strategy.max_delay"),
        ({"retry_strategy": {"type": "fixed_delay", "delay": "10"}}, "retry_strategy.delay"),
        ({"retry_strategy": {"type": "custom_schedule", "delays": []}}, "retry_strategy.delays"),
        ({"retry_strategy": {"type": "custom_schedule", "delays": [1, "2"]}}, "retry_strategy.delays[1]"),
        ({"retry_strategy": {"type": "custom_schedule", "delays": [1, -2]}}, "retry_strategy.delays"),
        ({"retry_strategy": {"type": "fixed_delay", "delay": 1, "jitter": 2}}, "retry_strategy.jitter"),
        ({"retry_strategy": {"type": "linear"}}, "retry_strategy"),
        ({"retry_strategy": 5}, "retry_strategy"),
        ({"downstream_triggers": [{"on_success": True}]}, "downstream_triggers[0].pipeline"),
        ({"downstream_triggers": [{"pipeline": "ok"}, {"pipeline": "bad name"}]}, "downstream_triggers[1].pipeline"),
        ({"downstream_triggers": [{"pipeline": "ok", "on_success": "yes"}]}, "downstream_triggers[0].on_success"),
        ({"downstream_triggers": [{"pipeline": "ok", "on_failure": 1}]}, "downstream_triggers[0].on_failure"),
        ({"downstream_triggers": [{"pipeline": "ok", "when": "always"}]}, "downstream_triggers[0].when"),
    ],
)
def test_type_errors_name_the_field_path(raw, path):
    errors = errors_of(raw)
    assert any(e.startswith(f"pipeline.json: {path}: ") for e in errors), errors


def test_enabled_string_false_is_an_error_not_truthy():
    result = parse_spec('{"enabled": "false"}')
    assert result.spec is None
    assert result.errors == ["pipeline.json: enabled: Input should be a valid boolean"]


def test_every_bad_field_is_reported_once():
    errors = errors_of({"enabled": "no", "timeout": "x", "cpu_hard_limit": "2"})
    paths = sorted(e.split(": ")[1] for e in errors)
    assert paths == ["cpu_hard_limit", "enabled", "timeout"]
    assert len(set(errors)) == len(errors)


def test_errors_are_prefixed_with_the_metadata_file_name():
    result = parse_spec('{"timeout": "x"}', source="data_processor.json")
    assert result.errors and all(e.startswith("data_processor.json: timeout: ") for e in result.errors)


def test_error_paths_hide_pydantic_union_member_names():
    errors = errors_of({"retry_strategy": {"type": "custom_schedule", "delays": ["a"]}})
    assert errors == [errors[0]]
    assert "custom_schedule" not in errors[0].split(": ")[1]
    assert "function-" not in errors[0]


# --- unknown keys ---------------------------------------------------------------------------

def test_unknown_keys_are_warnings_not_errors():
    result = parse_spec(json.dumps({"name": "x", "timeout": 5, "colour": "red", "retires": 3}))
    assert result.errors == []
    assert result.spec.name == "x" and result.spec.timeout == 5
    assert result.warnings == [
        "pipeline.json: unknown key 'colour' is ignored",
        "pipeline.json: unknown key 'retires' is ignored",
    ]


def test_unknown_keys_are_still_warned_about_when_known_ones_are_wrong():
    result = parse_spec(json.dumps({"colour": "red", "timeout": "x"}))
    assert result.spec is None
    assert [e.split(": ")[1] for e in result.errors] == ["timeout"]
    assert result.warnings == ["pipeline.json: unknown key 'colour' is ignored"]


# --- broken JSON and the top level ------------------------------------------------------------

@pytest.mark.parametrize(
    "text, line, column",
    [
        ('{\n  "name": "x",\n  "timeout": ,\n}', 3, 14),
        ('{"name": "x",}', 1, 14),
        ('{\n  "name": "x"\n  "tags": []\n}', 3, 3),
        ('{"name": "x"', 1, 13),
    ],
)
def test_broken_json_reports_line_and_column(text, line, column):
    (error,) = errors_of(text)
    assert error.startswith(f"pipeline.json: invalid JSON at line {line}, column {column}: ")


@pytest.mark.parametrize("text, kind", [("[]", "list"), ('"text"', "str"), ("1", "int"), ("null", "NoneType"), ("true", "bool")])
def test_top_level_must_be_an_object(text, kind):
    assert errors_of(text) == [f"pipeline.json: must be a JSON object, not {kind}"]


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_file_is_an_error(text):
    (error,) = errors_of(text)
    assert "empty" in error


@pytest.mark.parametrize(
    "text",
    [
        '{"cpu_hard_limit": Infinity}',
        '{"retry_strategy": {"type": "fixed_delay", "delay": Infinity}}',
        '{"retry_strategy": {"type": "exponential_backoff", "max_delay": Infinity}}',
    ],
)
def test_non_json_infinity_is_rejected(text):
    errors_of(text)


# --- retry delays -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "strategy, expected",
    [
        # delay n = min(initial * multiplier^(n-1), max)
        ({"type": "exponential_backoff", "initial_delay": 2, "multiplier": 3, "max_delay": 50}, [2, 6, 18, 50, 50, 50]),
        ({"type": "exponential_backoff", "initial_delay": 0.5, "multiplier": 1.5, "max_delay": 100}, [0.5, 0.75, 1.125, 1.6875]),
        ({"type": "exponential_backoff", "initial_delay": 10, "multiplier": 1, "max_delay": 60}, [10, 10, 10, 10]),
        ({"type": "exponential_backoff", "initial_delay": 100, "multiplier": 2, "max_delay": 30}, [30, 30, 30]),
        ({"type": "exponential_backoff", "initial_delay": 0, "multiplier": 2, "max_delay": 30}, [0, 0, 0]),
        # the documented defaults: initial 5, multiplier 2, max 300
        ({"type": "exponential_backoff"}, [5, 10, 20, 40, 80, 160, 300, 300]),
        ({"type": "fixed_delay", "delay": 7}, [7, 7, 7, 7, 7]),
        ({"type": "fixed_delay", "delay": 0}, [0, 0]),
        ({"type": "fixed_delay", "delay": 2.5}, [2.5, 2.5]),
        # past the end of the schedule the last delay repeats
        ({"type": "custom_schedule", "delays": [1, 5, 30]}, [1, 5, 30, 30, 30, 30]),
        ({"type": "custom_schedule", "delays": [60]}, [60, 60, 60]),
        ({"type": "custom_schedule", "delays": [10, 0, 3]}, [10, 0, 3, 3]),
    ],
)
def test_retry_delays(strategy, expected):
    spec = spec_of(retry_attempts=len(expected), retry_strategy=strategy)
    assert [spec.retry_delay(n) for n in range(1, len(expected) + 1)] == [float(d) for d in expected]


def test_gallery_delayed_random_backoff():
    spec = spec_of(
        retry_attempts=3,
        retry_strategy={"type": "exponential_backoff", "initial_delay": 2, "multiplier": 2, "max_delay": 30},
    )
    assert [spec.retry_delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_exponential_delay_is_capped_without_overflow():
    spec = spec_of(
        retry_attempts=100,
        retry_strategy={"type": "exponential_backoff", "initial_delay": 1, "multiplier": 1_000_000, "max_delay": 60},
    )
    assert spec.retry_delay(100) == 60.0


# --- schedules --------------------------------------------------------------------------------

@pytest.mark.parametrize("cron", ["* * * * *", "*/5 * * * *", "0 3 * * mon-fri", "30 2 1 * *", "0 0 1,15 * 0"])
def test_valid_cron(cron):
    assert spec_of(schedule_cron=cron).schedule_cron == cron


@pytest.mark.parametrize(
    "cron",
    ["* * * *", "0 0 * * * *", "61 * * * *", "0 25 * * *", "@daily", "every day", "", "* * * * * * *"],
)
def test_invalid_cron(cron):
    errors = errors_of({"schedule_cron": cron})
    assert errors == [f"pipeline.json: schedule_cron: {cron!r} is not a 5-field cron expression"]


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_valid_timezone(tz):
    assert spec_of(schedule_timezone=tz).schedule_timezone == tz


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Berlin", "", "../../etc/passwd", "UTC+2"])
def test_invalid_timezone(tz):
    errors = errors_of({"schedule_timezone": tz})
    assert errors == [f"pipeline.json: schedule_timezone: {tz!r} is not a known time zone"]


def test_timezone_must_be_a_string():
    assert errors_of({"schedule_timezone": 2})[0].startswith("pipeline.json: schedule_timezone: ")


@pytest.mark.parametrize(
    "start, end",
    [
        ("2024-06-02T00:00:00Z", "2024-06-01T00:00:00Z"),
        ("2024-06-01T00:00:00Z", "2024-06-01T00:00:00Z"),
        ("2024-06-01T12:00:00+02:00", "2024-06-01T09:30:00Z"),  # starts 10:00Z
    ],
)
def test_schedule_end_not_after_start_is_an_error(start, end):
    (error,) = errors_of({"schedule_start": start, "schedule_end": end})
    assert error.startswith("pipeline.json: ")
    assert "schedule_end must be after schedule_start" in error


def test_schedule_end_after_start_is_fine():
    spec = spec_of(schedule_start="2024-06-01T00:00:00Z", schedule_end="2024-06-01T00:00:01Z")
    assert spec.schedule_end > spec.schedule_start


def test_mixed_naive_and_aware_schedule_bounds_do_not_raise():
    result = parse_spec(json.dumps({"schedule_start": "2024-01-02T00:00:00", "schedule_end": "2024-01-03T00:00:00Z"}))
    assert result.spec is not None or any("schedule" in e for e in result.errors)


def test_cron_and_interval_together_is_an_error():
    (error,) = errors_of({"schedule_cron": "0 0 * * *", "schedule_interval_seconds": 60})
    assert "schedule_cron or schedule_interval_seconds, not both" in error


# --- environment variable names ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["A", "_X", "my_var2", "GREETING", "__", "a1_B2"])
def test_valid_env_names(name):
    assert spec_of(default_env={name: "v"}).default_env == {name: "v"}
    assert spec_of(secrets=[name]).secrets == [name]


@pytest.mark.parametrize("name", ["1BAD", "A-B", "A B", "", "É", "A=B", "$HOME", "A.B"])
def test_invalid_default_env_names(name):
    (error,) = errors_of({"default_env": {"OK": "1", name: "v"}})
    assert error.startswith("pipeline.json: default_env: not valid environment variable names: ")
    assert repr(name) in error
    assert "'OK'" not in error


@pytest.mark.parametrize("name", ["1BAD", "A-B", "A B", "", "É", "A=B"])
def test_invalid_secret_names(name):
    (error,) = errors_of({"secrets": ["OK", name]})
    assert error.startswith("pipeline.json: secrets: not valid secret names: ")
    assert repr(name) in error


@pytest.mark.parametrize(
    "raw",
    [
        {"default_env": {"A\n": "v"}},
        {"secrets": ["TOKEN\n"]},
        {"downstream_triggers": [{"pipeline": "next\n"}]},
    ],
)
def test_names_with_a_trailing_newline_are_rejected(raw):
    errors_of(raw)
