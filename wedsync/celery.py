"""Celery wiring: the app reads its configuration from Django settings (CELERY_*)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")

app = Celery("wedsync")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _ensure_filesystem_broker_dirs(sender: Celery, **kwargs: object) -> None:
    """Create the folders of the embedded filesystem broker before the first message."""
    options = sender.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if folder := options.get(key):
            os.makedirs(folder, exist_ok=True)


@signals.setup_logging.connect
def _log_through_settings(loglevel: int | str | None = None, **kwargs: object) -> None:
    """Workers and beat log through settings.LOGGING, like the server: the same format
    (LOG_FORMAT), each task's lines carrying ``task_id`` and ``task_name``
    (core.logging.LogContext), credentials redacted. Celery installs no handler of its
    own then (its task logger's would bypass all that); ``-l`` still sets the level."""
    import logging

    from django.conf import settings
    from django.utils.module_loading import import_string

    import_string(settings.LOGGING_CONFIG)(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)
