"""WedSync Realtime settings: every value comes from the environment, read here only.

Two shapes of deployment come out of the same module:

* the embedded default (no ``REDIS_URL``): SQLite under ``var/``, the in-process channel
  layer, a local-memory cache and Celery on kombu's ``filesystem://`` transport. One
  server process only; made for a laptop and for trying the product out.
* production (``REDIS_URL`` and ``DATABASE_URL=postgres://...``): channels-redis, the
  django-redis cache tier and Celery on Redis, shared by any number of ASGI processes
  and Celery workers.

A ``.env`` file at the project root is read first when it exists (the bootstrap script
writes one for local development); real environment variables win over it.
"""

from __future__ import annotations

import importlib.util
import os
from email.utils import getaddresses
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
if env.bool("DJANGO_READ_DOT_ENV_FILE", default=True) and (BASE_DIR / ".env").is_file():
    env.read_env(str(BASE_DIR / ".env"))

# --- core -------------------------------------------------------------------------------

# Off unless asked for: forgetting the variable in production must not expose tracebacks.
DEBUG = env.bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    # Development only: a fixed, clearly marked key so sessions survive restarts.
    SECRET_KEY = "insecure-development-key-never-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_celery_beat",
    "axes",  # sign-in throttling (AXES_* below; docs/security.md)
    "django_guid",  # the request id of every log line (DJANGO_GUID below)
    # The project's apps, lowest layer first (imports point down this list; `make lint`
    # holds it with import-linter): core <- weddings <- realtime <- webhooks <- scaling
    # <- monitoring <- web <- wedsync (the composition root). README "Where things are",
    # ADR 0014.
    "core",
    "weddings",  # label "wedsync": the tables and migrations keep their names
    "realtime",
    "webhooks",  # outbound webhooks: reads the event log (ADR 0023)
    "platform_changes",  # the platform database's changes as events (ADR 0027)
    "push",  # Web Push to members' browsers: reads the event log (ADR 0032)
    "scaling",
    "monitoring",
    "web",
    "wedsync",
]
# Development-only benchmarks (loadtest, cachebench, scaling_backtest): installed where the
# development install is (the bench package and the Python client it drives, which only
# requirements-dev.txt brings); a production install or image goes without.
if all(importlib.util.find_spec(name) for name in ("bench", "wedsync_client")):
    INSTALLED_APPS.append("bench")
# daphne, first so that `runserver` serves ASGI (WebSockets) too: a development
# convenience (ADR 0003), installed by the development lock only; production serves
# through uvicorn (wedsync.serve) and goes without it.
if importlib.util.find_spec("daphne"):
    INSTALLED_APPS.insert(0, "daphne")

MIDDLEWARE = [
    # First, so that they see every response (redirects too): the request id of every log
    # line (X-Request-ID, in and out; DJANGO_GUID below), and the HTTP request metrics.
    "django_guid.middleware.guid_middleware",
    "monitoring.middleware.HttpMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
    # Static files straight after the security headers, before sessions: no CDN needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into its 429 response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "wedsync.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "wedsync.asgi.application"

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

# --- database ---------------------------------------------------------------------------

# An empty DATABASE_URL counts as unset, like an empty REDIS_URL.
DATABASE_URL = env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'wedsync.sqlite3'}"
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Persistent connections are off by default: under ASGI each request may run in another
# thread, and a pooled connection left open per thread exhausts PostgreSQL quickly.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
# With the pool, Django's health check is psycopg_pool's check on every checkout: one
# more round trip per database call (a third of the realtime threads' time at 100
# publishes/s). Off by default: a connection the server killed fails the one call that
# meets it (`unavailable`, the client retries) and the pool replaces it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_POOL_CHECK", default=False)
DATABASE_IS_SQLITE = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
# PostgreSQL through psycopg 3's connection pool (Django's OPTIONS["pool"]): a checkout
# costs no TCP + auth handshake, and the pool bounds a process's connections. The pool
# replaces persistent connections, so CONN_MAX_AGE must stay 0 with it. A connection the
# server killed is discarded when it is returned broken; the one call that used it fails
# with `unavailable` and the client retries (docs/operations.md).
DATABASE_POOL = env.bool("DATABASE_POOL", default=True)
DATABASE_POOL_MIN_SIZE = env.int("DATABASE_POOL_MIN_SIZE", default=1)
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=8)
DATABASE_POOL_TIMEOUT = env.float("DATABASE_POOL_TIMEOUT", default=2.0)  # seconds to wait
if not DATABASE_IS_SQLITE:
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    # Names this process's sessions in pg_stat_activity (operators and the fault tests).
    _pg_options.setdefault("application_name", env.str("DATABASE_APPLICATION_NAME", "wedsync"))
    _pg_options.setdefault("connect_timeout", 5)
    if DATABASE_POOL:
        if DATABASES["default"]["CONN_MAX_AGE"]:
            raise ImproperlyConfigured("DATABASE_CONN_MAX_AGE must be 0 with DATABASE_POOL")
        _pg_options["pool"] = {
            "min_size": DATABASE_POOL_MIN_SIZE,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT,
        }
if DATABASE_IS_SQLITE:
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN,
    # which serialises writers per transaction (the event log's seq allocation relies on
    # it, as PostgreSQL relies on a row lock); the timeout waits for that lock.
    # synchronous=FULL syncs the WAL at every commit: an acknowledged publish survives a
    # power loss (NORMAL could lose the last commits; ~0.6 ms more per publish).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
        }
    )
    # A file, not memory, so that server processes started by tests share it.
    _db_stem = Path(DATABASES["default"]["NAME"]).stem
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{_db_stem}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise serves /static/ from the application itself, no CDN (docs/web.md). With DEBUG
# it finds the files in the apps on each request; without, it serves STATIC_ROOT, filled
# by `manage.py collectstatic` with hashed names, compressed copies and far-future cache
# headers. The two WHITENOISE_ values are fixed when the settings load: WhiteNoise would
# read DEBUG later, after a test runner has turned it off.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "web.storage.HashedStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
# The apps' static folders, and the JavaScript client's module (clients/js/realtime.js,
# the @wedsync/realtime package) as web/realtime.js: one copy for the package and the app.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "web.finders.ClientPackageFinder",
]

