"""Fast-Flow settings: one file, driven by environment variables.

Every variable is parsed strictly: a bad value raises ImproperlyConfigured naming the
variable, never a silent default. The defaults run a fresh clone on one machine with
SQLite (WAL) and the django-q2 ORM broker; DATABASE_URL and REDIS_URL switch to
PostgreSQL and Redis.
"""

import os
import secrets
import sys
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=""):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no)")


def env_int(name, default, minimum=None):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_choice(name, default, choices):
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of: {', '.join(choices)}")
    return value


def _data_dir():
    path = Path(env_str("FASTFLOW_DATA_DIR") or BASE_DIR / ".fastflow").resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe of this process's own: `up` starts several processes at once, and a shared
        # probe name let one unlink another's file (a spurious "not writable" at start-up).
        with tempfile.TemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ImproperlyConfigured(
            f"FASTFLOW_DATA_DIR={str(path)!r} is not a writable directory: {exc.strerror}"
        ) from None
    return path


FASTFLOW_DATA_DIR = _data_dir()
FASTFLOW_PIPELINES_DIR = Path(env_str("FASTFLOW_PIPELINES_DIR") or BASE_DIR / "pipelines").resolve()


def _secret_key():
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    path = FASTFLOW_DATA_DIR / "django-secret-key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in env_str("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # serves the Swagger UI assets for /api/docs locally (no CDN)
    "django_q",
    "orchestrator",
    "runs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "fastflow_site.middleware.ApiMethodNotAllowedJson",
]

