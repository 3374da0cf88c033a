"""The JavaScript client's module, served as the web app's own static file.

The realtime client is a package of its own (``clients/js``, ``@wedsync/realtime``); its
one module, ``clients/js/realtime.js``, is also the web app's: pages import it as
``/static/web/realtime.js`` (``wedding.js``, ``saturday.js``, the staff dashboard). This
finder gives ``collectstatic`` and the development server that one file under that name,
and nothing else of the package (not its ``package.json``, tests or declarations), so the
package and the web app can never run two copies of the client.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

# The static name of the module, and where it lives.
STATIC_NAME = "web/realtime.js"
PACKAGE_DIR = Path(settings.BASE_DIR) / "clients" / "js"
MODULE = "realtime.js"


class ClientPackageFinder(BaseFinder):
    """Finds ``web/realtime.js`` in ``clients/js``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=PACKAGE_DIR)
        self.storage.prefix = "web"  # collectstatic writes it as web/realtime.js

    def check(self, **kwargs):
        return []

    def find(self, path: str, find_all: bool = False, **kwargs):
        if path != STATIC_NAME:
            return [] if find_all else None
        found = str(PACKAGE_DIR / MODULE)
        return [found] if find_all else found

    def list(self, ignore_patterns):
        yield MODULE, self.storage