LOGIN_URL = "admin:login"

# Sessions and users are read on every WebSocket connect and request: through the cache
# (sessions: Django's cached_db; users: wedsync.auth_backends), so a reconnect storm does
# not turn into two queries per connection, and a signed-in user keeps being recognised
# while the database is briefly unreachable.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
# django-axes first: it refuses a locked-out sign-in before any password is checked (the
# web app's form and the admin's). CachedModelBackend stays: sessions store its path.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "wedsync.auth_backends.CachedModelBackend",
]

# Sign-in throttling (django-axes; docs/security.md): this many wrong passwords for one
# username from one IP address lock that pair out for the cool-off (hours); a right
# password is then refused too (429). Other users, and the same user from elsewhere, are
# unaffected. The client IP is REMOTE_ADDR (axes' default), which uvicorn takes from
# X-Forwarded-For only for requests from FORWARDED_ALLOW_IPS (a trusted proxy).
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_TIME", default=0.25)  # hours: 15 minutes
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_VERBOSE = False  # no start-up banner on every command
AXES_RESET_ON_SUCCESS = True  # a right password (when not locked) forgets earlier failures

# --- Redis: channel layer, cache tier, Celery broker -----------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
EMBEDDED = not REDIS_URL

# "pubsub" (default) or "core"; see docs/adr/0001-channel-layer.md.
CHANNEL_LAYER = env.str("CHANNEL_LAYER", default="pubsub")
if CHANNEL_LAYER not in {"pubsub", "core"}:
    raise ImproperlyConfigured(f"CHANNEL_LAYER must be 'pubsub' or 'core', not {CHANNEL_LAYER!r}")

if EMBEDDED:
    # Capacity per channel: past it the layer drops a message, and the connection fills
    # the gap from the event log (docs/adr/0001-channel-layer.md).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "wedsync-default",
        }
    }
else:
    # socket_timeout=None: redis-py 8 times reads out after 5 s by default, which breaks
    # the channel layer's blocking reads (docs/adr/0001-channel-layer.md).
    _layer_host = {"address": REDIS_URL, "socket_timeout": None}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": (
                "channels_redis.pubsub.RedisPubSubChannelLayer"
                if CHANNEL_LAYER == "pubsub"
                else "channels_redis.core.RedisChannelLayer"
            ),
            "CONFIG": {"hosts": [_layer_host], "prefix": "wedsync"},
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "wedsync",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "COMPRESSOR": "django_redis.compressors.lz4.Lz4Compressor",
                "SERIALIZER": "django_redis.serializers.msgpack.MSGPackSerializer",
                # Sessions live in this cache (cached_db): with Redis down a read is a miss
                # (the session comes from the database), never an error page.
                "IGNORE_EXCEPTIONS": True,
                # A cache must never hang a request: fail fast and let the caller degrade.
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
            },
        }
    }

# Two-tier cache (core/cache.py, docs/cache.md). The L1 TTL is the staleness bound
# when a cross-process invalidation message is lost; keep it short.
CACHE_L1_TTL = env.float("CACHE_L1_TTL", default=5.0)  # seconds
CACHE_L1_MAX_ENTRIES = env.int("CACHE_L1_MAX_ENTRIES", default=10_000)
CACHE_L1_MAX_BYTES = env.int("CACHE_L1_MAX_BYTES", default=64 * 2**20)  # approximate, msgpack size
# Every write invalidates L2 at once, so the TTL bounds memory, not staleness; 30 min is
# two warming periods (scaling-warm-cache runs every 15 min), so warmed keys stay warm.
CACHE_L2_TTL = env.float("CACHE_L2_TTL", default=1800.0)  # seconds in Redis
# The user rows and access (`user:`, `access:`, `token_version:` entries) live shorter:
# a bulk update (QuerySet.update) sends no signal, and this bounds what it leaves stale.
CACHE_ACCESS_TTL = env.float("CACHE_ACCESS_TTL", default=300.0)  # seconds
# Prefix of the two-tier cache's keys and invalidation channel: deployments (or test
# runs) sharing one Redis keep apart by it.
CACHE_NAMESPACE = env.str("CACHE_NAMESPACE", default="wedsync")

# --- Celery -----------------------------------------------------------------------------

CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Never eager: a missing broker in production must be an error, not silent inline work.
CELERY_TASK_ALWAYS_EAGER = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if EMBEDDED:
    # Its own folder per stack, so that a test's stack does not share a developer's queue.
    CELERY_BROKER_DIR = Path(env.str("CELERY_BROKER_DIR", default=str(VAR_DIR / "celery")))
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        # The exchange tables (broadcast, remote control); kombu's default is ./control
        # relative to the working directory.
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

# Every periodic entry carries `expires`, so runs that start late do not pile up.
# django-celery-beat's database scheduler copies this into the database, where staff can
# edit it in admin. Entries are added by the apps that own the tasks.
CELERY_BEAT_SCHEDULE: dict[str, dict] = {}
CELERY_BEAT_SCHEDULE["realtime-prune-event-log"] = {
    "task": "realtime.tasks.prune_event_log",
    "schedule": 60 * 60,  # hourly: retention is in days, an hour late costs nothing
    "options": {"expires": 50 * 60},  # a run not started within 50 min gives way to the next
}
CELERY_BEAT_SCHEDULE["scaling-warm-cache"] = {
    "task": "scaling.tasks.warm_cache",
    "schedule": 15 * 60,  # a ceremony enters the 4 h window at least 3.75 h before it starts
    "options": {"expires": 14 * 60},  # a late run gives way to the next one
}
CELERY_BEAT_SCHEDULE["monitoring-snapshot"] = {
    "task": "monitoring.tasks.record_snapshot",
    "schedule": 60,  # the history's resolution; alerts are evaluated on the same beat
    "options": {"expires": 55},  # a run that missed its minute gives way to the next one
}

