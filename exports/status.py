"""What the export API reads on every request: the caller's access to the project, and the
export status they see (GitLab's ``lib/api/project_export.rb`` ``before`` block and
``Project#export_status``).

GitLab clients poll the status about once a second, so these reads are hand-written
statements (``project.sqlrows``), prepared once per connection. A token-authenticated poll
reads the token, the project with the caller's access and the settings, and the state in
one statement (``export_status_poll``); every other request reads them as the API's
authentication and ``export_project_require`` do, one statement each. Both are built from
the same pieces below, so they cannot read differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone

from exports.models import ProjectExportArchive, ProjectExportJob
from exports.services import LIVE_RUN_STATUSES, Status
from project import authentication, db, sqlrows
from project import services as core
from project.errors import AppError, NotFound
from project.jobs import JobRun
from project.models import AccessLevel, AccessToken, ApplicationSetting, Project, User

# --- the API's access check -------------------------------------------------------------


@dataclass(frozen=True)
class ExportLimits:
    """The application settings' rate limits of the export API (per minute, 0: none) and
    the largest project exported (MiB, 0: none)."""

    export: int
    download: int
    max_size_mib: int = 0


_PROJECT = sqlrows.Columns(
    Project,
    "p",
    [
        "id", "name", "path", "namespace_path", "path_with_namespace", "description", "visibility_level", "creator",
        "created_at", "updated_at",
    ],
)  # fmt: skip


def _access_columns(user: str) -> str:
    """The project, the access level on it of the user ``user`` (an SQL expression), and the
    settings: ``_ACCESS_WIDTH`` columns."""
    return f"""{_PROJECT.sql},
           (SELECT m.access_level FROM project_members AS m
            WHERE m.project_id = p.id AND m.user_id = {user} LIMIT 1),
           s.project_export_enabled, s.project_export_limit, s.project_download_export_limit,
           s.max_export_size"""


_ACCESS_WIDTH = _PROJECT.width + 5
#: Where ``project_export_enabled`` is among them: NULL when the settings row does not exist yet.
_ENABLED = _PROJECT.width + 1
#: The project by id, or by full path as ``project_find`` matches it (on the index of
#: UPPER(path_with_namespace)), and the settings: joined to a row that is there even when
#: neither is.
_ACCESS_JOINS = """
    LEFT JOIN projects AS p
           ON (p.id = %(id)s OR UPPER(p.path_with_namespace::text) = UPPER(%(path)s))
    LEFT JOIN application_settings AS s ON s.id = 1"""
_ACCESS_SQL = f"SELECT {_access_columns('%(user)s')} FROM (SELECT 1) AS one {_ACCESS_JOINS}"


def export_project_require(*, user: User, ref: str) -> tuple[Project, ExportLimits]:
    """GitLab's ``before`` block of the export API: 404 "404 Not Found" while exports are
    turned off, then the project, for maintainers and above (other members 403,
    non-members 404), as ``project.services.project_require`` decides.

    One statement reads the project, the caller's access level on it and the application
    settings. Only before the settings row exists are they read on their own.
    """
    project_id, path = core.project_ref_parse(ref)
    row: tuple[Any, ...] = (None,) * _ACCESS_WIDTH
    if project_id is not None or path is not None:
        with db.prepared_cursor(connection) as cursor:
            cursor.execute(_ACCESS_SQL, {"user": user.pk, "id": project_id, "path": path})
            row = cursor.fetchone()
    if row[_ENABLED] is None:  # no settings row yet
        current = ApplicationSetting.current()
        settings_values = (
            current.project_export_enabled,
            current.project_export_limit,
            current.project_download_export_limit,
            current.max_export_size,
        )
        row = (*row[:_ENABLED], *settings_values)
    return _access_decide(user, row)


def _access_decide(user: User, row: tuple[Any, ...]) -> tuple[Project, ExportLimits]:
    """``export_project_require``'s decision, on the ``_access_columns`` of ``row``."""
    project, level, enabled, export_limit, download_limit, max_size = sqlrows.split(row, _PROJECT)
    if not enabled:
        raise NotFound("404 Not Found")
    if project is not None:
        core.project_access_level_known(project=project, user=user, level=level)
    project = core.project_authorize(
        user=user, project=project, min_access=AccessLevel.MAINTAINER, member_required=True
    )
    return project, ExportLimits(export=export_limit or 0, download=download_limit or 0, max_size_mib=max_size or 0)


