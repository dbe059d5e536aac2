"""Site configuration. Every value comes from the environment; see ``.env.example``.

Importing this module has no side effects: it starts nothing and writes nothing into
``os.environ``. The embedded database (used when ``DATABASE_URL`` is unset) is started by
the entry points, ``manage.py``, ``make run`` and the test settings, before they read this
(see ``project.embedded_db.ensure_database_url``).
"""

from __future__ import annotations

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
    env_secret,
    env_str,
    env_url,
    load_site_env_files,
    var_dir,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# The operator's .env, and the keys `make run` generated (so every manage.py command of this
# checkout finds them): defaults under the process environment, never copied into it.
load_site_env_files(BASE_DIR)
VAR_DIR = var_dir(BASE_DIR)

# --- core -----------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY") or ""  # or SECRET_KEY_FILE
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required unless DEBUG=1")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105 - DEBUG only

EXTERNAL_URL = env_url("EXTERNAL_URL", "http://localhost:8000", schemes=("http", "https"))
_external_host = EXTERNAL_URL.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", _external_host])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [EXTERNAL_URL])

# Fernet key for secrets stored in the database (leaked token values, the SDRS signing key).
ENCRYPTION_KEY = env_fernet_keys("ENCRYPTION_KEY")  # or ENCRYPTION_KEY_FILE
if not ENCRYPTION_KEY and not DEBUG:
    raise ImproperlyConfigured("ENCRYPTION_KEY is required unless DEBUG=1 (see .env.example)")

INSTALLED_APPS = [
    "project.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Redoc served from our static files: the docs work offline
    "django_prometheus",
    "axes",  # the admin login's lockout (see the security block)
    "project.apps.ProjectConfig",
    # Before django_q: its ``qcluster`` command is replaced by the toolkit's (the earlier app wins).
    "project.jobs",
    "django_q",
    "exports",
    "catalog",
    "secret_detection",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "project.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "project.middleware.SecurityHeadersMiddleware",  # Content-Security-Policy; no-store on the API
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # answers a locked-out admin login
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
AUTH_USER_MODEL = "project.User"
# django-axes first: it refuses a locked-out login before the password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
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
    # The entry points set it (to the embedded server's URL when none is configured).
    raise ImproperlyConfigured(
        "DATABASE_URL is not set. Set it (postgres://user@host:port/dbname), or start this through "
        "manage.py, `make run` or `make test`, which start the embedded PostgreSQL "
        f"(data in {EMBEDDED_PGDATA}) when it is unset"
    )

DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL)}
DATABASES["default"].update(
    {
        # Persistent connections: a connection per task cut worker throughput ~4x.
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 300, minimum=0),
        "CONN_HEALTH_CHECKS": True,
        "TEST": {"NAME": env_str("TEST_DATABASE_NAME")},
        # Django's backend, with the health check only for a connection idle longer than
        # DB_HEALTH_CHECK_IDLE s: no SELECT 1 per request or job under load (project/postgresql).
        "ENGINE": "project.postgresql",
    }
)
DB_HEALTH_CHECK_IDLE = env_float("DB_HEALTH_CHECK_IDLE", 1.0, minimum=0)
# The hot paths' statements are prepared once per connection (project/postgresql). Off (0)
# behind a connection pooler in transaction mode that cannot keep prepared statements
# (PgBouncer before 1.21, or without max_prepared_statements).
DB_PREPARED_STATEMENTS = env_bool("DB_PREPARED_STATEMENTS", True)
DATABASES["default"]["OPTIONS"].setdefault("application_name", "gitlab-jobs")
# PostgreSQL notices that a client died only when it next writes to it: a worker killed
# while its statement waits for a lock would keep its session, and the session's advisory
# locks (the catalog processor's), until that wait ends. Checked every this many ms while
# a statement runs (0: never; not available on every server platform).
DB_CLIENT_CHECK_INTERVAL_MS = env_int("DB_CLIENT_CHECK_INTERVAL_MS", 2000, minimum=0)
if DB_CLIENT_CHECK_INTERVAL_MS:
    _options = DATABASES["default"]["OPTIONS"]
    _options["options"] = (
        f"{_options.get('options', '')} -c client_connection_check_interval={DB_CLIENT_CHECK_INTERVAL_MS}"
    ).strip()

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
    "broker_class": "project.jobs.djangoq.RedisBroker" if JOBS_BROKER == "redis" else "project.jobs.djangoq.OrmBroker",
    "redis": REDIS_URL or {},
    "catch_up": False,
    # Every default-queue cluster runs django-q2's scheduler (schedule rows are locked, so
    # each fires once); turn it off for clusters that should only work the queue.
    "scheduler": env_bool("Q_SCHEDULER", True),
    # Our job runs are the record; keeping django-q2's success rows cost ~20% of the CPU of a
    # short job (its monitor locks every kept row to prune them). Failures are still kept.
    "save_limit": env_int("Q_SAVE_LIMIT", -1, minimum=-1),
    "recycle": env_int("Q_RECYCLE", 500, minimum=1),
    "max_rss": env_int("Q_MAX_RSS_KB", 0, minimum=0) or None,
    "label": "Django Q (transport)",
    "bulk": Q_WORKERS,  # messages per pull: one statement (ORM) or round trip (Redis) feeds all workers
    "queue_limit": Q_WORKERS * 2,
}

