"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")

# Build the Django application (and so load the apps) before importing anything that
# touches models, such as the WebSocket routes.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from monitoring.metrics import start_sampler  # noqa: E402
from realtime.routing import websocket_application  # noqa: E402

# Every server process samples its connections into the shared metric files.
start_sampler()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_application,
    }
)
