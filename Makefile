# The two commands of the README, and a few for development.
.PHONY: run test lint format bootstrap migrate lock schema

bootstrap:
	@scripts/bootstrap.sh

migrate: bootstrap
	.venv/bin/python manage.py migrate --noinput

# The whole stack on the embedded default: ASGI server + Celery worker + beat.
run: migrate
	@[ -s var/demo.json ] || { echo "Seeding a demo Saturday (var/demo.json)"; \
	  .venv/bin/python manage.py seed_demo --weddings 3 --vendors-per-wedding 5 --json > var/demo.json.tmp \
	  && mv var/demo.json.tmp var/demo.json; }
	.venv/bin/python manage.py runstack --demo-file var/demo.json

# ruff (lint and format), and the layer contract of .importlinter (imports point one way;
# ADR 0014).
lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	PYTHONPATH=.:clients/python .venv/bin/lint-imports --no-cache

# The suite runs in PYTEST_WORKERS processes (pytest-xdist; each its own test database,
# Redis and metrics folder: tests/parallel.py); a file's tests stay in one worker, so its
# servers and browsers start once. PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 2

test: lint
	.venv/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Formats the code as `make lint` checks it.
format: bootstrap
	.venv/bin/ruff format .

# After editing the dependencies in pyproject.toml (or clients/python/pyproject.toml):
# re-locks requirements.txt and requirements-dev.txt with hashes (scripts/lock.sh).
# LOCK_ARGS=--upgrade moves every pin to the newest allowed; LOCK_ARGS="--upgrade-package
# django" one package.
lock: bootstrap
	scripts/lock.sh $(LOCK_ARGS)

# Regenerates docs/protocol.schema.json from the frame types (realtime/protocol.py,
# realtime/frames.py, the event catalogue); a test fails while it is out of date.
schema: bootstrap
	.venv/bin/python manage.py protocol_schema --output docs/protocol.schema.json
