"""django-q2's own line per message taken and done is dropped; its other lines are kept."""

from __future__ import annotations

import logging

from django.conf import settings

from project.logs import TaskLinesFilter


def _record(module_path: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("django-q", level, module_path, 1, message, None, None)


def test_the_per_message_lines_of_django_q2_are_dropped_and_its_others_kept() -> None:
    keep = TaskLinesFilter().filter
    worker, monitor = "/site-packages/django_q/worker.py", "/site-packages/django_q/monitor.py"
    assert not keep(_record(worker, logging.INFO, "Process-1 processing probe.ok#7.1 'project.jobs.runner.execute'"))
    assert not keep(_record(monitor, logging.INFO, "Processed 'project.jobs.runner.execute' (probe.ok#7.1)"))
    assert keep(_record(worker, logging.INFO, "Process-1 ready for work at 4242"))
    assert keep(_record(worker, logging.INFO, "Process-1 stopped doing work"))
    assert keep(_record(monitor, logging.INFO, "Process-3 monitoring at 4244"))
    assert keep(_record(monitor, logging.ERROR, "Failed 'project.jobs.runner.execute' (probe.ok#7.1) - boom"))


def test_the_django_q_logger_drops_them_unless_asked_to_keep_them() -> None:
    assert not settings.LOG_DJANGO_Q_TASKS
    assert settings.LOGGING["loggers"]["django-q"]["filters"] == ["task_lines"]
    configured = logging.getLogger("django-q").filters
    assert any(isinstance(each, TaskLinesFilter) for each in configured)
