"""The API's serializers: how input is parsed (and documented) and how users and projects
are shown (GitLab's field names).

Input follows GitLab's (grape's) conventions, so clients see the same messages:

* one input serializer per operation is both the parser and the OpenAPI description;
* parameters come from the query string and the body, as Rack merges them (the body wins),
  and ``upload[url]`` in a form or query string is the same as ``{"upload": {"url": …}}``
  in JSON (``rack_params``);
* a bad value answers ``400 {"message": "<param> is invalid", "error": "invalid"}``, with
  grape's wording (``is missing``, ``is invalid``, ``does not have a valid value``).
  Field messages may name the parameter as ``{{param}}``: it becomes its full name
  (``upload[http_method]``) when the errors are joined.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.settings import api_settings

from project.errors import ValidationFailed
from project.models import Project, User

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Grape's messages. "{{param}}" survives DRF's str.format() as "{param}", which
# ``error_messages`` replaces by the parameter's full name.
PARAM_INVALID = "{{param}} is invalid"
PARAM_MISSING = "{{param}} is missing"
PARAM_NOT_VALID_VALUE = "{{param}} does not have a valid value"


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


# --- input ------------------------------------------------------------------------------


def error_messages(errors: Any, param: str = "") -> list[str]:
    """DRF's nested error structure as flat, readable messages, in field order."""
    if isinstance(errors, Mapping):
        found: list[str] = []
        for key, value in errors.items():
            if key == api_settings.NON_FIELD_ERRORS_KEY:
                name = param
            else:
                name = f"{param}[{key}]" if param else str(key)
            found += error_messages(value, name)
        return found
    if isinstance(errors, list | tuple):
        return [message for item in errors for message in error_messages(item, param)]
    return [str(errors).replace("{param}", param or "body")]


class InputSerializer(serializers.Serializer):
    """Base of the API's input serializers: ``parse`` validates or raises a 400 whose
    ``message`` joins the problems the way grape does (``a is invalid, b is missing``)."""

    #: The ``error`` code of the 400.
    error_code = "invalid"
    #: Report only the first problem (in field order) instead of all of them.
    first_error_only = False

    default_error_messages = {"invalid": "the parameters must be an object"}

    @classmethod
    def parse(cls, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):  # a JSON list, string or null as the whole body
            message = cls().error_messages["invalid"].format(datatype=type(data).__name__)
            raise ValidationFailed(message, code=cls.error_code)
        serializer = cls(data=data, **kwargs)
        if not serializer.is_valid():
            messages = error_messages(serializer.errors)
            message = messages[0] if cls.first_error_only else ", ".join(messages)
            raise ValidationFailed(message, code=cls.error_code)
        return dict(serializer.validated_data)

    def create(self, validated_data: Any) -> Any:  # pragma: no cover - input only
        raise NotImplementedError

    def update(self, instance: Any, validated_data: Any) -> Any:  # pragma: no cover - input only
        raise NotImplementedError


class NestedParams(InputSerializer):
    """A hash parameter (``upload[url]``, ``upload[http_method]``)."""

    default_error_messages = {"invalid": PARAM_INVALID, "required": PARAM_MISSING, "null": PARAM_INVALID}


class StringParam(serializers.CharField):
    """A string and nothing else (DRF's CharField would turn a JSON number into a string)."""

    default_error_messages = {"invalid": PARAM_INVALID, "required": PARAM_MISSING, "null": PARAM_INVALID}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ChoiceParam(serializers.ChoiceField):
    default_error_messages = {
        "invalid_choice": PARAM_NOT_VALID_VALUE,
        "required": PARAM_MISSING,
        "null": PARAM_INVALID,
    }


_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


class IntegerParam(serializers.IntegerField):
    """An integer as Rack sends it: digits in a string (or a JSON integer). ``1.5``,
    ``abc`` and ``true`` are invalid; an empty value counts as absent (``None``)."""

    default_error_messages = {
        "invalid": PARAM_INVALID,
        "required": PARAM_MISSING,
        "null": PARAM_INVALID,
        "max_string_length": PARAM_INVALID,
    }

    def to_internal_value(self, data: Any) -> int | None:  # type: ignore[override]  # "" is absent: None
        if data == "":
            return None
        if isinstance(data, bool):
            self.fail("invalid")
        if isinstance(data, int):
            return data
        if not isinstance(data, str) or not _INTEGER.fullmatch(data):
            self.fail("invalid")
        try:
            return int(data)
        except ValueError:  # more digits than Python converts
            self.fail("invalid")


class JsonIntegerField(serializers.IntegerField):
    """A JSON integer: not a string of digits, not a float, not a boolean."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO-8601 time that names its time zone (``Z`` or an offset); never a naive one."""

    def to_internal_value(self, value: Any) -> dt.datetime:
        if not isinstance(value, str):
            self.fail("invalid", format="ISO-8601")
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.fail("invalid", format="ISO-8601")
        if parsed.tzinfo is None:
            self.fail("invalid", format="ISO-8601")
        return parsed


@extend_schema_field({"type": "string", "format": "uri"})
class UrlParam(StringParam):
    """A URL, checked by the service that uses it (schemes, resolution, local addresses)."""


def messages_for(message: str, *keys: str) -> dict[str, StrOrPromise]:
    """One message for every way a field can be wrong."""
    keys = keys or ("invalid", "required", "null", "blank", "invalid_choice", "min_value", "max_value")
    return dict.fromkeys(keys, message)


_BRACKETS = re.compile(r"([^\[\]]+)((?:\[[^\[\]]+\])+)")


