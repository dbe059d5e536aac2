from django.db import migrations


class Migration(migrations.Migration):
    """The broker pulls ``WHERE key = … AND lock < now ORDER BY lock``; without this index
    every pull scans django-q2's whole queue table."""

    dependencies = [
        ("jobs", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS jobs_ormq_key_lock ON django_q_ormq (key, lock, id)",
            reverse_sql="DROP INDEX IF EXISTS jobs_ormq_key_lock",
        )
    ]
