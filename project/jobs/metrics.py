"""Job metrics. Label values are registered job names only (a closed set).

Worker processes write these through prometheus_client's multiprocess mode, so the web
process's ``/metrics`` shows what every worker recorded.
"""

from prometheus_client import Counter, Gauge, Histogram

JOBS_ENQUEUED = Counter("jobs_enqueued_total", "Job runs enqueued.", ["job"])
JOBS_STARTED = Counter("jobs_started_total", "Job attempts started.", ["job"])
JOBS_FINISHED = Counter(
    "jobs_finished_total",
    "Job attempts finished, by outcome: succeeded, retried, failed, deferred.",
    ["job", "outcome"],
)
JOB_DURATION = Histogram(
    "jobs_duration_seconds",
    "Duration of job attempts.",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
JOBS_IN_FLIGHT = Gauge("jobs_in_flight", "Job attempts running now.", ["job"], multiprocess_mode="livesum")
JOB_START_LATENESS = Histogram(
    "jobs_start_lateness_seconds",
    "Time from an attempt's due time to its start.",
    ["job"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
