"""What ``eventmp run`` tells its operator: log lines, the status line, stats and the summary.

Parent-side. The figures come from two places: the dispatcher's counters
(:meth:`~eventmp.dispatcher.EventDispatcher.stats`) and the command's own :class:`Counts`,
which the command's input set keeps per rule and per input from the events its tails return
and the outcomes the dispatcher reports back. The same figures go out in two forms: lines for
people (``human``) and one JSON object per line for log shippers (``json``, schema in
docs/operations.md). :mod:`eventmp.stats` puts the figures in either form; this module gathers
them and writes them out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from operator import attrgetter, itemgetter
from typing import Any, Protocol, TextIO

from .dispatcher import DispatcherStats, EventDispatcher
from .event import Event
from .handlers import call_handler, describe_handler
from .stats import Rates, Tally, progress_bar, rules_text, stats_record, summary_text, timestamp

__all__ = [
    "Counts",
    "FailureSummary",
    "LogFormatter",
    "RateMeter",
    "StatusReporter",
    "write_final",
]

logger = logging.getLogger("eventmp")


class LogFormatter(logging.Formatter):
    """The command's log lines: ``2026-11-29T17:03:57.123+01:00 eventmp WARNING: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp(record.created)


# == counting ====================================================================================


_ABSENT: Any = object()  # a key missing from an event's data

# An event's data["rule"] and data["input"] as they are (_ABSENT when missing), and the
# tallies they count into (None for a missing one).
_Key = tuple[Any, Any]
_Pair = tuple[Tally | None, Tally | None]
_data_of = attrgetter("data")
_rule_and_input = itemgetter("rule", "input")


def _names_of(events: list[Event]) -> Counter[_Key] | None:
    """How many of ``events`` carry each (rule, input), counted in C; None unless every one's
    data is a dict holding both as strings (the caller then goes the long way, event by event).

    A log tail's events all do: this runs for each of them twice (matched, then settled), in
    the dispatcher thread that also reads the files.
    """
    datas = list(map(_data_of, events))
    if not datas or set(map(type, datas)) != {dict}:
        return None
    try:
        names = Counter(map(_rule_and_input, datas))
    except (KeyError, TypeError):  # a name absent, or one that cannot be a key
        return None
    if all(type(rule) is str and type(name) is str for rule, name in names):
        return names
    return None


class Counts:
    """Per rule and per input, the events accepted and their outcomes.

    A log tail's event names its rule and input in ``data["rule"]`` and ``data["input"]``, so
    the command counts them where it sees them go by (the events a poll returns, the outcomes
    the dispatcher reports), without the dispatcher's help. Called from the dispatcher thread,
    read from the status thread: a lock keeps the snapshots whole.

    Both calls come for every event, in the dispatcher thread that also reads the files: a
    poll's events are counted per rule and input at once, and each rule and input's tallies
    are looked up once, by the names as the events carry them, not made anew per event.
    """

    def __init__(self) -> None:
        self.rules: dict[str, Tally] = {}
        self.inputs: dict[str, Tally] = {}
        self._lock = threading.Lock()
        # By the names as events carry them, the tallies they count into: strings only, as
        # 1 and True are one key but two names.
        self._pairs: dict[_Key, _Pair] = {}

    def declare(self, rules: Iterable[str], inputs: Iterable[str]) -> None:
        """Show these rules and inputs even while they match nothing (a dead rule is news)."""
        with self._lock:
            for name in rules:
                self.rules.setdefault(name, Tally())
            for name in inputs:
                self.inputs.setdefault(name, Tally())

    def matched(self, events: Iterable[Event]) -> None:
        events = list(events)
        names = _names_of(events)
        if names is not None:
            with self._lock:
                self._add(names, "matches")
            return
        # Anything else (a name absent or not a string, data of another type): event by event.
        with self._lock:
            for event in events:
                for tally in self._tallies(event):
                    tally.matches += 1

    def settled(self, event: Event, exception: BaseException | None) -> None:
        self.settled_batch([(event, exception)])

    def settled_batch(self, outcomes: list[tuple[Event, BaseException | None]]) -> None:
        """:meth:`settled` for each, the lock taken once, and the tallies of a run of events
        with the same names (a rule's, the usual case) looked up once."""
        if len(outcomes) > 1:
            processed = [event for event, exception in outcomes if exception is None]
            names = _names_of(processed) if len(processed) == len(outcomes) else None
            if names is not None:
                with self._lock:
                    self._add(names, "processed")
                return
        with self._lock:
            last: Any = None  # the names of the run, when they are strings (or absent)
            tallies: Iterable[Tally | None] = ()
            for event, exception in outcomes:
                data = event.data
                if type(data) is dict:
                    rule, name = key = (data.get("rule", _ABSENT), data.get("input", _ABSENT))
                    if key != last:
                        try:
                            tallies = self._pair(key)
                        except TypeError:  # a name that cannot be a key
                            tallies = self._tallies(event)
                        # 1 and True are equal keys but different names: only strings carry on.
                        plain = (type(rule) is str or rule is _ABSENT) and (
                            type(name) is str or name is _ABSENT
                        )
                        last = key if plain else None
                else:
                    tallies, last = self._tallies(event), None
                for tally in tallies:
                    if tally is None:
                        continue
                    if exception is None:
                        tally.processed += 1
                    else:
                        tally.failed += 1

    def _add(self, names: Counter[_Key], field: str) -> None:
        """Add each (rule, input)'s count to ``field`` of its tallies (lock held)."""
        for key, number in names.items():
            for tally in self._pair(key):
                if tally is not None:
                    setattr(tally, field, getattr(tally, field) + number)

    def _pair(self, key: _Key) -> _Pair:
        """The tallies of the names ``key`` holds as events carry them; TypeError if one
        cannot be a key."""
        pair = self._pairs.get(key)
        if pair is None:
            rule, name = key
            pair = (
                None if rule is _ABSENT else self.rules.setdefault(str(rule), Tally()),
                None if name is _ABSENT else self.inputs.setdefault(str(name), Tally()),
            )
            if (type(rule) is str or rule is _ABSENT) and (type(name) is str or name is _ABSENT):
                self._pairs[key] = pair
        return pair

    def _tallies(self, event: Event) -> list[Tally]:
        data = event.data
        if not isinstance(data, dict):
            return []
        return [
            table.setdefault(str(data[key]), Tally())
            for key, table in (("rule", self.rules), ("input", self.inputs))
            if key in data
        ]

    def snapshot(self) -> tuple[dict[str, Tally], dict[str, Tally]]:
        """Copies of the per-rule and per-input tallies."""
        with self._lock:
            return (
                {name: Tally(**asdict(t)) for name, t in self.rules.items()},
                {name: Tally(**asdict(t)) for name, t in self.inputs.items()},
            )


