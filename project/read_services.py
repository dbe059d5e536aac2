"""The read API's queries: projects, issues, notes, labels and members as GitLab lists them.

Each function returns a queryset already filtered by GitLab's visibility rules and with
everything its serializer reads loaded up front (``select_related``/``prefetch_related``,
counts as subqueries), so that the number of queries of a page does not grow with its size.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from project.errors import NotFound
from project.models import AccessLevel, Issue, Label, LabelLink, Note, Project, ProjectMember, User, Visibility
from project.services import is_administrator, project_access_level

#: GitLab's ``order_by`` values for projects, by the column each sorts on
#: (``last_activity_at`` is our ``updated_at``: every change of a project touches it).
PROJECT_ORDER_COLUMNS = {
    "id": "id",
    "name": "name",
    "path": "path",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "last_activity_at": "updated_at",
}
ISSUE_ORDER_COLUMNS = {"created_at": "created_at", "updated_at": "updated_at", "title": "title"}
NOTE_ORDER_COLUMNS = {"created_at": "created_at", "updated_at": "updated_at"}


def _ordered(queryset: QuerySet, *, column: str, sort: str) -> QuerySet:
    # id breaks ties as GitLab's keyset-friendly ordering does, so pages never overlap.
    prefix = "-" if sort == "desc" else ""
    if column == "id":
        return queryset.order_by(f"{prefix}id")
    return queryset.order_by(f"{prefix}{column}", f"{prefix}id")


def _caller_level(user: User | AnonymousUser) -> Any:
    if not user.is_authenticated:
        return Value(None, output_field=IntegerField())
    levels = ProjectMember.objects.filter(project=OuterRef("pk"), user=user).values("access_level")[:1]
    return Subquery(levels, output_field=IntegerField())


def projects_list(
    *,
    user: User | AnonymousUser,
    membership: bool = False,
    search: str | None = None,
    visibility: str | None = None,
    order_by: str = "created_at",
    sort: str = "desc",
) -> QuerySet[Project]:
    """The projects ``user`` may see (GitLab's ``ProjectsFinder``), each annotated with the
    caller's access level (``caller_access_level``) for its ``permissions``."""
    projects = Project.objects.annotate(caller_access_level=_caller_level(user))
    if membership and user.is_authenticated:
        # GitLab ignores membership without a user, and an administrator asking for it
        # gets only their own projects.
        projects = projects.filter(caller_access_level__isnull=False)
    elif not is_administrator(user):
        visible = Q(visibility_level=Visibility.PUBLIC)
        if user.is_authenticated:
            visible |= Q(visibility_level=Visibility.INTERNAL) | Q(caller_access_level__isnull=False)
        projects = projects.filter(visible)
    if visibility:
        projects = projects.filter(visibility_level=Visibility[visibility.upper()].value)
    if search:
        projects = projects.filter(
            Q(name__icontains=search) | Q(path__icontains=search) | Q(description__icontains=search)
        )
    return _ordered(projects, column=PROJECT_ORDER_COLUMNS[order_by], sort=sort)


def issues_visible_filter(*, user: User | AnonymousUser, project: Project) -> Q:
    """GitLab hides confidential issues from non-members and guests (their own excepted);
    reporters and above, and administrators, see them all."""
    if is_administrator(user):
        return Q()
    level = project_access_level(user=user, project=project)
    if level is not None and level >= AccessLevel.REPORTER:
        return Q()
    shown = Q(confidential=False)
    if user.is_authenticated:
        shown |= Q(author=user)
    return shown


def project_issues_list(
    *,
    user: User | AnonymousUser,
    project: Project,
    state: str = "all",
    labels: list[str] | None = None,
    search: str | None = None,
    order_by: str = "created_at",
    sort: str = "desc",
) -> QuerySet[Issue]:
    """A project's issues the caller may see (GitLab's ``IssuesFinder``). ``labels`` keeps
    the issues that carry every one of them; GitLab's ``None`` and ``Any`` mean no label
    and at least one."""
    issues = _issues_loaded(Issue.objects.filter(project=project)).filter(
        issues_visible_filter(user=user, project=project)
    )
    if state != "all":
        issues = issues.filter(state=state)
    for title in labels or []:
        if title.lower() == "none":
            issues = issues.filter(labels__isnull=True)
        elif title.lower() == "any":
            issues = issues.filter(Exists(LabelLink.objects.filter(issue_id=OuterRef("pk"))))
        else:
            tagged = LabelLink.objects.filter(issue_id=OuterRef("pk"), label__title=title)
            issues = issues.filter(Exists(tagged))
    if search:
        issues = issues.filter(Q(title__icontains=search) | Q(description__icontains=search))
    return _ordered(issues, column=ISSUE_ORDER_COLUMNS[order_by], sort=sort)


def _issues_loaded(issues: QuerySet[Issue]) -> QuerySet[Issue]:
    user_notes = (
        Note.objects.filter(issue=OuterRef("pk"), system=False)
        .order_by()
        .values("issue")
        .annotate(count=Count("id"))
        .values("count")
    )
    return (
        issues.select_related("project", "author", "closed_by")
        .prefetch_related("labels")
        .annotate(user_notes_count=Coalesce(Subquery(user_notes, output_field=IntegerField()), 0))
    )


def issue_require(*, user: User | AnonymousUser, project: Project, iid: int) -> Issue:
    """One issue of a visible project by its iid, or GitLab's ``404 Issue Not Found`` (also
    for a confidential issue the caller may not see)."""
    issue = (
        _issues_loaded(Issue.objects.filter(project=project, iid=iid))
        .filter(issues_visible_filter(user=user, project=project))
        .first()
    )
    if issue is None:
        raise NotFound("404 Issue Not Found")
    return issue


def issue_notes_list(*, issue: Issue, order_by: str = "created_at", sort: str = "desc") -> QuerySet[Note]:
    """An issue's notes, system notes included, as GitLab lists them."""
    notes = Note.objects.filter(issue=issue).select_related("author", "issue")
    return _ordered(notes, column=NOTE_ORDER_COLUMNS[order_by], sort=sort)


def project_labels_list(
    *, user: User | AnonymousUser, project: Project, search: str | None = None, with_counts: bool = False
) -> QuerySet[Label]:
    """A project's labels by title (GitLab's ``LabelsFinder`` order). With ``with_counts``,
    the open and closed issues the caller may see (confidential ones are not counted for
    who cannot read them, as in GitLab), as subqueries."""
    labels = Label.objects.filter(project=project).order_by("title", "id")
    if search:
        labels = labels.filter(Q(title__icontains=search) | Q(description__icontains=search))
    if with_counts:
        visible = issues_visible_filter(user=user, project=project)
        labels = labels.annotate(
            open_issues_count=_labelled_issues_count(state=Issue.State.OPENED, visible=visible),
            closed_issues_count=_labelled_issues_count(state=Issue.State.CLOSED, visible=visible),
            open_merge_requests_count=Value(0, output_field=IntegerField()),  # no merge requests here
        )
    return labels


def _labelled_issues_count(*, state: str, visible: Q) -> Coalesce:
    counted = (
        Issue.objects.filter(visible, label_links__label=OuterRef("pk"), state=state)
        .order_by()
        .values("label_links__label")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def project_members_list(*, project: Project, query: str | None = None) -> QuerySet[ProjectMember]:
    """A project's members. There are no groups here, so the direct members are all of them
    (``/members`` and ``/members/all`` answer the same)."""
    members = ProjectMember.objects.filter(project=project).select_related("user").order_by("user_id")
    if query:
        members = members.filter(
            Q(user__username__icontains=query)
            | Q(user__first_name__icontains=query)
            | Q(user__last_name__icontains=query)
        )
    return members
