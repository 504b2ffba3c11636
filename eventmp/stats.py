"""A run's figures in the forms ``eventmp run`` writes them: the JSON stats object and the summary.

Parent-side and pure: each function is given the figures (the dispatcher's
:class:`~eventmp.dispatcher.DispatcherStats`, what the inputs read and count, the rates) and
returns text or an object; :mod:`eventmp.reporting` gathers the figures and writes them, from
the status thread or at the end of the run. The JSON object's schema is in docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: eventmp.reporting imports this module
    from .dispatcher import DispatcherStats
    from .reporting import FailureSummary, Progress

__all__ = [
    "STATS_SCHEMA",
    "Rates",
    "Tally",
    "progress_bar",
    "rules_text",
    "stats_record",
    "summary_text",
    "timestamp",
]

STATS_SCHEMA = 1
"""The version of the JSON stats objects; it changes only when a key changes meaning or goes."""


def timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 local time with milliseconds and the UTC offset:
    ``2026-11-29T17:03:57.123+01:00``.

    The offset makes a line mean one instant wherever it is read and whatever the host's time
    zone, and it sorts and parses (``datetime.fromisoformat``) as it is. Milliseconds because
    a failure's warning, the stats line and the events behind them come many to a second: a
    log watcher (eventmp itself, with the ``time`` field of its templates, which has the same
    form) can order them and match a warning with the handler output it is about.
    """
    # From UTC, not from a naive local time: in the hour a DST change repeats, that is ambiguous.
    return datetime.fromtimestamp(seconds, UTC).astimezone().isoformat(timespec="milliseconds")


@dataclass
class Tally:
    """Events of one rule or one input: made from a matching line, and their outcomes."""

    matches: int = 0
    processed: int = 0
    failed: int = 0


@dataclass
class Rates:
    """Lines, bytes and events (with an outcome) per second."""

    lines: float
    bytes: float
    events: float


def stats_record(
    kind: str,
    stats: DispatcherStats,
    inputs: Progress,
    rates: Rates | None,
    seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON stats object of the schema docs/operations.md describes.

    ``rates`` None: the averages over the whole run (for the final object).
    """
    if rates is None:
        elapsed = max(seconds, 1e-9)
        rates = Rates(
            inputs.lines_read / elapsed,
            inputs.bytes_read / elapsed,
            (stats.processed + stats.failed) / elapsed,
        )
    rules, tallies = inputs.counts.snapshot()
    slow = inputs.slow_lines()
    progress = inputs.input_progress()
    per_input: dict[str, dict[str, int]] = {}
    for name in dict.fromkeys([*tallies, *progress]):
        lines, read = progress.get(name, (0, 0))
        per_input[name] = {"lines": lines, "bytes": read, **asdict(tallies.get(name, Tally()))}
    record: dict[str, Any] = {
        "schema": STATS_SCHEMA,
        "type": kind,
        "time": timestamp(time.time()),
        "elapsed_s": round(seconds, 3),
        "lines": inputs.lines_read,
        "bytes": inputs.bytes_read,
        "bytes_total": inputs.bytes_total,
        "events": {
            "accepted": stats.accepted,
            "pending": stats.pending,
            "processed": stats.processed,
            "failed": stats.failed,
            "abandoned": stats.abandoned,
        },
        "rates": {
            "lines_per_s": round(rates.lines, 3),
            "bytes_per_s": round(rates.bytes, 3),
            "events_per_s": round(rates.events, 3),
        },
        "workers": {
            "restarts": stats.worker_restarts,
            "recycles": stats.worker_recycles,
            "rss_max_bytes": max(stats.worker_rss, default=0),
        },
        # What the handlers count in the workers (count and throttle: "evicted_keys").
        "handlers": dict(stats.handler_counters),
        "rules": {
            name: {**asdict(tally), "slow_lines": slow.get(name, 0)}
            for name, tally in rules.items()
        },
        "inputs": per_input,
    }
    if extra:
        record.update(extra)
    return record


def rules_text(rules: Mapping[str, Tally]) -> str:
    return "; ".join(
        f"{name}: {t.matches:,} matched, {t.processed:,} processed, {t.failed:,} failed"
        for name, t in rules.items()
    )


def progress_bar(inputs: Progress, width: int = 20) -> str:
    read = inputs.bytes_read
    total = inputs.bytes_total
    fraction = min(read / total, 1.0) if total else 1.0
    filled = int(fraction * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
        f"{read / 1e6:,.1f}/{total / 1e6:,.1f} MB"
    )


def summary_text(
    stats: DispatcherStats,
    inputs: Progress,
    failures: FailureSummary,
    seconds: float,
    *,
    missing: list[str],
) -> str:
    """The paragraph ``eventmp run`` ends with (the human form of the final stats)."""
    lines = inputs.lines_read
    read = inputs.bytes_read
    elapsed = max(seconds, 1e-9)
    text = (
        f"eventmp: read {lines:,} lines ({read / 1e6:,.1f} MB) in {seconds:,.1f} s "
        f"({lines / elapsed:,.0f} lines/s, {read / 1e6 / elapsed:,.1f} MB/s); "
        f"{stats.accepted:,} events: {stats.processed:,} processed, {stats.failed:,} failed"
    )
    if stats.abandoned:
        text += f" ({stats.abandoned:,} abandoned)"
    text += f"; {stats.worker_restarts} worker restarts."
    evicted = stats.handler_counters.get("evicted_keys", 0)
    if evicted:
        text += (
            f" count/throttle evicted {evicted:,} least recently seen keys to stay within max_keys."
        )
    rules, _inputs = inputs.counts.snapshot()
    if rules:
        text += f" Rules {rules_text(rules)}."
    slow = {name: count for name, count in inputs.slow_lines().items() if count}
    if slow:
        text += " Slow lines (a rule's regex took long on them): " + ", ".join(
            f"{name} {count:,}" for name, count in slow.items()
        )
        text += "."
    if failures.counts:
        text += " Failures: " + "; ".join(failures.lines()) + "."
    if missing:
        # Said here too: -q hides the warning, and this is why `run --once` exits 1.
        text += f" No file matched input {', '.join(missing)}."
    return text
