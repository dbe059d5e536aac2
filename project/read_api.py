"""The read API: projects, issues, notes, labels and members, with GitLab's shapes,
pagination headers and visibility (public to everyone, internal to signed-in users,
private to members and administrators; anything else is ``404 Project Not Found``).

Thin doors: each view parses its query with its input serializer, asks
``project.read_services`` for the rows and hands a page of them to the serializer.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from project import read_services, services
from project.api import ApiView, TokenScopes
from project.models import Project
from project.pagination import PAGINATION_HEADERS, GitLabPagination, PageParams
from project.read_serializers import (
    IssueListQuery,
    IssueSerializer,
    LabelListQuery,
    LabelSerializer,
    MemberListQuery,
    MemberSerializer,
    NoteListQuery,
    NoteSerializer,
    ProjectListQuery,
)
from project.schema import error_responses
from project.serializers import ProjectSerializer

_LIST_ERRORS = error_responses(400, 401, 403, 404)


class ReadView(ApiView):
    """A read-only operation that anyone may call: without a token only public projects
    are visible, as in GitLab."""

    permission_classes = [permissions.IsAuthenticatedOrReadOnly, TokenScopes]
    pagination_class = GitLabPagination

    def project(self, request: Request, project_id: str) -> Project:
        return services.project_require(user=request.user, ref=project_id)

    def page(
        self,
        request: Request,
        rows: QuerySet | list,
        serializer: type[serializers.Serializer],
        query: dict[str, Any],
        context: dict[str, Any] | None = None,
    ) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, request, self, params=query)
        return paginator.get_paginated_response(serializer(page, many=True, context=context or {}).data)


class ProjectListView(ReadView):
    """``GET /projects``: the projects the caller may see."""

    @extend_schema(
        parameters=[ProjectListQuery, *PAGINATION_HEADERS],
        responses={200: ProjectSerializer(many=True), **error_responses(400, 401, 403)},
        operation_id="listProjects",
    )
    def get(self, request: Request) -> Response:
        query = ProjectListQuery.parse(request.query_params)
        projects = read_services.projects_list(
            user=request.user,
            membership=query["membership"],
            search=query.get("search"),
            visibility=query.get("visibility"),
            order_by=query["order_by"],
            sort=query["sort"],
        )
        anonymous = not request.user.is_authenticated
        return self.page(request, projects, ProjectSerializer, query, context={"anonymous": anonymous})


class IssueListView(ReadView):
    @extend_schema(
        parameters=[IssueListQuery, *PAGINATION_HEADERS],
        responses={200: IssueSerializer(many=True), **_LIST_ERRORS},
        operation_id="listProjectIssues",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project = self.project(request, project_id)
        query = IssueListQuery.parse(request.query_params)
        issues = read_services.project_issues_list(
            user=request.user,
            project=project,
            state=query["state"],
            labels=query.get("labels"),
            search=query.get("search"),
            order_by=query["order_by"],
            sort=query["sort"],
        )
        return self.page(request, issues, IssueSerializer, query)


class IssueView(ReadView):
    @extend_schema(
        responses={
            200: IssueSerializer,
            **error_responses(401, 403, 404, e404="Unknown or invisible project or issue."),
        },
        operation_id="getProjectIssue",
    )
    def get(self, request: Request, project_id: str, issue_iid: int) -> Response:
        project = self.project(request, project_id)
        issue = read_services.issue_require(user=request.user, project=project, iid=issue_iid)
        return Response(IssueSerializer(issue).data)


class IssueNoteListView(ReadView):
    @extend_schema(
        parameters=[NoteListQuery, *PAGINATION_HEADERS],
        responses={200: NoteSerializer(many=True), **_LIST_ERRORS},
        operation_id="listIssueNotes",
    )
    def get(self, request: Request, project_id: str, issue_iid: int) -> Response:
        project = self.project(request, project_id)
        issue = read_services.issue_require(user=request.user, project=project, iid=issue_iid)
        query = NoteListQuery.parse(request.query_params)
        notes = read_services.issue_notes_list(issue=issue, order_by=query["order_by"], sort=query["sort"])
        return self.page(request, notes, NoteSerializer, query)


class AwardEmojiSerializer(serializers.Serializer):
    """GitLab's ``AwardEmoji`` (none are recorded here: the list is always empty)."""

    id = serializers.IntegerField()
    name = serializers.CharField()


class IssueAwardEmojiListView(ReadView):
    """An issue's award emoji: GitLab links to them from every issue (``_links``); this
    product records none, so the list is empty, not missing."""

    @extend_schema(
        parameters=[PageParams, *PAGINATION_HEADERS],
        responses={200: AwardEmojiSerializer(many=True), **_LIST_ERRORS},
        operation_id="listIssueAwardEmoji",
    )
    def get(self, request: Request, project_id: str, issue_iid: int) -> Response:
        project = self.project(request, project_id)
        read_services.issue_require(user=request.user, project=project, iid=issue_iid)
        return self.page(request, [], AwardEmojiSerializer, PageParams.parse(request.query_params))


class LabelListView(ReadView):
    @extend_schema(
        parameters=[LabelListQuery, *PAGINATION_HEADERS],
        responses={200: LabelSerializer(many=True), **_LIST_ERRORS},
        operation_id="listProjectLabels",
    )
    def get(self, request: Request, project_id: str) -> Response:
        project = self.project(request, project_id)
        query = LabelListQuery.parse(request.query_params)
        labels = read_services.project_labels_list(
            user=request.user, project=project, search=query.get("search"), with_counts=query["with_counts"]
        )
        return self.page(request, labels, LabelSerializer, query)


_MEMBER_LIST_SCHEMA: dict[str, Any] = {
    "parameters": [MemberListQuery, *PAGINATION_HEADERS],
    "responses": {200: MemberSerializer(many=True), **_LIST_ERRORS},
}


class MemberListView(ReadView):
    """``GET /projects/:id/members``: the project's members."""

    @extend_schema(operation_id="listProjectMembers", **_MEMBER_LIST_SCHEMA)
    def get(self, request: Request, project_id: str) -> Response:
        project = self.project(request, project_id)
        query = MemberListQuery.parse(request.query_params)
        members = read_services.project_members_list(project=project, query=query.get("query"))
        return self.page(request, members, MemberSerializer, query)


class AllMemberListView(MemberListView):
    """``GET /projects/:id/members/all``: direct and inherited members; without groups,
    the same list."""

    @extend_schema(operation_id="listAllProjectMembers", **_MEMBER_LIST_SCHEMA)
    def get(self, request: Request, project_id: str) -> Response:
        return super().get(request, project_id)