# --- job toolkit ----------------------------------------------------------------------

# How often a running job proves it is alive, and after how long without proof it is lost.
JOBS_HEARTBEAT_INTERVAL = env_float("JOBS_HEARTBEAT_INTERVAL", 5, minimum=0.1)
JOBS_LOST_AFTER = env_float("JOBS_LOST_AFTER", 60, minimum=1)
# How often a running job's watcher reads back a cancel request (seconds): the longest a
# cancelled job goes on before it stops.
JOBS_CONTROL_POLL = env_float("JOBS_CONTROL_POLL", 1, minimum=0.05, maximum=60)
# A queued run this late is assumed to have lost its broker message and is pushed again.
JOBS_REPUSH_AFTER = env_float("JOBS_REPUSH_AFTER", 300, minimum=1)
# Recovery (docs/reliability.md). A pulled ORM message is invisible to other pulls for
# this long: the messages a dead cluster held come back after it.
JOBS_MESSAGE_LEASE = env_float("JOBS_MESSAGE_LEASE", 30, minimum=1)
# A pool that took no task for this long while tasks waited and a worker was idle is stuck
# (a worker died holding the task queue's lock): the sentinel restarts it.
JOBS_STALL_AFTER = env_float("JOBS_STALL_AFTER", 10, minimum=1)
# How often each cluster's sentinel looks for lost runs (dead local workers, silent remote ones).
JOBS_LOST_CHECK_EVERY = env_float("JOBS_LOST_CHECK_EVERY", 10, minimum=1)
# How long a worker keeps trying to claim a run or record its outcome while the database
# is unreachable, before it leaves the message for redelivery.
JOBS_DB_RETRY_FOR = env_float("JOBS_DB_RETRY_FOR", 30, minimum=0)
# Runs of one job pushed together (enqueue_many, a resume, a re-push), or found together
# in a backlog by a pull, share a message, up to this many per message and no more than
# the workers' share of them: a worker executes them one after another, so django-q2's
# cost per message is paid once for them all.
# 1 sends a message per run. Once a message has taken JOBS_BATCH_BUDGET seconds, its
# remaining runs go out as a message each, for the idle workers (docs/jobs.md).
JOBS_BATCH_MAX = env_int("JOBS_BATCH_MAX", 20, minimum=1, maximum=1000)
JOBS_BATCH_BUDGET = env_float("JOBS_BATCH_BUDGET", 0.5, minimum=0, maximum=60)
# Outside a backlog, runs of a job whose runs this cluster measured as short share a
# message too: spread over the processor's cores, and up to this many seconds of them
# per message (their average, project/jobs/pace.py), the latency a run may gain waiting
# behind others while a worker is idle. A pusher that keeps finding messages pulls at
# most once per this many seconds, so that they are packed together. 0: only a backlog is
# merged, and pulls are not paced. 0.05 rather than 0.02: under a steady stream of short
# jobs, half the messages and a fifth less CPU per job, for about 25 ms more start latency
# (docs/benchmarks.md, session 16), far inside GitLab's 10 s queueing target for its
# high-urgency jobs.
JOBS_BATCH_WAIT = env_float("JOBS_BATCH_WAIT", 0.05, minimum=0, maximum=5)
# A worker's claim and success statements commit without waiting for the disk
# (PostgreSQL's asynchronous commit, for those two statements only): a database crash may
# take back the last fraction of a second of them, which leaves what a worker killed a
# moment earlier leaves (a run re-run, or recovered as lost), as a Redis-backed queue
# without fsync would. A quarter to a third less database CPU per short job, 8-53 % more
# jobs per second in same-hour pairs (docs/benchmarks.md, session 18). Enqueues, failures
# and retries always wait.
JOBS_WORKER_ASYNC_COMMIT = env_bool("JOBS_WORKER_ASYNC_COMMIT", True)
JOBS_RUN_RETENTION_DAYS = env_int("JOBS_RUN_RETENTION_DAYS", 7, minimum=1)
# A cluster whose sentinel has not been seen for this long is reported as down, and its
# row is deleted once it has been silent for JOBS_CLUSTER_PRUNE_AFTER.
JOBS_CLUSTER_STALE_AFTER = env_float("JOBS_CLUSTER_STALE_AFTER", 30, minimum=1)
JOBS_CLUSTER_PRUNE_AFTER = env_float("JOBS_CLUSTER_PRUNE_AFTER", 3600, minimum=60)
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
# The export run's own lost-worker threshold (seconds without a heartbeat), declared on
# the job; the toolkit's default is JOBS_LOST_AFTER.
EXPORT_STUCK_AFTER = env_int("EXPORT_STUCK_AFTER", 60, minimum=2)
EXPORT_ARCHIVE_TTL = env_int("EXPORT_ARCHIVE_TTL", 24 * 3600, minimum=60)
# An archive file no record refers to is deleted by the cleanup once this old (seconds).
EXPORT_ORPHAN_GRACE = env_int("EXPORT_ORPHAN_GRACE", 3600, minimum=60)

