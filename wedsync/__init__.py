"""WedSync Realtime: the live coordination server for wedding days."""

from .celery import app as celery_app

__all__ = ("celery_app",)
