"""Monitoring tests: the ``browser`` marker (as tests/web/conftest.py registers it), so that
the dashboard's browser test runs on its own too."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "browser: drives Debian's Chromium (/usr/bin/chromium) through Playwright; skipped "
        "without it unless CI=true",
    )
