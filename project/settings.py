"""Site configuration. Every value comes from the environment; see ``.env.example``."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from project.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_delays,
    env_fernet_keys,
    env_float,
    env_int,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

# --- core -----------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required unless DEBUG=1")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105 - DEBUG only

EXTERNAL_URL = env_url("EXTERNAL_URL", "http://localhost:8000", schemes=("http", "https"))
_external_host = EXTERNAL_URL.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", _external_host])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [EXTERNAL_URL])

# Fernet key for secrets stored in the database (leaked token values, the SDRS signing key).
ENCRYPTION_KEY = env_fernet_keys("ENCRYPTION_KEY")
if not ENCRYPTION_KEY and not DEBUG:
    raise ImproperlyConfigured("ENCRYPTION_KEY is required unless DEBUG=1 (see .env.example)")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_prometheus",
    "django_q",
    "project",
    "project.jobs",
    "exports",
    "catalog",
    "secret_detection",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "project.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
AUTH_USER_MODEL = "project.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "project" / "templates"],
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
EMBEDDED_PGDATA = VAR_DIR / "pgdata"
if not DATABASE_URL:
    from project import embedded_db

    DATABASE_URL = embedded_db.ensure_running(EMBEDDED_PGDATA)
    # dbshell and the docs' psql examples then find the matching client.
    os.environ["PATH"] = f"{embedded_db.bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["DATABASE_URL"] = DATABASE_URL

DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL)}
DATABASES["default"].update(
    {
        # Persistent connections: a connection per task cut worker throughput ~4x.
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 300, minimum=0),
        "CONN_HEALTH_CHECKS": True,
        "TEST": {"NAME": env_str("TEST_DATABASE_NAME")},
    }
)
DATABASES["default"]["OPTIONS"].setdefault("application_name", "gitlab-jobs")

# --- cache, broker, cluster -----------------------------------------------------------

REDIS_URL = env_url("REDIS_URL", None, schemes=("redis", "rediss", "unix"), secret=True)
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "django_cache"}}

# Which broker carries job messages; Redis when REDIS_URL is set, PostgreSQL otherwise.
JOBS_BROKER = env_choice("JOBS_BROKER", ("orm", "redis"), "redis" if REDIS_URL else "orm")
if JOBS_BROKER == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("JOBS_BROKER=redis needs REDIS_URL")

Q_WORKERS = env_int("Q_WORKERS", 4, minimum=1, maximum=256)
# Default per-attempt time budget of a job, in seconds; jobs may declare their own.
Q_TIMEOUT = env_int("Q_TIMEOUT", 300, minimum=1)
# Redelivery of an unacknowledged message (a worker killed mid-task). It must exceed the
# longest job timeout, or a slow job would be handed to a second worker while still running.
Q_RETRY = env_int("Q_RETRY", 3900, minimum=2)
Q_POLL = env_float("Q_POLL", 0.2, minimum=0.01, maximum=10)

Q_CLUSTER = {
    # The site's name: the default queue, and the salt that signs messages, so every
    # process of one deployment must share it. A cluster serves another queue (see a job's
    # ``queue``) when started with django-q2's own Q_CLUSTER_NAME=<queue>.
    "name": env_str("Q_NAME", "default"),
    "ALT_CLUSTERS": {},
    "workers": Q_WORKERS,
    "timeout": Q_TIMEOUT,
    "retry": Q_RETRY,
    # Failed tasks are acknowledged: the job toolkit decides on retries, not redelivery.
    "ack_failures": True,
    "max_attempts": env_int("Q_MAX_ATTEMPTS", 3, minimum=1),
    "orm": "default",
    "poll": Q_POLL,
    "broker_class": "project.jobs.brokers.RedisBroker" if JOBS_BROKER == "redis" else "project.jobs.brokers.OrmBroker",
    "redis": REDIS_URL or {},
    "catch_up": False,
    "save_limit": env_int("Q_SAVE_LIMIT", 1000, minimum=-1),
    "recycle": env_int("Q_RECYCLE", 500, minimum=1),
    "max_rss": env_int("Q_MAX_RSS_KB", 0, minimum=0) or None,
    "label": "Django Q (transport)",
    "queue_limit": Q_WORKERS * 2,
}

# --- job toolkit ----------------------------------------------------------------------

# How often a running job proves it is alive, and after how long without proof it is lost.
JOBS_HEARTBEAT_INTERVAL = env_float("JOBS_HEARTBEAT_INTERVAL", 5, minimum=0.1)
JOBS_LOST_AFTER = env_float("JOBS_LOST_AFTER", 60, minimum=1)
# A queued run this late is assumed to have lost its broker message and is pushed again.
JOBS_REPUSH_AFTER = env_float("JOBS_REPUSH_AFTER", 300, minimum=1)
JOBS_RUN_RETENTION_DAYS = env_int("JOBS_RUN_RETENTION_DAYS", 7, minimum=1)
# A cluster whose pusher has not been seen for this long is reported as down.
JOBS_CLUSTER_STALE_AFTER = env_float("JOBS_CLUSTER_STALE_AFTER", 30, minimum=1)
# Extra modules that declare jobs (the test suite and benchmarks add their own probes).
JOBS_EXTRA_MODULES = env_list("JOBS_EXTRA_MODULES", [])

# --- HTTP clients ---------------------------------------------------------------------

# Outbound requests to loopback, link-local and private addresses are refused unless allowed.
ALLOW_LOCAL_REQUESTS = env_bool("ALLOW_LOCAL_REQUESTS", False)

# --- exports --------------------------------------------------------------------------

EXPORT_MAX_CONCURRENT = env_int("EXPORT_MAX_CONCURRENT", 2, minimum=1)
EXPORT_JOB_TIMEOUT = env_int("EXPORT_JOB_TIMEOUT", 3600, minimum=10)
EXPORT_RETRY_DELAYS = env_delays("EXPORT_RETRY_DELAYS", (4, 16, 64))
EXPORT_SLOT_WAIT = env_float("EXPORT_SLOT_WAIT", 2, minimum=0.1)
EXPORT_MAX_AGE = env_int("EXPORT_MAX_AGE", 6 * 3600, minimum=60)
EXPORT_STUCK_AFTER = env_int("EXPORT_STUCK_AFTER", 300, minimum=10)
EXPORT_ARCHIVE_TTL = env_int("EXPORT_ARCHIVE_TTL", 24 * 3600, minimum=60)
EXPORT_JOB_RETENTION_DAYS = env_int("EXPORT_JOB_RETENTION_DAYS", 7, minimum=1)
EXPORT_PRUNE_BATCH_SIZE = env_int("EXPORT_PRUNE_BATCH_SIZE", 1000, minimum=1)
EXPORT_UPLOAD_TIMEOUT = env_float("EXPORT_UPLOAD_TIMEOUT", 60, minimum=1)
EXPORT_STUCK_SWEEP_CRON = env_str("EXPORT_STUCK_SWEEP_CRON", "30 * * * *")
EXPORT_CLEANUP_CRON = env_str("EXPORT_CLEANUP_CRON", "0 * * * *")
EXPORT_PRUNE_CRON = env_str("EXPORT_PRUNE_CRON", "30 3 * * *")

# --- catalog --------------------------------------------------------------------------

CATALOG_SYNC_BATCH_SIZE = env_int("CATALOG_SYNC_BATCH_SIZE", 1000, minimum=1)
CATALOG_SYNC_CRON = env_str("CATALOG_SYNC_CRON", "* * * * *")
# One processor run works through batches for at most this long, then enqueues itself again.
CATALOG_SYNC_RUN_SECONDS = env_float("CATALOG_SYNC_RUN_SECONDS", 20, minimum=1, maximum=120)
CATALOG_LISTENER_DEBOUNCE = env_float("CATALOG_LISTENER_DEBOUNCE", 0.2, minimum=0)
CATALOG_EVENT_RETENTION_DAYS = env_int("CATALOG_EVENT_RETENTION_DAYS", 7, minimum=1)
CATALOG_PRUNE_BATCH_SIZE = env_int("CATALOG_PRUNE_BATCH_SIZE", 10000, minimum=1)
CATALOG_PRUNE_CRON = env_str("CATALOG_PRUNE_CRON", "15 4 * * *")

# --- secret detection -----------------------------------------------------------------

# First values of the SDRS application settings; the admin can change them later.
SDRS_ENABLED = env_bool("SDRS_ENABLED", False)
SDRS_URL = env_url("SDRS_URL", None, schemes=("http", "https"))
SDRS_JWT_SIGNING_KEY_FILE = env_str("SDRS_JWT_SIGNING_KEY_FILE")
SDRS_CALLBACK_SECRET = env_str("SDRS_CALLBACK_SECRET")
SDRS_TIMEOUT = env_float("SDRS_TIMEOUT", 10, minimum=0.1)
SDRS_RETRY_DELAYS = env_delays("SDRS_RETRY_DELAYS", (4, 16, 64))
SDRS_CALLBACK_MAX_SKEW = env_int("SDRS_CALLBACK_MAX_SKEW", 300, minimum=1)
# A pending status with no callback for this long goes back to unknown.
SDRS_PENDING_TIMEOUT = env_int("SDRS_PENDING_TIMEOUT", 900, minimum=1)
TOKEN_REFRESH_ACTIVE_AFTER = env_int("TOKEN_REFRESH_ACTIVE_AFTER", 24 * 3600, minimum=1)
TOKEN_REFRESH_BATCH_SIZE = env_int("TOKEN_REFRESH_BATCH_SIZE", 50, minimum=1)
TOKEN_REFRESH_CONCURRENCY = env_int("TOKEN_REFRESH_CONCURRENCY", 10, minimum=1)
TOKEN_REFRESH_NO_VERIFIER_BACKOFF = env_int("TOKEN_REFRESH_NO_VERIFIER_BACKOFF", 600, minimum=1)
TOKEN_REFRESH_CRON = env_str("TOKEN_REFRESH_CRON", "* * * * *")
TOKEN_REFRESH_TICK_TIMEOUT = env_int("TOKEN_REFRESH_TICK_TIMEOUT", 240, minimum=1)

# --- REST API -------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "project.authentication.AccessTokenAuthentication",
        "project.authentication.CsrfSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "project.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Background jobs API",
    "DESCRIPTION": "GitLab-compatible REST API (v4) for project exports, CI catalog sync and "
    "secret detection token verification.",
    "VERSION": "4",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- static, media, i18n --------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
FORMS_URLFIELD_ASSUME_HTTPS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

SESSION_COOKIE_SECURE = EXTERNAL_URL.startswith("https://")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None

# --- logging and metrics --------------------------------------------------------------

LOG_FORMAT = env_choice("LOG_FORMAT", ("json", "text"), "text" if DEBUG else "json")
LOG_LEVEL = env_choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "project.logs.ContextFilter"}},
    "formatters": {
        "json": {"()": "project.logs.JsonFormatter"},
        "text": {"()": "project.logs.TextFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django-q": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"level": "INFO"},
    },
}

PROMETHEUS_EXPORT_MIGRATIONS = False

if SDRS_JWT_SIGNING_KEY_FILE and not Path(SDRS_JWT_SIGNING_KEY_FILE).is_file():
    raise ImproperlyConfigured(f"SDRS_JWT_SIGNING_KEY_FILE={SDRS_JWT_SIGNING_KEY_FILE!r} is not a readable file")
