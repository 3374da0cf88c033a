"""axe-core, the accessibility engine the browser tests inject into a page: test-only.

Fetched at test time from the npm registry with npm's own client (``npm pack``) into
``var/cache/axe-core/`` (git-ignored, never in the image), at a pinned version whose
tarball must match the registry's published integrity hash before anything in it is
used; a cached tarball is checked again on every run. Production installs carry none of
it: tests/ is not copied into the image.

To move to another version: ``npm view axe-core@<version> dist.integrity`` and put both
values below.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

AXE_VERSION = "4.14.1"
AXE_INTEGRITY = (  # the registry's dist.integrity of that version
    "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
)
CACHE_DIR = Path(__file__).resolve().parents[2] / "var" / "cache" / "axe-core"
_TARBALL = f"axe-core-{AXE_VERSION}.tgz"
_MEMBER = "package/axe.min.js"


class AxeUnavailable(RuntimeError):
    """axe-core could not be fetched or did not match its pinned integrity hash."""


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _fetch(tarball: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise AxeUnavailable(
            "npm is missing (apt-get install -y npm), so axe-core cannot be fetched"
        )
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            [npm, "pack", f"axe-core@{AXE_VERSION}", "--pack-destination", str(CACHE_DIR)],
            cwd=CACHE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AxeUnavailable(f"npm pack axe-core@{AXE_VERSION} took over 120 s") from exc
    if result.returncode != 0 or not tarball.is_file():
        raise AxeUnavailable(
            f"npm pack axe-core@{AXE_VERSION} failed ({result.returncode}): "
            + " | ".join((result.stderr or result.stdout).strip().splitlines()[:4])[:500]
        )


def axe_source() -> str:
    """The text of ``axe.min.js`` at the pinned version, its tarball's integrity checked."""
    tarball = CACHE_DIR / _TARBALL
    if not tarball.is_file():
        _fetch(tarball)
    data = tarball.read_bytes()
    found = _integrity(data)
    if found != AXE_INTEGRITY:
        tarball.unlink(missing_ok=True)  # fetched again next time, never trusted
        raise AxeUnavailable(
            f"{_TARBALL} does not match its pinned integrity: {found} != {AXE_INTEGRITY}"
        )
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(_MEMBER)
        if member is None:
            raise AxeUnavailable(f"{_TARBALL} holds no {_MEMBER}")
        return member.read().decode()
