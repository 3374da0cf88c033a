"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")

# Build the Django application (and so load the apps) before importing anything that
# touches models, such as the WebSocket routes.
django_asgi_app = get_asgi_application()

from django.urls import get_resolver  # noqa: E402

from core.metrics import start_sampler  # noqa: E402
from realtime.routing import sse_application, websocket_application  # noqa: E402
from realtime.sse import with_sse  # noqa: E402
from wedsync.server.gctune import tune_after_startup  # noqa: E402
from wedsync.server.request_budget import request_budget  # noqa: E402
from wedsync.server.tail import TailProtocolTypeRouter  # noqa: E402
from wedsync.server.token_api import TokenApiHandler, token_api_router  # noqa: E402

# Bearer requests under /api/ skip the browser's middleware (docs/adr/0012-lean-api-path.md);
# a client over its request budget is refused before Django (``request_budget``). The
# realtime stream over Server-Sent Events holds no request slot, as a WebSocket holds none.
http_application = with_sse(
    request_budget(token_api_router(django_asgi_app, TokenApiHandler())), sse_application
)

# Every server process samples its connections into the shared metric files.
start_sampler()

# Import the URL conf now rather than on the first request, so that it is part of the
# start-up heap that the collector freezes.
get_resolver().url_patterns  # noqa: B018
tune_after_startup()

# Channels' ProtocolTypeRouter, handing over the application's coroutine rather than
# awaiting it: no frame of its own held for each WebSocket's life (ADR 0035).
application = TailProtocolTypeRouter(
    {
        "http": http_application,
        "websocket": websocket_application,
    }
)
