"""Our own per-project rate limit of each partner API, and the per-partner pause a 429
sets. Both live in PostgreSQL so that every worker of every cluster shares them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from project import db
from secret_detection import metrics
from secret_detection.models import DirectPartner

_RESERVE = """
INSERT INTO secret_detection_partner_rate_slots (key, next_free_at)
VALUES (%(key)s, clock_timestamp() + make_interval(secs => %(interval)s))
ON CONFLICT (key) DO UPDATE SET next_free_at =
    GREATEST(secret_detection_partner_rate_slots.next_free_at, clock_timestamp())
    + make_interval(secs => %(interval)s)
RETURNING EXTRACT(EPOCH FROM (next_free_at - clock_timestamp()))
"""


def rate_slot_reserve(*, key: str, per_second: float) -> float:
    """Reserve the next request slot under ``key`` (at most ``per_second``); returns the
    seconds until it starts (0: go now). One atomic upsert (GCRA): concurrent workers get
    consecutive slots, so the limit paces them instead of refusing them."""
    return rate_slots_reserve(key=key, per_second=per_second, count=1)[0]


def rate_slots_reserve(*, key: str, per_second: float, count: int) -> list[float]:
    """Reserve ``count`` consecutive slots under ``key`` in one upsert; the seconds until
    each starts."""
    if per_second <= 0 or count <= 0:
        return [0.0] * count
    interval = 1.0 / per_second
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_RESERVE, {"key": key[:255], "interval": interval * count})
        (ends_in,) = cursor.fetchone()
    first = float(ends_in) - interval * count
    return [max(0.0, first + index * interval) for index in range(count)]


_TAKE = """
INSERT INTO secret_detection_partner_rate_slots (key, next_free_at)
VALUES (%(key)s, clock_timestamp() + make_interval(secs => %(interval)s))
ON CONFLICT (key) DO UPDATE SET next_free_at =
    GREATEST(secret_detection_partner_rate_slots.next_free_at, clock_timestamp())
    + make_interval(secs => %(interval)s)
WHERE secret_detection_partner_rate_slots.next_free_at <= clock_timestamp() + make_interval(secs => %(slack)s)
RETURNING 0
"""


#: How far ahead of its slot a send may go. Workers that finish together ask at the same
#: moment; with less than a few slots of tolerance at AWS's 400/s (a slot is 2.5 ms), all
#: but one deferred, came back behind the queue's backlog more than a second late, lost
#: their slot and deferred again: 7,600 deferrals for 1,000 tokens and 2.9x the time in one
#: benchmark run out of five. At most per_second x 0.05 extra sends in any second (20 for
#: AWS, none for Postman's 4/s, whose slots are 250 ms apart).
SEND_BURST_SECONDS = 0.05


def rate_send_take(*, key: str, per_second: float) -> float:
    """The limit where a request is sent: take the slot now if it is free (0), else
    reserve the next one and say how long until it starts. Slots reserved ahead
    (``rate_slots_reserve``) spread the runs' due times; this keeps the requests themselves
    within the limit when runs start late and bunch up (a queue backlog drained at once).
    Reserving rather than polling: each late run waits once, in order, for its own slot,
    instead of all of them waking together to race for the next one."""
    if per_second <= 0:
        return 0.0
    interval = 1.0 / per_second
    sent = f"{key}:sent"[:255]
    params: dict[str, str | float] = {"key": sent, "interval": interval, "slack": SEND_BURST_SECONDS}
    with db.prepared_cursor(connection) as cursor:
        cursor.execute(_TAKE, params)
        if cursor.fetchone() is not None:
            return 0.0
    return max(0.01, rate_slot_reserve(key=sent, per_second=per_second))


def partner_row(*, partner: str) -> DirectPartner:
    row, _ = DirectPartner.objects.get_or_create(partner=partner)
    return row


@dataclass(frozen=True)
class PartnerState:
    enabled: bool
    #: Seconds the partner's 429 pause still lasts (0: not paused).
    paused_for: float


def partner_state(*, partner: str) -> PartnerState:
    """The partner's switch and pause, read together (one query per verification). A
    partner without a row is on (the switch is off only once someone turned it off)."""
    # In SQL: the ORM's query building was most of this read's cost, paid per token.
    with db.prepared_cursor(connection) as cursor:
        table = DirectPartner._meta.db_table
        cursor.execute(f"SELECT enabled, paused_until FROM {table} WHERE partner = %s", [partner])
        row = cursor.fetchone()
    if row is None:
        return PartnerState(enabled=True, paused_for=0.0)
    enabled, until = row
    paused_for = max(0.0, (until - timezone.now()).total_seconds()) if until is not None else 0.0
    return PartnerState(enabled=enabled, paused_for=paused_for)


def partner_paused_for(*, partner: str) -> float:
    """Seconds the partner's 429 pause still lasts (0: not paused)."""
    return partner_state(partner=partner).paused_for


def partner_rate_limit_record(*, partner: str, limit: str, pause: float = 0.0, hits: int = 1) -> None:
    """Count rate limits met (ours, ``limit`` its key; or the partner's 429) for the job
    console, and with ``pause`` hold every row of that partner for that long."""
    if hits <= 0:
        return
    metrics.RATE_LIMIT_HITS.labels(limit=limit).inc(hits)
    now = timezone.now()
    partner_row(partner=partner)
    fields: dict[str, Any] = {"rate_limit_hits": F("rate_limit_hits") + hits, "last_rate_limit_at": now}
    if pause > 0:
        until = now + timedelta(seconds=pause)
        # PostgreSQL's GREATEST skips NULL: an unpaused partner gets ``until``.
        fields["paused_until"] = Greatest(F("paused_until"), until)
    DirectPartner.objects.filter(partner=partner).update(**fields)
