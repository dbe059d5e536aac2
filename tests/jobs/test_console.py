"""The job console (/admin/jobs/), the job-run admin and their permissions, in-process."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from project.jobs import JobRun, control, overview, runner
from project.jobs.models import ClusterHeartbeat, JobPause
from project.models import ApplicationSetting, SettingChange, User
from tests.support import jobs as probes

pytestmark = pytest.mark.django_db

CONSOLE = "/admin/jobs/"
CONTROL = "/admin/jobs/control/"
RUNS = "/admin/jobs/jobrun/"


def _staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username=username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def viewer(client):
    """Staff with every view permission and nothing else."""
    user = User.objects.create_user(username="viewer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(user)
    return client


@pytest.fixture
def operator(client):
    """Staff who may view and control runs, nothing more."""
    client.force_login(_staff("operator", "view_jobrun", "control_jobrun"))
    return client


@pytest.fixture
def root(client, admin_user):
    client.force_login(admin_user)
    return client


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


# --- the page -------------------------------------------------------------------------


def test_console_shows_every_job_cluster_schedule_and_switch(root) -> None:
    ClusterHeartbeat.objects.create(key="h:1", cluster_name="default", host="h", pid=1, broker="orm", workers=4)
    probes.flaky.enqueue(key="c", failures=1)
    page = root.get(CONSOLE).content.decode()
    for name in ("exports.run", "catalog.process_sync_events", "secret_detection.verify_partner_token", "probe.flaky"):
        assert f'data-job="{name}"' in page
    assert 'id="console-idle-jobs"' in page  # jobs without a run in 24 h fold away
    assert "console-chart" in page
    assert "<svg" in page
    assert 'id="console-clusters"' in page
    assert ">h<" in page
    assert 'data-job="jobs.recover"' in page  # the schedules table
    for key in ("settings.project_export_enabled", "settings.catalog_sync_enabled", "settings.sdrs_enabled"):
        assert f'data-switch="{key}"' in page
    assert "Catalog sync events pending" in page
    assert "Token statuses pending a callback" in page
    assert "Exports running" in page
    assert reverse("admin:django_q_failure_changelist") in page  # transport views stay reachable


def test_console_refresh_returns_only_the_live_figures(root) -> None:
    response = root.get(CONSOLE + "?partial=1")
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="console-health"' in body
    assert "<html" not in body


def test_page_loads_nothing_from_the_network(root) -> None:
    page = root.get(CONSOLE).content.decode()
    assert not re.findall(r"""(?:src|href|action)=["'](?:https?:)?//""", page)
    assert "/static/jobs/console.js" in page


def test_overview_counts_queued_waiting_running_and_finished_runs() -> None:
    now = timezone.now()
    JobRun.objects.create(name="probe.ok", status="queued", due_at=now - timedelta(seconds=30))
    JobRun.objects.create(name="probe.ok", status="queued", attempt=2, due_at=now + timedelta(seconds=16))
    JobRun.objects.create(name="probe.ok", status="running", heartbeat_at=now, started_at=now)
    JobRun.objects.create(name="probe.ok", status="running", heartbeat_at=now - timedelta(hours=1), started_at=now)
    for status, seconds in (("succeeded", 1), ("succeeded", 3), ("failed", 2), ("cancelled", 0)):
        JobRun.objects.create(
            name="probe.ok",
            status=status,
            started_at=now - timedelta(minutes=5, seconds=seconds),
            finished_at=now - timedelta(minutes=5),
            error="it broke" if status == "failed" else "",
            error_code="boom" if status == "failed" else "",
        )
    JobRun.objects.create(
        name="probe.ok", status="succeeded", started_at=now - timedelta(hours=3), finished_at=now - timedelta(hours=2)
    )
    row = next(r for r in overview.job_rows(now=now) if r.name == "probe.ok")
    assert (row.queued, row.retry_waiting, row.running, row.running_silent) == (1, 1, 2, 1)
    assert row.next_retry_at == now + timedelta(seconds=16)
    assert (row.succeeded_1h, row.failed_1h, row.cancelled_1h) == (2, 1, 1)
    assert (row.succeeded_24h, row.failed_24h) == (3, 1)
    assert (row.last_error_code, row.last_error) == ("boom", "it broke")
    data = overview.overview(now=now)
    assert "1 running without heartbeat" in data.problems
    assert data.oldest_due_age_seconds == pytest.approx(30, abs=1)


def test_latest_error_shown_never_contains_a_secret() -> None:
    run = probes.permanent.enqueue(key="s")
    JobRun.objects.filter(pk=run.pk).update(
        status="failed", finished_at=timezone.now(), error="token glpat-AbCdEfGhIjKlMnOpQrSt rejected"
    )
    row = next(r for r in overview.job_rows() if r.name == "probe.permanent")
    assert "AbCdEfGh" not in row.last_error
    assert row.last_error == "token glpat-… rejected"


