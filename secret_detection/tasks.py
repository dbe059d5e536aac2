"""Job entry points: ids in, a service call out. Each job's declaration (name, retry
policy, time budget) lives here; the services find them by name (``services.jobs``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from project.jobs import JobRun, RetryPolicy, Target, job
from secret_detection import services
from secret_detection.services import jobs

# Covers one call at the client's longest timeout (connect + read, 60 s each) and the
# bookkeeping around it.
VERIFY_JOB_TIMEOUT = 150
#: Network errors, timeouts, 429 and 5xx are retried after 4, 16 and 64 s, then the job fails.
VERIFY_RETRY = RetryPolicy(setting="SDRS_RETRY_DELAYS")


@dataclass(frozen=True)
class RetriesLeft(RetryPolicy):
    """The policy of ``setting`` once its first attempt was made elsewhere (by the
    refresher's pool): its run is the second attempt, due after the first delay, and its
    own retries follow the remaining delays (4/16/64 s: this run 4 s after the pool's
    attempt, then 16 and 64 s)."""

    def resolved(self) -> tuple[float, ...]:
        return super().resolved()[1:]


@job(jobs.ROUTE, timeout=900)
def update_token_status(*, project_id: int) -> dict:
    """Route a project's new findings to their verifier, in batches of 100."""
    return services.token_statuses_route(project_id=project_id)


def _verification_failed(run: JobRun, code: str, message: str) -> None:
    services.token_verification_failed(finding_id=run.kwargs["finding_id"], code=code)


@job(
    jobs.VERIFY,
    retry=VERIFY_RETRY,
    timeout=VERIFY_JOB_TIMEOUT,
    on_failure=_verification_failed,
    target=Target("secret_detection.FindingTokenStatus", "finding_id"),
)
def verify_partner_token(*, finding_id: int, user_id: int | None = None, force: bool = False) -> dict:
    """PartnerTokenVerification: send one finding's token to SDRS."""
    return services.token_verification_run(finding_id=finding_id, user_id=user_id, force=force)


@job(
    jobs.VERIFY_RETRY,
    retry=RetriesLeft(setting="SDRS_RETRY_DELAYS"),
    timeout=VERIFY_JOB_TIMEOUT,
    on_failure=_verification_failed,
    target=Target("secret_detection.FindingTokenStatus", "finding_id"),
)
def verify_partner_token_retry(*, finding_id: int, user_id: int | None = None) -> dict:
    """PartnerTokenVerification again, for a fresh finding whose attempt in the pool failed."""
    return services.token_verification_run(finding_id=finding_id, user_id=user_id, attempts_before=1)


def _direct_verification_failed(run: JobRun, code: str, message: str) -> None:
    services.token_direct_verification_failed(finding_id=run.kwargs["finding_id"], code=code)


@job(
    jobs.DIRECT_VERIFY,
    retry=RetryPolicy(setting="PARTNER_RETRY_DELAYS"),
    # One call at PARTNER_TIMEOUT (60 s at most) and the bookkeeping around it.
    timeout=90,
    on_failure=_direct_verification_failed,
    target=Target("secret_detection.FindingTokenStatus", "finding_id"),
)
def verify_direct_token(
    *, finding_id: int, user_id: int | None = None, force: bool = False, reschedules: int = 0, paced: bool = False
) -> dict:
    """Ask the partner that issued one finding's token whether it is live (direct verification)."""
    return services.token_direct_verify_run(
        finding_id=finding_id, user_id=user_id, force=force, reschedules=reschedules, paced=paced
    )


def _refresh_failed(run: JobRun, code: str, message: str) -> None:
    services.token_statuses_claims_release(run_id=run.pk)


#: A tick that dies (its worker killed) is tried again at once: its next attempt takes over
#: the rows the dead one claimed, which would otherwise wait for their lease.
REFRESH_RETRY = RetryPolicy(delays=(1, 5))


@job(
    jobs.REFRESH,
    cron=settings.TOKEN_REFRESH_CRON,
    retry=REFRESH_RETRY,
    timeout="TOKEN_REFRESH_TICK_TIMEOUT",
    on_failure=_refresh_failed,
)
def refresh_token_statuses(*, fresh: bool = False) -> dict:
    """Re-verify token statuses whose next refresh time has passed (``fresh``: started by
    routing for new findings, so it waits for a running tick instead of skipping)."""
    return services.token_statuses_refresh(fresh=fresh)


@job(jobs.EXPIRE_PENDING, cron=settings.SDRS_PENDING_SWEEP_CRON, timeout=120)
def expire_pending() -> dict:
    """Verify again the pending statuses whose callback a callback outage may have lost, and
    return those whose callback never came to unknown."""
    return {"callbacks_lost": services.callbacks_lost_reverify(), "expired": services.pending_expire()}


@job(jobs.PROBE, cron=settings.SDRS_PROBE_CRON, timeout=150)
def probe_sdrs() -> dict:
    """The circuit breaker's half-open probe: while SDRS is marked down, one request."""
    return services.sdrs_probe()


def _report_import_failed(run: JobRun, code: str, message: str) -> None:
    services.report_import_failed(
        report_import_id=run.kwargs.get("report_import_id"), code=code, message=message, run_id=run.pk
    )


@job(
    services.REPORT_IMPORT_JOB,
    retry=RetryPolicy(setting="REPORT_IMPORT_RETRY_DELAYS"),
    timeout="REPORT_IMPORT_JOB_TIMEOUT",
    on_failure=_report_import_failed,
    # The stored report is deleted once its import ends: upload it again instead.
    rerun=False,
    target=Target("secret_detection.ReportImport", "report_import_id"),
)
def import_report(*, report_import_id: int) -> dict:
    """Check an uploaded secret detection report and import its findings."""
    return services.report_import_run(report_import_id=report_import_id)


@job(services.REPORT_IMPORT_CLEANUP_JOB, cron=settings.REPORT_IMPORT_CLEANUP_CRON, timeout=600)
def cleanup_report_imports() -> dict:
    """Fail report imports whose upload waited too long, delete orphaned report files, prune old imports."""
    return services.report_imports_cleanup()
