"""The read API's input (query parameters, grape's messages) and output (GitLab's
``Issue``, ``Note``, ``Label`` and ``Member`` entities).

GitLab always exposes some fields this product does not model (milestones, assignees,
award emoji, time tracking): they carry GitLab's empty values, so clients that read them
keep working.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from project.models import Issue, Label, Note, ProjectMember
from project.pagination import PageParams
from project.read_services import ISSUE_ORDER_COLUMNS, NOTE_ORDER_COLUMNS, PROJECT_ORDER_COLUMNS
from project.serializers import (
    PARAM_INVALID,
    PARAM_MISSING,
    ChoiceParam,
    StringParam,
    UserBasicSerializer,
)

# --- input ------------------------------------------------------------------------------


class BooleanParam(serializers.BooleanField):
    """Grape's Boolean: true/false, 1/0, t/f, yes/no, on/off (any case); else ``is invalid``."""

    default_error_messages = {"invalid": PARAM_INVALID, "required": PARAM_MISSING, "null": PARAM_INVALID}


def _sort_param() -> ChoiceParam:
    return ChoiceParam(choices=["asc", "desc"], required=False, default="desc", help_text="Sort direction.")


class ProjectListQuery(PageParams):
    """``GET /projects``."""

    membership = BooleanParam(required=False, default=False, help_text="Only projects the caller is a member of.")
    search = StringParam(required=False, allow_blank=True, help_text="Name, path or description contains this.")
    visibility = ChoiceParam(
        choices=["private", "internal", "public"], required=False, allow_blank=True, help_text="Only this visibility."
    )
    order_by = ChoiceParam(
        choices=list(PROJECT_ORDER_COLUMNS), required=False, default="created_at", help_text="Sort key."
    )
    sort = _sort_param()


class IssueListQuery(PageParams):
    """``GET /projects/:id/issues``."""

    state = ChoiceParam(choices=["opened", "closed", "all"], required=False, default="all", help_text="Issue state.")
    labels = StringParam(
        required=False,
        allow_blank=True,
        help_text="Comma-separated label titles: issues with all of them. `None`: no label; `Any`: at least one.",
    )
    search = StringParam(required=False, allow_blank=True, help_text="Title or description contains this.")
    order_by = ChoiceParam(
        choices=list(ISSUE_ORDER_COLUMNS), required=False, default="created_at", help_text="Sort key."
    )
    sort = _sort_param()

    def validate_labels(self, value: str) -> list[str]:
        return [title.strip() for title in value.split(",") if title.strip()]


class NoteListQuery(PageParams):
    """``GET /projects/:id/issues/:iid/notes``."""

    order_by = ChoiceParam(
        choices=list(NOTE_ORDER_COLUMNS), required=False, default="created_at", help_text="Sort key."
    )
    sort = _sort_param()


class LabelListQuery(PageParams):
    """``GET /projects/:id/labels``."""

    search = StringParam(required=False, allow_blank=True, help_text="Title or description contains this.")
    with_counts = BooleanParam(required=False, default=False, help_text="Add the open and closed issue counts.")


class MemberListQuery(PageParams):
    """``GET /projects/:id/members`` and ``/members/all``."""

    query = StringParam(required=False, allow_blank=True, help_text="Username or name contains this.")


# --- output -----------------------------------------------------------------------------

_NULLABLE_OBJECT = {"type": "object", "nullable": True}


def _api_url(project_id: int, suffix: str = "") -> str:
    return f"{settings.EXTERNAL_URL}/api/v4/projects/{project_id}{suffix}"


class IssueLinksSerializer(serializers.Serializer):
    self = serializers.SerializerMethodField()
    notes = serializers.SerializerMethodField()
    award_emoji = serializers.SerializerMethodField()
    project = serializers.SerializerMethodField()

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_self(self, issue: Issue) -> str:
        return _api_url(issue.project_id, f"/issues/{issue.iid}")

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_notes(self, issue: Issue) -> str:
        return _api_url(issue.project_id, f"/issues/{issue.iid}/notes")

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_award_emoji(self, issue: Issue) -> str:
        return _api_url(issue.project_id, f"/issues/{issue.iid}/award_emoji")

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_project(self, issue: Issue) -> str:
        return _api_url(issue.project_id)


class IssueReferencesSerializer(serializers.Serializer):
    short = serializers.SerializerMethodField()
    relative = serializers.SerializerMethodField()
    full = serializers.SerializerMethodField()

    def get_short(self, issue: Issue) -> str:
        return f"#{issue.iid}"

    def get_relative(self, issue: Issue) -> str:
        return f"#{issue.iid}"

    def get_full(self, issue: Issue) -> str:
        return f"{issue.project.path_with_namespace}#{issue.iid}"