ROOT_URLCONF = "fastflow_site.urls"
ASGI_APPLICATION = "fastflow_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
_SQLITE_OPTIONS = {
    # WAL lets the web process read while workers write; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue (up to `timeout` seconds) instead of failing mid-transaction.
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}
if DATABASE_URL:
    import dj_database_url

    try:
        # No persistent connections: under ASGI every request runs in its own thread, and a
        # kept connection per thread exhausts PostgreSQL's max_connections under load.
        _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
    except Exception as exc:  # dj_database_url raises bare ValueErrors / KeyErrors
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if _db["ENGINE"].endswith("sqlite3"):
        _db["OPTIONS"] = dict(_SQLITE_OPTIONS)
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": FASTFLOW_DATA_DIR / "fastflow.sqlite3",
            "OPTIONS": dict(_SQLITE_OPTIONS),
            "TEST": {"NAME": FASTFLOW_DATA_DIR / "test-fastflow.sqlite3"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# A PostgreSQL connection pool, for web server processes only (`up` turns it on for its
# daphne). Under ASGI each request runs in a thread of its own, so with plain connections
# every request opens one: on 1,000 webhook POSTs at 50 concurrent a pool took throughput
# from 45 to 67 requests/s. Never in the q2 cluster: it forks its workers, and a pool (open
# sockets and its own threads) must not be inherited across a fork.
FASTFLOW_DB_POOL = env_bool("FASTFLOW_DB_POOL", False)
FASTFLOW_DB_POOL_SIZE = env_int("FASTFLOW_DB_POOL_SIZE", 10, minimum=1)
if FASTFLOW_DB_POOL and DATABASES["default"]["ENGINE"].endswith("postgresql"):
    if "qcluster" in sys.argv:
        raise ImproperlyConfigured("FASTFLOW_DB_POOL is for web server processes only: the q2 cluster "
                                   "forks its workers, and a connection pool must not cross a fork")
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": 1, "max_size": FASTFLOW_DB_POOL_SIZE, "timeout": 30}
    DATABASES["default"]["OPTIONS"].setdefault("application_name", "fastflow-web")

# --- queue, workers, channel layer ---------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
FASTFLOW_WORKERS = env_int("FASTFLOW_WORKERS", 4, minimum=1)
FASTFLOW_MAX_CONCURRENT_RUNS = env_int("FASTFLOW_MAX_CONCURRENT_RUNS", FASTFLOW_WORKERS, minimum=1)

# A run task blocks its q2 worker for the whole run. q2 re-delivers a task that is not
# acknowledged within `retry` seconds, and kills a worker after `timeout` seconds; both must
# stay above the longest run, or q2 would start a second copy of a live run (the atomic claim
# in run_execute would refuse it, but the worker would still be lost). Pipeline timeouts are
# enforced by the executor itself, not by q2.
_Q_TIMEOUT = 7 * 24 * 3600
try:
    _QUEUE_POLL = float(env_str("FASTFLOW_QUEUE_POLL", "0.025"))
except ValueError:
    raise ImproperlyConfigured("FASTFLOW_QUEUE_POLL must be a number of seconds") from None
if not 0.001 <= _QUEUE_POLL <= 10:
    raise ImproperlyConfigured("FASTFLOW_QUEUE_POLL must be between 0.001 and 10 seconds")
Q_CLUSTER = {
    "name": "fastflow",
    "workers": FASTFLOW_WORKERS,
    "recycle": 500,
    "timeout": _Q_TIMEOUT,
    "retry": _Q_TIMEOUT + 3600,
    "max_attempts": 1,
    "ack_failures": True,
    "queue_limit": FASTFLOW_WORKERS * 2,
    "catch_up": False,
    # ORM broker only: how often an idle cluster asks the database for work. Pickup waits
    # half of this on average; each poll costs ~1 ms of CPU (0.01 s idles at ~13% of a core).
    "poll": _QUEUE_POLL,
    "save_limit": 1000,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    Q_CLUSTER["orm"] = "default"
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- executors -----------------------------------------------------------------------------
FASTFLOW_EXECUTOR = env_choice("FASTFLOW_EXECUTOR", "auto", ["auto", "docker", "local"])
FASTFLOW_RUNNER_IMAGE = env_str("FASTFLOW_RUNNER_IMAGE", "fastflow-runner:latest")
FASTFLOW_DOCKER_NETWORK = env_str("FASTFLOW_DOCKER_NETWORK", "none")
FASTFLOW_BUILD_NETWORK = env_str("FASTFLOW_BUILD_NETWORK", "host")
FASTFLOW_CA_BUNDLE = env_str("FASTFLOW_CA_BUNDLE")
if FASTFLOW_CA_BUNDLE and not Path(FASTFLOW_CA_BUNDLE).is_file():
    raise ImproperlyConfigured(f"FASTFLOW_CA_BUNDLE={FASTFLOW_CA_BUNDLE!r} is not a readable file")
FASTFLOW_RUN_USER = env_str("FASTFLOW_RUN_USER") or (
    "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
)
FASTFLOW_PIDS_LIMIT = env_int("FASTFLOW_PIDS_LIMIT", 512, minimum=16)
# Cached dependency environments and uv's download cache (default: inside the data dir).
FASTFLOW_ENV_CACHE_DIR = Path(env_str("FASTFLOW_ENV_CACHE_DIR") or FASTFLOW_DATA_DIR / "envs").resolve()
FASTFLOW_UV_CACHE_DIR = Path(env_str("FASTFLOW_UV_CACHE_DIR") or FASTFLOW_DATA_DIR / "uv-cache").resolve()
FASTFLOW_ENV_MAX_AGE_DAYS = env_int("FASTFLOW_ENV_MAX_AGE_DAYS", 30, minimum=1)
FASTFLOW_LOG_MAX_BYTES = env_int("FASTFLOW_LOG_MAX_BYTES", 50 * 1024 * 1024, minimum=1024)

# Global defaults for limits; pipeline.json overrides them and the admin overrides both.
FASTFLOW_DEFAULT_TIMEOUT = env_int("FASTFLOW_DEFAULT_TIMEOUT", 3600, minimum=0)
FASTFLOW_DEFAULT_MEM_LIMIT = env_str("FASTFLOW_DEFAULT_MEM_LIMIT", "2g")
FASTFLOW_DEFAULT_CPU_LIMIT = env_str("FASTFLOW_DEFAULT_CPU_LIMIT", "")

FASTFLOW_SYNC_INTERVAL = env_int("FASTFLOW_SYNC_INTERVAL", 10, minimum=1)

# --- reliability ---------------------------------------------------------------------------
# A running run whose worker has not reported for this long is taken over by the reconciler.
FASTFLOW_HEARTBEAT_TIMEOUT = env_int("FASTFLOW_HEARTBEAT_TIMEOUT", 30, minimum=2)
# When the Docker engine is down: `fail` new runs at once (infrastructure), or `wait` for it.
FASTFLOW_ENGINE_DOWN = env_choice("FASTFLOW_ENGINE_DOWN", "fail", ["fail", "wait"])
# How long `up` lets in-flight runs finish on SIGTERM before handing them to the reconciler.
FASTFLOW_SHUTDOWN_GRACE = env_int("FASTFLOW_SHUTDOWN_GRACE", 30, minimum=1)
FASTFLOW_METRICS_TOKEN = env_str("FASTFLOW_METRICS_TOKEN")

# --- triggers ------------------------------------------------------------------------------
FASTFLOW_WEBHOOK_RATE = env_int("FASTFLOW_WEBHOOK_RATE", 60, minimum=1)  # per pipeline, per minute
FASTFLOW_WEBHOOK_IP_RATE = env_int("FASTFLOW_WEBHOOK_IP_RATE", 300, minimum=1)  # per client IP, per minute
FASTFLOW_WEBHOOK_MAX_BODY = env_int("FASTFLOW_WEBHOOK_MAX_BODY", 65536, minimum=1024)
FASTFLOW_SCHEDULE_GRACE = env_int("FASTFLOW_SCHEDULE_GRACE", 60, minimum=1)
FASTFLOW_SCHEDULE_CATCHUP_MAX = env_int("FASTFLOW_SCHEDULE_CATCHUP_MAX", 20, minimum=1)
FASTFLOW_DOWNSTREAM_MAX_DEPTH = env_int("FASTFLOW_DOWNSTREAM_MAX_DEPTH", 10, minimum=1)
FASTFLOW_BASE_URL = env_str("FASTFLOW_BASE_URL").rstrip("/")

# --- secrets and git (later issues build on these) -------------------------------------
FASTFLOW_ENCRYPTION_KEY = env_str("FASTFLOW_ENCRYPTION_KEY")
FASTFLOW_GIT_URL = env_str("FASTFLOW_GIT_URL")
FASTFLOW_GIT_BRANCH = env_str("FASTFLOW_GIT_BRANCH", "main")
FASTFLOW_GIT_SUBDIR = env_str("FASTFLOW_GIT_SUBDIR").strip("/")
FASTFLOW_GIT_TOKEN = env_str("FASTFLOW_GIT_TOKEN")
FASTFLOW_GIT_SSH_KEY = env_str("FASTFLOW_GIT_SSH_KEY")
FASTFLOW_GIT_SSH_KEY_SECRET = env_str("FASTFLOW_GIT_SSH_KEY_SECRET")
FASTFLOW_GIT_WEBHOOK_SECRET = env_str("FASTFLOW_GIT_WEBHOOK_SECRET")
FASTFLOW_GIT_SYNC_INTERVAL = env_int("FASTFLOW_GIT_SYNC_INTERVAL", 60, minimum=5)
if FASTFLOW_GIT_SUBDIR and (".." in FASTFLOW_GIT_SUBDIR.split("/")):
    raise ImproperlyConfigured("FASTFLOW_GIT_SUBDIR must be a path inside the repository")
if FASTFLOW_GIT_SSH_KEY and not Path(FASTFLOW_GIT_SSH_KEY).is_file():
    raise ImproperlyConfigured(f"FASTFLOW_GIT_SSH_KEY={FASTFLOW_GIT_SSH_KEY!r} is not a readable file")
if FASTFLOW_GIT_URL:
    # With Git sync the pipelines dir is the checkout (FASTFLOW_PIPELINES_DIR is not used).
    FASTFLOW_PIPELINES_DIR = (FASTFLOW_DATA_DIR / "git" / "checkout" / FASTFLOW_GIT_SUBDIR).resolve()

# --- serving -------------------------------------------------------------------------------
FASTFLOW_HOST = env_str("FASTFLOW_HOST", "127.0.0.1")
FASTFLOW_PORT = env_int("FASTFLOW_PORT", 8000, minimum=1)
if FASTFLOW_PORT > 65535:
    raise ImproperlyConfigured(f"FASTFLOW_PORT={FASTFLOW_PORT} is not a TCP port")
FASTFLOW_ADMIN_USER = env_str("FASTFLOW_ADMIN_USER", "admin")
FASTFLOW_ADMIN_PASSWORD = env_str("FASTFLOW_ADMIN_PASSWORD")

# --- the rest of Django --------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = FASTFLOW_DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Admin assets are served by whitenoise straight from the installed apps: no collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "fastflow": {"handlers": ["console"], "level": env_str("FASTFLOW_LOG_LEVEL", "INFO")},
        "django_q": {"handlers": ["console"], "level": "WARNING"},
    },
}