# --- the per-user status ----------------------------------------------------------------


@dataclass(frozen=True)
class ExportState:
    status: str
    archive: ProjectExportArchive | None
    active_job: ProjectExportJob | None
    latest_job: ProjectExportJob | None


def export_state(*, project: Project, user: User) -> ExportState:
    """The status a user sees, derived in GitLab's order (``Project#export_status``):
    regeneration_in_progress, queued, started, finished, failed, none.

    "finished" means this user has a downloadable (unexpired) archive. "failed" means
    the user's latest job failed and there is no archive to fall back on.

    One statement reads the user's archive, active jobs, latest job and the active jobs'
    runs: it sees the database at one moment (read separately, a job finishing between the
    reads would show as "started" plus an archive, that is regeneration_in_progress), with
    no transaction to open and close around it.
    """
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_STATE_SQL, {"project": project.pk, "user": user.pk, **_state_params()})
        rows = cursor.fetchall()
    return _state_derive(rows)


def _state_derive(rows: list[tuple[Any, ...]]) -> ExportState:
    """The state from the ``_STATE_COLUMNS`` at the end of ``rows``."""
    archive = _ARCHIVE.instance(rows[0][-_STATE_WIDTH:][: _ARCHIVE.width])  # the same in every row
    jobs = []
    for row in rows:
        job, run = sqlrows.split(row[-(_JOB.width + _RUN.width) :], _JOB, _RUN)
        if job is not None:  # else the one row of LEFT JOINs that found no job
            job.job_run = run
            jobs.append(job)
    active = [job for job in jobs if job.status in ProjectExportJob.ACTIVE]
    latest = jobs[-1] if jobs else None
    statuses = {job.status for job in active}
    if active and archive is not None:
        status = "regeneration_in_progress"
    elif Status.QUEUED in statuses:
        status = "queued"
    elif Status.STARTED in statuses:
        status = "started"
    elif archive is not None:
        status = "finished"
    elif latest is not None and latest.status == Status.FAILED:
        status = "failed"
    else:
        status = "none"
    return ExportState(status=status, archive=archive, active_job=active[-1] if active else None, latest_job=latest)


#: What the status reads of each model: what the body shows and ``export_phase`` needs.
#: Any other field is deferred (touching it reads it with a query of its own); the job's
#: upload URL (encrypted, never shown) and the run's bulky columns stay unread.
_ARCHIVE = sqlrows.Columns(ProjectExportArchive, "a", ["id", "size", "sha256", "created_at", "expires_at"])
_JOB = sqlrows.Columns(
    ProjectExportJob, "j", ["id", "status", "job_run", "relations_total", "error_code", "error", "started_at"]
)
_RUN = sqlrows.Columns(JobRun, "r", ["id", "status", "attempt", "deferrals", "progress"])
# Constants, written into the statement rather than bound on every call.
_ACTIVE = ", ".join(f"'{status}'" for status in ProjectExportJob.ACTIVE)
_STATE_COLUMNS = f"{_ARCHIVE.sql}, {_JOB.sql}, {_RUN.sql}"
_STATE_WIDTH = _ARCHIVE.width + _JOB.width + _RUN.width


