"""The dependencies: pyproject.toml declares them, ``make lock`` (scripts/lock.sh) locks them
with hashes into requirements.txt (production) and requirements-dev.txt (development and
CI), and pip installs those with ``--require-hashes``.

The locks must say what pyproject.toml says (a dependency added, removed or narrowed
there without ``make lock`` fails here), production's lock carries no test tool, and the
server runs without anything only the development lock brings.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

BASE_DIR = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((BASE_DIR / "pyproject.toml").read_text())
CLIENT_PYPROJECT = tomllib.loads((BASE_DIR / "clients/python/pyproject.toml").read_text())
RELOCK = "pyproject.toml and the locks disagree: run `make lock`"

# What production must never install: the test tools, the browser driver, the development
# ASGI server, the linters and the lock tool.
DEVELOPMENT_ONLY = {
    "pytest", "pytest-django", "pytest-asyncio", "pytest-timeout", "hypothesis",
    "playwright", "daphne", "ruff", "import-linter", "openapi-core", "uv",
}  # fmt: skip


@dataclass
class Pin:
    """One entry of a lock: ``name==version [; marker]``, its hashes and its ``# via``."""

    name: str
    version: str
    marker: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?: ; (?P<marker>.+?))?(?: \\)?$"
)


def read_lock(name: str) -> list[Pin]:
    """The pins of a lock written by scripts/lock.sh."""
    pins: list[Pin] = []
    for line in (BASE_DIR / name).read_text().splitlines():
        entry = _ENTRY.match(line)
        if entry:
            pins.append(
                Pin(canonicalize_name(entry["name"]), entry["version"], entry["marker"] or "")
            )
            continue
        assert not line or line.startswith((" ", "#")), f"{name}: unexpected line {line!r}"
        text = line.strip()
        if text.startswith("--hash=sha256:"):
            pins[-1].hashes.append(text.removeprefix("--hash=").rstrip(" \\"))
        elif pins and text.startswith("# via "):
            pins[-1].via.append(text.removeprefix("# via "))
        elif pins and text.startswith("#   "):
            pins[-1].via.append(text.removeprefix("#   "))
    return pins


PRODUCTION = read_lock("requirements.txt")
DEVELOPMENT = read_lock("requirements-dev.txt")


def names(pins: list[Pin]) -> set[str]:
    return {pin.name for pin in pins}


def requirements(specs: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, specs)}


def direct(pins: list[Pin], source: str) -> set[str]:
    """The pins a lock says it holds because ``source`` asks for them."""
    return {pin.name for pin in pins if source in pin.via}


RUNTIME = requirements(PYPROJECT["project"]["dependencies"])
DEV_GROUP = requirements(PYPROJECT["dependency-groups"]["dev"])
CLIENT = requirements(CLIENT_PYPROJECT["project"]["dependencies"])


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-dev.txt"])
def test_lock__every_entry_is_an_exact_pin_with_sha256_hashes(lock: str) -> None:
    pins = read_lock(lock)

    assert len(pins) > 20
    unhashed = [pin.name for pin in pins if not pin.hashes]
    assert unhashed == [], f"{lock}: no hash for {unhashed}"
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for pin in pins for h in pin.hashes)


# What scripts/lock.sh runs (make lock), as each file's header records it: the command a
# dependency bot re-runs (renovate.json). Universal: one lock for every supported Python
# and platform; hashed: pip installs it with --require-hashes.
LOCK_COMMANDS = {
    "requirements.txt": "pyproject.toml -o requirements.txt",
    "requirements-dev.txt": "pyproject.toml clients/python/pyproject.toml --group dev "
    "-c requirements.txt -o requirements-dev.txt",
}


@pytest.mark.parametrize("lock", sorted(LOCK_COMMANDS))
def test_lock__was_made_by_scripts_lock(lock: str) -> None:
    header = (BASE_DIR / lock).read_text().splitlines()[:2]
    script = (BASE_DIR / "scripts/lock.sh").read_text().replace("\\\n  ", "")

    assert header[1] == f"#    uv pip compile --universal --generate-hashes {LOCK_COMMANDS[lock]}"
    assert "pip compile --quiet --universal --generate-hashes" in script
    assert LOCK_COMMANDS[lock].replace(f" -o {lock}", "") in script


def test_lock__production_carries_no_test_tools_browser_driver_or_daphne() -> None:
    assert names(PRODUCTION).isdisjoint(DEVELOPMENT_ONLY), names(PRODUCTION) & DEVELOPMENT_ONLY
    assert set(RUNTIME).isdisjoint(DEVELOPMENT_ONLY)


