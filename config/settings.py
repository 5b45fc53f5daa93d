"""Sluice settings.

With no environment at all Sluice runs embedded: SQLite in the data folder, local-disk
storage and kombu's filesystem broker. `SLUICE_ENV=production` plus `DATABASE_URL`,
`CELERY_BROKER_URL`, `SLUICE_STORAGE_ROOT`, `SECRET_KEY` and `ALLOWED_HOSTS` switch to a
distributed deployment, where a missing secret is an error rather than a generated default.
"""

from __future__ import annotations

import secrets
import sys
import warnings
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

SLUICE_ENV: str = env.str("SLUICE_ENV", default="embedded")
if SLUICE_ENV not in {"embedded", "production"}:
    raise ImproperlyConfigured("SLUICE_ENV must be 'embedded' or 'production'")
PRODUCTION = SLUICE_ENV == "production"

DATA_DIR = Path(env.str("SLUICE_DATA_DIR", default=str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _generated_secret(name: str, length: int = 50, fernet: bool = False) -> str:
    """A per-checkout secret kept in the git-ignored data folder (embedded mode only)."""
    path = DATA_DIR / name
    if not path.exists():
        if fernet:
            from cryptography.fernet import Fernet

            path.write_text(Fernet.generate_key().decode())
        else:
            path.write_text(secrets.token_urlsafe(length))
        path.chmod(0o600)
        warnings.warn(
            f"Generated a development {name} in the data folder; set it in the environment "
            "for any shared deployment.",
            stacklevel=2,
        )
    return path.read_text().strip()


if PRODUCTION:
    SECRET_KEY: str = env.str("SECRET_KEY", default="")
    if not SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY must be set when SLUICE_ENV=production")
    SLUICE_POOL_KEY: str = env.str("SLUICE_POOL_KEY", default="")
    if not SLUICE_POOL_KEY:
        raise ImproperlyConfigured("SLUICE_POOL_KEY must be set when SLUICE_ENV=production")
else:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _generated_secret("secret_key")
    SLUICE_POOL_KEY = env.str("SLUICE_POOL_KEY", default="") or _generated_secret("pool_key", 32)

# Fernet keys for secrets at rest, comma-separated, newest first (rotation: prepend a new key,
# run `manage.py rotate_secret_keys`, then drop the old one).
if PRODUCTION:
    SLUICE_SECRET_KEYS: list[str] = env.list("SLUICE_SECRET_KEYS", default=[])
    if not SLUICE_SECRET_KEYS:
        raise ImproperlyConfigured("SLUICE_SECRET_KEYS must be set when SLUICE_ENV=production")
else:
    SLUICE_SECRET_KEYS = env.list("SLUICE_SECRET_KEYS", default=[]) or [
        _generated_secret("fernet_key", 0, fernet=True)
    ]

DEBUG: bool = env.bool("DEBUG", default=False)
ALLOWED_HOSTS: list[str] = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "testserver"]
)
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "django_celery_beat",
    "apps.orgs",
    "apps.secrets",
    "apps.dags",
    "apps.datasets",
    "apps.tasks",
    "apps.alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.orgs.middleware.BodySizeLimitMiddleware",
    "apps.tasks.middleware.LeanPathsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- Database -------------------------------------------------------------------------------
DATABASES: dict[str, dict[str, Any]] = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'sluice.sqlite3'}")
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN, so
    # two writers queue on busy_timeout instead of failing with "database is locked" mid-way.
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _db["CONN_MAX_AGE"] = 0
else:
    _db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
    # Django's own cursors bind parameters client-side and never prepare (server-side binding
    # for all of them was tried: generic plans of `state = $1` cannot use the partial indexes
    # the claims and the reaper rely on). The lean single-event POST prepares its statement
    # at once, and psycopg prepares the column-array statements and the pipelined ones
    # (`apps/orgs/bulk.py`: the dispatcher's step) on a connection's fifth use of each, which
    # saves planning them on every call; off behind a pooler that cannot keep prepared
    # statements (PgBouncer before 1.21).
    if env.bool("SLUICE_DB_PREPARED_STATEMENTS", default=True):
        _db.setdefault("OPTIONS", {})["prepare_threshold"] = 5
    _db.setdefault("TEST", {})["NAME"] = env.str("TEST_DATABASE_NAME", default=None)
USING_SQLITE = _db["ENGINE"] == "django.db.backends.sqlite3"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "orgs.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous requests get nothing.
GUARDIAN_MONKEY_PATCH_USER = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/orgs/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Embedded: serve straight from the apps' static folders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security (production) ------------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancer health checks speak plain HTTP
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# --- API --------------------------------------------------------------------------------------
# Bodies are capped before parsing (413 payload_too_large); the cap is per request, in bytes.
SLUICE_MAX_BODY_BYTES: int = env.int("SLUICE_MAX_BODY_BYTES", default=16 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = SLUICE_MAX_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.orgs.authentication.ApiTokenAuthentication",
        "apps.orgs.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "apps.orgs.api.CursorPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "apps.orgs.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "apps.orgs.openapi.SluiceAutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # `?format=` belongs to the data API (json, csv, parquet, arrow), not to DRF's renderers.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sluice API",
    "DESCRIPTION": "Event-driven, versioned data pipelines. Every error has the body "
    '`{"code", "detail", "errors": [{"path", "message"}]}`.',
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "LaneEnum": "apps.dags.models.Lane",
        "TaskStateEnum": "apps.tasks.models.TaskState",
        "VersionStateEnum": "apps.dags.models.VersionState",
        "RoleEnum": "apps.orgs.roles.Role",
    },
}

