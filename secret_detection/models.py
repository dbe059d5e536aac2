"""Secret detection findings, their token statuses, and the registry of partner token types."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from project.fields import EncryptedTextField
from project.models import Project


class Partner(models.TextChoices):
    """Who verifies a token type through SDRS; also the rate-limit group of the refresher
    (a 429 for one partner pauses that partner's rows only), as GitLab's ``rate_limit_key``."""

    AWS = "aws", "Amazon Web Services"
    GCP = "gcp", "Google Cloud"
    POSTMAN = "postman", "Postman"
    GITHUB = "github", "GitHub"
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    SENDGRID = "sendgrid", "SendGrid"
    HEROKU = "heroku", "Heroku"
    STRIPE = "stripe", "Stripe"


class PartnerTokenType(models.Model):
    """A gitleaks rule id whose tokens are sent to SDRS for verification (GitLab's
    ``PartnerTokens::Registry``), with a switch per type."""

    token_type = models.CharField(
        max_length=255, help_text="The gitleaks rule id, as in the report's identifiers (case-insensitive)."
    )
    partner = models.CharField(max_length=32, choices=Partner.choices)
    enabled = models.BooleanField(default=True, help_text="Verify tokens of this type.")
    verifier = models.CharField(
        max_length=16,
        choices=[("auto", "default"), ("sdrs", "SDRS"), ("direct", "direct (partner API)"), ("none", "none")],
        default="auto",
        help_text="Who verifies this type. Default: SDRS when it is on, else the partner's API when we have a client.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, default="", editable=False)

    class Meta:
        db_table = "secret_detection_partner_token_types"
        ordering = ["partner", "token_type"]
        constraints = [models.UniqueConstraint(Lower("token_type"), name="partner_token_type_unique_ci")]

    def __str__(self) -> str:
        return self.token_type


class Severity(models.TextChoices):
    INFO = "Info"
    UNKNOWN = "Unknown"
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"
    CRITICAL = "Critical"


class Finding(models.Model):
    """One leaked secret found by a secret detection report.

    ``identity`` is stable across imports (see ``services.reports``), so importing the same
    report again finds the existing rows. The raw value is stored encrypted because it must
    be sent to SDRS; everywhere else only ``value_fingerprint`` is shown.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secret_detection_findings")
    identity = models.CharField(max_length=64, editable=False)
    report_finding_id = models.CharField("report id", max_length=255, blank=True, default="")
    name = models.CharField(max_length=255, blank=True, default="")
    description = models.TextField(blank=True, default="")
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.UNKNOWN)
    confidence = models.CharField(max_length=16, blank=True, default="")
    token_type = models.CharField(max_length=255, blank=True, default="", help_text="The gitleaks rule id.")
    file_path = models.CharField(max_length=1024, blank=True, default="")
    start_line = models.PositiveIntegerField(null=True, blank=True)
    end_line = models.PositiveIntegerField(null=True, blank=True)
    commit_sha = models.CharField(max_length=64, blank=True, default="")
    identifiers = models.JSONField(default=list, blank=True)
    scanner_id = models.CharField(max_length=64, blank=True, default="")
    raw_value = EncryptedTextField(blank=True, default="")
    value_fingerprint = models.CharField("token", max_length=32, blank=True, default="")
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        db_table = "secret_detection_findings"
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["project", "identity"], name="finding_identity_unique")]
        indexes = [models.Index(fields=["token_type"], name="sd_findings_token_type")]

    def __str__(self) -> str:
        # "aws-access-token in app/config.py:12 (acme/widgets)"; the admin selects the project.
        what = self.token_type or self.name or f"finding #{self.pk}"
        where = f" in {self.location}" if self.location else ""
        return f"{what}{where} ({self.project.path_with_namespace})"

    @property
    def location(self) -> str:
        return f"{self.file_path}:{self.start_line}" if self.start_line else self.file_path


class TokenStatus(models.TextChoices):
    UNKNOWN = "unknown"
    PENDING = "pending"
    ACTIVE = "active"
    INACTIVE = "inactive"


