"""The admin as an operator uses it, in Chromium at 1400 px, against a live server and a
real cluster: the console, progress, retries, cancel, pause, switches and permissions.

Every wait is on progress (the page or the records keep changing while work goes on),
never on a fixed total time. Screenshots for the README are saved into docs/img/.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from playwright.sync_api import Page

from exports import services as exports
from exports.models import ProjectExportArchive, ProjectExportJob, ProjectImportJob
from project.jobs import JobRun
from project.jobs.models import ClusterHeartbeat
from project.models import ApplicationSetting, User
from tests.browser.conftest import SCREENSHOTS
from tests.support.cluster import wait_until
from tests.support.http_server import stalling_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.browser]


def _login(page: Page, base: str, username: str, password: str = "pw") -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r".*/admin/$"))


@pytest.fixture
def root(page, live_server, cluster_for_browser) -> Page:
    User.objects.create_superuser("root", "root@example.com", "pw")
    _login(page, live_server.url, "root")
    return page


def _run_state(run_id: int) -> Callable[[], object]:
    """What moves while a run makes progress: its state, attempt, heartbeat and report."""

    def snapshot() -> object:
        return JobRun.objects.filter(pk=run_id).values("status", "attempt", "heartbeat_at", "progress").first()

    return snapshot


def _reload_until(page: Page, url: str, text: str, *, progress: Callable[[], object], stall: float = 30) -> None:
    """Reload ``url`` until its page contains ``text``; fail when nothing moved for ``stall`` s."""

    def shown() -> bool:
        page.goto(url)
        return text in page.content()

    wait_until(shown, progress=progress, stall=stall, interval=0.3, message=f"{text!r} never showed on {url}")


def _job_row(page: Page, name: str):
    """A job's row on the console, unfolding the idle jobs when it is one of them."""
    row = page.locator(f'#console-live tr[data-job="{name}"]').first
    if not row.is_visible():
        page.click("#console-idle-jobs summary")
    return row


def _export_url(base: str, job: ProjectExportJob) -> str:
    return f"{base}/admin/exports/projectexportjob/{job.pk}/change/"


def _run_url(base: str, run_id: int) -> str:
    return f"{base}/admin/jobs/jobrun/{run_id}/change/"


def test_operator_logs_in_and_finds_the_console_first_on_the_index(root, live_server) -> None:
    summary = root.locator("#console-summary")
    assert summary.is_visible()
    assert "Job console" in summary.inner_text()
    # Above the list of apps: the first thing an operator sees.
    assert root.evaluate(
        "document.querySelector('#console-summary').compareDocumentPosition("
        "document.querySelector('#content-main')) & Node.DOCUMENT_POSITION_FOLLOWING"
    )
    root.click("text=Open the job console")
    root.wait_for_selector("#console-jobs")
    assert root.locator('#console-live tr[data-job="exports.run"]').count() == 1
    assert root.locator("#console-clusters tr.alive").count() >= 1


def test_export_progress_moves_on_the_page_until_it_succeeds(
    root, live_server, cluster_for_browser, project, maintainer
) -> None:
    cluster_for_browser.hold(project)
    job = exports.export_request(project=project, user=maintainer)
    run_url = _run_url(live_server.url, job.job_run_id)
    # Half-way (held after the issues): the run's progress and the export's phase show it.
    _reload_until(root, run_url, "exporting issues", progress=_run_state(job.job_run_id))
    assert "3/4 (75 %)" in root.locator(".field-progress_shown").inner_text()
    root.goto(_export_url(live_server.url, job))
    assert "exporting" in root.content()
    root.screenshot(path=str(SCREENSHOTS / "export-detail.png"), full_page=True)
    cluster_for_browser.release(project)
    _reload_until(root, _export_url(live_server.url, job), "finished", progress=_run_state(job.job_run_id))
    # The export's status commits before the runner records the run's outcome.
    wait_until(
        lambda: JobRun.objects.get(pk=job.job_run_id).status in JobRun.TERMINAL, progress=_run_state(job.job_run_id)
    )
    root.goto(run_url)
    assert "succeeded" in root.locator(".field-status_shown").inner_text()


