"""What an export contains: GitLab's import/export relation tree, as SQL.

GitLab's exporter (``Gitlab::ImportExport::Project::TreeSaver`` in ndjson mode) writes
``tree/project.json`` with the project's own attributes and one
``tree/project/<relation>.ndjson`` per top-level relation, one JSON object per line, with
sub-relations nested (an issue carries its notes and label links). The field names below
follow GitLab's ``import_export.yml`` for the models this product has.

PostgreSQL builds every JSON line itself (``row_to_json``) and streams them with
``COPY … TO STDOUT``: the worker only moves bytes, so memory stays flat and throughput is
close to what the database can produce. Every statement takes the project id (and
project.json the description override, members whether an administrator exports) as bound
parameters, never interpolated text; the f-strings only splice in fixed SQL fragments.
"""

from __future__ import annotations

from dataclasses import dataclass

#: GitLab's import/export format version (``Gitlab::ImportExport::VERSION``).
VERSION = "0.2.4"
#: Written as GITLAB_VERSION / GITLAB_REVISION: the GitLab release whose export format this
#: product writes (GitLab records its own version there; importers log it).
GITLAB_VERSION = "17.6.0"
GITLAB_REVISION = "gitlab-compatible"


def ts(column: str) -> str:
    """A timestamp as GitLab's JSON writes it (``2026-11-29T10:00:00.123Z``: UTC,
    milliseconds), not row_to_json's ``+00:00`` with microseconds."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


@dataclass(frozen=True)
class Relation:
    name: str
    path: str
    sql: str


PROJECT = Relation(
    name="project",
    path="tree/project.json",
    # GitLab leaves out name, path, ids and timestamps: the importer takes them from the
    # project it imports into.
    sql="""
        SELECT row_to_json(t) FROM (
            SELECT COALESCE(%(description)s::text, p.description) AS description,
                   p.visibility_level,
                   false AS archived
            FROM projects p WHERE p.id = %(project_id)s
        ) t
    """,
)

PROJECT_MEMBERS = Relation(
    name="project_members",
    path="tree/project/project_members.ndjson",
    sql=f"""
        SELECT row_to_json(t) FROM (
            SELECT m.id, m.access_level, 'Project'::text AS source_type, m.user_id,
                   3 AS notification_level, {ts("m.created_at")} AS created_at,
                   {ts("m.created_at")} AS updated_at, NULL::text AS expires_at,
                   -- GitLab's members mapper matches users by email on an administrator's
                   -- import; only an administrator's export carries the private address.
                   CASE WHEN %(exported_by_admin)s
                        THEN json_build_object('id', u.id, 'email', u.email, 'public_email', u.public_email,
                                               'username', u.username)
                        ELSE json_build_object('id', u.id, 'public_email', u.public_email, 'username', u.username)
                   END AS "user"
            FROM project_members m JOIN users u ON u.id = m.user_id
            WHERE m.project_id = %(project_id)s
        ) t ORDER BY t.id
    """,
)

LABELS = Relation(
    name="labels",
    path="tree/project/labels.ndjson",
    sql=f"""
        SELECT row_to_json(t) FROM (
            SELECT l.id, l.title, l.color, l.project_id, {ts("l.created_at")} AS created_at,
                   {ts("l.updated_at")} AS updated_at,
                   false AS template, l.description, 'ProjectLabel'::text AS type,
                   '[]'::json AS priorities
            FROM labels l WHERE l.project_id = %(project_id)s
        ) t ORDER BY t.id
    """,
)

# array_to_json(array_agg(...)) rather than json_agg: json_agg puts line breaks between
# elements, which would split one issue over several ndjson lines. Nested objects are
# LATERAL rows, which row_to_json renders as compactly as the rest.
ISSUES = Relation(
    name="issues",
    path="tree/project/issues.ndjson",
    sql=f"""
        SELECT row_to_json(t) FROM (
            SELECT i.id, i.title, i.author_id, i.project_id, {ts("i.created_at")} AS created_at,
                   {ts("i.updated_at")} AS updated_at, i.description, i.iid, i.state,
                   {ts("i.closed_at")} AS closed_at, i.updated_by_id, i.closed_by_id, i.confidential,
                   to_char(i.due_date, 'YYYY-MM-DD') AS due_date, i.discussion_locked, i.relative_position,
                   i.lock_version, {ts("i.last_edited_at")} AS last_edited_at, i.last_edited_by_id,
                   i.issue_type,
                   COALESCE((
                       SELECT array_to_json(array_agg(n ORDER BY n.id)) FROM (
                           SELECT n.id, n.note, 'Issue'::text AS noteable_type, n.author_id,
                                  {ts("n.created_at")} AS created_at, {ts("n.updated_at")} AS updated_at,
                                  i.project_id, n.system, author
                           FROM notes n LEFT JOIN users u ON u.id = n.author_id
                           CROSS JOIN LATERAL (
                               SELECT COALESCE(NULLIF(btrim(u.first_name || ' ' || u.last_name), ''), u.username)
                                      AS name
                           ) author
                           WHERE n.issue_id = i.id
                       ) n
                   ), '[]'::json) AS notes,
                   COALESCE((
                       SELECT array_to_json(array_agg(ll ORDER BY ll.id)) FROM (
                           SELECT il.id, 'Issue'::text AS target_type, {ts("il.created_at")} AS created_at,
                                  {ts("il.updated_at")} AS updated_at, label
                           FROM issue_labels il JOIN labels l ON l.id = il.label_id
                           CROSS JOIN LATERAL (
                               SELECT l.id, l.title, l.color, l.description, 'ProjectLabel'::text AS type,
                                      {ts("l.created_at")} AS created_at, {ts("l.updated_at")} AS updated_at
                           ) label
                           WHERE il.issue_id = i.id
                       ) ll
                   ), '[]'::json) AS label_links
            FROM issues i WHERE i.project_id = %(project_id)s
        ) t ORDER BY t.id
    """,
)

#: In the order they are written; progress counts them.
TREE: tuple[Relation, ...] = (PROJECT, PROJECT_MEMBERS, LABELS, ISSUES)


def copy_statement(relation: Relation) -> str:
    """``COPY (…) TO STDOUT`` that hands out each JSON line byte for byte.

    The text format would double every backslash of the JSON; CSV with a quote and a
    delimiter that JSON text never contains literally (it escapes control characters as
    ``\\u0001``) leaves the lines untouched and unquoted.
    """
    return f"COPY ({relation.sql}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
