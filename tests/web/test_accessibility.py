"""Accessibility basics of the web app in Chromium, checked by axe-core.

The sign-in page, the Saturday page and the wedding page (a vendor's, and the planner's
with every control and its two dialogs open) are opened on a phone-sized window against a server in
production shape, and axe-core (tests/web/axe.py: pinned, integrity-checked, test-only)
is run on each with the rules of RULES. A violation of impact serious or critical fails
the test. Without axe-core (no npm, no registry) the tests skip on a laptop and fail
with CI=true. docs/web.md "Fast on a bad phone".
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.web import axe as axe_module
from tests.web.axe import AxeUnavailable, axe_source
from tests.web.conftest import PHONE

pytestmark = pytest.mark.timeout(60)

# Form fields have labels, text has contrast, taps have room, controls, links and images
# have names, the page has a language and a title.
RULES = [
    "label",
    "select-name",
    "color-contrast",
    "target-size",
    "button-name",
    "link-name",
    "image-alt",
    "html-has-lang",
    "document-title",
]
FAILING_IMPACTS = {"serious", "critical"}


@pytest.fixture(scope="module")
def axe() -> str:
    try:
        return axe_source()
    except AxeUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true but axe-core is unavailable: {exc}", pytrace=False)
        pytest.skip(f"axe-core is unavailable: {exc}")


def violations(page: Any, axe: str) -> list[dict[str, Any]]:
    """The serious and critical violations of RULES on ``page`` as it stands."""
    if not page.evaluate("typeof window.axe === 'object'"):
        # Evaluated through the DevTools protocol: the page's CSP does not apply to it.
        page.evaluate(axe)
    results = page.evaluate(
        """(rules) => axe.run(document, {
               runOnly: {type: "rule", values: rules},
               resultTypes: ["violations"],
           })""",
        RULES,
    )
    return [v for v in results["violations"] if v["impact"] in FAILING_IMPACTS]


def described(found: list[dict[str, Any]]) -> str:
    lines = []
    for violation in found:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"  {' '.join(node['target'])}: {node['failureSummary']}")
    return "\n".join(lines)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_pages__have_no_serious_accessibility_violations(browse, day, axe) -> None:
    """One test for every page (one wedding day, one database flush): the suite's time."""
    found: dict[str, list[dict[str, Any]]] = {}

    # the sign-in page, signed out
    page = browse.page(browse.context(viewport=PHONE), "/accounts/login/", live=False)
    page.wait_for_selector("#signin-form")
    found["sign-in"] = violations(page, axe)

    # the photographer's Saturday and wedding pages
    page = browse.open(day.photographer, "/", viewport=PHONE)
    page.wait_for_selector(".wedding-card")
    found["Saturday"] = violations(page, axe)
    wedding = f"/weddings/{day.wedding.pk}/"
    page.goto(wedding)
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_selector("#timeline li")
    found["wedding (photographer)"] = violations(page, axe)

    # the planner's wedding page, with every control, and its two dialogs open
    page = browse.open(day.planner, wedding, viewport=PHONE)
    page.wait_for_selector("#timeline li")
    found["wedding (planner)"] = violations(page, axe)
    row = page.locator('#timeline li[data-title="Ceremony"]')
    row.get_by_role("button", name="Edit").click()
    page.wait_for_selector("#item-dialog[open]")
    found["item dialog"] = violations(page, axe)
    page.locator("#item-dialog [data-close]").click()
    page.get_by_role("button", name="Raise emergency").click()
    page.wait_for_selector("#emergency-dialog[open]")
    found["emergency dialog"] = violations(page, axe)

    failures = {name: v for name, v in found.items() if v}
    assert not failures, "\n".join(f"{name}:\n{described(v)}" for name, v in failures.items())


def test_axe_source__refuses_a_tarball_that_does_not_match_its_pin(tmp_path, monkeypatch) -> None:
    # given a cached tarball whose bytes are not the pinned release's
    monkeypatch.setattr(axe_module, "CACHE_DIR", tmp_path)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        body = b"window.axe = {run: () => ({violations: []})};"
        member = tarfile.TarInfo("package/axe.min.js")
        member.size = len(body)
        archive.addfile(member, io.BytesIO(body))
    tarball = tmp_path / f"axe-core-{axe_module.AXE_VERSION}.tgz"
    tarball.write_bytes(data.getvalue())

    # when axe-core is asked for, then it is refused and the tarball dropped
    with pytest.raises(AxeUnavailable, match="does not match its pinned integrity"):
        axe_source()
    assert not tarball.exists()
