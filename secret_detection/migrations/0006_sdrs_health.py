"""The SDRS health row: the circuit breaker and the latest callback refused during a
database outage (issue 11: recovery within a minute after SDRS or the database is back)."""

import django.utils.timezone
from django.db import migrations, models


def create_row(apps, schema_editor) -> None:
    apps.get_model("secret_detection", "SdrsHealth").objects.get_or_create(id=1)


class Migration(migrations.Migration):
    dependencies = [("secret_detection", "0005_value_fingerprint_hmac")]

    operations = [
        migrations.CreateModel(
            name="SdrsHealth",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, editable=False, primary_key=True, serialize=False)),
                (
                    "circuit",
                    models.CharField(choices=[("closed", "Closed"), ("open", "Open")], default="closed", max_length=8),
                ),
                (
                    "failures",
                    models.PositiveIntegerField(
                        default=0, help_text="Consecutive attempts that found SDRS unavailable."
                    ),
                ),
                ("last_failure_code", models.CharField(blank=True, default="", max_length=64)),
                ("opened_at", models.DateTimeField(blank=True, null=True)),
                ("closed_at", models.DateTimeField(blank=True, null=True)),
                ("probed_at", models.DateTimeField(blank=True, help_text="The latest half-open probe.", null=True)),
                ("probe_result", models.CharField(blank=True, default="", max_length=64)),
                (
                    "callbacks_refused_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="The latest callback refused while the database was unavailable.",
                        null=True,
                    ),
                ),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                "verbose_name": "SDRS health",
                "verbose_name_plural": "SDRS health",
                "db_table": "secret_detection_sdrs_health",
                "constraints": [models.CheckConstraint(condition=models.Q(id=1), name="sd_sdrs_health_one_row")],
            },
        ),
        migrations.RunPython(create_row, migrations.RunPython.noop),
    ]
