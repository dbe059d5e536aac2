"""``manage.py jobs_status``: the job console's overview in a terminal.

It reads through ``project.jobs.overview.overview()``, as the console page does, so both
show the same figures. ``--json`` is for scripts, ``--check`` for cron and monitoring
(exit code 1 when something needs an operator), ``--watch`` for a terminal left open.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import textwrap
import time
from collections.abc import Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.color import Style
from django.db import DatabaseError, connections
from django.utils import timezone
from redis.exceptions import RedisError

from project.jobs.overview import Overview, overview

#: Every line fits this many columns.
WIDTH = 120
#: Job and schedule names longer than this are clipped (none is today).
NAME_WIDTH = 40
#: Home, then clear the screen: each --watch frame replaces the last.
CLEAR = "\x1b[H\x1b[2J"
DEFAULT_WATCH_SECONDS = 2.0


def duration(seconds: float) -> str:
    """A compact duration for narrow columns: 52ms, 1.2s, 12s, 3m05s, 2h10m, 3d04h."""
    seconds = abs(seconds)
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    if seconds < 59.5:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def relative(value: dt.datetime | None, now: dt.datetime, empty: str = "-") -> str:
    """ "in 12s" or "3m05s ago" within a day, the time to the minute further away."""
    if value is None:
        return empty
    delta = (value - now).total_seconds()
    if abs(delta) < 0.5:
        return "now"
    if abs(delta) >= 86400:
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
    return f"in {duration(delta)}" if delta > 0 else f"{duration(delta)} ago"


def clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())  # one line: errors may hold newlines and tabs
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """Aligned columns, two spaces apart; ``right`` are the indexes of numeric columns."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _counts(*values: int) -> str:
    return "/".join(str(value) for value in values)


def render(data: Overview, *, style: Style | None = None, watch: float | None = None) -> list[str]:
    """The overview as lines of at most ``WIDTH`` columns, problems first. ``style``
    colours whole lines (problems, jobs that need attention, clusters that are down)."""
    now = data.now
    out: list[tuple[str, str]] = []  # (style name or "", text)

    def add(text: str = "", kind: str = "") -> None:
        out.append((kind, text))

    problems = data.problems
    if problems:
        text = "Problems: " + "; ".join(problems) + "."
        for part in textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False):
            add(part, "ERROR")
    else:
        add("All is well.", "SUCCESS")
    stamp = timezone.localtime(now).strftime("%Y-%m-%d %H:%M:%S %Z")
    add(f"Job status at {stamp}" + (f" · refreshes every {watch:g} s, Ctrl-C to stop" if watch else ""))

    # Jobs. The latest error gets a line of its own under its job: the table stays narrow
    # and the error keeps most of the width.
    add()
    add("Jobs", "MIGRATE_HEADING")
    rows = []
    for row in data.jobs:
        retry = str(row.retry_waiting)
        if row.retry_waiting:
            retry += f" next {relative(row.next_retry_at, now)}"
        timing = "-"
        if row.p50_seconds is not None:
            timing = f"{duration(row.p50_seconds)}/{duration(row.p95_seconds or 0)}"
        rows.append(
            [
                clip(row.name, NAME_WIDTH),
                str(row.queued),
                retry,
                str(row.running),
                str(row.running_silent),
                "yes" if row.paused else "",
                _counts(row.succeeded_1h, row.failed_1h, row.cancelled_1h),
                _counts(row.succeeded_24h, row.failed_24h, row.cancelled_24h),
                timing,
            ]
        )
    header, *body = table(
        ["JOB", "QUEUED", "RETRY", "RUN", "NO HB", "PAUSED", "1H S/F/C", "24H S/F/C", "P50/P95"],
        rows,
        right=(1, 3, 4),
    )
    add(header)
    for text, row in zip(body, data.jobs, strict=True):
        add(text, "WARNING" if row.attention else "")
        if row.last_error_run_id:
            when = relative(row.last_error_at, now)
            code = row.last_error_code or "error"
            add(
                "  " + clip(f"└ latest error, run #{row.last_error_run_id} {when}, {code}: {row.last_error}", WIDTH - 2)
            )
    add("S/F/C: succeeded/failed/cancelled · NO HB: running without heartbeat · P50/P95: run time over 24 h")

    add()
    add("Clusters", "MIGRATE_HEADING")
    if data.clusters:
        cluster_rows = [
            [
                clip(cluster.cluster_name, 24),
                clip(cluster.host, 32),
                str(cluster.pid),
                cluster.broker,
                str(cluster.workers),
                f"{duration(cluster.age_seconds)} ago",
                "alive" if cluster.alive else "down",
            ]
            for cluster in data.clusters
        ]
        header, *body = table(
            ["CLUSTER", "HOST", "PID", "BROKER", "WORKERS", "HEARTBEAT", "STATE"], cluster_rows, right=(2, 4)
        )
        add(header)
        for text, cluster in zip(body, data.clusters, strict=True):
            add(text, "" if cluster.alive else "ERROR")
    else:
        add("No cluster has reported. Start one with: manage.py qcluster", "ERROR")
    broker = data.broker
    oldest = "none" if data.oldest_due_age_seconds is None else f"waiting {duration(data.oldest_due_age_seconds)}"
    add(
        f"Broker {broker.get('kind', '?')}, queue {broker.get('queue', '?')}: {broker.get('ready', '?')} ready, "
        f"{broker.get('held', '?')} held (delayed retries or being worked on) · oldest due run: {oldest}"
    )

    add()
    add("Schedules", "MIGRATE_HEADING")
    schedule_rows = [
        [
            clip(schedule.name, NAME_WIDTH),
            schedule.cron,
            "paused" if schedule.paused else relative(schedule.next_run, now),
            f"#{schedule.last_run_id} {schedule.last_run_status} {relative(schedule.last_run_at, now)}"
            if schedule.last_run_id
            else "-",
        ]
        for schedule in data.schedules
    ]
    for text in table(["JOB", "CRON", "NEXT", "LAST RUN"], schedule_rows) if schedule_rows else ["No schedules."]:
        add(text)

    if data.backlogs:
        add()
        add("Backlogs", "MIGRATE_HEADING")
        backlog_rows = [
            [
                clip(backlog.label, 60),
                str(backlog.count),
                f"oldest {duration(backlog.oldest_age_seconds)}" if backlog.oldest_age_seconds else "",
            ]
            for backlog in data.backlogs
        ]
        body = table(["BACKLOG", "COUNT", "AGE"], backlog_rows, right=(1,))[1:]
        for text, backlog in zip(body, data.backlogs, strict=True):
            add(text, "WARNING" if backlog.warn else "")

    if data.switches:
        add()
        add("Switches", "MIGRATE_HEADING")
        switch_rows = [
            [
                clip(f"{switch.group}: {switch.label}", 64),
                switch.on_label if switch.on else switch.off_label,
                f"by {switch.changed_by or '?'} {relative(switch.changed_at, now)}" if switch.changed_at else "",
            ]
            for switch in data.switches
        ]
        for text in table(["SWITCH", "STATE", "CHANGED"], switch_rows)[1:]:
            add(text)

    # Clip before colouring: escape codes take no columns on screen but count in len().
    return [getattr(style, kind)(clip_line(text)) if style and kind else clip_line(text) for kind, text in out]


