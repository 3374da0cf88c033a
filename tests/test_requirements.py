"""What production installs (requirements.txt) against what development adds
(requirements-dev.txt): the server's runtime needs are in the first, test tools only in the
second."""

from __future__ import annotations

import re
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[=<>~ ]", line, maxsplit=1)[0].lower())
    return names


def test_requirements__production_carries_no_test_tools():
    production = _names(BASE_DIR / "requirements.txt")
    assert production.isdisjoint(
        {"pytest", "pytest-django", "pytest-asyncio", "pytest-timeout", "playwright",
         "hypothesis", "ruff", "import-linter"}
    )  # fmt: skip


def test_requirements__production_has_what_the_server_runs_on():
    # uvicorn's WebSocket protocol (ws="websockets-sansio" in wedsync.server.serve), its
    # loop and parser, and the CSP middleware named in settings.MIDDLEWARE
    production = _names(BASE_DIR / "requirements.txt")
    assert {"uvicorn", "websockets", "uvloop", "httptools", "django-csp"} <= production


def test_requirements__development_adds_to_production_and_pins_the_same_versions():
    dev_text = (BASE_DIR / "requirements-dev.txt").read_text()
    assert "-r requirements.txt" in dev_text
    assert _names(BASE_DIR / "requirements-dev.txt").isdisjoint(
        _names(BASE_DIR / "requirements.txt")
    )