class Progress(Protocol):
    """What the reporters read of the inputs (the command's input set)."""

    counts: Counts

    @property
    def lines_read(self) -> int: ...

    @property
    def bytes_read(self) -> int: ...

    @property
    def bytes_total(self) -> int: ...

    def input_progress(self) -> dict[str, tuple[int, int]]: ...

    def slow_lines(self) -> Mapping[str, int]: ...

    def without_files(self) -> list[str]: ...


class FailureSummary:
    """The command's error handler: counts failures by handler and error class, logs each one,
    then passes the error event on to the pipeline's own error handler, if any.

    ``then`` may be replaced while the command runs (a reload brings a new error handler).
    """

    def __init__(self, then: Any = None) -> None:
        self.then = then
        self.counts: Counter[tuple[str, str]] = Counter()

    def process_event(self, event: Event) -> bool:
        exception, original = event.data
        where = _where(original)
        handler = (
            describe_handler(original.handler) if original is not None else str(event.originator)
        )
        self.counts[(handler, type(exception).__name__)] += 1
        logger.warning("%s failed: %s: %s", where, type(exception).__name__, exception)
        then = self.then
        if then is not None:
            call_handler(then, Event(event.originator, then, event.data, event.timestamp))
        return True

    def lines(self) -> list[str]:
        return [
            f"{count} x {error} in {handler}"
            for (handler, error), count in self.counts.most_common()
        ]


def _where(event: Event | None) -> str:
    if event is None:
        return "input"
    data = event.data
    if isinstance(data, dict) and "file" in data:
        return f"rule {data.get('rule')!s} on {data['file']}:{data.get('line_number')}"
    return f"event {data!r}"[:200]


# == rates =======================================================================================


class RateMeter:
    """Events per second over the last ``window`` seconds, from samples of a running count.

    Events come in bursts (a tail reads what a poll found, a worker settles a batch), so the
    rate between two status lines half a second apart jumps between 0 and thousands. Averaged
    over a few seconds it reads steadily: :meth:`update` divides the events done since the
    newest sample at least ``window`` old (or the oldest sample, early on) by the time since.
    A steady flow shows its rate; a burst of N events shows as N over the window and is gone
    once it is a window old; with nothing done for a window, the rate is exactly 0. Samples
    further apart than the window (a stats line a minute) give the rate since the previous one.
    Pure: the caller gives the time, so tests need no clock.
    """

    def __init__(self, window: float = 5.0) -> None:
        if not window > 0:
            raise ValueError(f"window must be more than 0 seconds, got {window!r}")
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, count: int) -> float:
        """Record that ``count`` events were done by ``now`` (seconds); the rate per second."""
        samples = self._samples
        samples.append((now, count))
        horizon = now - self.window
        # Keep one sample at or before the horizon, the base of a full window.
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        then, before = samples[0]
        if now <= then:
            return 0.0
        return max(count - before, 0) / (now - then)


