"""100 users request exports at once, over real HTTP (gunicorn), with a real cluster: the
per-user rate limit and the export concurrency gate hold, and every export that was
accepted ends finished."""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter

import pytest
from django.conf import settings

from exports.models import ProjectExportJob
from project import services
from project.models import AccessLevel, ApplicationSetting, ProjectMember, RateLimitCounter, User
from project.ratelimit import GITLAB_MESSAGE
from tests.support.cluster import running_cluster, wait_until
from tests.support.web import WebServerProcess

pytestmark = pytest.mark.django_db(transaction=True)

USERS = 100
REQUESTS_PER_USER = 2
LIMIT = 1  # export requests per user per minute
MAX_CONCURRENT = 2  # EXPORT_MAX_CONCURRENT, the default


def _send(address: tuple[str, int], method: str, path: str, token: str) -> tuple[int, dict, dict]:
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        headers = {"PRIVATE-TOKEN": token, "Content-Type": "application/json"}
        connection.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null"), dict(response.getheaders())
    finally:
        connection.close()


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (one ending as another starts: not both)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    # At equal times the end (-1) sorts first.
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def _accepted_within_the_limit() -> dict[int, int]:
    """Per user, how many requests the fixed-window counters let through: at most LIMIT per
    window (a test that straddles a minute boundary has two windows)."""
    allowed: Counter[int] = Counter()
    counters = RateLimitCounter.objects.filter(key__startswith="project_export:user:")
    for key, hits in counters.values_list("key", "hits"):
        allowed[int(key.rsplit(":", 1)[1])] += min(hits, LIMIT)
    return dict(allowed)


def test_100_users_requesting_exports_at_once_hold_the_limits_and_every_accepted_export_finishes(
    project, media_root
) -> None:
    ApplicationSetting.current()
    ApplicationSetting.objects.filter(pk=1).update(project_export_limit=LIMIT)
    users = User.objects.bulk_create(User(username=f"user{index}", password="!") for index in range(USERS))
    ProjectMember.objects.bulk_create(
        ProjectMember(project=project, user=user, access_level=AccessLevel.MAINTAINER) for user in users
    )
    tokens = {user.pk: services.access_token_create(user=user, name="load", scopes=["api"])[1] for user in users}
    path = f"/api/v4/projects/{project.pk}/export"

    # A waiting export asks for a slot again every 0.5 s (2 s by default), so that a hundred
    # of them go through two slots sooner; the gate's rule is the same.
    env = {"MEDIA_ROOT": str(media_root)}
    cluster_env = {**env, "EXPORT_MAX_CONCURRENT": str(MAX_CONCURRENT), "EXPORT_SLOT_WAIT": "0.5"}
    with running_cluster(broker=settings.JOBS_BROKER, workers=3, env=cluster_env) as cluster:
        web = WebServerProcess(broker=settings.JOBS_BROKER, queue=cluster.name, env=env).start()
        try:
            # Every user sends two requests at the same moment, from two threads.
            answers: list[tuple[int, int, dict, dict]] = []
            barrier = threading.Barrier(USERS * REQUESTS_PER_USER)

            def client(user_id: int) -> None:
                barrier.wait()
                answers.append((user_id, *_send(web.address, "POST", path, tokens[user_id])))

            threads = [
                threading.Thread(target=client, args=(user.pk,)) for user in users for _ in range(REQUESTS_PER_USER)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

            statuses = Counter(status for _, status, _, _ in answers)
            assert set(statuses) <= {202, 429}, statuses
            accepted = Counter(user_id for user_id, status, _, _ in answers if status == 202)
            assert accepted == Counter(_accepted_within_the_limit())  # exactly what the limit allows
            assert sum(accepted.values()) >= USERS  # at least one each, two at most
            for _, status, body, headers in answers:
                if status == 429:
                    assert body == {"message": GITLAB_MESSAGE}
                    assert int(headers["Retry-After"]) >= 1
                else:
                    assert body == {"message": "202 Accepted"}

            # One export per accepted request, and every one of them ends finished.
            jobs = ProjectExportJob.objects.filter(project=project, user__in=users)
            assert Counter(jobs.values_list("user_id", flat=True)) == accepted

            def final() -> bool:
                return not jobs.filter(status__in=ProjectExportJob.ACTIVE).exists()

            try:
                wait_until(final, progress=lambda: _progress(jobs), stall=30)
            except AssertionError:
                raise AssertionError(f"exports stopped moving at {_progress(jobs)}:\n{cluster.output()}") from None
            assert set(jobs.values_list("status", flat=True)) == {"finished"}

            # The gate held: never more than MAX_CONCURRENT exports between claim and finish.
            ran = jobs.values_list("started_at", "finished_at")
            intervals = [(started.timestamp(), finished.timestamp()) for started, finished in ran]
            assert _max_overlap(intervals) <= MAX_CONCURRENT

            # What each user's client now sees.
            for user in users[:10]:
                status, body, _ = _send(web.address, "GET", path, tokens[user.pk])
                assert (status, body["export_status"]) == (200, "finished")
        finally:
            web.stop()


def _progress(jobs) -> tuple[int, int, int]:
    counts = Counter(jobs.values_list("status", flat=True))
    return counts["queued"], counts["started"], counts["finished"] + counts["failed"]
