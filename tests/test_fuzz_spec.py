"""hypothesis fuzzing of the pipeline.json parser: it never raises, and every rejected input
comes back with readable errors that name where the problem is."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.spec import PipelineSpec, parse_spec

FIELDS = sorted(PipelineSpec.model_fields)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
specs = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), json_values, max_size=8)


def _check(result, source="pipeline.json"):
    if result.spec is None:
        assert result.errors, "an invalid spec must say why"
        for error in result.errors:
            assert error.startswith(f"{source}: ") and len(error) > len(source) + 4
    else:
        assert result.errors == []
    for warning in result.warnings:
        assert warning.startswith(f"{source}: unknown key ")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_structured_specs_never_crash(raw):
    _check(parse_spec(json.dumps(raw)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text):
    result = parse_spec(text, source="x.json")
    if text.strip():
        _check(result, "x.json")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_one_bad_field_names_that_field(field, value):
    result = parse_spec(json.dumps({field: value}))
    if result.spec is None:
        assert any(field in error for error in result.errors), result.errors
