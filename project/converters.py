"""URL converters of the API's routes.

A project's full path may end in a word that is also a route's suffix: GET
``/projects/acme%2Fissues`` reaches Django decoded, as ``/projects/acme/issues``, and would
match the issues route of a project ``acme``. GitLab's router sees the encoded ``%2F`` and
has no such doubt; WSGI servers do not pass it on. So a route with a suffix takes its
project reference through ``ProjectRefConverter``, which declines (raises ``ValueError``,
and Django tries the next route, in the end ``GET /projects/:id``) whatever cannot be the
project it names.
"""

from __future__ import annotations

from django.urls import register_converter
from django.urls.converters import PathConverter

from project.api import MalformedInput, reject_malformed
from project.models import Project
from project.services import project_ref_parse


class ProjectRefConverter(PathConverter):
    """A numeric id, or the full path of a project that exists (one indexed query; its
    visibility is the view's concern, so both answers are the same 404 to an outsider)."""

    def to_python(self, value: str) -> str:
        project_id, path = project_ref_parse(value)
        if project_id is not None:
            return value
        if path is None or not _exists(path):
            raise ValueError(value)
        return value


def _exists(path: str) -> bool:
    # A NUL byte or a lone surrogate cannot go into a query: declined, so that the bare
    # project route answers it with the malformed request's 400 (not a database error).
    try:
        reject_malformed(path, "the path")
    except MalformedInput:
        return False
    return Project.objects.filter(path_with_namespace__iexact=path).exists()


# Registered here, once, by whichever URL module imports this first.
register_converter(ProjectRefConverter, "project_ref")
