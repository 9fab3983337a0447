"""Secrets: encrypted at rest, rotated, checked at start-up, injected by allow-list with
pipeline scope winning, managed write-only in the admin and the API, and audited."""

import json

import pytest
from cryptography.fernet import Fernet
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.urls import reverse

from conftest import make_pipeline
from orchestrator import crypto
from orchestrator.checks import check_generated_key, check_secrets_decrypt
from orchestrator.models import Pipeline, Secret, SecretAudit
from orchestrator.services import MissingSecret, pipeline_sync, secret_save, secrets_for_run
from personas import admin, operator, outsider, viewer  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db

VALUE = "hunter2-very-secret-value"
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.fixture
def pipelines(pipelines_dir):
    make_pipeline(pipelines_dir, "etl", meta={"secrets": ["DB_PASSWORD", "API_KEY"]})
    make_pipeline(pipelines_dir, "report", meta={"secrets": ["DB_PASSWORD"]})
    make_pipeline(pipelines_dir, "plain")
    pipeline_sync()
    return pipelines_dir


def raw_column():
    with connection.cursor() as cursor:
        cursor.execute("SELECT value_encrypted FROM orchestrator_secret")
        return [row[0] for row in cursor.fetchall()]


# --- encryption at rest, rotation, start-up check ------------------------------------------------------
def test_the_raw_column_holds_no_plaintext(settings):
    settings.FASTFLOW_ENCRYPTION_KEY = KEY_A
    secret, created = secret_save(name="DB_PASSWORD", value=VALUE)
    assert created
    (stored,) = raw_column()
    assert VALUE not in stored and "hunter2" not in stored and stored.startswith("gAAAA")  # a Fernet token
    assert Secret.objects.get().reveal() == VALUE


def test_generated_key_file_is_0600_and_warned_about(settings, _isolated_data):
    settings.FASTFLOW_ENCRYPTION_KEY = ""
    secret_save(name="A", value=VALUE)
    assert (crypto.key_file().stat().st_mode & 0o777) == 0o600
    assert [w.id for w in check_generated_key()] == ["fastflow.W011"]
    settings.FASTFLOW_ENCRYPTION_KEY = KEY_A
    assert check_generated_key() == []


def test_rotation_re_encrypts_under_the_newest_key(settings, capsys):
    settings.FASTFLOW_ENCRYPTION_KEY = KEY_A
    secret_save(name="A", value="one")
    secret_save(name="B", value="two")
    before = raw_column()
    settings.FASTFLOW_ENCRYPTION_KEY = f"{KEY_B},{KEY_A}"  # newest first, old one still decrypts
    call_command("rotate_encryption_key")
    assert "Re-encrypted 2 secret(s)" in capsys.readouterr().out
    assert set(raw_column()).isdisjoint(before)
    settings.FASTFLOW_ENCRYPTION_KEY = KEY_B  # the old key can go now
    assert {s.name: s.reveal() for s in Secret.objects.all()} == {"A": "one", "B": "two"}
    assert check_secrets_decrypt() == []


def test_a_wrong_key_stops_start_up_with_e010(settings):
    settings.FASTFLOW_ENCRYPTION_KEY = KEY_A
    secret_save(name="DB_PASSWORD", value=VALUE)
    settings.FASTFLOW_ENCRYPTION_KEY = KEY_B
    (error,) = check_secrets_decrypt()
    assert error.id == "fastflow.E010" and error.level == checks.ERROR
    assert "FASTFLOW_ENCRYPTION_KEY cannot decrypt 1 stored secret(s): DB_PASSWORD (global)" in error.msg
    assert VALUE not in error.msg
    with pytest.raises(SystemCheckError, match="fastflow.E010"):
        call_command("check")
    with pytest.raises(crypto.DecryptionError):
        Secret.objects.get().reveal()
    with pytest.raises(Exception, match="cannot decrypt 1 stored secret"):
        call_command("rotate_encryption_key", skip_checks=True)


# --- injection -----------------------------------------------------------------------------------------
def test_a_run_gets_exactly_the_allowed_secrets(pipelines):
    for name in ("DB_PASSWORD", "API_KEY", "UNRELATED"):
        secret_save(name=name, value=f"{name}-value")
    assert secrets_for_run(Pipeline.objects.get(pk="etl")) == {"DB_PASSWORD": "DB_PASSWORD-value",
                                                              "API_KEY": "API_KEY-value"}
    assert secrets_for_run(Pipeline.objects.get(pk="report")) == {"DB_PASSWORD": "DB_PASSWORD-value"}
    assert secrets_for_run(Pipeline.objects.get(pk="plain")) == {}


def test_pipeline_scope_wins_over_global(pipelines):
    etl = Pipeline.objects.get(pk="etl")
    secret_save(name="DB_PASSWORD", value="global")
    secret_save(name="API_KEY", value="key")
    scoped, _ = secret_save(name="DB_PASSWORD", value="for-etl", pipeline=etl)
    assert secrets_for_run(etl)["DB_PASSWORD"] == "for-etl"
    assert secrets_for_run(Pipeline.objects.get(pk="report"))["DB_PASSWORD"] == "global"
    assert Secret.resolve("DB_PASSWORD", pipeline=etl) == "for-etl" and Secret.resolve("DB_PASSWORD") == "global"
    assert scoped.used_by() == ["etl"]
    assert Secret.objects.get(name="DB_PASSWORD", pipeline=None).used_by() == ["report"]


def test_a_missing_secret_is_named(pipelines):
    secret_save(name="DB_PASSWORD", value=VALUE)
    with pytest.raises(MissingSecret, match="API_KEY") as exc:
        secrets_for_run(Pipeline.objects.get(pk="etl"))
    assert exc.value.names == ["API_KEY"] and VALUE not in str(exc.value)
    secret_save(name="API_KEY", value="x", pipeline=Pipeline.objects.get(pk="report"))  # wrong scope
    with pytest.raises(MissingSecret, match="API_KEY"):
        secrets_for_run(Pipeline.objects.get(pk="etl"))


