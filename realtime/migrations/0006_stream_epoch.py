# The stream epoch (PROTOCOL §4, v1.1): one row, seeded with a fresh random value so that
# every new database starts a history of its own.

import uuid

import django.utils.timezone
from django.db import migrations, models


def seed_epoch(apps, schema_editor):
    StreamEpoch = apps.get_model("realtime", "StreamEpoch")
    StreamEpoch.objects.using(schema_editor.connection.alias).get_or_create(
        id=1, defaults={"epoch": uuid.uuid4().hex[:12], "reason": "database created"}
    )


class Migration(migrations.Migration):
    dependencies = [
        ("realtime", "0005_connectticket"),
    ]

    operations = [
        migrations.CreateModel(
            name="StreamEpoch",
            fields=[
                (
                    "id",
                    models.PositiveSmallIntegerField(
                        default=1, editable=False, primary_key=True, serialize=False
                    ),
                ),
                ("epoch", models.CharField(max_length=32)),
                ("previous", models.CharField(blank=True, default="", max_length=32)),
                ("changed_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("reason", models.CharField(blank=True, default="", max_length=200)),
            ],
            options={
                "verbose_name": "stream epoch",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("id", 1)), name="realtime_stream_epoch_one_row"
                    )
                ],
            },
        ),
        migrations.RunPython(seed_epoch, migrations.RunPython.noop),
    ]
