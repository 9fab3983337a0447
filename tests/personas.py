"""Named personas for API tests (healthchecks' hc/test.py): an admin, an operator with a
token, a viewer with a read-only token, and an outsider with no credentials."""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.test import Client

from orchestrator.models import ApiToken


@dataclass
class Persona:
    user: User | None
    token: str
    client: Client


def make_persona(username, **flags):
    user = User.objects.create_user(username, f"{username}@example.com", "pw-" + username, **flags)
    _, raw = ApiToken.issue(user=user, name=f"{username}'s token")
    return Persona(user, raw, Client(HTTP_AUTHORIZATION=f"Bearer {raw}"))


@pytest.fixture
def admin(db):
    """A superuser; their client is token-authenticated (see `admin_session` for a browser)."""
    return make_persona("alice", is_staff=True, is_superuser=True)


@pytest.fixture
def operator(db):
    """A staff user (not superuser) who triggers, cancels and retries with a token."""
    return make_persona("oscar", is_staff=True)


@pytest.fixture
def viewer(db):
    """An active user who is not staff: the token reads, nothing more."""
    return make_persona("vera")


@pytest.fixture
def outsider():
    """No credentials at all."""
    return Persona(None, "", Client())