# --- production hardening (effective when DEBUG is off) --------------------------------

# X-Forwarded-Proto decides request.is_secure() (and the WebSocket origin check's scheme)
# only when a proxy that sets it, overwriting a client's own, is declared: otherwise any
# client could claim HTTPS (docs/security.md).
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
    SECURE_CONTENT_TYPE_NOSNIFF = True

# Content-Security-Policy (django-csp), in both modes: the pages have no inline script,
# style or event handler, so everything comes from this origin. connect-src 'self' covers
# the WebSocket to the same host (ws:/wss:, CSP Level 3). docs/security.md.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
    }
}

# --- WedSync ----------------------------------------------------------------------------

# Realtime tokens (PROTOCOL §2): default lifetime, and the longest one may ask for.
REALTIME_TOKEN_TTL = env.int("REALTIME_TOKEN_TTL", default=3600)
REALTIME_TOKEN_MAX_TTL = env.int("REALTIME_TOKEN_MAX_TTL", default=60 * 60 * 24 * 7)
# Connect tickets (PROTOCOL §2, v1.1; realtime/tickets.py): single-use, this many seconds.
# Short on purpose: a client buys one just before it connects; one seen later in a URL,
# a log or a history is long dead.
REALTIME_TICKET_TTL = env.int("REALTIME_TICKET_TTL", default=30)

# Platform sign-in (PROTOCOL §2, v1.1; realtime/jwt_auth.py; ADR 0021): JWTs issued by the
# platform's auth (Supabase Auth) are accepted wherever a realtime token is, once a key
# source is set. HS256 with the shared secret (Supabase's "JWT secret"; at least 32
# bytes, wedsync.E003), RS256/ES256 with the keys of a JWKS URL (https, wedsync.E004).
# Neither set: off, and a JWT is refused like any unknown token.
REALTIME_JWT_SECRET = env.str("REALTIME_JWT_SECRET", default="")
REALTIME_JWT_JWKS_URL = env.str("REALTIME_JWT_JWKS_URL", default="")
# Seconds the fetched keys are used before they are fetched again (a token naming an
# unknown key fetches them at once, at most every 10 s); Supabase caches its own for 10 min.
REALTIME_JWT_JWKS_TTL = env.int("REALTIME_JWT_JWKS_TTL", default=600)
# Supabase issues "authenticated" to signed-in users; its anon and service keys carry none.
REALTIME_JWT_AUDIENCE = env.str("REALTIME_JWT_AUDIENCE", default="authenticated")
# e.g. https://<project>.supabase.co/auth/v1; empty: the issuer is not checked.
REALTIME_JWT_ISSUER = env.str("REALTIME_JWT_ISSUER", default="")
# Clock skew in seconds allowed on exp, nbf and iat.
REALTIME_JWT_LEEWAY = env.int("REALTIME_JWT_LEEWAY", default=30)