class _Meters:
    """One :class:`RateMeter` per figure, updated together."""

    def __init__(self, now: float) -> None:
        self._meters = (RateMeter(), RateMeter(), RateMeter())
        for meter in self._meters:
            meter.update(now, 0)

    def update(self, now: float, lines: int, read: int, done: int) -> Rates:
        meters = self._meters
        return Rates(
            meters[0].update(now, lines), meters[1].update(now, read), meters[2].update(now, done)
        )


# == the status line and the stats objects =======================================================


class StatusReporter:
    """A live status line on a terminal, or a periodic stats line (or JSON object) when not.

    ``format`` is ``"human"`` or ``"json"``; a JSON object is never a live line.
    """

    def __init__(
        self,
        dispatcher: EventDispatcher,
        inputs: Progress,
        *,
        stream: TextIO,
        interactive: bool,
        interval: float,
        progress: bool,
        format: str = "human",
        started: float | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.inputs = inputs
        self.stream = stream
        self.format = format
        self.interactive = interactive and format == "human"
        self.interval = 0.5 if self.interactive else interval
        self.progress = progress
        self.started = time.monotonic() if started is None else started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eventmp-status", daemon=True)
        self._meters = _Meters(time.monotonic())

    def start(self) -> None:
        if self.interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self.interactive and self.interval > 0:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.format == "json":
                self.stream.write(json.dumps(self.record()) + "\n")
            elif self.interactive:
                self.stream.write("\r\x1b[K" + self.line())
            else:
                self.stream.write(f"{timestamp(time.time())} eventmp stats: {self.line()}\n")
            self.stream.flush()

    def _rates(self, stats: DispatcherStats) -> Rates:
        inputs = self.inputs
        return self._meters.update(
            time.monotonic(),
            inputs.lines_read,
            inputs.bytes_read,
            stats.processed + stats.failed,
        )

    def line(self) -> str:
        stats = self.dispatcher.stats()
        rates = self._rates(stats)
        rss = max(stats.worker_rss, default=0)
        parts = [
            f"{rates.lines:,.0f} lines/s",
            f"{rates.bytes / 1e6:,.1f} MB/s",
            f"{rates.events:,.0f} ev/s",
            f"pending {stats.pending:,}",
            f"processed {stats.processed:,}",
            f"failed {stats.failed:,}",
            f"restarts {stats.worker_restarts}",
            f"worker rss {rss / 1e6:,.0f} MB",
        ]
        if self.progress:
            parts.insert(0, progress_bar(self.inputs))
        if not self.interactive:  # a terminal line stays one line wide
            rules, _inputs = self.inputs.counts.snapshot()
            parts.append("rules " + rules_text(rules))
        return " | ".join(parts)

    def record(self) -> dict[str, Any]:
        """One stats object (``"type": "stats"``), rates since the previous one."""
        stats = self.dispatcher.stats()
        return stats_record(
            "stats", stats, self.inputs, self._rates(stats), time.monotonic() - self.started
        )


def write_final(
    stream: TextIO,
    status: int,
    *,
    stats_format: str,
    stats: DispatcherStats,
    inputs: Progress,
    failures: FailureSummary,
    seconds: float,
    interrupted: str | None,
) -> None:
    """The run's last word on ``stream``: the summary paragraph, or the final JSON object.

    ``interrupted`` names the signal that stopped ``--once`` before the end of its inputs.
    """
    missing = inputs.without_files()
    if stats_format == "json":
        extra = {
            "status": status,
            "interrupted_by": interrupted,
            "failures": [
                {"handler": handler, "error": error, "count": count}
                for (handler, error), count in failures.counts.most_common()
            ],
            "inputs_without_files": missing,
        }
        record = stats_record("final", stats, inputs, None, seconds, extra)
        print(json.dumps(record), file=stream)
        return
    text = summary_text(stats, inputs, failures, seconds, missing=missing)
    if interrupted is not None:
        text += (
            f" Interrupted by {interrupted} after reading"
            f" {inputs.bytes_read / 1e6:,.1f} of {inputs.bytes_total / 1e6:,.1f} MB."
        )
    print(text, file=stream)
