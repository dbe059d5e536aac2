"""Two of job_runs' indexes become partial, so a run's claim and finish add no entry to them.

Built and dropped concurrently: job_runs takes every run's writes, which a plain CREATE
INDEX would block for as long as it reads the whole table. The new indexes are built
before the old ones go, so their queries always have one. A build interrupted midway
leaves an invalid index of its name behind (PostgreSQL's way): drop it with DROP INDEX
CONCURRENTLY and migrate again.
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("jobs", "0005_job_runs_queue"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="jobrun",
            index=models.Index(condition=models.Q(("status", "queued")), fields=["due_at"], name="job_runs_queued_due"),
        ),
        AddIndexConcurrently(
            model_name="jobrun",
            index=models.Index(
                condition=models.Q(("scheduled", True)),
                fields=["name", "created_at"],
                name="job_runs_scheduled_created",
            ),
        ),
        RemoveIndexConcurrently(model_name="jobrun", name="job_runs_status_due"),
        RemoveIndexConcurrently(model_name="jobrun", name="job_runs_name_created"),
    ]