# Per-connection limits (PROTOCOL §4, §8; enforced by realtime/limits.py and the consumer).
REALTIME_PUBLISH_RATE = env.float("REALTIME_PUBLISH_RATE", default=20.0)  # publishes/s
REALTIME_PUBLISH_BURST = env.int("REALTIME_PUBLISH_BURST", default=40)
# Fixed by the wire contract; realtime.protocol.MAX_TOPICS_PER_FRAME enforces it.
REALTIME_MAX_TOPICS_PER_FRAME = 100
REALTIME_MAX_TOPICS_PER_CONNECTION = 200
REALTIME_IDLE_TIMEOUT = 60  # seconds without a frame before close 4000
# This many rate_limited replies within the window close the connection with 4008. Generous
# on purpose: a refusal costs almost nothing, and a phone flushing an outbox queued during a
# signal drop must not be cut off; a client ignoring the limit still trips it in seconds.
REALTIME_RATE_LIMIT_STRIKES = env.int("REALTIME_RATE_LIMIT_STRIKES", default=50)
REALTIME_RATE_LIMIT_WINDOW = env.float("REALTIME_RATE_LIMIT_WINDOW", default=10.0)  # seconds
# Every frame of a connection (pings included), in the process's memory: a flood is
# refused before it costs a Redis call or a database thread. Far above what a client sends
# (a publish limit of 20/s, a ping every 25 s).
REALTIME_FRAME_RATE = env.float("REALTIME_FRAME_RATE", default=50.0)  # frames/s
REALTIME_FRAME_BURST = env.int("REALTIME_FRAME_BURST", default=100)
# The same across all of one user's connections to a process (a user may hold 20).
REALTIME_USER_FRAME_RATE = env.float("REALTIME_USER_FRAME_RATE", default=100.0)  # frames/s
REALTIME_USER_FRAME_BURST = env.int("REALTIME_USER_FRAME_BURST", default=200)
# Frames of one user that cost work (subscribe, unsubscribe, publish, presence, ack) handled
# at once in one process, across their connections; the next waits (realtime.limits.UserSlots).
REALTIME_USER_CONCURRENT_FRAMES = env.int("REALTIME_USER_CONCURRENT_FRAMES", default=1)
# HTTP requests a second of one client (its credentials, else its address) to one process,
# refused 429 before Django over it; 0 turns it off (wedsync.server.request_budget).
HTTP_REQUEST_RATE = env.float("HTTP_REQUEST_RATE", default=20.0)
HTTP_REQUEST_BURST = env.int("HTTP_REQUEST_BURST", default=60)
HTTP_CLIENT_CONCURRENT_REQUESTS = env.int("HTTP_CLIENT_CONCURRENT_REQUESTS", default=2)
# A user closed with 4008 or refused with 4029 has their next connections on that process
# closed at once for this long (seconds; 0: off): a reconnect loop costs almost nothing.
REALTIME_RECONNECT_COOLDOWN = env.float("REALTIME_RECONNECT_COOLDOWN", default=5.0)
# Per-user publish limits (PROTOCOL §8; realtime/limits.py): one budget per user across
# all their connections, the HTTP publish API and every server process (in Redis when
# REDIS_URL is set). Critical events (emergency.*) have their own, smaller budget, so
# that an ordinary flood cannot starve them and they cannot be used to flood.
REALTIME_USER_PUBLISH_RATE = env.float("REALTIME_USER_PUBLISH_RATE", default=20.0)  # per s
REALTIME_USER_PUBLISH_BURST = env.int("REALTIME_USER_PUBLISH_BURST", default=40)
# Bytes of ordinary events one user may publish (frames, HTTP bodies): what a burst of
# large messages costs every subscriber of the wedding. Ample for status taps and notes
# (a few hundred bytes each), about two 4,000-character messages a second.
REALTIME_USER_PUBLISH_BYTES_RATE = env.float("REALTIME_USER_PUBLISH_BYTES_RATE", default=8192.0)
REALTIME_USER_PUBLISH_BYTES_BURST = env.int("REALTIME_USER_PUBLISH_BYTES_BURST", default=32768)
REALTIME_CRITICAL_PUBLISH_RATE = env.float("REALTIME_CRITICAL_PUBLISH_RATE", default=1.0)
REALTIME_CRITICAL_PUBLISH_BURST = env.int("REALTIME_CRITICAL_PUBLISH_BURST", default=5)
# Open emergencies one member may hold on one wedding (raising another: limit_reached).
# Open emergencies are never pruned, and each is chased by the overdue-ack check.
REALTIME_OPEN_EMERGENCIES_PER_USER = env.int("REALTIME_OPEN_EMERGENCIES_PER_USER", default=3)
# Per-user budgets of the other costly frames (PROTOCOL §8; realtime/limits.py), shared the
# same way; over one: rate_limited with retry_after_ms, a strike of the connection. Topics
# added by subscribes (a client's full resubscribe: at most 200 per connection, 2 frames);
# events replayed by subscribes with since (a cost above the burst passes on a full bucket,
# so one reconnect is never refused; retention caps a topic's replay at 10,000); presence
# and ack frames (the web app asks presence once per connection and acks by hand; its
# outbox flushes queued acks at once after a signal drop).
REALTIME_USER_SUBSCRIBE_RATE = env.float("REALTIME_USER_SUBSCRIBE_RATE", default=20.0)  # topics/s
REALTIME_USER_SUBSCRIBE_BURST = env.int("REALTIME_USER_SUBSCRIBE_BURST", default=400)
# 100 events/s sustained (a reconnect after a long drop passes on the burst, in debt); more
# is one member reading 4 KB events faster than a wedding's whole fan-out costs.
REALTIME_USER_REPLAY_RATE = env.float("REALTIME_USER_REPLAY_RATE", default=100.0)  # events/s
REALTIME_USER_REPLAY_BURST = env.int("REALTIME_USER_REPLAY_BURST", default=2_000)
REALTIME_USER_PRESENCE_RATE = env.float("REALTIME_USER_PRESENCE_RATE", default=2.0)  # per s
REALTIME_USER_PRESENCE_BURST = env.int("REALTIME_USER_PRESENCE_BURST", default=20)
REALTIME_USER_ACK_RATE = env.float("REALTIME_USER_ACK_RATE", default=2.0)  # per s
REALTIME_USER_ACK_BURST = env.int("REALTIME_USER_ACK_BURST", default=20)
REALTIME_USER_SNAPSHOT_RATE = env.float("REALTIME_USER_SNAPSHOT_RATE", default=5.0)  # per s
REALTIME_USER_SNAPSHOT_BURST = env.int("REALTIME_USER_SNAPSHOT_BURST", default=30)
# Realtime tokens issued per user (POST /api/realtime/token): burst, refilled per minute.
REALTIME_TOKEN_ISSUE_PER_MINUTE = env.float("REALTIME_TOKEN_ISSUE_PER_MINUTE", default=10.0)
REALTIME_TOKEN_ISSUE_BURST = env.int("REALTIME_TOKEN_ISSUE_BURST", default=10)
# API keys of the platform's backend (ADR 0024): each key's publishes a second, shared by
# every process (per key, beside and instead of the per-user budgets); over it 429.
REALTIME_API_KEY_PUBLISH_RATE = env.float("REALTIME_API_KEY_PUBLISH_RATE", default=20.0)
REALTIME_API_KEY_PUBLISH_BURST = env.int("REALTIME_API_KEY_PUBLISH_BURST", default=100)

# Event log retention (PROTOCOL §7): replay with `since` reaches back this far; older
# events are pruned hourly (realtime.tasks.prune_event_log). Topic seqs never restart.
REALTIME_RETENTION_DAYS = env.int("REALTIME_RETENTION_DAYS", default=7)
REALTIME_RETENTION_EVENTS = env.int("REALTIME_RETENTION_EVENTS", default=10_000)  # per topic

# Per-connection outbox (PROTOCOL §7): a client this many frames behind is closed with
# 1013 and recovers with `since`; replays wait up to the timeout for room in it.
REALTIME_OUTBOX_SIZE = env.int("REALTIME_OUTBOX_SIZE", default=1024)
REALTIME_OUTBOX_PUT_TIMEOUT = env.float("REALTIME_OUTBOX_PUT_TIMEOUT", default=10.0)
# Seconds between sweeps of a server process's connections: stale ones are closed,
# presence refreshed, and events the channel layer lost are delivered from the log.
REALTIME_SWEEP_INTERVAL = env.float("REALTIME_SWEEP_INTERVAL", default=5.0)
# Seconds between re-checks of every open connection's access against the database
# (realtime.consumer_registry): what no signal reported (a bulk update) ends within it.
REALTIME_ACCESS_RECHECK = env.float("REALTIME_ACCESS_RECHECK", default=60.0)
# Seconds between the heartbeat comments of a Server-Sent Events stream (realtime.sse):
# proxies see traffic on an idle stream; below REALTIME_IDLE_TIMEOUT (a stream none of
# whose writes get through for that long is closed as stale, 4000).
REALTIME_SSE_HEARTBEAT = env.float("REALTIME_SSE_HEARTBEAT", default=15.0)

