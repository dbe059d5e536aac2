"""Fields GitLab exports and imports for issues, label links and users.

The issue ↔ label many-to-many keeps its table (``issue_labels``) and becomes the explicit
``LabelLink`` model with timestamps: the state changes, the table only gains two columns
(database defaults, so existing rows and set-based inserts get a time) and its unique
constraint takes the model's name.
"""

import django.db.models.deletion
import django.db.models.functions.datetime
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("project", "0003_user_administer_instance"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="public_email",
            field=models.EmailField(blank=True, db_default="", default="", max_length=254),
        ),
        migrations.AddField(
            model_name="issue",
            name="issue_type",
            field=models.CharField(
                choices=[
                    ("issue", "Issue"),
                    ("incident", "Incident"),
                    ("test_case", "Test Case"),
                    ("requirement", "Requirement"),
                    ("task", "Task"),
                    ("objective", "Objective"),
                    ("key_result", "Key Result"),
                    ("epic", "Epic"),
                    ("ticket", "Ticket"),
                ],
                db_default="issue",
                default="issue",
                max_length=32,
            ),
        ),
        migrations.AddField(
            model_name="issue",
            name="confidential",
            field=models.BooleanField(db_default=False, default=False),
        ),
        migrations.AddField(model_name="issue", name="due_date", field=models.DateField(blank=True, null=True)),
        migrations.AddField(
            model_name="issue", name="discussion_locked", field=models.BooleanField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="issue",
            name="relative_position",
            field=models.IntegerField(blank=True, help_text="Manual order on boards.", null=True),
        ),
        migrations.AddField(
            model_name="issue", name="lock_version", field=models.IntegerField(db_default=0, default=0)
        ),
        migrations.AddField(
            model_name="issue",
            name="updated_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="issue",
            name="closed_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="issue", name="last_edited_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="issue",
            name="last_edited_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="LabelLink",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "created_at",
                            models.DateTimeField(
                                db_default=django.db.models.functions.datetime.Now(),
                                default=django.utils.timezone.now,
                            ),
                        ),
                        (
                            "updated_at",
                            models.DateTimeField(
                                db_default=django.db.models.functions.datetime.Now(),
                                default=django.utils.timezone.now,
                            ),
                        ),
                        (
                            "issue",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="label_links",
                                to="project.issue",
                            ),
                        ),
                        (
                            "label",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="label_links",
                                to="project.label",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "issue_labels",
                        "constraints": [models.UniqueConstraint(fields=("issue", "label"), name="issue_label_unique")],
                    },
                ),
                migrations.AlterField(
                    model_name="issue",
                    name="labels",
                    field=models.ManyToManyField(
                        blank=True, related_name="issues", through="project.LabelLink", to="project.label"
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql="""
                        ALTER TABLE issue_labels
                            ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
                            ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
                        ALTER TABLE issue_labels
                            RENAME CONSTRAINT issue_labels_issue_id_label_id_35460b47_uniq TO issue_label_unique;
                    """,
                    reverse_sql="""
                        ALTER TABLE issue_labels
                            RENAME CONSTRAINT issue_label_unique TO issue_labels_issue_id_label_id_35460b47_uniq;
                        ALTER TABLE issue_labels DROP COLUMN created_at, DROP COLUMN updated_at;
                    """,
                )
            ],
        ),
    ]