def test_failing_sdrs_shows_the_retry_time_and_retry_now_runs_it(
    root, live_server, cluster_for_browser, project, sdrs_for_browser, leaked_aws_token
) -> None:
    sdrs_for_browser.failures.status = 500
    finding = leaked_aws_token(project)

    def verify_run() -> JobRun | None:
        return JobRun.objects.filter(name="secret_detection.verify_partner_token", target_id=finding.pk).first()

    wait_until(
        lambda: (run := verify_run()) is not None and run.attempt == 2,
        progress=lambda: list(JobRun.objects.values_list("status", "attempt", "heartbeat_at")),
        message="the verification never failed its first attempt",
    )
    run = verify_run()
    runs = f"{live_server.url}/admin/jobs/jobrun/?job=secret_detection.verify_partner_token&kind=all"
    root.goto(runs)
    badge = root.locator("#result_list .field-status_shown").first.inner_text()
    assert re.fullmatch(r"retry in \d+ s", badge), badge
    sdrs_for_browser.failures.status = None  # SDRS answers again
    root.goto(_run_url(live_server.url, run.pk))
    root.click('button[data-action="retry_now"]')
    assert "starts attempt 2 now" in root.locator(".messagelist").inner_text()
    _reload_until(root, _run_url(live_server.url, run.pk), "succeeded", progress=_run_state(run.pk))
    assert len(sdrs_for_browser.accepted()) == 1


def test_export_cancelled_mid_upload_stops_the_upload_and_keeps_the_old_archive(
    root, live_server, cluster_for_browser, project, maintainer
) -> None:
    first = exports.export_request(project=project, user=maintainer)
    wait_until(
        lambda: ProjectExportJob.objects.get(pk=first.pk).status == "finished", progress=_run_state(first.job_run_id)
    )
    previous = ProjectExportArchive.objects.get(project=project, user=maintainer)
    with stalling_server() as target:
        job = exports.export_request(project=project, user=maintainer, upload_url=target.url("/drop?sig=s3cr3t"))
        wait_until(
            lambda: (JobRun.objects.get(pk=job.job_run_id).progress or {}).get("phase") == "uploading",
            progress=_run_state(job.job_run_id),
            message="the export never started uploading",
        )
        root.goto(_export_url(live_server.url, job))
        assert "uploading" in root.content()
        root.click('button[data-action="cancel"]')
        wait_until(
            lambda: JobRun.objects.get(pk=job.job_run_id).status == "cancelled", progress=_run_state(job.job_run_id)
        )
    run = JobRun.objects.get(pk=job.job_run_id)
    # The cancel stopped the stalled upload itself: one attempt, cancelled, ended well
    # before the upload's own stall timeout could have ended it (the database's clock).
    assert [entry["outcome"] for entry in run.history] == ["cancelled"], run.history
    assert (run.finished_at - run.cancel_requested_at).total_seconds() < settings.EXPORT_UPLOAD_TIMEOUT / 2
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "cancelled")
    _reload_until(root, _export_url(live_server.url, job), "cancelled", progress=lambda: job.status)
    archive = ProjectExportArchive.objects.get(project=project, user=maintainer)
    assert (archive.file.name, archive.sha256) == (previous.file.name, previous.sha256)


def test_paused_export_job_waits_until_resumed(root, live_server, cluster_for_browser, project, maintainer) -> None:
    console = f"{live_server.url}/admin/jobs/"
    root.goto(console)
    _job_row(root, "exports.run").locator('button[value="pause"]').click()
    assert "exports.run is paused" in root.locator(".messagelist").inner_text().lower()
    assert "paused" in root.locator('#console-jobs tr[data-job="exports.run"]').inner_text()
    job = exports.export_request(project=project, user=maintainer)

    def taken_and_waiting() -> bool:
        from django_q.models import OrmQ

        run = JobRun.objects.get(pk=job.job_run_id)
        waiting = run.status == "queued" and run.attempt == 1
        return waiting and not OrmQ.objects.filter(key=cluster_for_browser.process.name).exists()

    if cluster_for_browser.process.broker == "orm":
        # A worker took the message and claimed nothing: the run waits for the resume.
        wait_until(
            taken_and_waiting,
            progress=cluster_for_browser.process.work,
            message="no worker took the paused job's message",
        )
    root.goto(console)
    row = root.locator('#console-jobs tr[data-job="exports.run"]')
    assert row.locator("td.num").first.inner_text().startswith("1"), row.inner_text()
    assert JobRun.objects.get(pk=job.job_run_id).status == "queued"
    row.locator('button[value="resume"]').click()
    assert "exports.run is resumed: 1 waiting run(s)" in root.locator(".messagelist").inner_text().lower()
    wait_until(
        lambda: ProjectExportJob.objects.get(pk=job.pk).status == "finished", progress=_run_state(job.job_run_id)
    )


