"""The ``eventmp`` command: ``eventmp run PIPELINE.toml``, ``eventmp check PIPELINE.toml``.

Everything here runs in the parent process. The exit statuses are those of :data:`EXIT_CODES`,
which ``--help`` shows. A bad pipeline file gets one line naming the file and key, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from . import __version__
from .dispatcher import EventDispatcher
from .errors import EventmpError, WorkerStartError
from .event import Event
from .handlers import call_handler, describe_handler
from .pipeline import Pipeline, PipelineError, load_pipeline
from .tail import FileTailGenerator, Rule
from .units import parse_duration

__all__ = ["EXIT_CODES", "FailureSummary", "RateMeter", "StatusReporter", "main"]

logger = logging.getLogger("eventmp")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# 128 + the signal's number, as a shell reports a command that signal ended.
EXIT_HANGUP = 129  # SIGHUP
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_TERMINATED = 143  # SIGTERM
# The signals that stop `run` with a drain. SIGHUP does too: reloading the pipeline file is not
# supported, and a drain (checkpoints saved) beats dying at once, which is its default action.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success: `check` found the file good; `run --once` read every input to its "
    "end and every event succeeded; `run` (follow mode) was stopped by SIGINT or SIGTERM and "
    "drained (in follow mode a failed event is logged; it does not change the status)",
    EXIT_FAILED: "`run --once`: at least one event failed (or was abandoned by a second "
    "signal), or an input without `missing_ok = true` matched no file; or the run could not "
    "go on, for instance the workers could not start",
    EXIT_USAGE: "bad arguments, or a bad pipeline file (one line on stderr names the file "
    "and the key)",
    EXIT_HANGUP: "SIGHUP stopped `run --once` before it had read every input (what it had "
    "read was handled first)",
    EXIT_INTERRUPTED: "interrupted: SIGINT stopped `run --once` before it had read every input "
    "(what it had read was handled first), or came while the command was loading or starting",
    EXIT_TERMINATED: "SIGTERM stopped `run --once` before it had read every input (what it "
    "had read was handled first)",
}
"""Every status the command exits with, and what it means; ``--help`` prints this table."""

# (what it does, the command line) for each command's --help.
_EXAMPLES = {
    "eventmp": [
        ("Check a pipeline file and show what it holds", "eventmp check pipeline.toml"),
        ("Follow the inputs until SIGINT or SIGTERM", "eventmp run pipeline.toml"),
        ("Batch job: read every input to its end, then exit", "eventmp run --once pipeline.toml"),
    ],
    "run": [
        (
            "Follow the inputs (from their end, or from the checkpoint in state_file) and "
            "handle new lines until SIGINT or SIGTERM",
            "eventmp run pipeline.toml",
        ),
        (
            "The same under a supervisor (stderr not a terminal): info logging and a stats "
            "line every 5 minutes",
            "eventmp run -v --stats-interval 5m pipeline.toml",
        ),
        (
            "Batch job: read every input from its beginning to its end, handle every match, "
            "exit 0 if all succeeded",
            "eventmp run --once pipeline.toml",
        ),
        (
            "In a script: no status line, no summary, only fatal errors on stderr",
            "eventmp run --once -qq pipeline.toml || exit 1",
        ),
    ],
    "check": [
        ("Check a file and print its inputs and rules", "eventmp check pipeline.toml"),
        (
            "Run a file only if it checks",
            "eventmp check pipeline.toml && eventmp run pipeline.toml",
        ),
    ],
}
_HELP_WIDTH = 78


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose - args.quiet)
    try:
        pipeline = load_pipeline(args.pipeline)
    except PipelineError as exc:
        print(f"eventmp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        print(_describe(pipeline))
        return EXIT_OK
    return _run(pipeline, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventmp",
        description="Watch log files and run handlers on matching lines in worker processes.",
        epilog=_epilog("eventmp"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"eventmp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a pipeline (follow mode until SIGINT/SIGTERM)",
        description=_wrap(
            "Run a pipeline: follow its inputs and run each rule's handlers on the lines it "
            "matches, in worker processes, until SIGINT or SIGTERM (the first drains what was "
            "read, a second stops at once); with --once, read every input to its end and exit."
        ),
        epilog=_epilog("run"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = commands.add_parser(
        "check",
        help="check a pipeline file without running it",
        description=_wrap(
            "Load a pipeline file and check every table, key, regex, template and handler "
            "setting without running anything; print what it holds."
        ),
        epilog=_epilog("check"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for command in (run, check):
        command.add_argument("pipeline", metavar="PIPELINE.toml", help="the pipeline file")
        command.add_argument(
            "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
        )
        command.add_argument(
            "-q", "--quiet", action="count", default=0, help="less output (no status line)"
        )
    run.add_argument(
        "--once",
        action="store_true",
        help="batch mode: read every input to its end, process everything, exit "
        "(0: all succeeded, 1: some failed or an input matched no file; 130, 143, 129: stopped "
        "by SIGINT, SIGTERM, SIGHUP before the end)",
    )
    run.add_argument(
        "--stats-interval",
        type=_duration,
        default=60.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, log a stats line this often (default 60; 0: never)",
    )
    return parser


def _epilog(command: str) -> str:
    """The examples for ``command``'s ``--help``, then the table of exit statuses."""
    lines = ["examples:"]
    for what, example in _EXAMPLES[command]:
        lines += textwrap.wrap(what + ":", _HELP_WIDTH, initial_indent="  ", subsequent_indent="  ")
        lines += [f"    {example}", ""]
    lines.append("exit status:")
    for code, meaning in EXIT_CODES.items():
        lines += textwrap.wrap(
            meaning, _HELP_WIDTH, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7
        )
    return "\n".join(lines)


