"""``manage.py qcluster``: django-q2's cluster, supervised by the job toolkit's sentinel
(``project.jobs.cluster``). Takes django-q2's own options."""

from typing import Any

from django_q.management.commands.qcluster import Command as DjangoQCommand


class Command(DjangoQCommand):
    help = "Starts a job cluster: django-q2's, with a sentinel that keeps it executing."

    def handle(self, *args: Any, **options: Any) -> None:
        from project.jobs import cluster

        cluster.sentinel_install()
        super().handle(*args, **options)
