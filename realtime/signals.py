"""Tell live connections when access changes, so a subscription never outlives a right.

A booking deactivated or deleted, a membership removed: every connection on the
wedding's topic re-checks its user (``rt.recheck``, to the topic's group). A user
deactivated: every connection of that user closes with 4001 (``rt.user.revoked``, to
the one group of user notices that every server process's hub joins). Sent after
commit. A booking saved or deleted also drops its wedding's cached booked suppliers
(the presence cards, ``access.booked_supplier_ids``).

The cached access (``weddings.caching``, connected by ``WeddingsConfig.ready``, which
runs before realtime's: ``weddings`` comes first in INSTALLED_APPS) and snapshots
(``realtime.snapshots``, imported below) are invalidated by their own receivers, connected
BEFORE these: Django calls receivers, and runs on-commit callbacks, in the order they were
registered, so the cache is dropped before any ``rt.recheck`` is sent. (The re-check
itself reads the database, ``access.still_allowed``, so it is exact either way.)
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from core.cache import get_cache
from weddings.models import Booking, SupplierMembership

from . import snapshots  # noqa: F401  (connects its receivers)
from .access import booked_suppliers_key
from .layer import group_send_bounded
from .messages import ACCESS_GROUP, group_name, recheck_message, user_revoked_message

logger = logging.getLogger(__name__)


def _send_after_commit(group: str, message: dict[str, Any]) -> None:
    def send() -> None:
        try:
            async_to_sync(group_send_bounded)(group, message)
        except Exception:  # connections re-check on their next publish anyway
            logger.warning("could not notify %s", group, exc_info=True)

    transaction.on_commit(send)


def _recheck_weddings(wedding_ids: list[int]) -> None:
    for wedding_id in wedding_ids:
        topic = f"wedding:{wedding_id}"
        _send_after_commit(group_name(topic), recheck_message(topic))


@receiver(post_save, sender=Booking, dispatch_uid="booked_suppliers_saved")
@receiver(post_delete, sender=Booking, dispatch_uid="booked_suppliers_deleted")
def booked_suppliers_changed(sender: type, instance: Booking, **kwargs: Any) -> None:
    """Drop the wedding's cached booked suppliers (presence cards), now and after commit."""
    key = booked_suppliers_key(instance.wedding_id)
    cache = get_cache()
    cache.delete(key)
    transaction.on_commit(lambda: cache.delete(key))


@receiver(post_save, sender=Booking)
def booking_saved(sender: type, instance: Booking, **kwargs: Any) -> None:
    if not instance.active:
        _recheck_weddings([instance.wedding_id])


@receiver(post_delete, sender=Booking)
def booking_deleted(sender: type, instance: Booking, **kwargs: Any) -> None:
    _recheck_weddings([instance.wedding_id])


@receiver(post_delete, sender=SupplierMembership)
def membership_deleted(sender: type, instance: SupplierMembership, **kwargs: Any) -> None:
    wedding_ids = list(
        Booking.objects.filter(supplier_id=instance.supplier_id).values_list(
            "wedding_id", flat=True
        )
    )
    _recheck_weddings(wedding_ids)
    topic = f"supplier:{instance.supplier_id}"
    _send_after_commit(group_name(topic), recheck_message(topic))


@receiver(post_save, sender=get_user_model())
def user_saved(sender: type, instance: Any, **kwargs: Any) -> None:
    if not instance.is_active:
        _send_after_commit(ACCESS_GROUP, user_revoked_message(instance.pk))
