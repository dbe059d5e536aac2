"""CI catalog resources and the queue of sync events that keeps their copied fields fresh.

A catalog resource copies ``name``, ``description`` and ``visibility_level`` from its
project (GitLab's ``Ci::Catalog::Resource``). A trigger on ``projects`` (see migration
0002) records a pending ``SyncEvent`` whenever one of those columns changes, however the
change was made; the processor (``services.catalog_sync_events_process``) copies the new
values and marks the events processed.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from project.models import Project, Visibility

#: The project columns a catalog resource copies. The trigger compares exactly these.
SYNCED_FIELDS = ("name", "description", "visibility_level")


class CatalogResource(models.Model):
    class State(models.IntegerChoices):
        DRAFT = 0, "draft"
        PUBLISHED = 1, "published"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="catalog_resource")
    state = models.SmallIntegerField(choices=State.choices, default=State.DRAFT)
    name = models.CharField(max_length=255, editable=False, help_text="Copied from the project.")
    description = models.TextField(blank=True, default="", editable=False, help_text="Copied from the project.")
    visibility_level = models.IntegerField(
        choices=Visibility.choices, default=Visibility.PRIVATE, editable=False, help_text="Copied from the project."
    )
    synced_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Last time sync copied changed values from the project."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "catalog_resources"
        ordering = ["id"]
        verbose_name = "catalog resource"
        permissions = [("sync_catalogresource", "Can resync catalog resources and process sync events")]

    def __str__(self) -> str:
        return self.name or f"catalog resource {self.pk}"


class SyncEventQuerySet(models.QuerySet):
    def pending(self) -> SyncEventQuerySet:
        return self.filter(status=SyncEvent.Status.PENDING)

    def processed(self) -> SyncEventQuerySet:
        return self.filter(status=SyncEvent.Status.PROCESSED)


class SyncEvent(models.Model):
    """One recorded change of a project that a catalog resource must copy.

    No foreign keys on purpose (as in GitLab): the trigger must never fail a project
    update, and an event whose resource was deleted is simply marked processed.
    """

    class Status(models.IntegerChoices):
        PENDING = 1, "pending"
        PROCESSED = 2, "processed"

    catalog_resource_id = models.BigIntegerField()
    project_id = models.BigIntegerField()
    # Database defaults: the trigger inserts the rows, not the ORM.
    status = models.SmallIntegerField(choices=Status.choices, db_default=Status.PENDING)
    created_at = models.DateTimeField(db_default=Now())
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = SyncEventQuerySet.as_manager()

    class Meta:
        db_table = "catalog_resource_sync_events"
        ordering = ["-id"]
        verbose_name = "sync event"
        indexes = [
            # The processor claims pending events in id order.
            models.Index(fields=["id"], condition=Q(status=1), name="catalog_events_pending"),
            # ...and marks the other pending events of the same resources with them.
            models.Index(fields=["catalog_resource_id"], condition=Q(status=1), name="catalog_events_pending_res"),
        ]

    def __str__(self) -> str:
        return f"Sync event #{self.pk} of catalog resource #{self.catalog_resource_id} ({self.get_status_display()})"

    @property
    def lag(self):
        if self.processed_at is None:
            return None
        return self.processed_at - self.created_at