# Threads per process for the realtime path's database work (core/db.py): publishes
# of different topics run side by side. Each holds one pooled connection while it works,
# so keep DATABASE_POOL_MAX_SIZE above it (HTTP views use one more).
REALTIME_DB_THREADS = env.int("REALTIME_DB_THREADS", default=6)
# Priority under overload (docs/adr/0031-priority-under-overload.md): the database threads
# take critical publishes (emergency.*, timeline.*) first and replays last, outboxes shed
# presence first, and at the process's connection cap the vendor categories below are
# refused last. False: one FIFO of database work, no category order (the baseline).
REALTIME_PRIORITY = env.bool("REALTIME_PRIORITY", default=True)
# A queued ordinary call or replay that waited this long is taken next (no starvation).
REALTIME_DB_PRIORITY_MAX_WAIT_MS = env.float("REALTIME_DB_PRIORITY_MAX_WAIT_MS", default=250.0)
# WebSocket connections per server process (0: no cap of our own). From
# REALTIME_CAPACITY_RESERVE x the cap only the categories of REALTIME_CATEGORY_PRIORITY
# connect (the later ones refused first), at the cap nobody (4029).
REALTIME_MAX_CONNECTIONS = env.int("REALTIME_MAX_CONNECTIONS", default=0)
REALTIME_CAPACITY_RESERVE = env.float("REALTIME_CAPACITY_RESERVE", default=0.9)
# Supplier categories (weddings.models.Supplier.Category), most important on the day first:
# the last refused near capacity and the first warmed (scaling/warming.py).
REALTIME_CATEGORY_PRIORITY = env.list(
    "REALTIME_CATEGORY_PRIORITY", default=["photographer", "venue", "caterer"]
)
# The database breaker of the realtime path (core.breaker.database_breaker): this many
# connection failures in a row (fewer in wedding-day mode) make calls fail at once for
# DATABASE_BREAKER_RESET seconds instead of each holding a thread until its timeout.
DATABASE_BREAKER_FAILURES = env.int("DATABASE_BREAKER_FAILURES", default=5)
DATABASE_BREAKER_FAILURES_WEDDING_DAY = env.int("DATABASE_BREAKER_FAILURES_WEDDING_DAY", default=3)
DATABASE_BREAKER_RESET = env.float("DATABASE_BREAKER_RESET", default=2.0)
# Garbage collection in server processes (wedsync/gctune.py): freeze the start-up heap,
# and collect young objects less often. "700,10,10" and false give CPython's defaults.
SERVER_GC_FREEZE = env.bool("SERVER_GC_FREEZE", default=True)
SERVER_GC_THRESHOLDS = [
    int(v) for v in env.list("SERVER_GC_THRESHOLDS", default=["1500", "10", "100"])
]
# The server processes' thread switch interval (sys.setswitchinterval), in ms: how long the
# event loop may wait for the GIL while other threads run Python. CPython's 5 ms by
# default; 1 ms measured better under a member's flood in one sitting, worse in another
# (docs/benchmarks.md).
SERVER_SWITCH_INTERVAL_MS = env.float("SERVER_SWITCH_INTERVAL_MS", default=5.0)
if not 0.1 <= SERVER_SWITCH_INTERVAL_MS <= 100:
    raise ImproperlyConfigured(
        f"SERVER_SWITCH_INTERVAL_MS must be between 0.1 and 100, not {SERVER_SWITCH_INTERVAL_MS}"
    )
# Server processes per `python -m wedsync.serve` (its --workers default): above 1 they
# share one port through SO_REUSEPORT under a supervisor (docs/adr/0011-workers-on-one-port.md).
SERVER_WORKERS = env.int("SERVER_WORKERS", default=1)
# Transport limits of each server process (wedsync/server/serve.py, docs/operations.md):
# open connections (WebSockets included) above which a new request or WebSocket handshake
# is answered 503, and seconds a client gets to send a request's complete headers
# (from its connection, or from the first byte of a later request) before it is cut off.
SERVER_LIMIT_CONCURRENCY = env.int("SERVER_LIMIT_CONCURRENCY", default=20000)
SERVER_HEADER_TIMEOUT = env.float("SERVER_HEADER_TIMEOUT", default=10.0)
# Warm each server process up before it listens (wedsync/server/warmup.py): database
# threads and their connections, Redis pools, lazy imports; false leaves them to first use.
SERVER_WARMUP = env.bool("SERVER_WARMUP", default=True)
# permessage-deflate on the WebSocket, for clients that offer it (browsers do): ~85 % fewer
# bytes per event for ~43 KiB per connection and ~5 us per delivery (docs/adr/0034).
REALTIME_WS_COMPRESSION = env.bool("REALTIME_WS_COMPRESSION", default=True)

# Connections (realtime/connection_counts.py, PROTOCOL §8 close 4029): open WebSockets per user
# and per supplier, counted across every server process (in Redis; in-process on the
# embedded default). Wedding-day mode multiplies the supplier limit.
REALTIME_MAX_CONNECTIONS_PER_USER = env.int("REALTIME_MAX_CONNECTIONS_PER_USER", default=20)
REALTIME_MAX_CONNECTIONS_PER_SUPPLIER = env.int(
    "REALTIME_MAX_CONNECTIONS_PER_SUPPLIER", default=200
)
REALTIME_WEDDING_DAY_MULTIPLIER = env.int("REALTIME_WEDDING_DAY_MULTIPLIER", default=10)
# A registry entry lives this long after its last heartbeat (every sweep), so the
# connections of a crashed process stop counting within this many seconds.
REALTIME_CONNECTION_TTL = env.int("REALTIME_CONNECTION_TTL", default=30)
# On SIGTERM (wedsync.serve): seconds to let in-flight frames finish before the
# connections are closed with 1012, and then for the clients to go.
REALTIME_SHUTDOWN_GRACE = env.float("REALTIME_SHUTDOWN_GRACE", default=10.0)
# Circuit breakers around Redis (core/breaker.py): failures in a row that open one, and
# seconds before an open one lets a probe call through.
REDIS_BREAKER_FAILURES = env.int("REDIS_BREAKER_FAILURES", default=3)
REDIS_BREAKER_RESET = env.float("REDIS_BREAKER_RESET", default=2.0)
# Connections per process in the asyncio Redis pool shared by presence, the connection
# registry and readiness (the channel layer and the cache have their own pools).
REDIS_POOL_MAX_CONNECTIONS = env.int("REDIS_POOL_MAX_CONNECTIONS", default=50)

