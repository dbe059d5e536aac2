"""Brute-force protection (defect 2): the admin login locks a username out per address
(django-axes), and failed API token authentications are throttled per client address
(counted in PostgreSQL's rate_limit_counters)."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as site_settings
from django.test import Client
from django.utils import timezone

from project.models import RateLimitCounter, User

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def root(db) -> User:
    return User.objects.create_superuser("root", "root@example.com", "right-password")


def _login(password: str, username: str = "root", address: str = "127.0.0.1") -> int:
    response = Client(REMOTE_ADDR=address).post(LOGIN, {"username": username, "password": password})
    return response.status_code


# --- the admin login ------------------------------------------------------------------------


def test_the_lockout_is_configured_from_the_environment_helpers() -> None:
    assert site_settings.AXES_FAILURE_LIMIT == site_settings.ADMIN_LOGIN_FAILURE_LIMIT == 5
    assert site_settings.AXES_COOLOFF_TIME * 3600 == site_settings.ADMIN_LOGIN_COOLOFF == 900
    assert site_settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]
    assert site_settings.AUTHENTICATION_BACKENDS[0] == "axes.backends.AxesStandaloneBackend"


def test_wrong_passwords_lock_the_username_out_of_that_address_even_for_the_right_one(root) -> None:
    assert _login("right-password") == 302  # it works before
    limit = site_settings.ADMIN_LOGIN_FAILURE_LIMIT
    answers = [_login(f"guess-{n}") for n in range(limit)]
    assert answers[:-1] == [200] * (limit - 1)  # the form again, with its error
    assert answers[-1] == 429  # the limit reached: locked
    locked = Client(REMOTE_ADDR="127.0.0.1").post(LOGIN, {"username": "root", "password": "right-password"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in locked.client.session
    assert b"too many login attempts" in locked.content


def test_the_lockout_is_per_username_and_address(root) -> None:
    User.objects.create_superuser("other", "other@example.com", "other-password")
    for n in range(site_settings.ADMIN_LOGIN_FAILURE_LIMIT):
        _login(f"guess-{n}")
    assert _login("right-password") == 429
    assert _login("right-password", address="192.0.2.7") == 302  # the same user from elsewhere
    assert _login("other-password", username="other") == 302  # another user from here


def test_the_lockout_ends_after_the_cool_off(root) -> None:
    for n in range(site_settings.ADMIN_LOGIN_FAILURE_LIMIT):
        _login(f"guess-{n}")
    assert _login("right-password") == 429
    later = timezone.now() + timedelta(seconds=site_settings.ADMIN_LOGIN_COOLOFF + 1)
    with time_machine.travel(later, tick=False):
        assert _login("right-password") == 302


def test_a_right_password_resets_the_count(root) -> None:
    limit = site_settings.ADMIN_LOGIN_FAILURE_LIMIT
    for n in range(limit - 1):
        _login(f"guess-{n}")
    assert _login("right-password") == 302
    assert [_login(f"again-{n}") for n in range(limit - 1)] == [200] * (limit - 1)


def test_force_login_is_not_counted(client, root) -> None:
    """Tests sign in with force_login: axes records nothing that could lock them out."""
    for _ in range(site_settings.ADMIN_LOGIN_FAILURE_LIMIT + 2):
        client.force_login(root)
        assert client.get("/admin/").status_code == 200


# --- failed API token authentications ---------------------------------------------------------


def _random_token() -> str:
    return "glpat-" + secrets.token_urlsafe(15)[:20]


def _get(api, token: str, address: str = "127.0.0.1", **extra):
    client = api()
    client.credentials(HTTP_PRIVATE_TOKEN=token)
    return client.get("/api/v4/user", REMOTE_ADDR=address, **extra)


def test_random_tokens_are_throttled_per_address_with_gitlabs_answer(api, owner, token_for) -> None:
    """The issue's case: 200 random PRIVATE-TOKEN values got 401 without end."""
    limit = site_settings.API_AUTH_FAILURE_LIMIT
    statuses = [_get(api, _random_token()).status_code for _ in range(limit + 5)]
    assert statuses == [401] * limit + [429] * 5
    throttled = _get(api, _random_token())
    assert throttled.json() == {"message": "Retry later"}
    assert throttled["X-Error-Code"] == "auth_throttled"
    assert 3500 < int(throttled["Retry-After"]) <= site_settings.API_AUTH_BAN_TIME
    # A valid token from that address is refused too: a right guess is not revealed.
    assert _get(api, token_for(owner)).status_code == 429
    # Other addresses are not affected.
    assert _get(api, token_for(owner), address="198.51.100.9").status_code == 200


def test_the_ban_ends_after_its_time(api, owner, token_for, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 2
    token = token_for(owner)
    assert [_get(api, _random_token()).status_code for _ in range(3)] == [401, 401, 429]
    assert _get(api, token).status_code == 429
    later = timezone.now() + timedelta(seconds=settings.API_AUTH_BAN_TIME + 1)
    with time_machine.travel(later, tick=False):
        assert _get(api, token).status_code == 200


def test_failures_are_counted_per_window(api, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 3
    for _ in range(3):
        assert _get(api, _random_token()).status_code == 401
    later = timezone.now() + timedelta(seconds=settings.API_AUTH_FAILURE_PERIOD + 1)
    with time_machine.travel(later, tick=False):
        assert _get(api, _random_token()).status_code == 401  # a new window


def test_valid_tokens_and_anonymous_requests_are_not_counted(api, owner, token_for, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 1
    token = token_for(owner)
    for _ in range(5):
        assert _get(api, token).status_code == 200
        assert api().get("/api/v4/user").status_code == 401  # no token: nothing to guess
    assert not RateLimitCounter.objects.filter(key__startswith="api_auth").exists()


def test_a_limit_of_zero_turns_the_throttle_off(api, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 0
    assert {_get(api, _random_token()).status_code for _ in range(15)} == {401}


def test_behind_proxies_the_forwarded_address_is_the_clients(api, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 2
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.5"
    for _ in range(3):
        _get(api, _random_token(), address=proxy, HTTP_X_FORWARDED_FOR="forged, 203.0.113.1")
    banned = _get(api, _random_token(), address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1")
    assert banned.status_code == 429
    # Another client behind the same proxy is not banned with it.
    assert _get(api, _random_token(), address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.2").status_code == 401


def test_without_trusted_proxies_a_forwarded_header_is_ignored(api, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 2
    for n in range(3):
        _get(api, _random_token(), HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")  # a forger's rotation
    assert _get(api, _random_token(), HTTP_X_FORWARDED_FOR="203.0.113.99").status_code == 429


def test_the_bearer_header_is_throttled_as_well(api, settings) -> None:
    settings.API_AUTH_FAILURE_LIMIT = 1
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {_random_token()}")
    assert [client.get("/api/v4/user").status_code for _ in range(2)] == [401, 429]