def test_admin_index_shows_the_console_first_and_hides_django_q(root) -> None:
    page = root.get("/admin/").content.decode()
    assert page.index('id="console-summary"') < page.index("app-jobs")
    assert "app-django_q" not in page
    assert root.get(reverse("admin:django_q_ormq_changelist")).status_code == 200


def test_the_queue_admin_reads_a_message_written_with_its_run(root, settings) -> None:
    from django_q.models import OrmQ

    settings.JOBS_BROKER = "orm"
    run = probes.ok.enqueue(key="queued")
    message = OrmQ.objects.get()
    assert message.payload == f"jobs.run:{run.pk}:1:probe.ok"  # not a signed task
    page = root.get(reverse("admin:django_q_ormq_changelist")).content.decode()
    assert f"probe.ok#{run.pk}.1" in page
    assert f"r{run.pk}.1" in page  # its task id, made from the run and the attempt
    assert "project.jobs.runner.execute" in page
    detail = root.get(reverse("admin:django_q_ormq_change", args=[message.pk])).content.decode()
    assert f"({run.pk}, 1)" in detail


def test_view_site_link_is_gone(root) -> None:
    assert "View site" not in root.get("/admin/").content.decode()


# --- permissions ----------------------------------------------------------------------


def test_non_staff_are_sent_to_the_login_page(client, owner) -> None:
    client.force_login(owner)
    for url in (CONSOLE, RUNS):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    assert client.post(CONTROL, {"op": "pause", "name": "probe.ok"}).status_code == 302
    assert not JobPause.objects.exists()


def test_view_only_staff_see_everything_but_no_control(viewer) -> None:
    page = viewer.get(CONSOLE).content.decode()
    assert 'data-job="exports.run"' in page
    assert 'value="pause"' not in page
    assert 'value="run_schedule"' not in page
    assert 'name="on"' not in page
    run = probes.ok.enqueue(key="v")
    detail = viewer.get(reverse("admin:jobs_jobrun_change", args=[run.pk])).content.decode()
    assert "object-action" not in detail
    assert 'name="_save"' not in detail


@pytest.mark.parametrize(
    "data",
    [
        {"op": "pause", "name": "probe.ok"},
        {"op": "run_schedule", "name": "jobs.prune_runs"},
        {"op": "switch", "key": "settings.project_export_enabled", "on": "0"},
    ],
)
def test_crafted_control_without_permission_is_refused_and_changes_nothing(viewer, data) -> None:
    assert viewer.post(CONTROL, data).status_code == 403
    assert not JobPause.objects.exists()
    assert not JobRun.objects.filter(name="jobs.prune_runs").exists()
    assert ApplicationSetting.current().project_export_enabled


def test_crafted_run_actions_without_permission_are_refused(viewer) -> None:
    run = probes.ok.enqueue(key="x")
    response = viewer.post(RUNS, {"action": "cancel", "_selected_action": [run.pk]})
    assert response.status_code == 403
    response = viewer.post(reverse("admin:jobs_jobrun_act", args=[run.pk, "cancel"]))
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.status == "queued"


def test_operator_pauses_and_resumes_a_job_but_may_not_flip_settings(operator) -> None:
    response = operator.post(CONTROL, {"op": "pause", "name": "probe.ok"}, follow=True)
    assert "probe.ok is paused: its runs wait until it is resumed." in _messages(response)
    assert JobPause.objects.get().paused_by == "operator"
    page = operator.get(CONSOLE).content.decode()
    assert 'data-switch="pause.probe.ok"' in page
    response = operator.post(CONTROL, {"op": "switch", "key": "pause.probe.ok", "on": "1"}, follow=True)
    assert "probe.ok is resumed: 0 waiting run(s) sent to the workers." in _messages(response)
    assert operator.post(CONTROL, {"op": "switch", "key": "settings.sdrs_enabled", "on": "1"}).status_code == 403


def test_switch_flipped_from_the_console_records_who_and_when(root) -> None:
    response = root.post(CONTROL, {"op": "switch", "key": "settings.catalog_sync_enabled", "on": "0"}, follow=True)
    assert "Catalog sync is now off." in _messages(response)
    assert not ApplicationSetting.current().catalog_sync_enabled
    change = SettingChange.objects.get(key="catalog_sync_enabled")
    assert (change.value, change.changed_by) == ("off", "admin")
    switch = next(s for s in overview.switches() if s.key == "settings.catalog_sync_enabled")
    assert (switch.on, switch.changed_by) == (False, "admin")
    again = root.post(CONTROL, {"op": "switch", "key": "settings.catalog_sync_enabled", "on": "0"}, follow=True)
    assert "Catalog sync was already off." in _messages(again)


def test_pause_is_shown_in_metrics(root) -> None:
    control.job_pause(name="exports.run", by="alice")
    body = root.get("/metrics").content.decode()
    assert 'jobs_paused{job="exports.run"} 1.0' in body