# Cache warming (scaling.warming): weddings whose ceremony starts within this many hours
# (or started within the last hour) are warmed every 15 minutes.
CACHE_WARM_HORIZON_HOURS = env.float("CACHE_WARM_HORIZON_HOURS", default=4.0)

# Scaling (docs/scaling.md): the actuator that applies decisions ("log" or "command"), the
# command's template ({asgi}, {workers}, {connection_limit}; split with shlex, no shell)
# and its timeout in seconds, and the bearer token KEDA sends to GET /api/scaling/desired
# (empty: only staff realtime tokens are accepted).
SCALING_ACTUATOR = env.str("SCALING_ACTUATOR", default="log")
SCALING_COMMAND_TEMPLATE = env.str("SCALING_COMMAND_TEMPLATE", default="")
SCALING_COMMAND_TIMEOUT = env.int("SCALING_COMMAND_TIMEOUT", default=30)
SCALING_API_TOKEN = env.str("SCALING_API_TOKEN", default="")
# Seconds between scaling evaluations (the decision's resolution; scale-out cooldown is
# 2 min). A late run gives way to the next one.
SCALING_EVALUATE_INTERVAL = env.int("SCALING_EVALUATE_INTERVAL", default=60)
# The scaling policy (scaling.decisions.ScalingPolicy; docs/scaling.md): the capacity of
# one ASGI process, headroom, bounds and how early to scale ahead of a forecast peak.
SCALING_CONNECTIONS_PER_PROCESS = env.int("SCALING_CONNECTIONS_PER_PROCESS", default=1000)
SCALING_HEADROOM = env.float("SCALING_HEADROOM", default=0.30)
SCALING_MIN_ASGI = env.int("SCALING_MIN_ASGI", default=2)
SCALING_MAX_ASGI = env.int("SCALING_MAX_ASGI", default=40)
SCALING_MIN_WORKERS = env.int("SCALING_MIN_WORKERS", default=1)
SCALING_MAX_WORKERS = env.int("SCALING_MAX_WORKERS", default=20)
SCALING_PRESCALE_HOURS = env.float("SCALING_PRESCALE_HOURS", default=1.0)
# Capacity reservations (ADR 0033): how many hours before a forecast peak its reserved
# capacity is in force (the reservation itself is taken up to 24 h ahead).
SCALING_RESERVATION_LEAD = env.float("SCALING_RESERVATION_LEAD", default=SCALING_PRESCALE_HOURS)
if not 0 <= SCALING_RESERVATION_LEAD <= 24:
    raise ImproperlyConfigured("SCALING_RESERVATION_LEAD must be 0 to 24 (hours)")
CELERY_BEAT_SCHEDULE["scaling-evaluate"] = {
    "task": "scaling.tasks.evaluate_scaling",
    "schedule": SCALING_EVALUATE_INTERVAL,
    "options": {"expires": max(1, SCALING_EVALUATE_INTERVAL - 5)},
}
# The fast reactive path (docs/scaling.md, ADR 0022): every SCALING_FAST_INTERVAL seconds
# the emergency check reads the server processes' figures and, over one of these limits
# in two readings in a row, scales out at once. 0 turns it off. The limits sit above the
# minute rule's (80 %, 500 ms, 75 %): it skips the cooldown, so it acts on a clear breach.
SCALING_FAST_INTERVAL = env.float("SCALING_FAST_INTERVAL", default=5.0)
SCALING_FAST_UTILISATION = env.float("SCALING_FAST_UTILISATION", default=0.90)
SCALING_FAST_LATENCY_P95 = env.float("SCALING_FAST_LATENCY_P95", default=1.0)  # seconds
SCALING_FAST_CPU = env.float("SCALING_FAST_CPU", default=0.90)  # of one core
SCALING_FAST_OUTBOX_DEPTH = env.int("SCALING_FAST_OUTBOX_DEPTH", default=2000)  # per process
if SCALING_FAST_INTERVAL > 0:
    CELERY_BEAT_SCHEDULE["scaling-emergency-check"] = {
        "task": "scaling.tasks.emergency_check",
        "schedule": SCALING_FAST_INTERVAL,
        "options": {"expires": SCALING_FAST_INTERVAL},  # a late reading is worthless
    }

# --- outbound webhooks (docs/integration.md, ADR 0023) ------------------------------------

# Seconds an HTTP call to an endpoint may take per step (connect, send, each read).
WEBHOOKS_TIMEOUT = env.float("WEBHOOKS_TIMEOUT", default=10.0)
# Attempts of one event before its delivery is dead (its topic then waits for a replay);
# the waits between them: base, 2 base, 4 base ... capped. 12 attempts of 5 s .. 1 h wait
# about 3 h in all.
WEBHOOKS_MAX_ATTEMPTS = env.int("WEBHOOKS_MAX_ATTEMPTS", default=12)
WEBHOOKS_BACKOFF_BASE = env.float("WEBHOOKS_BACKOFF_BASE", default=5.0)  # seconds
WEBHOOKS_BACKOFF_MAX = env.float("WEBHOOKS_BACKOFF_MAX", default=3600.0)  # seconds
# Events one delivery run sends at most before it queues the next run (others get a turn).
WEBHOOKS_BATCH = env.int("WEBHOOKS_BATCH", default=100)
# Endpoints on loopback, private, link-local or reserved addresses (SSRF: the cluster's
# own services, cloud metadata) are refused unless allowed; development allows them.
WEBHOOKS_ALLOW_PRIVATE = env.bool("WEBHOOKS_ALLOW_PRIVATE", default=DEBUG)
# Days delivered records are kept in admin (dead and waiting ones stay until delivered).
WEBHOOKS_RETENTION_DAYS = env.int("WEBHOOKS_RETENTION_DAYS", default=7)
# Seconds between sweeps: a run of every active endpoint, for kicks or retries lost.
WEBHOOKS_SWEEP_INTERVAL = env.int("WEBHOOKS_SWEEP_INTERVAL", default=30)
CELERY_BEAT_SCHEDULE["webhooks-sweep"] = {
    "task": "webhooks.tasks.sweep",
    "schedule": WEBHOOKS_SWEEP_INTERVAL,
    "options": {"expires": max(1, WEBHOOKS_SWEEP_INTERVAL - 5)},
}

