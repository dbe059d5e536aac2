from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from project import context


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` from the request (or makes one), binds it to the log context
    for the request's duration, and echoes it in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = context.clean_request_id(request.headers.get("X-Request-ID"))
        request.request_id = request_id
        with context.bind(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
