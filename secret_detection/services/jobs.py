"""The jobs of secret detection, by name.

``secret_detection.tasks`` declares them under these names (with their retry policies and
time budgets) and calls the services. The services start jobs and read their policies
through the toolkit's ``declared_job``, by name, so they never import ``tasks`` back: that would
close an import cycle between the job declarations and the services they call.
"""

from __future__ import annotations

from project.jobs import Job, RetryPolicy, declared_job

ROUTE = "secret_detection.update_token_status"
VERIFY = "secret_detection.verify_partner_token"
DIRECT_VERIFY = "secret_detection.verify_direct_token"
#: A fresh finding the refresher's pool could not verify, retried on its own: the same work
#: as VERIFY, with the retries the pool's attempt left (16 and 64 s).
VERIFY_RETRY = "secret_detection.verify_partner_token_retry"
REFRESH = "secret_detection.refresh_token_statuses"
EXPIRE_PENDING = "secret_detection.expire_pending"
PROBE = "secret_detection.probe_sdrs"


def job_get(name: str) -> Job:
    """The declared job ``name`` (``tasks`` is imported when the apps are ready)."""
    declared = declared_job(name)
    if declared is None:
        raise LookupError(f"no job is registered as {name!r}: is secret_detection.tasks imported?")
    return declared


def verify_retry() -> RetryPolicy:
    """The retry policy declared on the verification job."""
    return job_get(VERIFY).retry