def clip_line(line: str) -> str:
    """One line of at most ``WIDTH`` columns (tabs and newlines in data become spaces)."""
    line = line.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def _drop_broken_connections() -> None:
    """A long watch must survive a database restart: like Django does between requests,
    drop connections that failed or are too old, so the next frame opens a fresh one.
    (Never inside a transaction, such as a test's.)"""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


class Command(BaseCommand):
    help = (
        "Show the job console's overview: jobs, clusters, broker, schedules, backlogs and switches, "
        "with a first line that says whether anything needs an operator."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the overview as JSON (stdout only)")
        parser.add_argument(
            "--watch",
            nargs="?",
            type=float,
            const=DEFAULT_WATCH_SECONDS,
            default=None,
            metavar="SECONDS",
            help=f"refresh every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C",
        )
        parser.add_argument("--check", action="store_true", help="exit with code 1 when there are problems")
        # For tests: stop --watch after this many frames.
        parser.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        watch = options["watch"]
        if watch is None:
            data = self._read()
            self._show(data, json_output=options["json"])
            if options["check"] and data.problems:
                raise CommandError("; ".join(data.problems), returncode=1)
            return
        if watch <= 0:
            raise CommandError("--watch SECONDS must be positive")
        if options["check"]:
            raise CommandError("--check is for a single reading; it cannot be combined with --watch")
        self._watch(watch, frames=options["frames"], json_output=options["json"])

    def _watch(self, seconds: float, *, frames: int | None, json_output: bool) -> None:
        """Show a frame every ``seconds`` until Ctrl-C (or ``frames`` frames), riding out
        a database or broker that is briefly away."""
        shown = 0
        try:
            while frames is None or shown < frames:
                if shown:
                    time.sleep(seconds)
                _drop_broken_connections()
                try:
                    self._show(self._read(), json_output=json_output, watch=seconds)
                except CommandError as exc:
                    message = f"{exc} (trying again every {seconds:g} s, Ctrl-C to stop)"
                    if json_output:
                        self.stderr.write(message)
                    else:
                        self.stdout.write(CLEAR + message)
                shown += 1
        except KeyboardInterrupt:
            # Ctrl-C is how a watch ends: no traceback, exit code 0.
            if not json_output:
                self.stdout.write("")

    def _read(self) -> Overview:
        try:
            return overview(chart=False)
        except (DatabaseError, RedisError) as exc:
            raise CommandError(clip(f"cannot read the job overview: {exc}", WIDTH)) from None

    def _show(self, data: Overview, *, json_output: bool, watch: float | None = None) -> None:
        if json_output:
            # One document per line while watching (JSON Lines), indented otherwise.
            self.stdout.write(json.dumps(data.as_dict(), indent=None if watch else 2, default=str))
        else:
            text = "\n".join(render(data, style=self.style, watch=watch))
            # One write per frame, so the terminal does not flicker between clear and redraw.
            self.stdout.write(CLEAR + text if watch else text)
        self.stdout.flush()
