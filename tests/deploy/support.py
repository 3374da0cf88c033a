"""What the deployment tests share: the project's paths, the variables docs/configuration.md
documents, the tools (kubectl, hadolint) and a reader of the image's build context.

A missing tool skips its test with the reason on a laptop and fails it with ``CI=true``
(tests/conftest.py's rule for Redis and PostgreSQL): CI never skips these checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import IN_CI

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DEPLOY_DIR = BASE_DIR / "deploy"
K8S_DIR = DEPLOY_DIR / "k8s"
OVERLAYS = ("single-node", "production")
CONFIGURATION_DOC = BASE_DIR / "docs" / "configuration.md"

# The image every WedSync container runs, as the base names it (overlays set the registry).
IMAGE_NAME = "wedsync"
# What the overlays put in its place.
RELEASE_IMAGE = "registry.example.com/wedsync"


def missing(reason: str) -> None:
    """Skip with the reason; with CI=true, fail instead (CI never skips these)."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def tool(name: str, install_hint: str) -> str:
    """The path of a command-line tool: the test virtualenv's own first (hadolint comes
    from PyPI, requirements-dev.txt), then PATH."""
    own = Path(sys.executable).parent / name
    if own.exists():
        return str(own)
    found = shutil.which(name)
    if found is None:
        missing(f"{name} is not installed ({install_hint})")
    return str(found)


# --- docs/configuration.md ----------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    """One variable of the doc's table, with its default when the doc gives a plain one."""

    name: str
    default: str | None  # None: a default in words, or depending on another variable


def _defaults(cell: str, count: int) -> list[str | None]:
    """The default column of a row naming ``count`` variables: "`2` / `40`", "`true`",
    "`2592000` (30 days)", "empty", "empty (no token accepted)"; anything else in words
    (or naming a path of the checkout) is None."""
    if count > 1:
        parts = [p.strip() for p in cell.split(" / ")]
        return [_defaults(p, 1)[0] for p in parts] if len(parts) == count else [None] * count
    if re.fullmatch(r"empty( \(.*\))?", cell):
        return [""]
    match = re.fullmatch(r"`([^`]*)`( \([^)]*\))?", cell)
    if match is None or "<" in match.group(1):
        return [None]
    return [match.group(1)]


def documented_variables() -> dict[str, Documented]:
    """Every variable of the "Environment variables" table of docs/configuration.md."""
    section = CONFIGURATION_DOC.read_text().split("## Environment variables", 1)[1]
    section = section.split("\n## ", 1)[0]
    variables: dict[str, Documented] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        for name, default in zip(names, _defaults(cells[1], len(names)), strict=True):
            variables[name] = Documented(name, default)
    assert len(variables) > 50, "the table of docs/configuration.md was not found"
    return variables


def same_value(value: str, default: str) -> bool:
    """Whether a configured value is the documented default: numbers by value (``20`` is
    ``20.0``), booleans without case, lists without spaces."""
    if value.strip().lower() == default.strip().lower():
        return True
    try:
        return float(value) == float(default)
    except ValueError:
        return value.replace(" ", "") == default.replace(" ", "")


# --- env files ------------------------------------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an env file (comments and blank lines skipped), as docker
    compose and kubectl read them: the value is everything after the first "="."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


# --- Kubernetes ---------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict]:
    """``kubectl kustomize DIRECTORY``: the rendered objects."""
    kubectl = tool("kubectl", "kubectl is what renders the Kustomize overlays")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_spec(obj: dict) -> dict | None:
    """The pod template's spec of a workload (Deployment, StatefulSet, Job), else None."""
    template = obj.get("spec", {}).get("template")
    return template["spec"] if template else None


def containers(obj: dict, *, init: bool = True) -> list[dict]:
    spec = pod_spec(obj) or {}
    return [*(spec.get("initContainers", []) if init else []), *spec.get("containers", [])]


def is_wedsync(container: dict) -> bool:
    """A container of our image (not PostgreSQL's or Redis's in the single-node overlay)."""
    image = container["image"]
    return image == IMAGE_NAME or image.startswith(RELEASE_IMAGE)


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(obj: dict, name: str) -> dict:
    matches = [c for c in containers(obj) if c["name"] == name]
    assert len(matches) == 1, f"{obj['metadata']['name']} has no container {name}"
    return matches[0]


def env_value(container_: dict, name: str) -> str:
    values = [e["value"] for e in container_.get("env", []) if e["name"] == name]
    assert values, f"container {container_['name']} does not set {name}"
    return values[-1]


# --- the image's build context --------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(excluded?, pattern) for each line of .dockerignore, in order."""
    patterns = []
    for line in (BASE_DIR / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((not negated, line.lstrip("!").rstrip("/")))
    return patterns


def _regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (Go's filepath.Match plus ``**``)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches the path or one of its parent folders."""
    parts = path.split("/")
    regex = _regex(pattern)
    return any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts)))


def in_build_context(path: str) -> bool:
    """Whether ``path`` (relative to the checkout) is sent to the image build: the last
    .dockerignore pattern matching it decides."""
    included = True
    for excluded, pattern in dockerignore_patterns():
        if _matches(pattern, path):
            included = not excluded
    return included


def build_context_files() -> list[Path]:
    """The files of this checkout that ``docker build .`` would receive. Folders left out
    whole (no ``!`` pattern reaches inside them) are not walked: .venv and var are big."""
    reopened = [p for excluded, p in dockerignore_patterns() if not excluded]
    files = []
    for root, folders, names in os.walk(BASE_DIR):
        here = Path(root).relative_to(BASE_DIR).as_posix()
        prefix = "" if here == "." else here + "/"
        folders[:] = [
            f
            for f in folders
            if f != ".git"
            and (
                in_build_context(prefix + f)
                or any(p.startswith(prefix + f + "/") for p in reopened)
            )
        ]
        files += [Path(root) / n for n in names if in_build_context(prefix + n)]
    return sorted(files)