# --- the run list and detail ----------------------------------------------------------


def test_run_list_hides_scheduled_housekeeping_until_asked(root) -> None:
    runner.run_scheduled("jobs.prune_runs")
    feature = probes.ok.enqueue(key="f")
    default = _result_list(root.get(RUNS))
    assert f"/admin/jobs/jobrun/{feature.pk}/change/" in default
    assert "jobs.prune_runs" not in default
    assert "jobs.prune_runs" in _result_list(root.get(RUNS + "?kind=housekeeping"))


def _result_list(response) -> str:
    return response.content.decode().split('id="result_list"')[1].split("</table>")[0]


def test_run_list_shows_retry_time_and_links_to_the_target(root, project, maintainer) -> None:
    from exports import services

    job = services.export_request(project=project, user=maintainer)
    JobRun.objects.filter(pk=job.job_run_id).update(attempt=2, due_at=timezone.now() + timedelta(seconds=16))
    page = root.get(RUNS).content.decode()
    assert "retry in 1" in page  # "retry in 16 s" or 15 s by the time it renders
    assert reverse("admin:exports_projectexportjob_change", args=[job.pk]) in page
    assert f"Export of acme/widgets for maintainer (#{job.pk})" in page


def test_run_detail_has_buttons_not_save_and_shows_the_attempts_once(root) -> None:
    run = probes.flaky.enqueue(key="d", failures=1)
    runner.execute(run.pk, 1)
    page = root.get(reverse("admin:jobs_jobrun_change", args=[run.pk])).content.decode()
    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    assert 'data-action="cancel"' in page
    assert 'data-action="retry_now"' in page
    assert 'data-action="rerun"' not in page  # not finished yet
    assert page.count("<th>Outcome</th>") == 1


def test_cancel_button_cancels_a_queued_run(root) -> None:
    run = probes.ok.enqueue(key="b")
    response = root.post(reverse("admin:jobs_jobrun_act", args=[run.pk, "cancel"]), follow=True)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert f"Run #{run.pk} (probe.ok) was cancelled." in _messages(response)


def test_action_on_a_run_that_changed_meanwhile_changes_nothing_and_says_why(root) -> None:
    run = probes.ok.enqueue(key="m")
    runner.execute(run.pk, 1)
    response = root.post(RUNS + "?kind=all", {"action": "cancel", "_selected_action": [run.pk]}, follow=True)
    assert _messages(response) == [
        f"probe.ok #{run.pk}: Run #{run.pk} already succeeded; there is nothing to cancel.",
        "Nothing was cancelled.",
    ]
    assert [m.level_tag for m in response.context["messages"]] == ["warning", "warning"]


def test_rerun_of_a_finished_export_is_a_new_export(root, project, maintainer) -> None:
    from exports import services
    from exports.models import ProjectExportJob

    job = services.export_request(project=project, user=maintainer)
    runner.execute(job.job_run_id, 1)
    response = root.post(RUNS, {"action": "rerun", "_selected_action": [job.job_run_id]}, follow=True)
    assert any(
        message.startswith(f"Run #{job.job_run_id} (exports.run) was re-run as run #")
        for message in _messages(response)
    )
    new = ProjectExportJob.objects.exclude(pk=job.pk).get()
    assert (new.project_id, new.user_id, new.status) == (project.pk, maintainer.pk, "queued")
    assert runner.execute(new.job_run_id, 1) == "succeeded"
    new.refresh_from_db()
    assert new.status == "finished"


def test_times_show_to_the_second(root) -> None:
    run = probes.ok.enqueue(key="t")
    JobRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=3))
    run.refresh_from_db()
    page = root.get(reverse("admin:jobs_jobrun_change", args=[run.pk])).content.decode()
    assert run.created_at.strftime("%Y-%m-%d %H:%M:%S") in page


def test_console_lists_what_is_running_with_its_progress_and_a_cancel_button(root, project, maintainer) -> None:
    from exports import services

    job = services.export_request(project=project, user=maintainer)
    JobRun.objects.filter(pk=job.job_run_id).update(
        status="running",
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        progress={"done": 3, "total": 4, "note": "exporting issues: 12 rows"},
    )
    page = root.get(CONSOLE).content.decode()
    section = page.split('id="console-running"')[1].split("</table>")[0]
    assert f'data-run="{job.job_run_id}"' in section
    assert f"Export of acme/widgets for maintainer (#{job.pk})" in section
    assert "3/4 (75 %) · exporting issues: 12 rows" in section
    assert 'value="cancel"' in section
    response = root.post(CONTROL, {"op": "cancel", "run_id": job.job_run_id}, follow=True)
    assert f"Run #{job.job_run_id} (exports.run) was asked to stop; it ends at its next heartbeat." in _messages(
        response
    )
