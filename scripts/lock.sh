#!/usr/bin/env bash
# Re-locks the dependencies declared in pyproject.toml (and the Python client's, in
# clients/python/pyproject.toml) into the two files that pip installs with
# --require-hashes:
#   requirements.txt      production: [project].dependencies
#   requirements-dev.txt  development and CI: the same pins, plus [dependency-groups].dev
#                         and the Python client's dependencies
# A pin already in a file is kept while it still satisfies pyproject.toml; extra arguments
# go to both resolutions, e.g. --upgrade (everything to the newest allowed) or
# --upgrade-package django. Run through `make lock` (uv comes from .venv's lock).
#
# uv resolves once for every Python and platform the project supports (--universal:
# markers instead of one machine's answer), and writes every file's sha256. Each file's
# header is the exact command, so a bot (renovate.json) can re-run it.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-.venv/bin/uv}
if ! [ -x "$uv" ] && ! command -v "$uv" >/dev/null 2>&1; then
  echo "lock: $uv not found: run \`make lock\` (it installs uv into .venv first)" >&2
  exit 1
fi

compile=("$uv" pip compile --quiet --universal --generate-hashes)
"${compile[@]}" pyproject.toml -o requirements.txt "$@"
"${compile[@]}" pyproject.toml clients/python/pyproject.toml --group dev \
  -c requirements.txt -o requirements-dev.txt "$@"
echo "lock: requirements.txt and requirements-dev.txt are locked from pyproject.toml"