class Verifier(models.TextChoices):
    PARTNER = "partner", "partner (SDRS)"
    DIRECT = "direct", "direct (partner API)"
    LOCAL = "local", "local (our tokens)"
    NONE = "none", "none"


class DirectPartner(models.Model):
    """A partner verified directly through its own API (``secret_detection.partners``): the
    per-partner switch, the pause a 429 from it sets for all its rows, and the admin's
    latest "Check connection". The clients themselves are code; this row is their state."""

    partner = models.CharField(max_length=32, primary_key=True)
    enabled = models.BooleanField(default=True, help_text="Send tokens to this partner's API.")
    paused_until = models.DateTimeField(null=True, blank=True, help_text="Rate limited by the partner until then.")
    rate_limit_hits = models.PositiveIntegerField(default=0, help_text="Rate limits met (ours and the partner's).")
    last_rate_limit_at = models.DateTimeField(null=True, blank=True)
    last_check_at = models.DateTimeField(null=True, blank=True)
    last_check_result = models.CharField(max_length=255, blank=True, default="")
    last_check_ms = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, default="", editable=False)

    class Meta:
        db_table = "secret_detection_direct_partners"
        ordering = ["partner"]
        permissions = [("check_directpartner", "Can check the connection to a partner's API")]

    def __str__(self) -> str:
        return self.partner


class PartnerRateSlot(models.Model):
    """Our own per-project rate limit of a partner API, as a theoretical arrival time
    (GCRA): each request reserves the next free slot in one atomic upsert, so workers
    across the cluster pace themselves without a lock or a polling loop."""

    key = models.CharField(max_length=255, primary_key=True)
    next_free_at = models.DateTimeField()

    class Meta:
        db_table = "secret_detection_partner_rate_slots"

    def __str__(self) -> str:
        return self.key


