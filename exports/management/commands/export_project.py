from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from exports import services, status
from exports.models import ProjectExportArchive, ProjectExportJob
from project import services as core
from project.errors import AppError
from project.jobs import clusters_alive
from project.models import AccessLevel, User


class Command(BaseCommand):
    help = (
        "Queue an export of PROJECT (id or namespace/path) for USERNAME, as POST "
        "/projects/:id/export would. With --wait, follow it to the end with a progress bar."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("project", help="project id or namespace/path")
        parser.add_argument("--user", required=True, help="who the export is for (maintainer or above, or an admin)")
        parser.add_argument("--description", default=None, help="override the project description in the archive")
        parser.add_argument("--wait", action="store_true", help="wait for the export to finish or fail")
        parser.add_argument(
            "--timeout", type=float, default=None, help="seconds --wait waits at most (default: EXPORT_MAX_AGE)"
        )

    def handle(self, *args, **options) -> None:
        user = User.objects.filter(username=options["user"], is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {options['user']!r}")
        try:
            project = core.project_require(
                user=user, ref=options["project"], min_access=AccessLevel.MAINTAINER, member_required=True
            )
            job = services.export_request(project=project, user=user, description=options["description"])
        except AppError as exc:
            raise CommandError(f"{user.username} cannot export {options['project']!r}: {exc.message}") from None
        self.stdout.write(f"Queued export #{job.pk} of {project.path_with_namespace} for {user.username}.")
        if not options["wait"]:
            self.stdout.write(f"Follow it with GET /api/v4/projects/{project.pk}/export or in the admin.")
            return
        timeout = options["timeout"] if options["timeout"] is not None else settings.EXPORT_MAX_AGE
        if timeout <= 0:
            raise CommandError("--timeout must be positive")
        if not clusters_alive():
            self.stderr.write("No job cluster is running: the export waits until one starts (make run starts one).")
        job = self._follow(job, timeout)
        if job.status == ProjectExportJob.Status.FAILED:
            raise CommandError(f"Export #{job.pk} failed: {job.error or job.error_code}")
        if job.status != ProjectExportJob.Status.FINISHED:
            raise CommandError(
                f"Export #{job.pk} is still {job.status} after {timeout:g} s; it goes on in the background."
            )
        archive = ProjectExportArchive.objects.filter(project_id=job.project_id, user_id=job.user_id).first()
        if archive is None:
            raise CommandError(f"Export #{job.pk} finished but its archive is gone (deleted or expired).")
        self.stdout.write(
            f"Export #{job.pk} finished: {archive.filename}, {archive.size} bytes, sha256 {archive.sha256}, "
            f"{job.rows_written} rows; stored as {archive.file.name}, expires {archive.expires_at:%Y-%m-%d %H:%M} UTC."
        )

    def _follow(self, job: ProjectExportJob, timeout: float) -> ProjectExportJob:
        deadline = time.monotonic() + timeout
        # tqdm redraws one line with \r; Django's OutputWrapper would add a newline per write.
        with tqdm(total=None, desc=f"export #{job.pk}", unit="relation", file=self.stderr._out) as bar:
            while time.monotonic() < deadline:
                job = ProjectExportJob.objects.select_related("job_run").get(pk=job.pk)
                # While it runs, the figures are on its run (reported to the job toolkit).
                live = (job.job_run.progress if job.job_run and job.is_active else None) or {}
                total = live.get("relations_total", job.relations_total)
                if total and bar.total != total:
                    bar.total = total
                bar.n = live.get("relations_done", job.relations_done)
                phase = status.export_phase(job) or job.status
                bar.set_postfix(status=phase, rows=live.get("rows_written", job.rows_written), refresh=False)
                bar.refresh()
                if not job.is_active:
                    break
                time.sleep(0.25)
        return job
