"""The production configuration is really in effect when its variables are set (CI's second
pass sets DATABASE_URL and REDIS_URL), and the default is SQLite + the ORM broker."""

import os

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db


def test_database_follows_database_url():
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        assert connection.vendor == "postgresql"
        assert connection.Database.__name__ == "psycopg"  # psycopg 3
    else:
        assert connection.vendor == "sqlite"
        with connection.cursor() as cur:
            cur.execute("PRAGMA journal_mode")
            assert cur.fetchone()[0].lower() == "wal"


def test_broker_and_channel_layer_follow_redis_url():
    from django_q.brokers import get_broker

    broker = get_broker()
    if os.environ.get("REDIS_URL"):
        assert type(broker).__name__ == "Redis" and broker.ping()
        assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    else:
        assert type(broker).__name__ == "ORM"
        assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