# --- imports (GitLab export archives; the size limits are application settings) -------

IMPORT_JOB_TIMEOUT = env_int("IMPORT_JOB_TIMEOUT", 3 * 3600, minimum=10)
IMPORT_RETRY_DELAYS = env_delays("IMPORT_RETRY_DELAYS", (4, 16, 64))
IMPORT_STUCK_AFTER = env_int("IMPORT_STUCK_AFTER", 60, minimum=2)
# An archive holds a few files; more than this is refused before anything is extracted.
IMPORT_MAX_FILES = env_int("IMPORT_MAX_FILES", 1000, minimum=1)
# One NDJSON line is one relation with its children (an issue with its notes).
IMPORT_MAX_LINE_BYTES = env_int("IMPORT_MAX_LINE_BYTES", 32 * 1024 * 1024, minimum=1024)
IMPORT_BATCH_SIZE = env_int("IMPORT_BATCH_SIZE", 1000, minimum=1)
# The compressed upload accepted by POST /projects/import (GitLab's MAXIMUM_FILE_SIZE is 50 MB
# for this endpoint; the max_import_size application setting can lower it).
IMPORT_MAX_UPLOAD_BYTES = env_int("IMPORT_MAX_UPLOAD_BYTES", 1024 * 1024 * 1024, minimum=1024)
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

