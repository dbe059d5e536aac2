"""GitLab's offset pagination (``lib/api/helpers/pagination.rb``, Kaminari underneath).

``page`` (default 1) and ``per_page`` (default 20, at most 100) choose the slice; the body
stays a plain JSON list and the rest travels in headers:

    X-Total, X-Total-Pages, X-Page, X-Per-Page, X-Next-Page, X-Prev-Page (empty when there
    is none), Link: <…>; rel="prev", <…>; rel="next", <…>; rel="first", <…>; rel="last"

Bad values behave as in GitLab (with its ``only_positive_pagination_values`` flag off, the
default): ``page`` below 1 is 1; ``per_page`` above 100 is 100 and below 0 the default;
``per_page=0`` is refused (``per_page has a value not allowed``); a value that is not an
integer is refused (``page is invalid``). A page past the end is empty, however large.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.utils.encoding import escape_uri_path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response

from project.serializers import InputSerializer, IntegerParam

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


class PageParams(InputSerializer):
    """``page`` and ``per_page``. An operation's query serializer subclasses this, so one
    serializer describes (and parses) all of its query parameters."""

    page = IntegerParam(required=False, default=1, help_text="Page number (from 1; below 1 means 1).")
    per_page = IntegerParam(
        required=False,
        default=DEFAULT_PER_PAGE,
        help_text=f"Items per page (default {DEFAULT_PER_PAGE}, at most {MAX_PER_PAGE}; more means {MAX_PER_PAGE}).",
    )

    def validate_page(self, value: int | None) -> int:
        return 1 if value is None else max(1, value)

    def validate_per_page(self, value: int | None) -> int:
        if value is None:
            return DEFAULT_PER_PAGE
        if value == 0:
            raise serializers.ValidationError("{param} has a value not allowed")
        if value < 0:
            return DEFAULT_PER_PAGE  # Kaminari ignores a negative per_page
        return min(value, MAX_PER_PAGE)


def _header(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(
        name, OpenApiTypes.STR, location=OpenApiParameter.HEADER, response=[200], required=True, description=description
    )


#: The response headers of a paginated operation, for ``extend_schema(parameters=…)``.
PAGINATION_HEADERS = [
    _header("X-Total", "Number of items."),
    _header("X-Total-Pages", "Number of pages (at least 1)."),
    _header("X-Page", "This page."),
    _header("X-Per-Page", "Items per page."),
    _header("X-Next-Page", "The next page, empty on the last one."),
    _header("X-Prev-Page", "The previous page, empty on the first one (or past the end)."),
    _header("Link", 'RFC 8288 links: rel="prev", "next" (when they exist), "first" and "last".'),
]


class GitLabPagination(BasePagination):
    """DRF paginator with GitLab's parameters and headers. ``paginate_queryset`` takes the
    already parsed ``params`` (``page``, ``per_page``) when the view parsed its query with
    a ``PageParams`` subclass, or parses them itself."""

    def paginate_queryset(
        self, queryset: Any, request: Request, view: Any = None, *, params: dict[str, Any] | None = None
    ) -> list[Any]:
        if params is None:
            params = PageParams.parse(request.query_params)
        self.request = request
        self.page = params["page"]
        self.per_page = params["per_page"]
        self.total = (
            queryset.count() if hasattr(queryset, "count") and not isinstance(queryset, list) else len(queryset)
        )
        self.total_pages = max(1, math.ceil(self.total / self.per_page))
        offset = (self.page - 1) * self.per_page
        # Past the end nothing is fetched: the OFFSET of a huge page would not fit a bigint.
        return [] if offset >= self.total else list(queryset[offset : offset + self.per_page])

    @property
    def next_page(self) -> int | None:
        return self.page + 1 if self.page < self.total_pages else None

    @property
    def prev_page(self) -> int | None:
        # Kaminari: none on the first page, and none past the end either.
        return self.page - 1 if 1 < self.page <= self.total_pages else None

    def _href(self, page: int) -> str:
        params: dict[str, Any] = {
            key: value for key, value in self.request.query_params.items() if key not in ("page", "per_page")
        }
        params.update(page=page, per_page=self.per_page)
        query = urlencode(sorted(params.items()))  # Rails' to_query sorts the keys
        return f"{settings.EXTERNAL_URL}{escape_uri_path(self.request.path_info)}?{query}"

    def headers(self) -> dict[str, str]:
        links = []
        if self.prev_page:
            links.append(f'<{self._href(self.prev_page)}>; rel="prev"')
        if self.next_page:
            links.append(f'<{self._href(self.next_page)}>; rel="next"')
        links.append(f'<{self._href(1)}>; rel="first"')
        links.append(f'<{self._href(self.total_pages)}>; rel="last"')
        return {
            "X-Per-Page": str(self.per_page),
            "X-Page": str(self.page),
            "X-Next-Page": str(self.next_page or ""),
            "X-Prev-Page": str(self.prev_page or ""),
            "Link": ", ".join(links),
            "X-Total": str(self.total),
            "X-Total-Pages": str(self.total_pages),
        }

    def get_paginated_response(self, data: Any) -> Response:
        return Response(data, headers=self.headers())

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema  # GitLab keeps the body a plain list; the rest is in the headers

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": str(field.help_text),
                "schema": {"type": "integer", "default": field.default},
            }
            for name, field in PageParams().fields.items()
        ]