# --- Platform ---------------------------------------------------------------------------------
SLUICE_STORAGE_ROOT: str = env.str("SLUICE_STORAGE_ROOT", default=str(DATA_DIR / "storage"))
SLUICE_API_URL: str = env.str("SLUICE_API_URL", default="http://127.0.0.1:8000")
SLUICE_HANDLER_PATH: str = env.str("SLUICE_HANDLER_PATH", default="examples")
# A token's last_used_at is written at most this often, to keep writes off the hot path.
SLUICE_TOKEN_TOUCH_INTERVAL_S: int = env.int("SLUICE_TOKEN_TOUCH_INTERVAL_S", default=60)

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL: str = env.str("CELERY_BROKER_URL", default="filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {}
CELERY_BROKER_TRANSPORT: str | None = None
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport, writing each message whole before readers see it.
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # No unacknowledged-message bookkeeping in Redis (docs/adr/0017): a message lost with
    # its worker is recovered by the task's queued_timeout, as any lost send is (D11).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"ack_emulation": False}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER: bool = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

TESTING = "pytest" in sys.modules
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# --- Dispatch and leases (DESIGN.md D7, D11) --------------------------------------------------
SLUICE_LEASE_TTL_S: float = env.float("SLUICE_LEASE_TTL_S", default=30.0)
SLUICE_QUEUED_TIMEOUT_S: float = env.float("SLUICE_QUEUED_TIMEOUT_S", default=300.0)
# After a commit that creates runnable tasks: "inline" (dispatch in the committing process),
# "notify" (PostgreSQL: wake the `manage.py dispatch --loop` processes), "celery" (a
# dispatch_tick task) or "off" (loops and beat ticks only). See apps/tasks/triggers.py.
SLUICE_DISPATCH_TRIGGER: str = env.str("SLUICE_DISPATCH_TRIGGER", default="inline")
if SLUICE_DISPATCH_TRIGGER not in {"inline", "notify", "celery", "off"}:
    raise ImproperlyConfigured("SLUICE_DISPATCH_TRIGGER must be inline, notify, celery or off.")
if SLUICE_DISPATCH_TRIGGER == "notify" and USING_SQLITE:
    raise ImproperlyConfigured("SLUICE_DISPATCH_TRIGGER=notify needs PostgreSQL (LISTEN/NOTIFY).")
# Pacing (apps/tasks/dispatch.py): a lane with tasks in flight waits for a batch as large as
# what is in flight. On by default with "notify", whose loops re-check at every completion.
SLUICE_DISPATCH_PACING: bool = env.bool(
    "SLUICE_DISPATCH_PACING", default=SLUICE_DISPATCH_TRIGGER == "notify"
)
# The reaper ends a backlog of overdue attempts (a lost fleet's leases) over this many
# PostgreSQL connections at once, each its share of the pass (ADR 0019); 1 turns it off.
SLUICE_REAPER_CONNECTIONS: int = env.int("SLUICE_REAPER_CONNECTIONS", default=2)
if SLUICE_REAPER_CONNECTIONS < 1:
    raise ImproperlyConfigured("SLUICE_REAPER_CONNECTIONS must be at least 1.")
CELERY_BEAT_SCHEDULE.update(
    {
        "dispatch": {"task": "apps.tasks.celery_tasks.dispatch_tick", "schedule": 1.0},
        "reap": {"task": "apps.tasks.celery_tasks.reap_tick", "schedule": 2.0},
        "fan-out": {"task": "apps.tasks.celery_tasks.fanout_tick", "schedule": 5.0},
        "reconcile": {"task": "apps.tasks.celery_tasks.reconcile_tick", "schedule": 60.0},
        "gc": {"task": "apps.tasks.celery_tasks.gc_tick", "schedule": 3600.0},
    }
)
# Staging and landing files that no commit names are deleted once older than this (D7).
SLUICE_GC_GRACE_S: float = env.float("SLUICE_GC_GRACE_S", default=3600.0)

# --- AWS (runtimes ecs and lambda; credentials from the usual AWS chain) ----------------------
SLUICE_AWS_REGION: str = env.str(
    "SLUICE_AWS_REGION",
    default=env.str("AWS_REGION", default=env.str("AWS_DEFAULT_REGION", default="us-east-1")),
)
# An endpoint override for every AWS client (SQS, Lambda, S3), e.g. a local compatible server.
SLUICE_AWS_ENDPOINT_URL: str = env.str("SLUICE_AWS_ENDPOINT_URL", default="")
