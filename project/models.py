"""The shared core: users, projects and their content, access tokens, application settings."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Concat, Now, Upper
from django.utils import timezone

from project.errors import PermanentError
from project.fields import EncryptedTextField


class User(AbstractUser):
    """A platform user. Instance administrators (GitLab's admins, who see and manage every
    project in the API) are superusers and the users granted ``project.administer_instance``
    in the admin. ``is_staff`` only lets a user into the admin pages, with the permissions
    they were given there: it makes no one an administrator."""

    class Meta:
        db_table = "users"
        permissions = [
            (
                "administer_instance",
                "Is a GitLab instance administrator (sees and manages every project in the API)",
            )
        ]

    #: GitLab's public email: empty unless the user chose to show one. Exports carry it
    #: for everyone; the private ``email`` only goes into an administrator's export.
    public_email = models.EmailField(blank=True, default="", db_default="")

    @property
    def is_admin(self) -> bool:
        # has_perm is True for an active superuser (no query) and False for an inactive
        # user; otherwise the user's and groups' permissions are read once per instance.
        return self.is_active and self.has_perm("project.administer_instance")


class Visibility(models.IntegerChoices):
    PRIVATE = 0, "private"
    INTERNAL = 10, "internal"
    PUBLIC = 20, "public"


class AccessLevel(models.IntegerChoices):
    GUEST = 10, "Guest"
    REPORTER = 20, "Reporter"
    DEVELOPER = 30, "Developer"
    MAINTAINER = 40, "Maintainer"
    OWNER = 50, "Owner"


class Project(models.Model):
    name = models.CharField(max_length=255)
    path = models.SlugField(max_length=255)
    namespace_path = models.CharField(max_length=255, help_text="The owning user or group path.")
    path_with_namespace = models.GeneratedField(
        expression=Concat(F("namespace_path"), Value("/"), F("path"), output_field=models.CharField()),
        output_field=models.CharField(max_length=511),
        db_persist=True,
        unique=True,
    )
    description = models.TextField(blank=True, default="")
    visibility_level = models.IntegerField(choices=Visibility.choices, default=Visibility.PRIVATE)
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "projects"
        ordering = ["id"]
        indexes = [
            models.Index(fields=["namespace_path"]),
            # GitLab matches full paths case-insensitively (iexact → UPPER(...)).
            models.Index(Upper("path_with_namespace"), name="projects_full_path_upper"),
        ]

    def __str__(self) -> str:
        return self.path_with_namespace

    @property
    def visibility(self) -> str:
        return Visibility(self.visibility_level).label

    @property
    def web_url(self) -> str:
        return f"{settings.EXTERNAL_URL}/{self.path_with_namespace}"


class ProjectMember(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    access_level = models.IntegerField(choices=AccessLevel.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "project_members"
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="project_member_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.get_access_level_display()})"


class Label(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="labels")
    title = models.CharField(max_length=255)
    color = models.CharField(max_length=7, default="#6699cc")
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "labels"
        constraints = [models.UniqueConstraint(fields=["project", "title"], name="label_title_unique")]

    def __str__(self) -> str:
        return self.title


class Issue(models.Model):
    class State(models.TextChoices):
        OPENED = "opened"
        CLOSED = "closed"

    class Type(models.TextChoices):
        """GitLab's issue types (``WorkItems::Type.base_types``)."""

        ISSUE = "issue"
        INCIDENT = "incident"
        TEST_CASE = "test_case"
        REQUIREMENT = "requirement"
        TASK = "task"
        OBJECTIVE = "objective"
        KEY_RESULT = "key_result"
        EPIC = "epic"
        TICKET = "ticket"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="issues")
    iid = models.IntegerField(help_text="The issue number within its project.")
    title = models.CharField(max_length=255)
    description = models.TextField(blank=True, default="")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPENED)
    issue_type = models.CharField(max_length=32, choices=Type.choices, default=Type.ISSUE, db_default=Type.ISSUE)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    labels = models.ManyToManyField(Label, blank=True, related_name="issues", through="LabelLink")
    # Database defaults too: benchmarks and tests insert issues with set-based SQL.
    confidential = models.BooleanField(default=False, db_default=False)
    due_date = models.DateField(null=True, blank=True)
    #: GitLab's tri-state: NULL (never set) differs from an explicit unlock.
    discussion_locked = models.BooleanField(null=True, blank=True)
    relative_position = models.IntegerField(null=True, blank=True, help_text="Manual order on boards.")
    #: Optimistic locking counter (GitLab's ``lock_version``): bumped on every edit.
    lock_version = models.IntegerField(default=0, db_default=0)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_edited_at = models.DateTimeField(null=True, blank=True)
    last_edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "issues"
        constraints = [models.UniqueConstraint(fields=["project", "iid"], name="issue_iid_unique")]

    def __str__(self) -> str:
        return f"#{self.iid} {self.title}"


class LabelLink(models.Model):
    """An issue's label (GitLab's ``label_links``), with when it was applied. The table is
    the one the plain many-to-many used; its timestamps default in the database so that
    set-based inserts of (issue_id, label_id) still work."""

    issue = models.ForeignKey(Issue, on_delete=models.CASCADE, related_name="label_links")
    label = models.ForeignKey(Label, on_delete=models.CASCADE, related_name="label_links")
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())
    updated_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        db_table = "issue_labels"
        constraints = [models.UniqueConstraint(fields=["issue", "label"], name="issue_label_unique")]

    def __str__(self) -> str:
        return f"label {self.label_id} on issue {self.issue_id}"


class Note(models.Model):
    issue = models.ForeignKey(Issue, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    note = models.TextField()
    system = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "notes"
        indexes = [models.Index(fields=["issue", "id"])]

    def __str__(self) -> str:
        return f"note {self.pk} on {self.issue_id}"


class AccessTokenQuerySet(models.QuerySet):
    def live(self) -> AccessTokenQuerySet:
        today = timezone.localdate()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=today))


class AccessToken(models.Model):
    """A personal access token. Only a SHA-256 digest of the value is stored."""

    SCOPES = ("api", "read_api", "read_user")

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=255)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    #: The first characters of the token (``glpat-ab``), safe to show.
    prefix = models.CharField(max_length=16, editable=False)
    scopes = models.JSONField(default=list)
    expires_at = models.DateField(null=True, blank=True, help_text="The token stops working on this day.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = AccessTokenQuerySet.as_manager()

    class Meta:
        db_table = "personal_access_tokens"
        verbose_name = "personal access token"
        permissions = [("revoke_accesstoken", "Can revoke personal access tokens")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


@dataclass(frozen=True)
class SdrsSettings:
    """The SDRS configuration in force: the environment's deployment facts over the
    admin's values (see :meth:`ApplicationSetting.effective_sdrs`)."""

    enabled: bool
    url: str
    timeout: float
    callback_secret: str = field(repr=False)
    stored_signing_key: str = field(repr=False)
    signing_key_file: str | None = None
    #: The fields the environment fixes, each with the variable that sets it.
    set_by_environment: dict[str, str] = field(default_factory=dict)

    @property
    def signing_key(self) -> str:
        """The PEM key; a key file is read when the key is needed (replace the file to rotate it)."""
        if self.signing_key_file:
            return _read_key_file(self.signing_key_file)
        return self.stored_signing_key


@functools.lru_cache(maxsize=4)
def _key_file_text(path: str, mtime_ns: int, size: int) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _read_key_file(path: str) -> str:
    try:
        stat = os.stat(path)
        return _key_file_text(path, stat.st_mtime_ns, stat.st_size)
    except OSError as exc:
        # A permanent error of the verification (not a crash): it fails with this code
        # and the refresher tries again later, once the file is back.
        raise PermanentError(
            f"SDRS_JWT_SIGNING_KEY_FILE cannot be read: {exc.strerror}", code="signing_key_unreadable"
        ) from None


class ApplicationSetting(models.Model):
    """The instance-wide settings an administrator changes at run time (one row).

    One owner per setting. The switches and limits belong to the admin (and the job
    console). The SDRS deployment facts (URL, signing key, callback secret, timeout) belong
    to the environment when it sets them: then the environment's value is the one in force
    every time it is read, and the admin shows it read-only. Unset there, the admin owns
    them. Read the SDRS configuration through :meth:`effective_sdrs`, never from the fields.
    """

    # exports
    project_export_enabled = models.BooleanField(default=True)
    project_export_limit = models.PositiveIntegerField(
        default=6, help_text="Export requests per user per minute (0 disables the limit)."
    )
    project_download_export_limit = models.PositiveIntegerField(
        default=1, help_text="Export downloads per user and project per minute (0 disables the limit)."
    )
    max_export_size = models.PositiveIntegerField(
        "Maximum export size (MiB)",
        default=0,
        db_default=0,
        help_text="Larger projects cannot be exported (0: no limit). GitLab's max_export_size.",
    )
    max_import_size = models.PositiveIntegerField(
        "Maximum import size (MiB)",
        default=0,
        db_default=0,
        help_text="Largest import archive accepted, compressed (0: no limit). GitLab's max_import_size.",
    )
    max_decompressed_archive_size = models.PositiveIntegerField(
        "Maximum decompressed archive size (MiB)",
        default=25600,
        db_default=25600,
        help_text="An import archive larger than this once decompressed is refused before extraction "
        "(0: no limit). GitLab's max_decompressed_archive_size.",
    )

    # catalog
    catalog_sync_enabled = models.BooleanField(
        default=True,
        help_text="Process CI catalog sync events. While off, events accumulate and nothing is lost.",
    )

    # secret detection: the partner token verification service (SDRS)
    sdrs_enabled = models.BooleanField("SDRS enabled", default=False)
    sdrs_url = models.URLField("SDRS URL", blank=True, default="")
    sdrs_jwt_signing_key = EncryptedTextField(
        "SDRS JWT signing key", blank=True, default="", help_text="RSA private key (PEM) that signs requests."
    )
    sdrs_callback_secret = EncryptedTextField(
        "SDRS callback secret", blank=True, default="", help_text="Shared secret of the callback signature."
    )
    sdrs_timeout = models.FloatField(
        "SDRS timeout (s)", default=10.0, help_text="Connect and read timeout of each call to SDRS."
    )

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "application_settings"

    def __str__(self) -> str:
        return "Application settings"

    @classmethod
    def current(cls) -> ApplicationSetting:
        """The settings row, created on first use (see :meth:`initial_values`)."""
        row = cls.objects.filter(pk=1).first()
        if row is not None:
            return row
        row, _ = cls.objects.get_or_create(pk=1, defaults=cls.initial_values())
        return row

    @staticmethod
    def initial_values() -> dict:
        """The row's first values. Only the SDRS switch takes one from the environment
        (``SDRS_ENABLED``); afterwards the admin owns it. The deployment facts are not
        copied: the environment's values are read where they are used."""
        return {"sdrs_enabled": settings.SDRS_ENABLED}

    @staticmethod
    def set_by_environment() -> dict[str, str]:
        """The SDRS fields the environment fixes, each with the variable that sets it."""
        from project.env import env_secret_source

        fixed = {}
        if settings.SDRS_URL:
            fixed["sdrs_url"] = "SDRS_URL"
        if settings.SDRS_JWT_SIGNING_KEY_FILE:
            fixed["sdrs_jwt_signing_key"] = "SDRS_JWT_SIGNING_KEY_FILE"
        if settings.SDRS_CALLBACK_SECRET:
            fixed["sdrs_callback_secret"] = env_secret_source("SDRS_CALLBACK_SECRET") or "SDRS_CALLBACK_SECRET"
        if settings.SDRS_TIMEOUT is not None:
            fixed["sdrs_timeout"] = "SDRS_TIMEOUT"
        return fixed

    def effective_sdrs(self) -> SdrsSettings:
        """The SDRS configuration in force: each deployment fact the environment sets wins
        over this row's value, every time; the rest (and the switch) come from the row."""
        return SdrsSettings(
            enabled=self.sdrs_enabled,
            url=settings.SDRS_URL or self.sdrs_url,
            timeout=settings.SDRS_TIMEOUT if settings.SDRS_TIMEOUT is not None else self.sdrs_timeout,
            callback_secret=settings.SDRS_CALLBACK_SECRET or self.sdrs_callback_secret,
            stored_signing_key=self.sdrs_jwt_signing_key,
            signing_key_file=settings.SDRS_JWT_SIGNING_KEY_FILE or None,
            set_by_environment=self.set_by_environment(),
        )


class SettingChange(models.Model):
    """Who changed a runtime setting, and when: the console's switches show the latest
    change of each. Secrets are recorded as "changed", never with their value."""

    key = models.CharField(max_length=100)
    value = models.CharField(max_length=200, blank=True, default="")
    changed_by = models.CharField(max_length=150, blank=True, default="")
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "setting_changes"
        ordering = ["-changed_at", "-id"]
        indexes = [models.Index(fields=["key", "-changed_at"], name="setting_changes_key")]

    def __str__(self) -> str:
        return f"{self.key} = {self.value} by {self.changed_by}"


class RateLimitCounter(models.Model):
    """Hits per key and window; written by ``project.ratelimit`` with one upsert per hit."""

    key = models.CharField(max_length=255)
    window_start = models.DateTimeField()
    hits = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "rate_limit_counters"
        constraints = [models.UniqueConstraint(fields=["key", "window_start"], name="rate_limit_window_unique")]

    def __str__(self) -> str:
        return f"{self.key} @ {self.window_start:%H:%M}: {self.hits}"
