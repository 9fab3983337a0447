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


postgres_only = pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                   reason="the connection pool is for PostgreSQL (CI's second pass)")


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_web_server_pools_its_connections(pipelines_dir):
    # 40 requests, 20 at a time, through a real daphne started as `up` starts it: the web
    # server's connections (application_name fastflow-web) stay open in its pool, and never
    # more than FASTFLOW_DB_POOL_SIZE of them.
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    from stack import free_port, running

    port = free_port()

    def get(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/readyz")
        return conn.getresponse().status

    with running("web", port=port, FASTFLOW_DB_POOL_SIZE=3):
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(get, range(40)))
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fastflow-web' "
                        "AND datname = current_database()")
            held = cur.fetchone()[0]
    assert codes == [200] * 40
    assert 1 <= held <= 3, held


@postgres_only
def test_the_pool_is_refused_in_the_q2_cluster(tmp_path):
    import subprocess
    import sys

    from stack import REPO, stack_env

    env = {**stack_env(), "FASTFLOW_DB_POOL": "1"}
    result = subprocess.run([sys.executable, str(REPO / "manage.py"), "qcluster"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "FASTFLOW_DB_POOL is for web server processes only" in result.stderr
