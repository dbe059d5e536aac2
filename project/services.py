"""Business logic of the shared core: access tokens, project lookup and permissions."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from project.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from project.models import (
    AccessLevel,
    AccessToken,
    ApplicationSetting,
    Project,
    ProjectMember,
    SettingChange,
    User,
    Visibility,
)

if TYPE_CHECKING:
    from project.jobs import Switch

TOKEN_PREFIX = "glpat-"  # noqa: S105 - a public prefix, not a secret
_TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
_TOKEN_BODY_LENGTH = 20
# Writing last_used_at on every request would turn reads into writes; once a minute is enough.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def access_token_create(
    *, user: User, name: str, scopes: Iterable[str], expires_at: dt.date | None = None
) -> tuple[AccessToken, str]:
    """Create a personal access token; the value is returned once and stored only hashed."""
    scopes = sorted(set(scopes))
    unknown = [scope for scope in scopes if scope not in AccessToken.SCOPES]
    if not scopes or unknown:
        raise ValidationFailed(
            f"scopes must be a non-empty subset of {', '.join(AccessToken.SCOPES)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    if expires_at is not None and expires_at <= timezone.localdate():
        raise ValidationFailed("expires_at must be in the future")
    value = TOKEN_PREFIX + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_BODY_LENGTH))
    token = AccessToken.objects.create(
        user=user,
        name=name,
        digest=token_digest(value),
        prefix=value[: len(TOKEN_PREFIX) + 2],
        scopes=scopes,
        expires_at=expires_at,
    )
    return token, value


def access_token_find_live(*, value: str) -> AccessToken | None:
    """The live token with this value, if any (used by authentication and by the secret
    detection verifier for tokens in our own format)."""
    return AccessToken.objects.live().select_related("user").filter(digest=token_digest(value)).first()


def access_token_authenticate(*, value: str) -> AccessToken:
    token = access_token_find_live(value=value.strip()) if value else None
    return access_token_accept(token=token)


def access_token_accept(*, token: AccessToken | None) -> AccessToken:
    """The token found for a request, if it may sign in (its user is active), with its use
    recorded; 401 otherwise."""
    if token is None or not token.user.is_active:
        raise Unauthorized("401 Unauthorized")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_RESOLUTION:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


@transaction.atomic
def access_token_revoke(*, token_id: int) -> bool:
    return bool(AccessToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(revoked_at=timezone.now()))


def project_ref_parse(ref: str) -> tuple[int | None, str | None]:
    """A project reference of the API: (id, None) for a numeric id, (None, path) for a
    ``namespace/path``, (None, None) for anything else."""
    ref = ref.strip("/")
    if ref.isascii() and ref.isdigit():  # not "¹" or "٣": digits to Python, not to int()
        return int(ref), None
    if "/" not in ref:
        return None, None
    return None, ref


def project_find(*, ref: str, user: User | AnonymousUser | None = None) -> Project | None:
    """A project by numeric id or by its ``namespace/path``.

    With a signed-in ``user``, the user's access level is read in the same query and kept
    on the project for :func:`project_access_level`: one query for the usual "find the
    project, check the caller's access".
    """
    project_id, path = project_ref_parse(ref)
    if project_id is None and path is None:
        return None
    projects = Project.objects.all()
    member = user if user is not None and user.is_authenticated else None
    if member is not None:
        levels = ProjectMember.objects.filter(project=OuterRef("pk"), user=member).values("access_level")[:1]
        projects = projects.annotate(caller_access_level=Subquery(levels))
    if project_id is not None:
        project = projects.filter(pk=project_id).first()
    else:
        project = projects.filter(path_with_namespace__iexact=path).first()
    if project is not None and member is not None:
        level = project.caller_access_level  # type: ignore[attr-defined]  # annotated above, for a member
        project_access_level_known(project=project, user=member, level=level)
    return project


def project_access_level_known(*, project: Project, user: User | AnonymousUser, level: int | None) -> None:
    """Remember ``user``'s access level on this project instance (read along with it), so
    that the permission checks of this request do not read it again."""
    project._access_levels = {user.pk: level}  # type: ignore[attr-defined]  # per-instance memo, not a field


def project_access_level(*, user: User | AnonymousUser, project: Project) -> int | None:
    if not user.is_authenticated:
        return None
    known: dict[int, int | None] = getattr(project, "_access_levels", {})  # user id: access level
    if user.pk in known:
        return known[user.pk]
    level = ProjectMember.objects.filter(project=project, user=user).values_list("access_level", flat=True).first()
    project_access_level_known(project=project, user=user, level=level)
    return level


def is_administrator(user: User | AnonymousUser) -> bool:
    """An instance administrator (GitLab's admin): an active superuser, or a user granted
    ``project.administer_instance`` in the admin. ``is_staff`` alone is not one."""
    return bool(user.is_authenticated and user.is_admin)


def project_visible(*, user: User | AnonymousUser, project: Project) -> bool:
    """GitLab's visibility: public projects to everyone (signed in or not), internal ones
    to every signed-in user, private ones to their members and administrators."""
    if project.visibility_level == Visibility.PUBLIC:
        return True
    if not user.is_authenticated:
        return False
    if project.visibility_level == Visibility.INTERNAL:
        return True
    # Membership first: it settles most calls without reading the caller's permissions.
    return project_access_level(user=user, project=project) is not None or is_administrator(user)


def projects_visible(*, user: User | AnonymousUser) -> QuerySet[Project]:
    projects = Project.objects.all()
    if is_administrator(user):
        return projects
    visible = Q(visibility_level=Visibility.PUBLIC)
    if user.is_authenticated:
        visible |= Q(visibility_level=Visibility.INTERNAL) | Q(members__user=user)
    return projects.filter(visible).distinct()


def project_require(
    *, user: User | AnonymousUser, ref: str, min_access: int | None = None, member_required: bool = False
) -> Project:
    """The project the caller may act on, or the error GitLab gives.

    Unknown, malformed and invisible projects are all 404, so that the answer does not
    reveal whether a private project exists. A visible project where the caller's access
    is too low is 403; with ``member_required``, non-members get 404 even on a public
    project (as for exports).
    """
    return project_authorize(
        user=user, project=project_find(ref=ref, user=user), min_access=min_access, member_required=member_required
    )


def project_authorize(
    *,
    user: User | AnonymousUser,
    project: Project | None,
    min_access: int | None = None,
    member_required: bool = False,
) -> Project:
    """:func:`project_require` for a project already looked up (None: not found)."""
    if project is None or not project_visible(user=user, project=project):
        raise NotFound("404 Project Not Found")
    if min_access is None:
        return project
    level = project_access_level(user=user, project=project)
    if (level is not None and level >= min_access) or is_administrator(user):
        return project
    if level is None and member_required:
        raise NotFound("404 Project Not Found")
    raise Forbidden("403 Forbidden")


@transaction.atomic
def project_create(
    *,
    namespace_path: str,
    path: str,
    name: str,
    owner: User | None,
    description: str = "",
    visibility_level: int = Visibility.PRIVATE,
) -> Project:
    project = Project.objects.create(
        namespace_path=namespace_path,
        path=path,
        name=name,
        description=description,
        visibility_level=visibility_level,
        creator=owner,
    )
    if owner is not None:
        ProjectMember.objects.create(project=project, user=owner, access_level=AccessLevel.OWNER)
    return project


#: Called inside ``project_update``'s transaction as ``hook(project=..., fields=...)``, so
#: apps that keep copies of project fields (CI catalog resources) can react once it commits.
ProjectUpdateHook = Callable[..., None]
_project_update_hooks: list[ProjectUpdateHook] = []


def register_project_update_hook(hook: ProjectUpdateHook) -> None:
    if hook not in _project_update_hooks:
        _project_update_hooks.append(hook)


@transaction.atomic
def project_update(*, project: Project, fields: Iterable[str]) -> Project:
    """Save the changed ``fields`` of ``project`` (already set on it) and tell the apps."""
    changed = sorted(set(fields))
    if not changed:
        return project
    project.save(update_fields=[*changed, "updated_at"])
    for hook in _project_update_hooks:
        hook(project=project, fields=changed)
    return project


# --- runtime settings ------------------------------------------------------------------

#: The application settings that are on/off switches, with the console group they show in.
SWITCHES = {
    "project_export_enabled": ("Exports", "Project exports"),
    "catalog_sync_enabled": ("CI catalog", "Catalog sync"),
    "sdrs_enabled": ("Secret detection", "Partner verification (SDRS)"),
}
SECRET_SETTINGS = ("sdrs_jwt_signing_key", "sdrs_callback_secret")


def setting_changes_record(*, changes: dict[str, object], by: str) -> None:
    """Record who changed which settings (secrets as "changed", without their value)."""
    now = timezone.now()
    SettingChange.objects.bulk_create(
        [
            SettingChange(
                key=key,
                value="changed"
                if key in SECRET_SETTINGS
                else ("on" if value is True else "off" if value is False else str(value)[:200]),
                changed_by=by[:150],
                changed_at=now,
            )
            for key, value in changes.items()
        ]
    )


def setting_changes_latest(*, keys: Iterable[str]) -> dict[str, SettingChange]:
    latest = SettingChange.objects.filter(key__in=list(keys)).order_by("key", "-changed_at", "-id").distinct("key")
    return {change.key: change for change in latest}


def application_setting_switch(*, field: str, on: bool, by: str) -> str:
    """Turn one of the instance's switches on or off, and record who did."""
    if field not in SWITCHES:
        raise ValidationFailed(f"{field!r} is not a switch")
    label = SWITCHES[field][1]
    with transaction.atomic():
        row = ApplicationSetting.current()
        changed = (
            ApplicationSetting.objects.filter(pk=row.pk)
            .exclude(**{field: on})
            .update(**{field: on, "updated_at": timezone.now()})
        )
        if not changed:
            return f"{label} was already {'on' if on else 'off'}."
        setting_changes_record(changes={field: on}, by=by)
    return f"{label} is now {'on' if on else 'off'}."


def application_switches() -> list[Switch]:
    """The instance's switches, for the job console."""
    from project.jobs import overview

    row = ApplicationSetting.current()
    latest = setting_changes_latest(keys=SWITCHES)
    switches = []
    for field, (group, label) in SWITCHES.items():
        change = latest.get(field)
        switches.append(
            overview.Switch(
                key=f"settings.{field}",
                label=label,
                on=getattr(row, field),
                group=group,
                permission="project.change_applicationsetting",
                changed_by=change.changed_by if change else "",
                changed_at=change.changed_at if change else None,
            )
        )
    return switches


def application_switch_flip(key: str, on: bool, by: str) -> str:
    return application_setting_switch(field=key.removeprefix("settings."), on=on, by=by)