class FindingTokenStatus(models.Model):
    """Whether a finding's token still works (GitLab's ``secret_detection_token_statuses``).

    ``pending`` means a verification request is in flight or accepted by SDRS and waiting
    for its callback; ``pending_since`` lets the sweep return it to unknown if the callback
    never comes. ``sending_until`` is the lease of the attempt sending right now, so two
    workers never send the same finding at once.
    """

    finding = models.OneToOneField(Finding, primary_key=True, on_delete=models.CASCADE, related_name="token_status")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=TokenStatus.choices, default=TokenStatus.UNKNOWN)
    verifier = models.CharField(max_length=16, choices=Verifier.choices, blank=True, default="")
    partner = models.CharField(
        max_length=32, blank=True, default="", help_text="The partner whose API gave the latest direct verdict."
    )
    routed_at = models.DateTimeField(null=True, blank=True, help_text="When the routing job handled it.")
    last_verified_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Requests sent in the latest verification.")
    last_error_code = models.CharField(max_length=64, blank=True, default="")
    last_request_id = models.CharField(max_length=64, blank=True, default="")
    next_refresh_at = models.DateTimeField(null=True, blank=True)
    pending_since = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True, help_text="SDRS accepted the latest request.")
    sending_until = models.DateTimeField(null=True, blank=True, editable=False)
    result_received_at = models.DateTimeField(null=True, blank=True, editable=False)
    claimed_by_run = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="The refresher tick (job run) that claimed it and has not finished with it yet.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "secret_detection_token_statuses"
        verbose_name = "token status"
        verbose_name_plural = "token statuses"
        permissions = [("verify_finding", "Can send findings' tokens for verification now")]
        ordering = ["-finding_id"]
        indexes = [
            models.Index(
                fields=["next_refresh_at"], name="sd_status_refresh_due", condition=Q(next_refresh_at__isnull=False)
            ),
            models.Index(fields=["pending_since"], name="sd_status_pending", condition=Q(status="pending")),
            models.Index(
                fields=["project", "routed_at"], name="sd_status_unrouted", condition=Q(routed_at__isnull=True)
            ),
            models.Index(fields=["status"], name="sd_status_status"),
            models.Index(
                fields=["claimed_by_run"], name="sd_status_claimed_by", condition=Q(claimed_by_run__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        # Named after its finding (one status per finding); the admin selects finding and project.
        return str(self.finding)


class SdrsHealth(models.Model):
    """What we know of SDRS's availability and of our own callback endpoint's: one row.

    The circuit breaker (``services.breaker``): ``failures`` counts consecutive attempts
    that found SDRS unavailable (refused, connect timeout, 5xx); at the threshold, or when
    a verification ends failed as unavailable, the circuit opens: no verification is sent
    until one probe (the half-open request, without a token) gets an answer, which closes
    it and makes every status that failed as unavailable due at once.

    ``callbacks_refused_at`` is the latest moment our callback endpoint refused a callback
    because the database was unavailable (``services.callbacks``): findings accepted
    before it may have lost their callback and are verified again.
    """

    class Circuit(models.TextChoices):
        CLOSED = "closed"
        OPEN = "open"

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    circuit = models.CharField(max_length=8, choices=Circuit.choices, default=Circuit.CLOSED)
    failures = models.PositiveIntegerField(default=0, help_text="Consecutive attempts that found SDRS unavailable.")
    last_failure_code = models.CharField(max_length=64, blank=True, default="")
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True, help_text="The latest half-open probe.")
    probe_result = models.CharField(max_length=64, blank=True, default="")
    callbacks_refused_at = models.DateTimeField(
        null=True, blank=True, help_text="The latest callback refused while the database was unavailable."
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "secret_detection_sdrs_health"
        verbose_name = "SDRS health"
        verbose_name_plural = "SDRS health"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="sd_sdrs_health_one_row")]

    def __str__(self) -> str:
        return f"SDRS circuit {self.circuit}"


class ReportImport(models.Model):
    """One uploaded secret detection report and what importing it did.

    The API stores the upload and answers at once; the ``secret_detection.import_report``
    job (``job_run``) reads the stored file and records the outcome here. The status only
    moves forward, by conditional UPDATEs in ``services.reports``: queued → running →
    finished, queued/running → failed. The stored file is deleted once the import ends (or
    by the cleanup schedule after ``REPORT_IMPORT_FILE_RETENTION``). Nothing here holds a
    secret: the warnings and problems name paths in the report, never values.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    TERMINAL = (Status.FINISHED, Status.FAILED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secret_detection_report_imports")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    #: Storage name (under MEDIA_ROOT), built by ``services.reports`` from ids and a random
    #: token; empty once the file is deleted.
    file = models.FileField(max_length=255, blank=True, default="")
    size = models.BigIntegerField(default=0, help_text="Bytes uploaded.")
    findings = models.PositiveIntegerField(null=True, blank=True, help_text="Distinct findings in the report.")
    findings_created = models.PositiveIntegerField(null=True, blank=True)
    findings_updated = models.PositiveIntegerField(null=True, blank=True)
    findings_unchanged = models.PositiveIntegerField(null=True, blank=True)
    duplicates = models.PositiveIntegerField(
        null=True, blank=True, help_text="Vulnerabilities dropped because an earlier one had the same identity."
    )
    warnings = models.JSONField(default=list, blank=True)
    problems = models.JSONField(default=list, blank=True, help_text="Why the report was refused (paths, no values).")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    job_run = models.ForeignKey(
        "jobs.JobRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The toolkit's run importing this report.",
    )
    routing_run = models.ForeignKey(
        "jobs.JobRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The routing run started for the new or changed findings.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "secret_detection_report_imports"
        ordering = ["-id"]
        verbose_name = "report import"
        indexes = [
            models.Index(fields=["project", "created_at"], name="sd_report_imports_project"),
            models.Index(fields=["status", "created_at"], name="sd_report_imports_status"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "finished", "failed"]),
                name="sd_report_imports_status_valid",
            )
        ]

    def __str__(self) -> str:
        return f"Report import #{self.pk} into {self.project.path_with_namespace}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE
