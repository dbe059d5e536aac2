from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from exports.importer import services
from exports.models import ProjectImportJob
from project.errors import AppError
from project.jobs import clusters_alive
from project.models import User


class Command(BaseCommand):
    help = (
        "Import a GitLab export archive (FILE) into NAMESPACE/NAME for USERNAME, as POST "
        "/projects/import would. With --wait, follow it to the end with a progress bar."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="the export archive (tar.gz)")
        parser.add_argument("--path", required=True, help="namespace/path of the new project")
        parser.add_argument("--user", required=True, help="who imports (members map by email only for an admin)")
        parser.add_argument("--name", default=None, help="the project's name (default: its path)")
        parser.add_argument("--overwrite", action="store_true", help="replace a project at the same path")
        parser.add_argument("--wait", action="store_true", help="wait for the import to finish or fail")
        parser.add_argument(
            "--timeout", type=float, default=None, help="seconds --wait waits at most (default: IMPORT_JOB_TIMEOUT)"
        )

    def handle(self, *args, **options) -> None:
        user = User.objects.filter(username=options["user"], is_active=True).first()
        if user is None:
            raise CommandError(f"no active user named {options['user']!r}")
        namespace, _, path = options["path"].strip("/").rpartition("/")
        if not namespace or not path:
            raise CommandError(f"--path must be NAMESPACE/NAME, not {options['path']!r}")
        source = Path(options["file"])
        if not source.is_file():
            raise CommandError(f"{source} is not a file")
        try:
            with open(source, "rb") as handle:
                job = services.import_request(
                    user=user,
                    file=File(handle, name=source.name),
                    path=path,
                    name=options["name"],
                    namespace=namespace,
                    overwrite=options["overwrite"],
                )
        except AppError as exc:
            raise CommandError(f"{user.username} cannot import into {options['path']!r}: {exc.message}") from None
        self.stdout.write(
            f"Scheduled import #{job.pk} into {job.project.path_with_namespace} (project {job.project_id})."
        )
        if not options["wait"]:
            self.stdout.write(f"Follow it with GET /api/v4/projects/{job.project_id}/import or in the admin.")
            return
        timeout = options["timeout"] if options["timeout"] is not None else settings.IMPORT_JOB_TIMEOUT
        if timeout <= 0:
            raise CommandError("--timeout must be positive")
        if not clusters_alive():
            self.stderr.write("No job cluster is running: the import waits until one starts (make run starts one).")
        job = self._follow(job, timeout)
        if job.status == ProjectImportJob.Status.FAILED:
            raise CommandError(f"Import #{job.pk} failed: {job.error or job.error_code}")
        if job.status != ProjectImportJob.Status.FINISHED:
            raise CommandError(
                f"Import #{job.pk} is still {job.status} after {timeout:g} s; it goes on in the background."
            )
        counts = job.counts or {}
        self.stdout.write(
            f"Import #{job.pk} finished: {job.project.path_with_namespace}, "
            + ", ".join(f"{value:,} {key}" for key, value in counts.items())
            + f"; skipped relations: {', '.join(sorted((job.skipped or {}).get('relations', {}))) or 'none'}."
        )

    def _follow(self, job: ProjectImportJob, timeout: float) -> ProjectImportJob:
        deadline = time.monotonic() + timeout
        # tqdm redraws one line with \r; Django's OutputWrapper would add a newline per write.
        with tqdm(total=len(services.PHASES), desc=f"import #{job.pk}", unit="phase", file=self.stderr._out) as bar:
            while time.monotonic() < deadline:
                job = ProjectImportJob.objects.select_related("job_run", "project").get(pk=job.pk)
                live = (job.job_run.progress if job.job_run and job.is_active else None) or {}
                bar.n = len(services.PHASES) if not job.is_active else (live.get("done") or 0)
                bar.set_postfix(status=job.status, rows=live.get("rows", 0), refresh=False)
                bar.refresh()
                if not job.is_active:
                    break
                time.sleep(0.25)
        return job
