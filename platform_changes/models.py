"""What the change consumer keeps in WedSync's database (ADR 0027).

``ChangeCursor``: per slot, the last change stored (the commit's end LSN and the
change's place in its transaction), written in the same transaction as the event it
produced: a change read again after a crash is recognised and dropped. ``TimelineLink``:
which WedSync timeline item a platform row became. ``RejectedChange``: a change that
could not become an event (an unknown wedding, a field the catalogue refuses), kept for
staff to read in admin.
"""

from __future__ import annotations

from django.db import models

from weddings.models import TimelineItem


class ChangeCursor(models.Model):
    slot = models.CharField(max_length=63, unique=True)
    lsn = models.BigIntegerField(default=0, help_text="End LSN of the last commit stored")
    index = models.IntegerField(default=-1, help_text="The last change stored of that commit")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.slot} @ {self.lsn}:{self.index}"


class TimelineLink(models.Model):
    platform_id = models.BigIntegerField(unique=True, help_text="The platform row's id")
    item = models.OneToOneField(TimelineItem, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return f"platform {self.platform_id} -> item {self.item_id}"


class RejectedChange(models.Model):
    slot = models.CharField(max_length=63)
    lsn = models.BigIntegerField()
    index = models.IntegerField()
    op = models.CharField(max_length=8)
    platform_id = models.BigIntegerField(null=True)
    wedding_id = models.BigIntegerField(null=True)
    code = models.CharField(max_length=32)
    message = models.CharField(max_length=500)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-id",)
        indexes = [models.Index(fields=("at",))]

    def __str__(self) -> str:
        return f"{self.op} {self.platform_id}: {self.code}"
