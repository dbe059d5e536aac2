"""GitLab's JSON shapes for users and projects (field names as GitLab's API has them)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from project.models import Project, User


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def user_basic(user: User) -> dict[str, Any]:
    return {
        "id": user.pk,
        "username": user.username,
        "name": user.get_full_name() or user.username,
        "state": "active" if user.is_active else "blocked",
        "avatar_url": None,
        "web_url": f"{settings.EXTERNAL_URL}/{user.username}",
    }


def user_detail(user: User) -> dict[str, Any]:
    return {
        **user_basic(user),
        "created_at": _iso(user.date_joined),
        "email": user.email,
        "is_admin": user.is_admin,
        "last_sign_in_at": _iso(user.last_login),
    }


def project_identity(project: Project) -> dict[str, Any]:
    """GitLab's ProjectIdentity: what the export status endpoint starts from."""
    return {
        "id": project.pk,
        "description": project.description,
        "name": project.name,
        "name_with_namespace": f"{project.namespace_path} / {project.name}",
        "path": project.path,
        "path_with_namespace": project.path_with_namespace,
        "created_at": _iso(project.created_at),
    }


def project_detail(project: Project, *, access_level: int | None) -> dict[str, Any]:
    return {
        **project_identity(project),
        "default_branch": None,
        "visibility": project.visibility,
        "web_url": project.web_url,
        "http_url_to_repo": f"{project.web_url}.git",
        "last_activity_at": _iso(project.updated_at),
        "namespace": {
            "name": project.namespace_path,
            "path": project.namespace_path.rsplit("/", 1)[-1],
            "full_path": project.namespace_path,
            "kind": "group" if "/" in project.namespace_path else "user",
        },
        "_links": {
            "self": f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}",
            "issues": f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}/issues",
            "labels": f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}/labels",
            "members": f"{settings.EXTERNAL_URL}/api/v4/projects/{project.pk}/members",
        },
        "permissions": {
            "project_access": {"access_level": access_level, "notification_level": 3} if access_level else None,
            "group_access": None,
        },
    }