# The runtime switch belongs to the admin (and the job console): this is only its value
# when the settings row is created, on first use.
SDRS_ENABLED = env_bool("SDRS_ENABLED", False)
# Deployment facts. Each one set here wins over the admin's value every time it is read, and
# the admin shows it read-only; unset (None), the admin owns it. See
# ApplicationSetting.effective_sdrs().
SDRS_URL = env_url("SDRS_URL", None, schemes=("http", "https"))
SDRS_JWT_SIGNING_KEY_FILE = env_str("SDRS_JWT_SIGNING_KEY_FILE")  # read at each use: rotate by replacing it
SDRS_CALLBACK_SECRET = env_secret("SDRS_CALLBACK_SECRET")  # or SDRS_CALLBACK_SECRET_FILE
SDRS_TIMEOUT = env_float("SDRS_TIMEOUT", None, minimum=0.1)
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
# A verification that failed (retries spent, no callback in time, an SDRS error during a
# refresh) is tried again by the refresher after this long.
TOKEN_REFRESH_RETRY_AFTER = env_int("TOKEN_REFRESH_RETRY_AFTER", 600, minimum=1)
SDRS_PENDING_SWEEP_CRON = env_str("SDRS_PENDING_SWEEP_CRON", "* * * * *")
# The circuit breaker in front of SDRS (secret_detection/services/breaker.py): open after
# this many attempts in a row found SDRS unavailable; while open, one probe every
# SDRS_PROBE_INTERVAL seconds (and at SDRS_PROBE_CRON) closes it when SDRS answers.
SDRS_BREAKER_THRESHOLD = env_int("SDRS_BREAKER_THRESHOLD", 5, minimum=1)
SDRS_PROBE_INTERVAL = env_int("SDRS_PROBE_INTERVAL", 15, minimum=1)
SDRS_PROBE_CRON = env_str("SDRS_PROBE_CRON", "* * * * *")
# Report imports: the API stores the upload (streamed to disk, refused from Content-Length
# when larger) and the secret_detection.import_report job reads it. The view reads the raw
# body itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) does not apply to it.
REPORT_IMPORT_MAX_BYTES = env_int("REPORT_IMPORT_MAX_BYTES", 50 * 1024 * 1024, minimum=1024)
REPORT_IMPORT_RATE_LIMIT = env_int("REPORT_IMPORT_RATE_LIMIT", 10, minimum=0)  # per user per minute; 0: unlimited
REPORT_IMPORT_JOB_TIMEOUT = env_int("REPORT_IMPORT_JOB_TIMEOUT", 1800, minimum=10)
REPORT_IMPORT_RETRY_DELAYS = env_delays("REPORT_IMPORT_RETRY_DELAYS", (4, 16, 64))
REPORT_IMPORT_BATCH_SIZE = env_int("REPORT_IMPORT_BATCH_SIZE", 1000, minimum=1)
# A stored report still not imported after this long is deleted and its import failed.
REPORT_IMPORT_FILE_RETENTION = env_int("REPORT_IMPORT_FILE_RETENTION", 24 * 3600, minimum=60)
REPORT_IMPORT_RETENTION_DAYS = env_int("REPORT_IMPORT_RETENTION_DAYS", 7, minimum=1)
REPORT_IMPORT_CLEANUP_CRON = env_str("REPORT_IMPORT_CLEANUP_CRON", "45 * * * *")

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
    # The 503 every operation answers while the database is unavailable (project.api).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "project.schema.document_database_unavailable",
    ],
    # No CDN: the docs page loads Redoc (and Swagger UI, should a view use it) from the
    # sidecar's static files, so it works with no network. Our template override
    # (project/templates/drf_spectacular/redoc.html) drops the web fonts.
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Redoc's default theme names Roboto and Montserrat (web fonts); use the system's.
    "REDOC_UI_SETTINGS": {
        "theme": {
            "typography": {
                "fontFamily": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
                "headings": {"fontFamily": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"},
                "code": {"fontFamily": "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"},
            }
        }
    },
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
# Times to the second everywhere in the admin (Django's English default shows minutes).
FORMAT_MODULE_PATH = ["project.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

SESSION_COOKIE_SECURE = EXTERNAL_URL.startswith("https://")
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None

# --- security -------------------------------------------------------------------------

# HTTPS (off by default, for local use). Behind a TLS proxy set BEHIND_TLS_PROXY too, so a
# request that came in over HTTPS is seen as secure. The health checks and /metrics are
# exempt from the redirect: probes and scrapers often call them over plain HTTP inside.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^-/", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# The Content-Security-Policy of HTML pages (project.middleware.SecurityHeadersMiddleware
# has the default: our own scripts only); the API's JSON answers get "default-src 'none'".
CONTENT_SECURITY_POLICY = env_str("CONTENT_SECURITY_POLICY")
# Reverse proxies in front that append to X-Forwarded-For: the client's address is that
# many entries from its end (0: REMOTE_ADDR). Used by every per-address limit below.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0, maximum=10)

# Admin login (django-axes): a username from one address is locked out after this many
# wrong passwords, for ADMIN_LOGIN_COOLOFF seconds (the right password is refused too).
ADMIN_LOGIN_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1)
ADMIN_LOGIN_COOLOFF = env_int("ADMIN_LOGIN_COOLOFF", 900, minimum=1)
AXES_ENABLED = env_bool("ADMIN_LOGIN_LOCKOUT", True)
AXES_FAILURE_LIMIT = ADMIN_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = ADMIN_LOGIN_COOLOFF / 3600  # axes reads a number as hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "project.middleware.client_address"
# Unlock with manage.py axes_reset_username USERNAME (or axes_reset): axes' own admin pages
# stay off, as their actions declare no permissions.
AXES_ENABLE_ADMIN = False

# API tokens (GitLab's fail2ban for credentials): past API_AUTH_FAILURE_LIMIT failed token
# authentications from one address in API_AUTH_FAILURE_PERIOD seconds, every token from it
# is answered 429 for API_AUTH_BAN_TIME seconds (at most 2 h: the counters are pruned
# after that). 0 turns the limit off.
API_AUTH_FAILURE_LIMIT = env_int("API_AUTH_FAILURE_LIMIT", 10, minimum=0)
API_AUTH_FAILURE_PERIOD = env_int("API_AUTH_FAILURE_PERIOD", 60, minimum=1, maximum=3600)
API_AUTH_BAN_TIME = env_int("API_AUTH_BAN_TIME", 3600, minimum=1, maximum=7200)

# /metrics: unset, anyone who reaches it may scrape. METRICS_TOKEN asks for
# "Authorization: Bearer <token>", METRICS_BASIC_AUTH ("user:password") for basic auth.
METRICS_TOKEN = env_secret("METRICS_TOKEN")  # or METRICS_TOKEN_FILE
METRICS_BASIC_AUTH = env_secret("METRICS_BASIC_AUTH")  # or METRICS_BASIC_AUTH_FILE
# A scrape folds the metric files of dead processes first (see project.metrics); turn it off
# when processes in other PID namespaces (containers) share PROMETHEUS_MULTIPROC_DIR.
METRICS_COMPACT = env_bool("METRICS_COMPACT", True)
# The per-view request latency histograms: 9 buckets instead of django-prometheus' 17 (the
# largest part of a scrape: one series per admin and API view).
PROMETHEUS_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, float("inf"))