def _wrap(text: str) -> str:
    return textwrap.fill(text, _HELP_WIDTH)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _configure_logging(verbosity: int) -> None:
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        verbosity, logging.DEBUG if verbosity > 1 else logging.CRITICAL
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=level, handlers=[handler])


def _timestamp(seconds: float) -> str:
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


class LogFormatter(logging.Formatter):
    """The command's log lines: ``2026-11-29T17:03:57.123+01:00 eventmp WARNING: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record.created)


def _describe(pipeline: Pipeline) -> str:
    lines = [f"{pipeline.path}: OK"]
    for spec in pipeline.inputs:
        rules = ", ".join(rule.name for rule in pipeline.rules_for(spec.name)) or "no rules"
        lines.append(f"  input {spec.name}: {', '.join(spec.paths)} -> {rules}")
    for rule in pipeline.rules:
        lines.append(
            f"  rule {rule.name}: /{rule.regex.pattern}/ -> {describe_handler(rule.handler)}"
        )
    return "\n".join(lines)


def build(pipeline: Pipeline, *, once: bool) -> tuple[EventDispatcher, list[FileTailGenerator]]:
    """The dispatcher and tails that a pipeline describes (not started)."""
    options = dict(pipeline.dispatcher_options)
    dispatcher = EventDispatcher(
        key=pipeline.key_function(int(options.get("workers", 1))), **options
    )
    tails = []
    for spec in pipeline.inputs:
        rules = [
            Rule(rule.name, rule.regex, rule.handler, rule.exclude, rule.quick)
            for rule in pipeline.rules_for(spec.name)
        ]
        tail = FileTailGenerator(
            spec.paths,
            rules,
            name=spec.name,
            start_at=spec.start_at or ("beginning" if once else "end"),
            encoding=spec.encoding,
            state_file=spec.state_file,
            once=once,
            rescan_interval=spec.rescan_interval,
            missing_ok=spec.missing_ok,
            max_line_bytes=spec.max_line_bytes,
        )
        dispatcher.add_event_generator(tail)
        tails.append(tail)
    return dispatcher, tails


def _run(pipeline: Pipeline, args: argparse.Namespace) -> int:
    dispatcher, tails = build(pipeline, once=args.once)
    failures = FailureSummary(pipeline.error_handler)
    dispatcher.error_handler(failures)
    started = time.monotonic()
    try:
        dispatcher.start()
    except WorkerStartError as exc:
        print(f"eventmp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    reporter = StatusReporter(
        dispatcher,
        tails,
        stream=sys.stderr,
        interactive=sys.stderr.isatty() and args.quiet == 0,
        interval=args.stats_interval if args.quiet == 0 else 0.0,
        progress=args.once,
    )
    reporter.start()
    if args.once:
        threading.Thread(
            target=_stop_when_done, args=(dispatcher,), name="eventmp-once", daemon=True
        ).start()
    try:
        received = dispatcher.serve_forever(signals=_STOP_SIGNALS)
    finally:
        reporter.stop()
    interrupted = args.once and not all(tail.finished for tail in tails)
    if args.quiet < 2:
        summary = _summary(dispatcher, tails, failures, time.monotonic() - started)
        if interrupted and received is not None:
            done = sum(t.bytes_read for t in tails) / 1e6
            total = sum(t.bytes_total for t in tails) / 1e6
            summary += (
                f" Interrupted by {signal.Signals(received).name} after reading"
                f" {done:,.1f} of {total:,.1f} MB."
            )
        print(summary, file=sys.stderr)
    if dispatcher.failure is not None:
        return EXIT_FAILED  # it stopped on its own, in follow mode too (a service restarts it)
    if args.once and dispatcher.stats().failed:
        return EXIT_FAILED
    if args.once and _without_files(tails):
        return EXIT_FAILED  # an input matched no file: a batch job read nothing of it
    if interrupted:  # a signal stopped it: the inputs were not all read
        if received == signal.SIGTERM:
            return EXIT_TERMINATED
        if received == signal.SIGHUP:
            return EXIT_HANGUP
        return EXIT_INTERRUPTED
    return EXIT_OK


def _without_files(tails: list[FileTailGenerator]) -> list[str]:
    """The inputs that matched no file and do not say ``missing_ok = true``."""
    return [tail.name for tail in tails if tail.matched_no_file and not tail.missing_ok]


def _stop_when_done(dispatcher: EventDispatcher) -> None:
    """In --once mode: stop (with a drain) as soon as every input is read and handled."""
    while dispatcher.is_alive():
        if dispatcher.wait(0.2):
            dispatcher.stop()
            return


class FailureSummary:
    """The command's error handler: counts failures by handler and error class, logs each one,
    then passes the error event on to the pipeline's own error handler, if any."""

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
        if self.then is not None:
            call_handler(self.then, Event(event.originator, self.then, event.data, event.timestamp))
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


