"""A token poll of the export status, answered from one statement outside DRF's request
handling (``ProjectExportView._poll``), answers exactly what the usual path answers, and
leaves every other case to it."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.utils import timezone

from exports import status
from project.models import AccessToken, ApplicationSetting, RateLimitCounter
from tests.exports.test_status_queries import STATES

pytestmark = pytest.mark.django_db


def _usual_path(monkeypatch) -> None:
    """Every poll goes the usual way (DRF's authentication, then the view's ``get``)."""
    monkeypatch.setattr(status, "export_status_poll", lambda **kwargs: None)


def _answer(response) -> tuple[int, bytes, dict[str, str]]:
    headers = {name: value for name, value in response.headers.items() if name != "X-Request-ID"}
    return response.status_code, response.content, headers


@pytest.mark.parametrize("state_name", STATES)
def test_a_poll_answers_the_bytes_and_headers_of_the_usual_path_in_every_state(
    state_name, api, maintainer, project, monkeypatch
) -> None:
    STATES[state_name](project, maintainer)
    client = api(maintainer)
    path = f"/api/v4/projects/{project.pk}/export"
    client.get(path)  # the token's use recorded: both answers below read the same rows

    polled = _answer(client.get(path))
    _usual_path(monkeypatch)
    usual = _answer(client.get(path))

    assert polled == usual
    assert polled[0] == 200
    assert b'"export_status":"%s"' % state_name.encode() in polled[1]


def _failures() -> int:
    return sum(RateLimitCounter.objects.filter(key__startswith="api_auth_failures").values_list("hits", flat=True))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown token", (401, {"message": "401 Unauthorized"})),
        ("inactive user", (401, {"message": "401 Unauthorized"})),
        ("read_user scope", (403, {"error": "insufficient_scope"})),
        ("developer", (403, {"message": "403 Forbidden"})),
        ("outsider", (404, {"message": "404 Project Not Found"})),
        ("exports off", (404, {"message": "404 Not Found"})),
        ("not a project reference", (404, {"message": "404 Project Not Found"})),
    ],
)
def test_a_poll_that_is_not_a_plain_answer_is_answered_by_the_usual_path(
    case, expected, api, maintainer, developer, outsider, project, token_for, monkeypatch
) -> None:
    user, scopes, ref = maintainer, ("api",), str(project.pk)
    if case == "inactive user":
        maintainer.is_active = False
        maintainer.save(update_fields=["is_active"])
    elif case == "read_user scope":
        scopes = ("read_user",)
    elif case in ("developer", "outsider"):
        user = developer if case == "developer" else outsider
    elif case == "exports off":
        ApplicationSetting.objects.update_or_create(pk=1, defaults={"project_export_enabled": False})
    elif case == "not a project reference":
        ref = "nothing-here"
    client = api()
    token = "glpat-not-a-token-at-all-0000" if case == "unknown token" else token_for(user, scopes)
    client.credentials(HTTP_PRIVATE_TOKEN=token)
    path = f"/api/v4/projects/{ref}/export"

    polled = client.get(path)
    failures = _failures()
    _usual_path(monkeypatch)
    usual = client.get(path)

    code, body = expected
    assert polled.status_code == usual.status_code == code
    assert {key: polled.json().get(key) for key in body} == body
    assert _answer(polled)[1:] == _answer(usual)[1:]
    # A refused token is counted once per request, by the usual path alone.
    assert failures == (1 if code == 401 else 0)
    assert _failures() == 2 * failures


def test_a_banned_address_is_refused_even_with_a_valid_token(api, maintainer, project, token_for, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 1
    guesser = api()
    guesser.credentials(HTTP_PRIVATE_TOKEN="glpat-guess-guess-guess-0000")
    path = f"/api/v4/projects/{project.pk}/export"
    assert [guesser.get(path).status_code for _ in range(2)] == [401, 429]

    response = api(maintainer).get(path)

    assert response.status_code == 429
    assert response.json() == {"message": "Retry later"}


def test_a_poll_records_the_tokens_use(api, maintainer, project) -> None:
    client = api(maintainer)
    before = timezone.now()

    assert client.get(f"/api/v4/projects/{project.pk}/export").status_code == 200

    assert AccessToken.objects.get(user=maintainer).last_used_at >= before


def test_a_browser_session_poll_is_answered_as_before(client, maintainer, project) -> None:
    client.force_login(maintainer)

    response = client.get(f"/api/v4/projects/{project.pk}/export")

    assert response.status_code == 200
    assert response.json()["export_status"] == "none"


def test_a_poll_while_the_database_is_unreachable_answers_503_with_retry_after(
    api, maintainer, project, monkeypatch
) -> None:
    client = api(maintainer)

    def unreachable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(status, "export_status_poll", unreachable)
    response = client.get(f"/api/v4/projects/{project.pk}/export")

    assert response.status_code == 503
    assert response.json() == {"message": "503 Service Unavailable"}
    assert response["Retry-After"] == "5"
    assert response["X-Error-Code"] == "database_unavailable"


def test_a_malformed_path_is_refused_by_the_usual_path(api, maintainer, project) -> None:
    response = api(maintainer).get("/api/v4/projects/acme%00widgets/export")

    assert response.status_code == 400
    assert "NUL byte" in response.json()["message"]
