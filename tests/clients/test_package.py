"""The Python client is its own package: importing it loads nothing of the server.

Checked in a fresh interpreter (this one has Django and the server loaded already), run
from an empty directory with only ``clients/python`` on its path, so it sees the package
as an installed copy would and cannot fall back on the repository's root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT_ROOT = Path(__file__).resolve().parents[2] / "clients" / "python"
SERVER_PACKAGES = ("realtime", "weddings", "core", "wedsync", "monitoring", "scaling", "web")
# What the package may load besides itself and the standard library (pyproject.toml).
DEPENDENCIES = ("websockets", "orjson")

# Every module of the package, not only those __init__ imports: a new module that pulls
# in the server must fail here too.
PROBE = """
import importlib, json, pkgutil, sys
before = set(sys.modules)
import wedsync_client
for info in pkgutil.walk_packages(wedsync_client.__path__, "wedsync_client."):
    importlib.import_module(info.name)
loaded = sorted(set(sys.modules) - before)
print(json.dumps({"loaded": loaded, "file": wedsync_client.__file__,
                  "stdlib": sorted(sys.stdlib_module_names)}))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO"))}
    env["PYTHONPATH"] = str(CLIENT_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_import__is_the_package_under_clients_python(probe: dict) -> None:
    assert Path(probe["file"]).resolve().is_relative_to(CLIENT_ROOT)


def test_import__loads_neither_django_nor_a_server_package(probe: dict) -> None:
    tops = {_top(name) for name in probe["loaded"]}
    assert "wedsync_client.client" in probe["loaded"]  # the probe did import it
    assert "django" not in tops
    assert tops.isdisjoint(SERVER_PACKAGES), sorted(tops & set(SERVER_PACKAGES))


def test_import__loads_only_its_declared_dependencies_and_the_standard_library(
    probe: dict,
) -> None:
    allowed = {"wedsync_client", *DEPENDENCIES, *probe["stdlib"]}
    others = sorted({_top(n) for n in probe["loaded"]} - allowed)
    assert others == []


def test_pyproject__declares_the_package_and_its_dependencies() -> None:
    import tomllib

    meta = tomllib.loads((CLIENT_ROOT / "pyproject.toml").read_text())
    packages = meta["tool"]["setuptools"]["packages"]
    on_disk = sorted(
        p.parent.relative_to(CLIENT_ROOT).as_posix().replace("/", ".")
        for p in CLIENT_ROOT.glob("wedsync_client/**/__init__.py")
    )
    assert packages == on_disk == ["wedsync_client"]
    names = {dep.split(">")[0].split("=")[0].strip() for dep in meta["project"]["dependencies"]}
    assert names == set(DEPENDENCIES)
    assert (CLIENT_ROOT / meta["project"]["readme"]).is_file()