class StatusReporter:
    """A live status line on a terminal, or a periodic plain log line when not on one."""

    def __init__(
        self,
        dispatcher: EventDispatcher,
        tails: list[FileTailGenerator],
        *,
        stream: TextIO,
        interactive: bool,
        interval: float,
        progress: bool,
    ) -> None:
        self.dispatcher = dispatcher
        self.tails = tails
        self.stream = stream
        self.interactive = interactive
        self.interval = 0.5 if interactive else interval
        self.progress = progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eventmp-status", daemon=True)
        self._rate = RateMeter()
        self._rate.update(time.monotonic(), 0)

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
            line = self.line()
            if self.interactive:
                self.stream.write("\r\x1b[K" + line)
            else:
                self.stream.write(f"{_timestamp(time.time())} eventmp stats: {line}\n")
            self.stream.flush()

    def line(self) -> str:
        stats = self.dispatcher.stats()
        rate = self._rate.update(time.monotonic(), stats.processed + stats.failed)
        rss = max(stats.worker_rss, default=0)
        parts = [
            f"{rate:,.0f} ev/s",
            f"pending {stats.pending:,}",
            f"processed {stats.processed:,}",
            f"failed {stats.failed:,}",
            f"restarts {stats.worker_restarts}",
            f"worker rss {rss / 1e6:,.0f} MB",
        ]
        if self.progress:
            parts.insert(0, _progress_bar(self.tails))
        return " | ".join(parts)


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


def _progress_bar(tails: list[FileTailGenerator], width: int = 20) -> str:
    read = sum(tail.bytes_read for tail in tails)
    total = sum(tail.bytes_total for tail in tails)
    fraction = min(read / total, 1.0) if total else 1.0
    filled = int(fraction * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
        f"{read / 1e6:,.1f}/{total / 1e6:,.1f} MB"
    )


def _summary(
    dispatcher: EventDispatcher,
    tails: list[FileTailGenerator],
    failures: FailureSummary,
    seconds: float,
) -> str:
    stats = dispatcher.stats()
    lines = sum(tail.lines_read for tail in tails)
    read = sum(tail.bytes_read for tail in tails)
    text = (
        f"eventmp: read {lines:,} lines ({read / 1e6:,.1f} MB) in {seconds:,.1f} s; "
        f"{stats.accepted:,} events: {stats.processed:,} processed, {stats.failed:,} failed"
    )
    if stats.abandoned:
        text += f" ({stats.abandoned:,} abandoned)"
    text += f"; {stats.worker_restarts} worker restarts."
    if failures.counts:
        text += " Failures: " + "; ".join(failures.lines()) + "."
    missing = _without_files(tails)
    if missing:
        # Said here too: -q hides the warning, and this is why `run --once` exits 1.
        text += f" No file matched input {', '.join(missing)}."
    return text


def run_main() -> None:
    """Console-script entry point."""
    try:
        status = main()
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except EventmpError as exc:
        print(f"eventmp: {exc}", file=sys.stderr)
        status = EXIT_FAILED
    sys.exit(status)