# --- Web Push to members' browsers (docs/web.md, ADR 0032) ------------------------------

# The VAPID key pair (RFC 8292) that signs every push, base64url as `manage.py
# push_vapid_keys` prints it (the private key is a secret), and the contact the push
# services are given (mailto: or https:). Any of the three empty: push is off (no
# subscription is taken, nothing is sent).
WEB_PUSH_VAPID_PRIVATE_KEY = env.str("WEB_PUSH_VAPID_PRIVATE_KEY", default="")
WEB_PUSH_VAPID_PUBLIC_KEY = env.str("WEB_PUSH_VAPID_PUBLIC_KEY", default="")
WEB_PUSH_SUBJECT = env.str("WEB_PUSH_SUBJECT", default="")
# Seconds a push service keeps a message for a phone that is off (the TTL header).
WEB_PUSH_TTL = env.int("WEB_PUSH_TTL", default=3600)
# Seconds an HTTP call to a push service may take per step (connect, send, each read).
WEB_PUSH_TIMEOUT = env.float("WEB_PUSH_TIMEOUT", default=10.0)
# Attempts of one push (a 429, a 5xx or no answer is tried again); the waits between
# them: base, 2 base, 4 base ... 6 attempts of 5 s wait about 2.5 min in all.
WEB_PUSH_MAX_ATTEMPTS = env.int("WEB_PUSH_MAX_ATTEMPTS", default=6)
WEB_PUSH_BACKOFF_BASE = env.float("WEB_PUSH_BACKOFF_BASE", default=5.0)  # seconds
# Push service URLs on loopback, private, link-local or reserved addresses (SSRF: a
# member registers the URL) are refused unless allowed; development allows them.
WEB_PUSH_ALLOW_PRIVATE = env.bool("WEB_PUSH_ALLOW_PRIVATE", default=DEBUG)

# --- the platform database's changes as events (docs/integration.md, ADR 0027) ----------

# The platform's PostgreSQL (wal_level=logical), read by `manage.py platform_changes`
# through a logical replication slot; may be WedSync's own database. Empty: not used.
PLATFORM_CHANGES_DATABASE_URL = env.str("PLATFORM_CHANGES_DATABASE_URL", default="")
# The slot and publication the platform's DBA created (docs/integration.md).
PLATFORM_CHANGES_SLOT = env.str("PLATFORM_CHANGES_SLOT", default="wedsync_changes")
PLATFORM_CHANGES_PUBLICATION = env.str("PLATFORM_CHANGES_PUBLICATION", default="wedsync_changes")
# The platform's table (schema.name) whose rows become timeline items, and its column
# holding the WedSync wedding id (the topic is wedding:<that id>).
PLATFORM_CHANGES_TABLE = env.str("PLATFORM_CHANGES_TABLE", default="public.platform_timeline")
PLATFORM_CHANGES_WEDDING_COLUMN = env.str("PLATFORM_CHANGES_WEDDING_COLUMN", default="wedding_id")
# Messages read per pass (whole transactions: a long one is read whole past this).
PLATFORM_CHANGES_BATCH = env.int("PLATFORM_CHANGES_BATCH", default=500)
# Seconds between passes while nothing changes: the latency of an event when idle.
PLATFORM_CHANGES_POLL_INTERVAL = env.float("PLATFORM_CHANGES_POLL_INTERVAL", default=0.5)
# Seconds between heartbeats of an idle slot: each lets the slot release the WAL of the
# platform's other tables, which it would otherwise keep.
PLATFORM_CHANGES_HEARTBEAT_INTERVAL = env.float("PLATFORM_CHANGES_HEARTBEAT_INTERVAL", default=30.0)
# WAL kept by the slot past which the consumer logs a warning (and alerts should fire).
PLATFORM_CHANGES_LAG_ALERT_BYTES = env.int("PLATFORM_CHANGES_LAG_ALERT_BYTES", default=1 << 30)

# Declared number of ASGI server processes in this deployment. It cannot be detected, so
# the operator states it; a system check refuses several with the in-process layer.
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=1)

# --- monitoring (docs/monitoring.md) ------------------------------------------------------