def _nested(items: Any) -> dict[str, Any]:
    """``{"upload[url]": v}`` → ``{"upload": {"url": v}}`` (Rack's nested parameters)."""
    result: dict[str, Any] = {}
    for key, value in items:
        match = _BRACKETS.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            _merge(result, {key: value})
            continue
        path = [match.group(1), *re.findall(r"\[([^\[\]]+)\]", match.group(2))]
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        _merge(result, nested)
    return result


def _merge(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value


def rack_params(request: Request) -> dict[str, Any]:
    """The request's parameters as GitLab sees them: the query string with the body (form
    or JSON object) merged over it, bracketed names nested. Repeated names keep the last
    value, as in Rack."""
    params = _nested(request.query_params.items())
    data = request.data
    if isinstance(data, Mapping):
        _merge(params, _nested(data.items()))
    return params


# --- output: users and projects ---------------------------------------------------------


class UserBasicSerializer(serializers.Serializer):
    """GitLab's ``UserBasic``."""

    id = serializers.IntegerField(source="pk")
    username = serializers.CharField()
    name = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()
    avatar_url = serializers.SerializerMethodField()
    web_url = serializers.SerializerMethodField()

    def get_name(self, user: User) -> str:
        return user.get_full_name() or user.username

    @extend_schema_field(serializers.ChoiceField(choices=["active", "blocked"]))
    def get_state(self, user: User) -> str:
        return "active" if user.is_active else "blocked"

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_avatar_url(self, user: User) -> None:
        return None

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_web_url(self, user: User) -> str:
        return f"{settings.EXTERNAL_URL}/{user.username}"


class UserSerializer(UserBasicSerializer):
    """The authenticated user (GitLab's ``UserPublic`` subset)."""

    created_at = serializers.DateTimeField(source="date_joined")
    email = serializers.CharField()
    is_admin = serializers.BooleanField()
    last_sign_in_at = serializers.DateTimeField(source="last_login", allow_null=True)


class ProjectIdentitySerializer(serializers.Serializer):
    """GitLab's ``ProjectIdentity``: what the export status starts from."""

    id = serializers.IntegerField(source="pk")
    description = serializers.CharField()
    name = serializers.CharField()
    name_with_namespace = serializers.SerializerMethodField()
    path = serializers.CharField()
    path_with_namespace = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_name_with_namespace(self, project: Project) -> str:
        return f"{project.namespace_path} / {project.name}"


class NamespaceSerializer(serializers.Serializer):
    name = serializers.CharField(source="namespace_path")
    path = serializers.SerializerMethodField()
    full_path = serializers.CharField(source="namespace_path")
    kind = serializers.SerializerMethodField()

    def get_path(self, project: Project) -> str:
        return project.namespace_path.rsplit("/", 1)[-1]

    @extend_schema_field(serializers.ChoiceField(choices=["group", "user"]))
    def get_kind(self, project: Project) -> str:
        return "group" if "/" in project.namespace_path else "user"


class ProjectLinksSerializer(serializers.Serializer):
    self = serializers.SerializerMethodField()
    issues = serializers.SerializerMethodField()
    labels = serializers.SerializerMethodField()
    members = serializers.SerializerMethodField()

    def _url(self, project: Project, suffix: str = "") -> str:
        return f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}{suffix}"

    def get_self(self, project: Project) -> str:
        return self._url(project)

    def get_issues(self, project: Project) -> str:
        return self._url(project, "/issues")

    def get_labels(self, project: Project) -> str:
        return self._url(project, "/labels")

    def get_members(self, project: Project) -> str:
        return self._url(project, "/members")


class ProjectAccessSerializer(serializers.Serializer):
    access_level = serializers.IntegerField()
    notification_level = serializers.IntegerField()


class ProjectPermissionsSerializer(serializers.Serializer):
    """The caller's access (``context["access_level"]``, or in a list each project's
    ``caller_access_level`` annotation), as GitLab shows it."""

    project_access = serializers.SerializerMethodField()
    group_access = serializers.SerializerMethodField()

    @extend_schema_field(ProjectAccessSerializer(allow_null=True))
    def get_project_access(self, project: Project) -> dict[str, int] | None:
        level = self.context.get("access_level", getattr(project, "caller_access_level", None))
        return {"access_level": level, "notification_level": 3} if level else None

    @extend_schema_field(ProjectAccessSerializer(allow_null=True))
    def get_group_access(self, project: Project) -> None:
        return None


class ProjectSerializer(ProjectIdentitySerializer):
    """GitLab's ``Project`` (the fields this product has). Pass the caller's access level
    as ``context={"access_level": …}``. The ``permissions`` block is for a signed-in
    caller only: GitLab presents ``ProjectWithAccess`` to them and the plain ``Project``,
    without the block, to anonymous callers (``context={"anonymous": True}``)."""

    default_branch = serializers.SerializerMethodField()
    visibility = serializers.ChoiceField(choices=["private", "internal", "public"])
    web_url = serializers.URLField()
    http_url_to_repo = serializers.SerializerMethodField()
    last_activity_at = serializers.DateTimeField(source="updated_at")
    namespace = NamespaceSerializer(source="*")
    _links = ProjectLinksSerializer(source="*", label="_links")
    permissions = ProjectPermissionsSerializer(source="*", required=False, help_text="Absent for anonymous callers.")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        if self.context.get("anonymous"):
            data.pop("permissions", None)
        return data

    def get_default_branch(self, project: Project) -> str | None:
        return None

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_http_url_to_repo(self, project: Project) -> str:
        return f"{project.web_url}.git"


# The dict-returning helpers other modules used before the serializers existed.


def user_detail(user: User) -> dict[str, Any]:
    return UserSerializer(user).data


def project_identity(project: Project) -> dict[str, Any]:
    return ProjectIdentitySerializer(project).data


def project_detail(project: Project, *, access_level: int | None) -> dict[str, Any]:
    return ProjectSerializer(project, context={"access_level": access_level}).data