# --- logging and metrics --------------------------------------------------------------

LOG_FORMAT = env_choice("LOG_FORMAT", ("json", "text"), "text" if DEBUG else "json")
LOG_LEVEL = env_choice("LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper()
# django-q2's own line per message taken and per message done (project.logs.TaskLinesFilter).
LOG_DJANGO_Q_TASKS = env_bool("LOG_DJANGO_Q_TASKS", False)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # "redact" masks URL query strings and token formats in every line (project.logs).
    "filters": {
        "context": {"()": "project.logs.ContextFilter"},
        "redact": {"()": "project.logs.RedactFilter"},
        "task_lines": {"()": "project.logs.TaskLinesFilter"},
    },
    "formatters": {
        "json": {"()": "project.logs.JsonFormatter"},
        "text": {"()": "project.logs.TextFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context", "redact"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django-q": {
            "handlers": ["console"],
            "level": LOG_LEVEL,
            "propagate": False,
            "filters": [] if LOG_DJANGO_Q_TASKS else ["task_lines"],
        },
        "django.db.backends": {"level": "INFO"},
        # They quote request URLs (with a signed upload[url], an admin search term): masked
        # before any handler, Django's own (mail_admins, its DEBUG console) included.
        "django.request": {"filters": ["redact"]},
        "urllib3.connectionpool": {"filters": ["redact"]},
    },
}

PROMETHEUS_EXPORT_MIGRATIONS = False

if SDRS_JWT_SIGNING_KEY_FILE and not Path(SDRS_JWT_SIGNING_KEY_FILE).is_file():
    raise ImproperlyConfigured(f"SDRS_JWT_SIGNING_KEY_FILE={SDRS_JWT_SIGNING_KEY_FILE!r} is not a readable file")

