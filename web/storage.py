"""The production storage of static files: hashed names, compressed copies, JS imports.

``collectstatic`` writes every file under a content-hashed name (cached for a year by
browsers and WhiteNoise) plus gzip and brotli copies. The web app's scripts are ES
modules that import each other (``import ... from "./realtime.js"``); Django rewrites
those imports to the hashed names only when asked to, so that a page never mixes the
modules of two releases.
"""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class HashedStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's compressed manifest storage, also rewriting ES module imports."""

    support_js_module_import_aggregation = True