def test_names_must_be_env_var_names():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="environment variable name"):
        secret_save(name="1-bad name", value="x")


# --- admin ---------------------------------------------------------------------------------------------
@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", password="pw-123456")
    client.force_login(user)
    return client


def test_admin_value_is_write_only_and_every_change_is_audited(staff, pipelines):
    add = reverse("admin:orchestrator_secret_add")
    assert staff.post(add, {"name": "DB_PASSWORD", "pipeline": "", "new_value": ""}).status_code == 200  # required
    assert not Secret.objects.exists()
    response = staff.post(add, {"name": "DB_PASSWORD", "pipeline": "", "new_value": VALUE})
    assert response.status_code == 302
    secret = Secret.objects.get()
    assert secret.reveal() == VALUE and secret.updated_by.username == "boss"

    change = reverse("admin:orchestrator_secret_change", args=[secret.pk])
    page = staff.get(change).content.decode()
    assert VALUE not in page and secret.value_encrypted not in page
    assert 'type="password"' in page and "report" in page  # used by (etl and report)
    staff.post(change, {"new_value": ""})  # empty keeps the value
    assert Secret.objects.get().reveal() == VALUE
    staff.post(change, {"new_value": "rotated-by-hand"})
    assert Secret.objects.get().reveal() == "rotated-by-hand"

    listing = staff.get(reverse("admin:orchestrator_secret_changelist")).content.decode()
    assert "DB_PASSWORD" in listing and "global" in listing and "boss" in listing and "etl, report" in listing
    assert VALUE not in listing and "rotated-by-hand" not in listing

    staff.post(reverse("admin:orchestrator_secret_delete", args=[secret.pk]), {"post": "yes"})
    assert not Secret.objects.exists()
    assert [(a.action, a.name, a.user.username, a.source) for a in SecretAudit.objects.order_by("id")] == [
        ("create", "DB_PASSWORD", "boss", "admin"), ("change", "DB_PASSWORD", "boss", "admin"),
        ("delete", "DB_PASSWORD", "boss", "admin")]
    audit = staff.get(reverse("admin:orchestrator_secretaudit_changelist")).content.decode()
    assert "DB_PASSWORD" in audit and "rotated-by-hand" not in audit
    assert staff.get(reverse("admin:orchestrator_secretaudit_add")).status_code == 403


def test_admin_refuses_a_duplicate_global_name(staff):
    secret_save(name="TOKEN", value="a")
    response = staff.post(reverse("admin:orchestrator_secret_add"), {"name": "TOKEN", "pipeline": "", "new_value": "b"})
    assert response.status_code == 200 and Secret.objects.get().reveal() == "a"


# --- API -----------------------------------------------------------------------------------------------
def send(persona, method, url, body=None):
    return getattr(persona.client, method)(url, json.dumps(body) if body is not None else "",
                                           content_type="application/json")


def test_api_crud_is_staff_only_and_never_returns_values(pipelines, operator, viewer, outsider):
    body = {"name": "DB_PASSWORD", "value": VALUE, "pipeline": None}
    assert send(outsider, "post", "/api/secrets", body).status_code == 401
    assert send(viewer, "post", "/api/secrets", body).status_code == 403
    assert viewer.client.get("/api/secrets").status_code == 403

    created = send(operator, "post", "/api/secrets", body)
    assert created.status_code == 201 and created.json()["used_by"] == ["etl", "report"]
    assert send(operator, "post", "/api/secrets", body).status_code == 409
    scoped = send(operator, "post", "/api/secrets", {"name": "DB_PASSWORD", "value": "etl-only", "pipeline": "etl"})
    assert scoped.status_code == 201 and scoped.json()["pipeline"] == "etl"
    assert send(operator, "post", "/api/secrets", {"name": "X", "value": "v", "pipeline": "nope"}).status_code == 404
    assert send(operator, "post", "/api/secrets", {"name": "bad name", "value": "v"}).status_code == 422

    listing = operator.client.get("/api/secrets")
    assert [(s["name"], s["pipeline"]) for s in listing.json()] == [("DB_PASSWORD", None), ("DB_PASSWORD", "etl")]
    assert listing.json()[0]["updated_by"] == "oscar"

    changed = send(operator, "put", "/api/secrets/DB_PASSWORD?pipeline=etl", {"value": "etl-v2"})
    assert changed.status_code == 200
    assert Secret.resolve("DB_PASSWORD", pipeline=Pipeline.objects.get(pk="etl")) == "etl-v2"
    assert send(viewer, "put", "/api/secrets/DB_PASSWORD", {"value": "x"}).status_code == 403
    assert send(operator, "put", "/api/secrets/NOPE", {"value": "x"}).status_code == 404

    assert send(viewer, "delete", "/api/secrets/DB_PASSWORD").status_code == 403
    assert send(operator, "delete", "/api/secrets/DB_PASSWORD?pipeline=etl").status_code == 204
    assert Secret.resolve("DB_PASSWORD", pipeline=Pipeline.objects.get(pk="etl")) == VALUE

    for response in (created, scoped, listing, changed):
        text = response.content.decode()
        assert VALUE not in text and "etl-only" not in text and "etl-v2" not in text
    assert [(a.action, a.pipeline_id, a.source) for a in SecretAudit.objects.order_by("id")] == [
        ("create", "", "api"), ("create", "etl", "api"), ("change", "etl", "api"), ("delete", "etl", "api")]
    assert "secrets" in operator.client.get("/api/openapi.json").content.decode()
