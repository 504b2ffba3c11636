"""The ``eventmp`` command: ``eventmp run``, ``eventmp check`` and ``eventmp test``.

Everything here runs in the parent process. The exit statuses are those of :data:`EXIT_CODES`,
which ``--help`` shows; every status the command returns is decided in this module. A bad
pipeline file gets one line naming the file and key, never a traceback. The run itself lives in
:mod:`eventmp.runner`, what it reports in :mod:`eventmp.reporting`, ``test`` in
:mod:`eventmp.trial`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import textwrap
from collections.abc import Iterable, Sequence

from . import __version__
from .errors import EventmpError
from .handlers import describe_handler
from .pipeline import Pipeline, PipelineError, load_pipeline
from .reporting import FailureSummary, LogFormatter, RateMeter, StatusReporter
from .runner import Interrupted, RunResult, Signals, run
from .units import parse_duration

__all__ = [
    "EXIT_CODES",
    "FailureSummary",
    "LogFormatter",
    "RateMeter",
    "StatusReporter",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# 128 + the signal's number, as a shell reports a command that signal ended.
EXIT_HANGUP = 129  # SIGHUP
EXIT_INTERRUPTED = 130  # SIGINT
EXIT_TERMINATED = 143  # SIGTERM

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success: `check` found the file good; `test` saw a line match a rule; `run "
    "--once` read every input to its end and every event succeeded; `run` (follow mode) was "
    "stopped by SIGINT or SIGTERM and drained (in follow mode a failed event is logged; it "
    "does not change the status)",
    EXIT_FAILED: "`run --once`: at least one event failed (or was abandoned by a second "
    "signal), or an input without `missing_ok = true` matched no file; or the run could not "
    "go on, for instance the workers could not start; `test`: no line matched any rule",
    EXIT_USAGE: "bad arguments, or a bad pipeline file (one line on stderr names the file "
    "and the key)",
    EXIT_HANGUP: "SIGHUP stopped `run --once` before it had read every input (what it had "
    "read was handled first), or came while `run` was loading or starting (in follow mode, "
    "SIGHUP afterwards reloads the pipeline file)",
    EXIT_INTERRUPTED: "interrupted: SIGINT stopped `run --once` before it had read every input "
    "(what it had read was handled first), or came while the command was loading or starting",
    EXIT_TERMINATED: "SIGTERM stopped `run --once` before it had read every input (what it "
    "had read was handled first), or came while `run` was loading or starting",
}
"""Every status the command exits with, and what it means; ``--help`` prints this table."""

# (what it does, the command line) for each command's --help.
_EXAMPLES = {
    "eventmp": [
        ("Check a pipeline file and show what it holds", "eventmp check pipeline.toml"),
        ("Follow the inputs until SIGINT or SIGTERM", "eventmp run pipeline.toml"),
        ("Try the rules on a sample line", "eventmp test pipeline.toml 'a log line'"),
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
    "test": [
        (
            "Which rules match a line, their groups, and what the handlers' templates make "
            "of it (no action runs)",
            "eventmp test pipeline.toml 'Failed password for root from 192.0.2.7 port 22'",
        ),
        ("Lines from stdin", "tail -n 100 /var/log/auth.log | eventmp test pipeline.toml -"),
        (
            "Hits and time per rule over a log file, with the first 5 matches of each",
            "eventmp test pipeline.toml --file /var/log/auth.log --samples 5",
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
    if args.command == "test" and not (args.lines or args.file):
        parser.error("test: give sample lines, '-' to read them from stdin, or --file PATH")
    _configure_logging(args.verbose - args.quiet)
    # `run` owns its signals from the start: one that comes while it loads or starts its
    # workers ends it with 128 + the signal, cleanly (runner.Signals).
    signals = Signals() if args.command == "run" else None
    if signals is not None:
        signals.install()
    try:
        try:
            pipeline = load_pipeline(args.pipeline)
        except PipelineError as exc:
            print(f"eventmp: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.command == "check":
            print(_describe(pipeline))
            return EXIT_OK
        if signals is None:
            return _test(pipeline, args)
        return _run(pipeline, args, signals)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"eventmp: {name} received while {exc.phase}; stopped", file=sys.stderr)
        return _signal_status(exc.signum)
    finally:
        if signals is not None:
            signals.restore()


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
    test = commands.add_parser(
        "test",
        help="try the rules on sample lines or a log file, running no action",
        description=_wrap(
            "Try a pipeline's rules: for each sample line, which rules match, which were "
            "excluded or skipped by a quick rule, the groups, and what each handler's "
            "templates render to; over a log file (--file), each rule's hits and time. No "
            "handler runs: no mail, webhook, command or file is written."
        ),
        epilog=_epilog("test"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for command in (run, check, test):
        command.add_argument("pipeline", metavar="PIPELINE.toml", help="the pipeline file")
        command.add_argument(
            "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
        )
        command.add_argument(
            "-q", "--quiet", action="count", default=0, help="less output (no status line)"
        )
    test.add_argument(
        "lines",
        nargs="*",
        metavar="LINE",
        help="sample lines to try (before any option); '-' reads lines from stdin",
    )
    test.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="a log file: hits, exclusions and time per rule, and the first matches (repeatable)",
    )
    test.add_argument(
        "--input",
        metavar="NAME",
        help="try the rules of this input (default: the only input, or the one whose paths "
        "match --file, else every rule in file order)",
    )
    test.add_argument(
        "--samples",
        type=int,
        default=3,
        metavar="N",
        help="with --file, show each rule's first N matching lines (default 3)",
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
        help="when stderr is not a terminal (or with --stats-format json), write the stats "
        "this often (default 60; 0: never)",
    )
    run.add_argument(
        "--stats-format",
        choices=("human", "json"),
        default="human",
        help="human: a stats line and a summary paragraph (default); json: one JSON object per "
        "line on stderr, every --stats-interval and at the end, for log shippers",
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


def _run(pipeline: Pipeline, args: argparse.Namespace, signals: Signals) -> int:
    result = run(pipeline, args, signals)
    if result.start_error is not None:
        print(f"eventmp: {result.start_error}", file=sys.stderr)
        return EXIT_FAILED
    if result.early and result.signal is not None:
        name = signal.Signals(result.signal).name
        print(f"eventmp: {name} received while starting; stopped", file=sys.stderr)
        return _signal_status(result.signal)
    status = _exit_status(result, once=args.once)
    result.report(status)
    return status


def _exit_status(result: RunResult, *, once: bool) -> int:
    if result.broken:
        return EXIT_FAILED  # it stopped on its own, in follow mode too (a service restarts it)
    if once and result.failed:
        return EXIT_FAILED
    if once and result.without_files:
        return EXIT_FAILED  # an input matched no file: a batch job read nothing of it
    if once and not result.read_everything and result.signal is not None:
        return _signal_status(result.signal)  # a signal stopped it: the inputs were not all read
    return EXIT_OK


def _signal_status(signum: int) -> int:
    """128 + the signal, for the three the command handles."""
    if signum == signal.SIGTERM:
        return EXIT_TERMINATED
    if signum == signal.SIGHUP:
        return EXIT_HANGUP
    return EXIT_INTERRUPTED


def _test(pipeline: Pipeline, args: argparse.Namespace) -> int:
    from .trial import Trial

    try:
        trial = Trial(pipeline, args.input)
    except ValueError as exc:
        print(f"eventmp: test: --input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    texts: list[str] = []
    for text in args.lines:
        texts += _stdin_lines() if text == "-" else _split_lines(text)
    report: list[Iterable[str]] = [trial.lines(texts)] if texts else []
    for path in args.file:
        try:
            report.append(trial.file(path, max(args.samples, 0)))
        except OSError as exc:
            print(f"eventmp: test: --file {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    for lines in report:
        for line in lines:
            print(line)
    if trial.matched_any:
        return EXIT_OK
    return EXIT_FAILED


def _stdin_lines() -> list[str]:
    return _split_lines(sys.stdin.buffer.read().decode("utf-8", "replace"))


def _split_lines(text: str) -> list[str]:
    """Lines cut as the tail cuts them: at "\\n" only (not at "\\r" alone, U+2028...)."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


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
