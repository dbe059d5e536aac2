"""Business logic of secret detection, by concern:

* ``statuses``: every change of a token status row, as named transitions (the only
  module that writes the row);
* ``reports``: check and import gl-secret-detection-report.json, streamed; the uploads
  and the import job's record (``ReportImport``);
* ``routing``: which verifier a token has (one decision for every caller); the routing
  job (UpdateTokenStatus) and "verify now";
* ``verifiers``: the verifier interface (SDRS, direct) every caller starts work through;
* ``verification``: the PartnerTokenVerification job (SDRS) and the pending sweep;
* ``direct``: the direct partner verification job (``secret_detection.partners``);
* ``partner_admin``: the per-partner switch, per-type routing and "Check connection";
* ``pacing``: our per-project limit of each partner API and a partner's 429 pause;
* ``callbacks``: SDRS's signed callbacks;
* ``refresher``: the scheduled re-verification of stale statuses;
* ``connection``: the admin's "check connection" and the circuit breaker's probe;
* ``breaker``: the circuit breaker in front of SDRS;
* ``jobs``: the names of the jobs ``tasks`` declares, for the services that start them.

Nothing here imports ``secret_detection.tasks``: the tasks import the services.
"""

from secret_detection.services.callbacks import (
    callback_authenticate,
    callback_result_apply,
    callback_signature,
)
from secret_detection.services.connection import ConnectionCheck, sdrs_connection_check, sdrs_probe
from secret_detection.services.direct import token_direct_verification_failed, token_direct_verify_run
from secret_detection.services.partner_admin import (
    PartnerCheck,
    direct_partner_check,
    direct_partner_switch,
    direct_partners_ensure,
    partner_type_route,
)
from secret_detection.services.refresher import (
    token_statuses_claims_release,
    token_statuses_refresh,
    token_statuses_refresh_now,
)
from secret_detection.services.reports import (
    REPORT_IMPORT_CLEANUP_JOB,
    REPORT_IMPORT_JOB,
    ImportResult,
    InvalidReport,
    ReportCheck,
    ReportTooLarge,
    ReportUpload,
    report_check,
    report_import,
    report_import_failed,
    report_import_file,
    report_import_request,
    report_import_run,
    report_imports_cleanup,
    report_upload,
    report_validate,
)
from secret_detection.services.routing import token_statuses_route, token_statuses_verify_now
from secret_detection.services.verification import (
    callbacks_lost_reverify,
    pending_expire,
    token_verification_failed,
    token_verification_run,
)

__all__ = [
    "REPORT_IMPORT_CLEANUP_JOB",
    "REPORT_IMPORT_JOB",
    "ConnectionCheck",
    "ImportResult",
    "InvalidReport",
    "PartnerCheck",
    "ReportCheck",
    "ReportTooLarge",
    "ReportUpload",
    "callback_authenticate",
    "callback_result_apply",
    "callback_signature",
    "callbacks_lost_reverify",
    "direct_partner_check",
    "direct_partner_switch",
    "direct_partners_ensure",
    "partner_type_route",
    "pending_expire",
    "report_check",
    "report_import",
    "report_import_failed",
    "report_import_file",
    "report_import_request",
    "report_import_run",
    "report_imports_cleanup",
    "report_upload",
    "report_validate",
    "sdrs_connection_check",
    "sdrs_probe",
    "token_direct_verification_failed",
    "token_direct_verify_run",
    "token_statuses_claims_release",
    "token_statuses_refresh",
    "token_statuses_refresh_now",
    "token_statuses_route",
    "token_statuses_verify_now",
    "token_verification_failed",
    "token_verification_run",
]