def _state_joins(project: str, user: str) -> str:
    """The user's unexpired archive, and their active jobs plus their latest job (one row
    each, oldest first with ``ORDER BY j.id``, each with its run), of the project ``project``
    and the user ``user`` (SQL expressions)."""
    return f"""
    LEFT JOIN project_export_archives AS a
           ON a.project_id = {project} AND a.user_id = {user} AND a.expires_at > %(now)s
    LEFT JOIN LATERAL (
        SELECT * FROM project_export_jobs AS mine
        WHERE mine.project_id = {project} AND mine.user_id = {user}
          AND (mine.status IN ({_ACTIVE}) OR mine.id = (
               SELECT max(id) FROM project_export_jobs WHERE project_id = {project} AND user_id = {user}))
    ) AS j ON true
    LEFT JOIN job_runs AS r ON r.id = j.job_run_id"""


def _state_params() -> dict[str, Any]:
    return {"now": timezone.now()}


_STATE_SQL = f"""
    SELECT {_STATE_COLUMNS}
    FROM (SELECT 1) AS one {_state_joins("%(project)s", "%(user)s")}
    ORDER BY j.id"""


def export_phase(job: ProjectExportJob) -> str | None:
    """Where an active export is, from its run: queued, waiting_for_slot, retry_waiting,
    exporting or uploading. None once it finished or failed."""
    if not job.is_active:
        return None
    run = job.job_run
    if run is None or run.status not in LIVE_RUN_STATUSES:
        return "queued" if job.status == Status.QUEUED else "exporting"
    if run.status == JobRun.Status.QUEUED:
        if job.status == Status.STARTED or run.attempt > 1:
            return "retry_waiting"
        return "waiting_for_slot" if run.deferrals else "queued"
    return "uploading" if (run.progress or {}).get("phase") == "uploading" else "exporting"


# --- a poll in one statement --------------------------------------------------------------

#: What a poll needs of the token and its user: what ``access_token_accept``, the scope
#: check and the access decision read.
_TOKEN = authentication.TokenRead(["id", "user", "scopes", "last_used_at"], ["id", "is_superuser", "is_active"])
#: The token with its user and the address's ban, the project with the access of the
#: token's user and the settings, and that user's state: what the three statements of the
#: API's usual path read, in one round trip.
_POLL_SQL = f"""
    SELECT {_TOKEN.columns}, {_access_columns("u.id")}, {_STATE_COLUMNS}
    FROM (SELECT 1) AS one
    LEFT JOIN ({_TOKEN.TABLES}) ON {_TOKEN.MATCH}
    {_ACCESS_JOINS} {_state_joins("p.id", "u.id")}
    ORDER BY j.id"""


@dataclass(frozen=True)
class StatusPoll:
    token: AccessToken
    project: Project
    state: ExportState


def export_status_poll(*, token: str, address: str, ref: str) -> StatusPoll | None:
    """The export status for a request that sends the token ``token`` from ``address``
    about the project ``ref``, read in one statement and decided as the API's usual path
    decides it.

    None when that is not a plain answer: the token is unknown, dead or banned, exports
    are off, the project is not found or the token's user may not export it (or the
    settings row does not exist yet). The caller then serves the request through the
    usual path, whose checks give the error, count a failed authentication and so on:
    nothing here writes anything but the token's use.
    """
    project_id, path = core.project_ref_parse(ref)
    if not token or (project_id is None and path is None):
        return None
    params = {**_TOKEN.params(token, address), "id": project_id, "path": path, **_state_params()}
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_POLL_SQL, params)
        rows = cursor.fetchall()
    found, banned_since, rest = _TOKEN.split(rows[0])
    if found is None or rest[_ENABLED] is None:  # no token; no settings row yet
        return None
    accepted = authentication.token_accept_found(token=found, banned_since=banned_since)
    if accepted is None:
        return None
    try:
        project, _ = _access_decide(accepted.user, tuple(rest[:_ACCESS_WIDTH]))
    except AppError:
        return None
    return StatusPoll(token=accepted, project=project, state=_state_derive(rows))
