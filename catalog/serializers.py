"""The catalog read API's output: GitLab's ``CiCatalogResource`` fields (its GraphQL type,
in the REST API's snake case) plus the sync state of the copied project fields."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from catalog.models import SYNCED_FIELDS, CatalogResource
from project.models import Visibility
from project.read_serializers import one_of


class CatalogSyncStateSerializer(serializers.Serializer):
    """Whether the copied ``name``, ``description`` and ``visibility_level`` are current."""

    status = serializers.SerializerMethodField(
        help_text="`synced`; `pending` while sync events wait; `stale` when the copy differs with none waiting."
    )
    synced_at = serializers.DateTimeField(allow_null=True, help_text="Last time sync copied changed values.")
    pending_events = serializers.IntegerField(help_text="Sync events of this resource waiting to be processed.")
    oldest_pending_at = serializers.DateTimeField(allow_null=True)
    last_processed_at = serializers.DateTimeField(allow_null=True)
    stale_fields = serializers.SerializerMethodField(help_text="Copied fields that differ from the project's.")

    @extend_schema_field(serializers.ListField(child=serializers.ChoiceField(choices=list(SYNCED_FIELDS))))
    def get_stale_fields(self, resource: CatalogResource) -> list[str]:
        return [name for name in SYNCED_FIELDS if getattr(resource, name) != getattr(resource.project, name)]

    @extend_schema_field(serializers.ChoiceField(choices=["synced", "pending", "stale"]))
    def get_status(self, resource: CatalogResource) -> str:
        if resource.pending_events:  # type: ignore[attr-defined]  # annotated by catalog_resource_require
            return "pending"
        return "stale" if self.get_stale_fields(resource) else "synced"


@extend_schema_field(one_of(CatalogResource.State.labels))
class CatalogStateField(serializers.CharField):
    """Draft or published."""


class CatalogResourceSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    project_id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    state = CatalogStateField(source="get_state_display")
    visibility_level = serializers.SerializerMethodField()
    full_path = serializers.CharField(source="project.path_with_namespace")
    web_path = serializers.SerializerMethodField()
    web_url = serializers.SerializerMethodField()
    verification_level = serializers.SerializerMethodField()
    star_count = serializers.SerializerMethodField()
    latest_released_at = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    sync = CatalogSyncStateSerializer(source="*")

    @extend_schema_field(one_of(Visibility.labels))
    def get_visibility_level(self, resource: CatalogResource) -> str:
        return Visibility(resource.visibility_level).label

    def get_web_path(self, resource: CatalogResource) -> str:
        return f"/{resource.project.path_with_namespace}"

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_web_url(self, resource: CatalogResource) -> str:
        return f"{settings.EXTERNAL_URL}/{resource.project.path_with_namespace}"

    @extend_schema_field(serializers.ChoiceField(choices=["unverified"]))
    def get_verification_level(self, resource: CatalogResource) -> str:
        return "unverified"

    @extend_schema_field(serializers.IntegerField())
    def get_star_count(self, resource: CatalogResource) -> int:
        return 0

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_latest_released_at(self, resource: CatalogResource) -> Any:
        return None
