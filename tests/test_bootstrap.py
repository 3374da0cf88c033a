"""scripts/bootstrap.sh with a Python that cannot put pip into a new virtual environment
(Debian or Ubuntu without python3-venv: no ensurepip): it leaves no half-made .venv
behind, which every later ``make`` would trip over, and says what to install.

The Python is the real one, run through a wrapper that hides its ensurepip module the
way such a system lacks it, and whose ``-m venv`` makes an environment without pip (the
real ``--without-pip``) and then exits as Debian's does there: with its message and 1,
after ``.venv/bin/python`` was made. (venv runs ensurepip in isolated mode, so hiding the
module alone would not reach it.) A second flavour exits 0 all the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent

# On the wrapper's path ahead of the standard library: importing ensurepip fails.
NO_ENSUREPIP = 'raise ModuleNotFoundError("No module named \'ensurepip\'", name="ensurepip")\n'


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder with the project's bootstrap script and the files it reads."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(BASE_DIR / "scripts/bootstrap.sh", root / "scripts/bootstrap.sh")
    for name in ("requirements.txt", "requirements-dev.txt", ".env.example"):
        shutil.copy2(BASE_DIR / name, root / name)
    return root


DEBIAN_VENV_ERROR = (
    "The virtual environment was not created successfully because ensurepip is not\n"
    "available.  On Debian/Ubuntu systems, you need to install the python3-venv\n"
    "package using the following command.\n"
)
WRAPPER = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  shift 2
  {python} -m venv --without-pip "$@" || exit
  printf '%s' '{message}' >&2
  exit {status}
fi
PYTHONPATH={hidden} exec {python} "$@"
"""


@pytest.fixture(params=[1, 0], ids=["venv fails as on Debian", "venv succeeds without pip"])
def python_without_ensurepip(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An executable that runs this interpreter with ensurepip missing."""
    hidden = tmp_path / "hidden"
    (hidden / "ensurepip").mkdir(parents=True)
    (hidden / "ensurepip" / "__init__.py").write_text(NO_ENSUREPIP)
    wrapper = tmp_path / "bin" / "python3-without-ensurepip"
    wrapper.parent.mkdir()
    message = DEBIAN_VENV_ERROR if request.param else ""
    wrapper.write_text(
        WRAPPER.format(python=sys.executable, hidden=hidden, message=message, status=request.param)
    )
    wrapper.chmod(0o755)
    return wrapper


def bootstrap(checkout: Path, python: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHON"] = str(python)
    return subprocess.run(
        ["bash", "scripts/bootstrap.sh"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_says_what_to_install(done: subprocess.CompletedProcess[str]) -> None:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ensurepip module is missing" in done.stderr
    assert f"apt-get install python{version}-venv" in done.stderr
    assert "python3-venv" in done.stderr
    assert "half-made .venv was removed" in done.stderr
    assert "Traceback" not in done.stdout


def test_bootstrap__python_without_ensurepip__no_venv_left_and_says_what_to_install(
    checkout: Path, python_without_ensurepip: Path
) -> None:
    # given the wrapper really is such a Python: it cannot import ensurepip, and its
    # venv module leaves a python without pip behind
    probe = checkout.parent / "probe"
    subprocess.run([str(python_without_ensurepip), "-m", "venv", str(probe)], timeout=60)
    assert (probe / "bin" / "python").exists()
    assert not (probe / "bin" / "pip").exists()
    cannot = subprocess.run([str(python_without_ensurepip), "-c", "import ensurepip"], timeout=30)
    assert cannot.returncode != 0

    # when bootstrap runs with it
    done = bootstrap(checkout, python_without_ensurepip)

    # then it fails, says what to install, and leaves no .venv
    assert_says_what_to_install(done)
    assert not (checkout / ".venv").exists()

    # and running it again says the same (nothing half-made trips it up)
    again = bootstrap(checkout, python_without_ensurepip)
    assert_says_what_to_install(again)
    assert not (checkout / ".venv").exists()


def test_bootstrap__half_made_venv_from_before__is_made_again(
    checkout: Path, python_without_ensurepip: Path
) -> None:
    # given a .venv with a python but no pip, as an earlier failed run left it
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(checkout / ".venv")],
        check=True, timeout=60,
    )  # fmt: skip
    assert (checkout / ".venv" / "bin" / "python").exists()

    # when bootstrap runs (with the Python that cannot make a better one)
    done = bootstrap(checkout, python_without_ensurepip)

    # then it noticed, threw the half-made one away, and says what to install
    assert ".venv is incomplete" in done.stdout
    assert_says_what_to_install(done)
    assert not (checkout / ".venv").exists()