# --- secret detection: direct partner verification (issue 12) -------------------------
# Each partner's API, verified directly when SDRS is off or the admin routes a type to it
# (secret_detection/partners). Operator-set URLs: the SSRF guard does not apply; the
# proxy environment (HTTPS_PROXY, NO_PROXY) does. Plain http only with DEBUG (stand-ins).
_PARTNER_SCHEMES = ("http", "https") if DEBUG or env_bool("PARTNER_ALLOW_HTTP", False) else ("https",)
PARTNER_AWS_URL = env_url("PARTNER_AWS_URL", "https://sts.amazonaws.com/", schemes=_PARTNER_SCHEMES)
PARTNER_GCP_URL = env_url("PARTNER_GCP_URL", "https://oauth2.googleapis.com/tokeninfo", schemes=_PARTNER_SCHEMES)
PARTNER_POSTMAN_URL = env_url("PARTNER_POSTMAN_URL", "https://api.getpostman.com/me", schemes=_PARTNER_SCHEMES)
PARTNER_GITHUB_URL = env_url("PARTNER_GITHUB_URL", "https://api.github.com/user", schemes=_PARTNER_SCHEMES)
PARTNER_OPENAI_URL = env_url("PARTNER_OPENAI_URL", "https://api.openai.com/v1/models", schemes=_PARTNER_SCHEMES)
PARTNER_ANTHROPIC_URL = env_url(
    "PARTNER_ANTHROPIC_URL", "https://api.anthropic.com/v1/models", schemes=_PARTNER_SCHEMES
)
PARTNER_SENDGRID_URL = env_url("PARTNER_SENDGRID_URL", "https://api.sendgrid.com/v3/scopes", schemes=_PARTNER_SCHEMES)
PARTNER_HEROKU_URL = env_url("PARTNER_HEROKU_URL", "https://api.heroku.com/account", schemes=_PARTNER_SCHEMES)
PARTNER_STRIPE_URL = env_url("PARTNER_STRIPE_URL", "https://api.stripe.com/v1/balance", schemes=_PARTNER_SCHEMES)
PARTNER_TIMEOUT = env_float("PARTNER_TIMEOUT", 10.0, minimum=0.1, maximum=60)
# Network errors and timeouts: retried after these delays, then the verification fails.
PARTNER_RETRY_DELAYS = env_delays("PARTNER_RETRY_DELAYS", (4, 16, 64))
# A partner's 429/503: the token is tried again after this delay, at most this many times.
PARTNER_RATE_LIMIT_DELAY = env_float("PARTNER_RATE_LIMIT_DELAY", 10.0, minimum=0.1)
PARTNER_RATE_LIMIT_MAX_RESCHEDULES = env_int("PARTNER_RATE_LIMIT_MAX_RESCHEDULES", 5, minimum=0)
# Our own limit per project and partner API, requests per second (0: none).
PARTNER_AWS_RATE = env_float("PARTNER_AWS_RATE", 400.0, minimum=0)
PARTNER_GCP_RATE = env_float("PARTNER_GCP_RATE", 500.0, minimum=0)
PARTNER_POSTMAN_RATE = env_float("PARTNER_POSTMAN_RATE", 4.0, minimum=0)
PARTNER_GITHUB_RATE = env_float("PARTNER_GITHUB_RATE", 60 / 3600, minimum=0)
# Well under each partner's published limit (why: docs/secret_detection.md).
PARTNER_OPENAI_RATE = env_float("PARTNER_OPENAI_RATE", 1.0, minimum=0)
PARTNER_ANTHROPIC_RATE = env_float("PARTNER_ANTHROPIC_RATE", 0.5, minimum=0)
PARTNER_SENDGRID_RATE = env_float("PARTNER_SENDGRID_RATE", 1.0, minimum=0)
PARTNER_HEROKU_RATE = env_float("PARTNER_HEROKU_RATE", 1.0, minimum=0)
PARTNER_STRIPE_RATE = env_float("PARTNER_STRIPE_RATE", 2.0, minimum=0)
