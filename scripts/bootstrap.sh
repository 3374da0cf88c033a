#!/usr/bin/env bash
# Creates .venv with Python 3.11+, installs requirements-dev.txt into it (production's
# requirements.txt plus the test tools; again only when either file changed) and writes a
# development .env on first use. Safe to run any number of times.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "bootstrap: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python)
  echo "bootstrap: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing requirements-dev.txt into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

if [ ! -f .env ]; then
  echo "bootstrap: writing .env for local development (DJANGO_DEBUG=true)"
  cp .env.example .env
fi
mkdir -p var
