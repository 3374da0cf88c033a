# The two commands of the README, and a few for development.
.PHONY: run test lint bootstrap migrate

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

# ruff, and the layer contract of .importlinter (imports point one way; ADR 0014).
lint: bootstrap
	.venv/bin/ruff check .
	PYTHONPATH=.:clients/python .venv/bin/lint-imports --no-cache

test: lint
	.venv/bin/python -m pytest $(PYTEST_ARGS)
