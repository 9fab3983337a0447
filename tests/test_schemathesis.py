"""Property-based API testing: schemathesis generates requests from the live OpenAPI spec
(/api/openapi.json, loaded from the running app in-process) for every operation, valid and
invalid, and checks each response against the spec. The bar: no 5xx, ever."""

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings

from conftest import make_pipeline
from orchestrator.services import pipeline_sync
from personas import make_persona

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api_schema():
    return schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())


schema = schemathesis.pytest.from_fixture("api_schema")
STAFF_TOKEN = {}


@schema.auth(refresh_interval=None)
class StaffToken:
    """Every generated request carries a staff user's token (schemathesis' own auth hook,
    so its auth checks know a token is in play)."""

    def get(self, case, context):
        return STAFF_TOKEN["raw"]

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def world(pipelines_dir):
    """A few pipelines, runs and a staff token, so generated requests reach real rows."""
    make_pipeline(pipelines_dir, "alpha", "print()\n", meta={"webhook_key": "alpha-key-123", "tags": ["t"]})
    make_pipeline(pipelines_dir, "beta", "print()\n", meta={"schedule_cron": "*/5 * * * *", "max_instances": 1})
    make_pipeline(pipelines_dir, "broken", "print()\n", meta="{nope")
    pipeline_sync()
    from runs.models import Run

    for status in ("queued", "succeeded", "failed"):
        Run.objects.create(pipeline_id="alpha", status=status)
    persona = make_persona("fuzzer", is_staff=True)
    STAFF_TOKEN["raw"] = persona.token
    return persona


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, world):
    case.call_and_validate()