def test_catalog_sync_is_switched_off_and_on_from_the_console(root, live_server, cluster_for_browser) -> None:
    root.goto(f"{live_server.url}/admin/jobs/")
    switch = root.locator('#console-switches tr[data-switch="settings.catalog_sync_enabled"]')
    switch.locator("button", has_text="Turn off").click()
    assert "Catalog sync is now off." in root.locator(".messagelist").inner_text()
    assert not ApplicationSetting.current().catalog_sync_enabled
    switch = root.locator('#console-switches tr[data-switch="settings.catalog_sync_enabled"]')
    assert "off" in switch.inner_text()
    assert "root" in switch.inner_text()
    switch.locator("button", has_text="Turn on").click()
    assert "Catalog sync is now on." in root.locator(".messagelist").inner_text()
    assert ApplicationSetting.current().catalog_sync_enabled


def test_view_only_staff_see_no_action_buttons(page, live_server, cluster_for_browser, project, maintainer) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    job = exports.export_request(project=project, user=maintainer)
    _login(page, live_server.url, "viewer")
    page.goto(f"{live_server.url}/admin/jobs/")
    page.wait_for_selector("#console-jobs")
    assert page.locator("#console-live button").count() == 0
    for url in (_run_url(live_server.url, job.job_run_id), _export_url(live_server.url, job)):
        page.goto(url)
        assert page.locator("button.object-action").count() == 0, url
        assert page.locator('input[name="_save"]').count() == 0, url


def _column_widths(page: Page) -> str:
    """Each column's heading, its width and its first row's text: which one is too wide."""
    return page.evaluate(
        """Array.from(document.querySelectorAll('#result_list thead th')).map((th, i) => {
            const cell = document.querySelector(`#result_list tbody tr:first-child > :nth-child(${i + 1})`);
            return `${th.innerText.trim()} ${th.offsetWidth} px (${cell ? cell.innerText.trim().slice(0, 40) : ''})`;
        }).join('; ')"""
    )


def test_lists_fit_1400_pixels(root, live_server, cluster_for_browser, project, maintainer, leaked_aws_token) -> None:
    job = exports.export_request(project=project, user=maintainer)
    wait_until(
        lambda: ProjectExportJob.objects.get(pk=job.pk).status in ("finished", "failed"),
        progress=_run_state(job.job_run_id),
    )
    leaked_aws_token(project)
    ProjectImportJob.objects.create(
        project=project,
        user=maintainer,
        status="failed",
        counts={"project": 1, "project_members": 12, "labels": 40, "issues": 1000, "notes": 3000, "label_links": 900},
        skipped={"merge_requests": 120, "milestones": 8, "ci_pipelines": 300, "protected_branches": 2},
        failed_relations=[{"relation_name": "issues", "exception_message": "value too long " * 10}] * 3,
        error_code="archive_invalid",
        error="The archive holds a file that is not a regular file: tree/project/issues.ndjson " * 3,
    )
    for path in (
        "/admin/exports/projectimportjob/",
        "/admin/jobs/jobrun/?kind=all",
        "/admin/exports/projectexportjob/",
        "/admin/exports/projectexportarchive/",
        "/admin/secret_detection/finding/",
        "/admin/secret_detection/findingtokenstatus/",
        "/admin/secret_detection/partnertokentype/",
        "/admin/secret_detection/directpartner/",
        "/admin/catalog/syncevent/",
        "/admin/catalog/catalogresource/",
        "/admin/jobs/",
    ):
        root.goto(f"{live_server.url}{path}")
        page_width = root.evaluate("document.documentElement.scrollWidth")
        assert page_width <= 1400, f"{path} is {page_width} px wide"
        # The results box scrolls sideways by itself: its table must fit inside it.
        overflow = root.evaluate(
            "(() => { const box = document.querySelector('#changelist .results');"
            " return box ? box.scrollWidth - box.clientWidth : 0; })()"
        )
        assert overflow <= 0, f"{path}: the list is {overflow} px wider than the window: {_column_widths(root)}"


