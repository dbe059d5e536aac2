"""The job toolkit shared by every background job. See docs/jobs.md and DESIGN.md §3.

Declare a job in an app's ``tasks.py``::

    @job("exports.run", retry=RetryPolicy(setting="EXPORT_RETRY_DELAYS"), timeout="EXPORT_JOB_TIMEOUT")
    def run_export(*, export_job_id: int) -> None:
        services.export_run(export_job_id=export_job_id)

and enqueue it (after the surrounding transaction commits) with
``run_export.enqueue(export_job_id=job.pk)``.
"""

from project.errors import PermanentError, RetryableError
from project.jobs.registry import Defer, Job, RetryPolicy, job

__all__ = ["Defer", "Job", "PermanentError", "RetryPolicy", "RetryableError", "job"]