def test_lock__production_has_what_the_server_runs_on() -> None:
    # uvicorn's WebSocket protocol (ws="websockets-sansio" in wedsync.server.serve), its
    # loop and parser, and the CSP middleware named in settings.MIDDLEWARE
    assert {"uvicorn", "websockets", "uvloop", "httptools", "django-csp"} <= names(PRODUCTION)


def test_lock__development_has_every_production_pin_at_the_same_version() -> None:
    development = {(pin.name, pin.version, pin.marker) for pin in DEVELOPMENT}
    missing = [
        f"{pin.name}=={pin.version}"
        for pin in PRODUCTION
        if (pin.name, pin.version, pin.marker) not in development
    ]
    assert missing == []
    assert DEVELOPMENT_ONLY <= names(DEVELOPMENT)


@pytest.mark.parametrize(
    ("lock", "source", "declared"),
    [
        ("requirements.txt", "wedsync-realtime (pyproject.toml)", RUNTIME),
        ("requirements-dev.txt", "wedsync-realtime (pyproject.toml)", RUNTIME),
        ("requirements-dev.txt", "wedsync-realtime (pyproject.toml:dev)", DEV_GROUP),
        ("requirements-dev.txt", "wedsync-client (clients/python/pyproject.toml)", CLIENT),
    ],
    ids=["runtime", "runtime in development", "dev group", "python client"],
)
def test_lock__holds_exactly_what_pyproject_declares_within_its_bounds(
    lock: str, source: str, declared: dict[str, Requirement]
) -> None:
    pins = read_lock(lock)

    # then every dependency declared is locked because of it, and nothing else is
    assert direct(pins, source) == set(declared), RELOCK
    # and each locked version is one the declaration allows
    for pin in pins:
        if pin.name in declared:
            assert declared[pin.name].specifier.contains(pin.version, prereleases=True), (
                f"{pin.name}=={pin.version} is outside {declared[pin.name]}: {RELOCK}"
            )


# A fresh interpreter whose imports of every module only the development lock brings
# fail, as on a production install: settings, the URL conf, the ASGI application, Celery
# and the system checks load, and neither daphne nor the benchmarks are installed apps.
PRODUCTION_PROBE = """
import json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # "import name" raises ModuleNotFoundError, find_spec is None
import django
from django.conf import settings
django.setup()
from django.core.management import call_command
call_command("check", "--fail-level", "ERROR")
import wedsync.asgi, wedsync.celery, wedsync.serve, wedsync.urls  # noqa: F401
from wedsync.server.asgi_server import asgi_server_command
try:
    asgi_server_command("127.0.0.1", 8000, "daphne")
    daphne = "accepted"
except ValueError as exc:
    daphne = str(exc)
print(json.dumps({"apps": settings.INSTALLED_APPS, "daphne": daphne,
                  "uvicorn": asgi_server_command("127.0.0.1", 8000)}))
"""


def _development_only_modules() -> list[str]:
    """The top-level modules of the distributions in the development lock only, and the
    Python client's."""
    dev_only = names(DEVELOPMENT) - names(PRODUCTION) - {"setuptools"}
    modules = {"wedsync_client"}
    for module, dists in importlib.metadata.packages_distributions().items():
        if any(canonicalize_name(d) in dev_only for d in dists):
            modules.add(module)
    return sorted(modules)


def test_production_install__server_loads_without_the_development_packages() -> None:
    # given an interpreter where every development-only module is missing
    blocked = _development_only_modules()
    assert {"daphne", "pytest", "playwright", "hypothesis"} <= set(blocked)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "PYTHON"))}
    env |= {
        "DJANGO_SETTINGS_MODULE": "wedsync.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "production-probe-" + "x" * 40,
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "ALLOWED_HOSTS": "wedsync.example.com",
        "PYTHONPATH": str(BASE_DIR),
    }

    # when it loads the server
    done = subprocess.run(
        [sys.executable, "-c", PRODUCTION_PROBE, json.dumps(blocked)],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    # then it loads, serves with uvicorn, and says daphne is a development install
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "daphne" not in loaded["apps"] and "bench" not in loaded["apps"]
    assert "development install" in loaded["daphne"]
    assert loaded["uvicorn"][1:3] == ["-m", "wedsync.serve"]


def test_development_install__daphne_serves_runserver_first() -> None:
    from django.conf import settings

    assert settings.INSTALLED_APPS[0] == "daphne"
    assert "bench" in settings.INSTALLED_APPS