class TimeStatsSerializer(serializers.Serializer):
    time_estimate = serializers.IntegerField()
    total_time_spent = serializers.IntegerField()
    human_time_estimate = serializers.CharField(allow_null=True)
    human_total_time_spent = serializers.CharField(allow_null=True)


class TaskCompletionSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    completed_count = serializers.IntegerField()


def one_of(values: list[str], description: str = "") -> dict[str, Any]:
    """A string schema that accepts ``values`` only, written as a pattern rather than an
    enum: drf-spectacular names enums after their field, and "state" is a user's enum's
    name already (a second set under that name would rename the first)."""
    return {"type": "string", "pattern": f"^({'|'.join(values)})$", "description": description or ", ".join(values)}


@extend_schema_field(one_of(Issue.State.values))
class IssueStateField(serializers.CharField):
    """An issue's state."""


class IssueSerializer(serializers.Serializer):
    """GitLab's ``Issue`` entity."""

    id = serializers.IntegerField(source="pk")
    iid = serializers.IntegerField()
    project_id = serializers.IntegerField()
    title = serializers.CharField()
    description = serializers.CharField()
    state = IssueStateField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    closed_by = UserBasicSerializer(allow_null=True)
    labels = serializers.SerializerMethodField()
    milestone = serializers.SerializerMethodField()
    assignees = serializers.SerializerMethodField()
    author = UserBasicSerializer(allow_null=True)
    type = serializers.SerializerMethodField()
    assignee = serializers.SerializerMethodField()
    user_notes_count = serializers.IntegerField()
    merge_requests_count = serializers.SerializerMethodField()
    upvotes = serializers.SerializerMethodField()
    downvotes = serializers.SerializerMethodField()
    due_date = serializers.DateField(allow_null=True)
    confidential = serializers.BooleanField()
    discussion_locked = serializers.BooleanField(allow_null=True)
    issue_type = serializers.ChoiceField(choices=Issue.Type.values)
    web_url = serializers.SerializerMethodField()
    time_stats = serializers.SerializerMethodField()
    task_completion_status = serializers.SerializerMethodField()
    has_tasks = serializers.SerializerMethodField()
    _links = IssueLinksSerializer(source="*", label="_links")
    references = IssueReferencesSerializer(source="*")
    moved_to_id = serializers.SerializerMethodField()
    service_desk_reply_to = serializers.SerializerMethodField()

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_labels(self, issue: Issue) -> list[str]:
        # Sorted in Python: the labels are prefetched, and order_by() would query again.
        return sorted(label.title for label in issue.labels.all())

    @extend_schema_field(_NULLABLE_OBJECT)
    def get_milestone(self, issue: Issue) -> None:
        return None

    @extend_schema_field(serializers.ListField(child=UserBasicSerializer()))
    def get_assignees(self, issue: Issue) -> list[dict[str, Any]]:
        return []

    @extend_schema_field(UserBasicSerializer(allow_null=True))
    def get_assignee(self, issue: Issue) -> None:
        return None

    @extend_schema_field(serializers.ChoiceField(choices=[value.upper() for value in Issue.Type.values]))
    def get_type(self, issue: Issue) -> str:
        return issue.issue_type.upper()

    @extend_schema_field(serializers.IntegerField())
    def get_merge_requests_count(self, issue: Issue) -> int:
        return 0

    @extend_schema_field(serializers.IntegerField())
    def get_upvotes(self, issue: Issue) -> int:
        return 0

    @extend_schema_field(serializers.IntegerField())
    def get_downvotes(self, issue: Issue) -> int:
        return 0

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_web_url(self, issue: Issue) -> str:
        return f"{issue.project.web_url}/-/issues/{issue.iid}"

    @extend_schema_field(TimeStatsSerializer())
    def get_time_stats(self, issue: Issue) -> dict[str, Any]:
        return {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": None, "human_total_time_spent": None}

    @extend_schema_field(TaskCompletionSerializer())
    def get_task_completion_status(self, issue: Issue) -> dict[str, int]:
        return {"count": 0, "completed_count": 0}

    @extend_schema_field(serializers.BooleanField())
    def get_has_tasks(self, issue: Issue) -> bool:
        return False

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_moved_to_id(self, issue: Issue) -> None:
        return None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_service_desk_reply_to(self, issue: Issue) -> None:
        return None


class NoteSerializer(serializers.Serializer):
    """GitLab's ``Note`` entity, for notes on issues."""

    id = serializers.IntegerField(source="pk")
    type = serializers.SerializerMethodField()
    body = serializers.CharField(source="note")
    attachment = serializers.SerializerMethodField()
    author = UserBasicSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    system = serializers.BooleanField()
    noteable_id = serializers.IntegerField(source="issue_id")
    noteable_type = serializers.SerializerMethodField()
    project_id = serializers.IntegerField(source="issue.project_id")
    resolvable = serializers.SerializerMethodField()
    confidential = serializers.SerializerMethodField()
    internal = serializers.SerializerMethodField()
    noteable_iid = serializers.IntegerField(source="issue.iid")
    commands_changes = serializers.SerializerMethodField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_type(self, note: Note) -> None:
        return None  # GitLab's type names discussion and diff notes; a plain note has none

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_attachment(self, note: Note) -> None:
        return None

    @extend_schema_field(serializers.ChoiceField(choices=["Issue"]))
    def get_noteable_type(self, note: Note) -> str:
        return "Issue"

    @extend_schema_field(serializers.BooleanField())
    def get_resolvable(self, note: Note) -> bool:
        return False

    @extend_schema_field(serializers.BooleanField())
    def get_confidential(self, note: Note) -> bool:
        return False

    @extend_schema_field(serializers.BooleanField())
    def get_internal(self, note: Note) -> bool:
        return False

    @extend_schema_field({"type": "object"})
    def get_commands_changes(self, note: Note) -> dict[str, Any]:
        return {}


def text_color(background: str) -> str:
    """GitLab's label text colour: dark on a light background, white on a dark one."""
    value = background.lstrip("#")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    try:
        red, green, blue = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        return "#FFFFFF"
    return "#333333" if red + green + blue > 500 else "#FFFFFF"


class LabelSerializer(serializers.Serializer):
    """GitLab's ``Label`` entity (a project label). The issue counts are there only with
    ``with_counts=true``, as in GitLab."""

    id = serializers.IntegerField(source="pk")
    name = serializers.CharField(source="title")
    color = serializers.CharField()
    text_color = serializers.SerializerMethodField()
    description = serializers.CharField()
    subscribed = serializers.SerializerMethodField()
    priority = serializers.SerializerMethodField()
    is_project_label = serializers.SerializerMethodField()
    open_issues_count = serializers.IntegerField(required=False)
    closed_issues_count = serializers.IntegerField(required=False)
    open_merge_requests_count = serializers.IntegerField(required=False)

    COUNTS = ("open_issues_count", "closed_issues_count", "open_merge_requests_count")

    def get_text_color(self, label: Label) -> str:
        return text_color(label.color)

    @extend_schema_field(serializers.BooleanField())
    def get_subscribed(self, label: Label) -> bool:
        return False

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_priority(self, label: Label) -> None:
        return None

    @extend_schema_field(serializers.BooleanField())
    def get_is_project_label(self, label: Label) -> bool:
        return True

    def to_representation(self, instance: Label) -> dict[str, Any]:
        body = super().to_representation(instance)
        if not hasattr(instance, "open_issues_count"):
            for key in self.COUNTS:
                body.pop(key, None)
        return body


class MemberSerializer(UserBasicSerializer):
    """GitLab's ``Member`` entity: the user's fields merged with the membership's."""

    id = serializers.IntegerField(source="user.pk")
    username = serializers.CharField(source="user.username")
    locked = serializers.SerializerMethodField()
    access_level = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    created_by = serializers.SerializerMethodField()
    expires_at = serializers.SerializerMethodField()
    membership_state = serializers.SerializerMethodField()

    # The user's fields, read from the member's user (the schema annotations are repeated
    # because drf-spectacular reads them from the overriding method).
    def get_name(self, member: ProjectMember) -> str:  # type: ignore[override]
        return super().get_name(member.user)

    @extend_schema_field(serializers.ChoiceField(choices=["active", "blocked"]))
    def get_state(self, member: ProjectMember) -> str:  # type: ignore[override]
        return super().get_state(member.user)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_avatar_url(self, member: ProjectMember) -> None:  # type: ignore[override]
        return None

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_web_url(self, member: ProjectMember) -> str:  # type: ignore[override]
        return super().get_web_url(member.user)

    @extend_schema_field(serializers.BooleanField())
    def get_locked(self, member: ProjectMember) -> bool:
        return False

    @extend_schema_field(UserBasicSerializer(allow_null=True))
    def get_created_by(self, member: ProjectMember) -> None:
        return None

    @extend_schema_field(serializers.DateField(allow_null=True))
    def get_expires_at(self, member: ProjectMember) -> None:
        return None

    @extend_schema_field(serializers.ChoiceField(choices=["active"]))
    def get_membership_state(self, member: ProjectMember) -> str:
        return "active"