def test_console_refreshes_its_figures_without_a_reload(root, live_server, cluster_for_browser) -> None:
    root.goto(f"{live_server.url}/admin/jobs/")
    root.evaluate("window.loadedOnce = true")  # gone if the page were reloaded
    running = JobRun.objects.create(name="probe.ok", kwargs={"key": "refresh"}, status="running")
    row = '#console-jobs tr[data-job="probe.ok"]'
    updated = "#console-health .console-updated"
    wait_until(
        lambda: root.locator(row).locator("td.num").nth(2).inner_text().startswith("1"),
        progress=lambda: root.locator(updated).inner_text(),
        stall=20,
        message="the console did not refresh",
    )
    assert root.evaluate("window.loadedOnce") is True
    running.delete()


def test_a_day_of_history_reads_at_a_glance(root, live_server, cluster_for_browser, project, maintainer) -> None:
    """A day of runs (recorded, as the cluster would have left them): the console names
    what needs attention, and the screenshots for the README are taken here."""
    import random
    from datetime import timedelta

    from django.utils import timezone

    from project.jobs import control

    rng = random.Random(8)
    now = timezone.now()
    names = ["exports.run", "secret_detection.verify_partner_token", "secret_detection.update_token_status"]
    runs = []
    for minute in range(0, 24 * 60, 3):
        for name in names:
            if rng.random() < 0.5:
                continue
            finished = now - timedelta(minutes=minute, seconds=rng.random() * 60)
            failed = rng.random() < 0.04
            runs.append(
                JobRun(
                    name=name,
                    status="failed" if failed else "succeeded",
                    started_at=finished - timedelta(seconds=rng.lognormvariate(0, 1)),
                    finished_at=finished,
                    error_code="sdrs_unavailable" if failed else "",
                    error="SDRS answered 503 Service Unavailable" if failed else "",
                    created_at=finished,
                )
            )
    JobRun.objects.bulk_create(runs)
    JobRun.objects.create(
        name="secret_detection.verify_partner_token",
        status="failed",
        started_at=now - timedelta(minutes=3),
        finished_at=now - timedelta(minutes=3),
        error_code="sdrs_auth",
        error="SDRS refused the request: 401 Unauthorized",
    )
    JobRun.objects.create(
        name="secret_detection.verify_partner_token",
        attempt=2,
        max_attempts=4,
        due_at=now + timedelta(seconds=16),
        error_code="sdrs_unavailable",
        error="SDRS answered 503",
    )
    control.job_pause(name="exports.prune_jobs", by="root", reason="maintenance")
    job = exports.export_request(project=project, user=maintainer)
    wait_until(
        lambda: ProjectExportJob.objects.get(pk=job.pk).status == "finished", progress=_run_state(job.job_run_id)
    )
    # The cluster's heartbeat row went with the previous test's flush; it is back within a beat.
    wait_until(
        lambda: ClusterHeartbeat.objects.exists(),
        progress=cluster_for_browser.process.activity,
        stall=20,
        message="the cluster stopped beating",
    )
    root.goto(f"{live_server.url}/admin/jobs/")
    health = root.locator("#console-health").inner_text()
    assert "failed in the last hour" in health, health
    assert "1 job(s) paused" in health, health
    row = root.locator('#console-jobs tr[data-job="secret_detection.verify_partner_token"]').inner_text()
    assert "sdrs_auth" in row, row  # the latest error
    assert "next in" in row, row  # the retry waiting
    root.screenshot(path=str(SCREENSHOTS / "console.png"), full_page=True)
    root.goto(f"{live_server.url}/admin/jobs/jobrun/")
    root.screenshot(path=str(SCREENSHOTS / "job-runs.png"), full_page=False)


def test_the_queue_lists_a_message_that_names_its_run_as_its_task(root, live_server, settings) -> None:
    # With the ORM broker a message of one run is text that names the run; the queue
    # admin shows it as the task the pusher will make of it, with its due time in seconds.
    from tests.support import jobs as probes

    settings.JOBS_BROKER = "orm"
    run = probes.ok.enqueue(key="queued", _delay=3600)  # due later: it stays in the queue
    root.goto(f"{live_server.url}/admin/django_q/ormq/")
    row = root.locator("#result_list tbody tr", has_text=f"probe.ok#{run.pk}.1")
    assert row.count() == 1
    text = row.inner_text()
    assert "project.jobs.runner.execute" in text
    assert f"r{run.pk}.1" in text
    # Due in an hour: when, relative, with the exact time to the second on hover.
    assert row.locator("time").inner_text().startswith("in "), text
    assert re.search(r"\d\d:\d\d:\d\d", row.locator("time").get_attribute("title") or ""), text
    assert root.evaluate("document.documentElement.scrollWidth") <= 1400
