# syntax=docker/dockerfile:1
# WedSync Realtime: one image for every process, chosen by its command (docs/deploy.md).
#   web (default)  python -m wedsync.serve --host 0.0.0.0 --port 8000
#   worker         celery -A wedsync worker -l info
#   beat           celery -A wedsync beat -l info      (exactly one)
#   migrations     python manage.py migrate --noinput  (before a new release serves)
# Production dependencies only (requirements.txt); the test tools, the benchmarks (bench/)
# and the Python client stay out. Linted by hadolint in tests/deploy/test_dockerfile.py.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the virtualenv and the collected static files --------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Every pinned package of requirements.txt ships a manylinux wheel for CPython 3.11 on
# x86_64 (psycopg[binary], uvloop, httptools, hiredis, lz4 ...; checked with
# `pip download --only-binary=:all:`): no compiler is needed. arm64 was not checked.
RUN python -m venv /opt/venv
COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt

WORKDIR /app
COPY manage.py ./
COPY core/ core/
COPY weddings/ weddings/
COPY realtime/ realtime/
COPY webhooks/ webhooks/
COPY platform_changes/ platform_changes/
COPY push/ push/
COPY scaling/ scaling/
COPY monitoring/ monitoring/
COPY web/ web/
COPY templates/ templates/
COPY wedsync/ wedsync/
COPY deploy/docker/healthcheck.py deploy/docker/healthcheck.py
COPY clients/js/realtime.js clients/js/realtime.js

# Static files with hashed names (DEBUG off: web.storage.HashedStaticFilesStorage), served
# by WhiteNoise from the image. Settings refuse to load without a secret key when DEBUG is
# off; this one exists for this command only and is not kept in the image.
RUN DJANGO_DEBUG=false \
    DJANGO_SECRET_KEY=collectstatic-at-build-only \
    DJANGO_READ_DOT_ENV_FILE=false \
    PROMETHEUS_MULTIPROC_DIR=/tmp/build-metrics \
    python manage.py collectstatic --noinput \
 && python -m compileall -q /app

# --- runtime --------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="WedSync Realtime" \
      org.opencontainers.image.description="Live coordination server for wedding days: web (default), Celery worker and beat by command"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_READ_DOT_ENV_FILE=false

# A fixed numeric user, so that Kubernetes can check runAsNonRoot against it.
RUN groupadd --system --gid 10001 wedsync \
 && useradd --system --uid 10001 --gid wedsync --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin wedsync

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# The code stays root's and read-only to the process; var/ is the one place it writes:
# the metric files of PROMETHEUS_MULTIPROC_DIR (var/metrics, one folder per host or pod).
RUN mkdir -p /app/var/metrics && chown -R wedsync:wedsync /app/var

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# /healthz with a Host the site accepts (the first of ALLOWED_HOSTS). Only the web
# command serves HTTP: compose.yaml gives the worker and beat checks of their own.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py", "8000"]

# On SIGTERM the server drains: frames in flight finish, WebSockets close with 1012 and
# clients reconnect elsewhere with `since`. Allow REALTIME_SHUTDOWN_GRACE x 2 and a few
# seconds before SIGKILL (`docker stop -t 30`, compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds).
CMD ["python", "-m", "wedsync.serve", "--host", "0.0.0.0", "--port", "8000"]
