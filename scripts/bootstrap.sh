#!/usr/bin/env bash
# Creates .venv with Python 3.11+, installs the development lock into it
# (requirements-dev.txt: production's pins plus the test tools, every file checked against
# its sha256; again only when a lock changed), the Python client (editable, nothing
# fetched), and writes a development .env on first use. Safe to run any number of times.
#
# A Python whose venv module cannot put pip into a new environment (Debian and Ubuntu
# ship ensurepip apart, in python3-venv) leaves no half-made .venv behind: it is removed
# and the message says what to install. A .venv left half-made earlier is made again.
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

# A usable .venv: its python runs and has pip.
venv_works() {
  [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1
}

cannot_make_venv() {  # cannot_make_venv PYTHON: say why and what to install, to stderr
  local py=$1 version
  version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if ! "$py" -c 'import ensurepip' >/dev/null 2>&1; then
    cat >&2 <<EOF
bootstrap: $py (Python $version) cannot make a virtual environment with pip in it:
bootstrap: its ensurepip module is missing. The half-made .venv was removed.
bootstrap: On Debian or Ubuntu install it, then run make again:
bootstrap:     sudo apt-get install python$version-venv      (or: python3-venv)
bootstrap: Elsewhere, install a Python $version that includes ensurepip, or point
bootstrap: PYTHON=/path/to/python3 at another Python 3.11 or newer.
EOF
  else
    cat >&2 <<EOF
bootstrap: $py (Python $version) could not make a working .venv (see the error above);
bootstrap: the half-made .venv was removed. Fix that Python, or point
bootstrap: PYTHON=/path/to/python3 at another Python 3.11 or newer, then run make again.
EOF
  fi
}

if [ -e .venv ] && ! venv_works; then
  echo "bootstrap: .venv is incomplete (no python with pip in it): making it again"
  rm -rf .venv
fi
if [ ! -e .venv ]; then
  py=$(pick_python)
  echo "bootstrap: creating .venv with $($py --version)"
  if ! "$py" -m venv .venv || ! venv_works; then
    rm -rf .venv
    cannot_make_venv "$py"
    exit 1
  fi
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing requirements-dev.txt into .venv (--require-hashes)"
  pip=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
  "${pip[@]}" install --require-hashes -r requirements-dev.txt
  # Its dependencies are in the lock; setuptools (the build backend) too, so nothing
  # unlocked is fetched to build it.
  "${pip[@]}" install --no-deps --no-build-isolation --editable ./clients/python
  echo "$want" > "$stamp"
fi

if [ ! -f .env ]; then
  echo "bootstrap: writing .env for local development (DJANGO_DEBUG=true)"
  cp .env.example .env
fi
mkdir -p var