# prometheus_client's multiprocess mode: every process of one host (ASGI servers, Celery
# workers, beat) writes its metrics to files in this directory and /metrics adds them up.
# The library decides at import time, from this environment variable, so it is exported
# here, before anything can import it. One directory per host (per PID namespace): files
# of dead processes are recognised by their pid (docs/monitoring.md).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "metrics"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
# GET /metrics: a scraper sends this bearer token, or comes from one of these networks
# (REMOTE_ADDR: behind a proxy on this host, loopback is everybody, hence no default
# without DEBUG). Staff may also use their realtime token.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list(
    "METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"] if DEBUG else []
)
# Where the minute snapshot and the live figures read the server processes' metrics when
# they run on other hosts than the worker (Kubernetes: every pod is a host, with its own
# files): base URLs (http://10.0.0.5:8000), dns:NAME:PORT (every address NAME resolves to,
# e.g. a headless Service's pods) and "local" (this host's own files), sent METRICS_TOKEN.
# Empty: this host's files alone, enough where every process shares them (one host).
METRICS_PEERS = env.list("METRICS_PEERS", default=[])
# The Host header sent to the peers; empty: each peer's own address, as Prometheus sends
# (the pods list their IP in ALLOWED_HOSTS for it).
METRICS_PEERS_HOST = env.str("METRICS_PEERS_HOST", default="")
# Seconds between two samples of a process's gauges (connections, subscriptions, outbox
# depth, presence, cache counters, breakers) into the shared metric files.
METRICS_SAMPLE_INTERVAL = env.float("METRICS_SAMPLE_INTERVAL", default=5.0)
# Seconds between two `metrics.live` events on the `ops` topic (the live dashboard).
MONITORING_LIVE_INTERVAL = env.float("MONITORING_LIVE_INTERVAL", default=5.0)
MONITORING_SNAPSHOT_RETENTION_DAYS = env.int("MONITORING_SNAPSHOT_RETENTION_DAYS", default=90)
CELERY_BEAT_SCHEDULE["monitoring-live"] = {
    "task": "monitoring.tasks.publish_live",
    "schedule": MONITORING_LIVE_INTERVAL,
    "options": {"expires": MONITORING_LIVE_INTERVAL},  # a stale live figure is worthless
}
# Alert rules: the thresholds staff start from; each becomes a row editable in admin
# (Monitoring > Alert rules) the first time alerts are evaluated, and the row wins after.
# "above": the alert opens when the value reaches the threshold; "below": when it falls
# to it. monitoring/rules.py says what each value is.
MONITORING_ALERT_RULES: dict[str, dict[str, float]] = {
    "delivery_latency_p95": {"warning": 0.5, "critical": 2.0},  # seconds, over a minute
    "error_rate": {"warning": 0.02, "critical": 0.10},  # error replies per frame in
    "connection_utilisation": {"warning": 0.8, "critical": 0.95},  # busiest supplier/limit
    "cache_hit_ratio": {"warning": 0.8, "critical": 0.5},  # below
    "circuit_breaker_open": {"warning": 1, "critical": 3},  # Redis breakers open
    "celery_beat_late": {"warning": 180, "critical": 600},  # seconds since the last snapshot
    "scaling_actuator_failed": {"warning": 1, "critical": 3},  # failed applies in a row
    "ack_overdue": {"warning": 5, "critical": 15},  # minutes an ack_required event waits
}
# Unacknowledged alerts escalate: technical (at once) -> management -> executive after
# these many minutes open. An alert resolves once its condition stayed clear this long,
# so a value flapping around a threshold keeps one alert instead of reopening it.
ALERT_ESCALATE_MANAGEMENT_MINUTES = env.int("ALERT_ESCALATE_MANAGEMENT_MINUTES", default=15)
ALERT_ESCALATE_EXECUTIVE_MINUTES = env.int("ALERT_ESCALATE_EXECUTIVE_MINUTES", default=45)
ALERT_CLEAR_MINUTES = env.int("ALERT_CLEAR_MINUTES", default=5)
ALERT_EMAILS = {
    "technical": env.list("ALERT_EMAILS_TECHNICAL", default=[]),
    "management": env.list("ALERT_EMAILS_MANAGEMENT", default=[]),
    "executive": env.list("ALERT_EMAILS_EXECUTIVE", default=[]),
}
# Alert e-mails go through Django's mail backend: EMAIL_URL (smtp://user:pass@host:587,
# submission://... for STARTTLS) or, by default, the console.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="wedsync@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- logs and errors (docs/operations.md, "Logs") ------------------------------------------

# Every line says what it belongs to (core/logging.py): the HTTP request's id (X-Request-ID
# from the proxy, or made here, and sent back with the response), the WebSocket connection
# and its user, the Celery task. "json" is one JSON object a line, for a log shipper: the
# default in production shape; "plain" is for people, the default with DJANGO_DEBUG=true.
# uvicorn's loggers (its access log too) write through these handlers (wedsync/server/serve.py).
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if DEBUG else "json")
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'json' or 'plain', not {LOG_FORMAT!r}")
# django-guid: the request id. A client's (a proxy's) X-Request-ID is kept when it is a UUID
# (dashed, or nginx's 32 hex digits), else replaced, so a client cannot write what it likes
# into every line; the response carries it back.
DJANGO_GUID = {
    "GUID_HEADER_NAME": "X-Request-ID",
    "VALIDATE_GUID": True,
    "RETURN_HEADER": True,
    "EXPOSE_HEADER": False,  # same origin: nothing to expose across origins
}
# Django's error mail (a 500 with its traceback, credentials redacted) goes to these:
# DJANGO_ADMINS="Name <address>, Other <address>". None by default: no mail is built.
ADMINS = [
    (name, address)
    for name, address in getaddresses([env.str("DJANGO_ADMINS", default="")])
    if name or address
]
if any("@" not in address for _, address in ADMINS):
    raise ImproperlyConfigured('DJANGO_ADMINS must read "Name <address>, Name <address>"')

# dictConfig, and Python's warnings logged through it (a JSON log holds only JSON).
LOGGING_CONFIG = "core.logging.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "core.logging.PlainFormatter"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "filters": {
        "context": {"()": "core.logging.LogContext"},
        # Realtime tokens, connect tickets and Bearer credentials: no line carries one.
        "redact_tokens": {"()": "core.logging.RedactTokens"},
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "redact_tokens"],
        },
        "mail_admins": {
            "class": "core.logging.AdminEmailHandler",
            "level": "ERROR",
            "filters": ["require_debug_false", "redact_tokens"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Replaces Django's own handlers: its console one wrote every line a second time
        # with DEBUG, unredacted. Its records reach the console through the root.
        "django": {"handlers": ["mail_admins"], "level": "NOTSET"},
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        # One line per request at INFO ("... Generated new GUID"): the id is on every line.
        "django_guid": {"level": "WARNING"},
    },
}

# Sentry (optional): errors and unhandled exceptions of the server, the Celery workers and
# beat, with nothing that carries a credential (core/logging.py, sentry_init). Off unless
# SENTRY_DSN is set; traces off unless SENTRY_TRACES_SAMPLE_RATE is above 0.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    from core.logging import sentry_init

    sentry_init(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", default="development" if DEBUG else "production"),
        release=env.str("SENTRY_RELEASE", default="") or None,
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
    )
