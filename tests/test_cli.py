"""The eventmp command, end to end: a real subprocess, real files, real signals."""

from __future__ import annotations

import ast
import contextlib
import http.server
import io
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import time_zone

import eventmp
from eventmp import cli, runner
from eventmp.cli import EXIT_CODES
from eventmp.reporting import LogFormatter, RateMeter

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0


def eventmp_command(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventmp", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def pipeline_file(tmp_path: Path, body: str, name: str = "pipeline.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


FOLLOW = """
[dispatcher]
poll_interval = "50ms"

[[inputs]]
name = "app"
paths = ["app.log"]
state_file = "app.state"
rescan_interval = "100ms"

[[rules]]
name = "error"
regex = 'ERROR (?P<what>\\w+)'
handler = { type = "json", file = "seen.jsonl", fields = ["line", "line_number", "what"] }
"""


def started_at_the_end(tmp_path: Path) -> None:
    """Wait until the tail of FOLLOW has found app.log and taken its end as its start.

    Its first checkpoint, about a second after it starts, comes after its first scan; a line
    appended before that scan would be skipped as already there.
    """
    assert wait_until((tmp_path / "app.state").exists)


class Follow:
    """The command in follow mode, in its own process group, as supervisord would run it."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.tmp_path = tmp_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventmp", "run", str(tmp_path / "pipeline.toml"), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.process.send_signal(signum)
        try:
            out, err = self.process.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            out, err = self.process.communicate(timeout=10)
            raise
        return self.process.returncode, out, err


def append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def test_version() -> None:
    """eventmp --version prints the package version."""
    result = eventmp_command("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"eventmp {eventmp.__version__}"


def test_bad_arguments_exit_2() -> None:
    """An unknown option is a usage error with exit status 2."""
    result = eventmp_command("run", "--frobnicate", "x.toml")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_check_accepts_a_good_pipeline(tmp_path: Path) -> None:
    """eventmp check prints what a good pipeline holds and exits 0."""
    pipeline_file(tmp_path, FOLLOW)
    result = eventmp_command("check", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "rule error" in result.stdout


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_pipeline_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    """A bad regex gives one line naming the file, key and position, exit 2, no traceback."""
    pipeline_file(tmp_path, FOLLOW.replace("ERROR (?P<what>", "ERROR ((?P<what>"))
    result = eventmp_command(command, str(tmp_path / "pipeline.toml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert 'pipeline.toml: rules[1] ("error").regex: bad regular expression at position' in lines[0]


ONCE = """
[dispatcher]
poll_interval = "50ms"
workers = 2

[[inputs]]
paths = ["*.log"]

[[rules]]
name = "amounts"
regex = 'amount=(?P<amount>-?\\d+)'
handlers = [
  { type = "exec", command = "assert int(event.data['named']['amount']) >= 0, 'negative'" },
  { type = "json", file = "out.jsonl", fields = ["file", "line_number", "amount"] },
]
"""


def test_once_exits_0_when_every_event_succeeds(tmp_path: Path) -> None:
    """--once reads every input to its end, handles each match once, and exits 0."""
    pipeline_file(tmp_path, ONCE)
    append(tmp_path / "a.log", *[f"amount={n}" for n in range(50)], "nothing here")
    append(tmp_path / "b.log", *[f"amount={n}" for n in range(50, 80)])
    result = eventmp_command("run", "--once", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 0, result.stderr
    records = jsonl(tmp_path / "out.jsonl")
    assert sorted(int(str(r["amount"])) for r in records) == list(range(80))
    a_lines = [r["line_number"] for r in records if str(r["file"]).endswith("a.log")]
    assert a_lines == list(range(1, 51)), "per-file order with two workers"
    assert "80 events: 80 processed, 0 failed" in result.stderr


def test_once_exits_1_with_a_summary_of_failures(tmp_path: Path) -> None:
    """A failed event makes --once exit 1 and the summary counts failures by handler and class."""
    pipeline_file(tmp_path, ONCE)
    append(tmp_path / "a.log", "amount=1", "amount=-2", "amount=3", "amount=-4")
    result = eventmp_command("run", "--once", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 1, result.stderr
    assert "4 events: 2 processed, 2 failed" in result.stderr
    assert "2 x AssertionError in ChainEventHandler(" in result.stderr
    assert "rule amounts on " in result.stderr  # each failure is logged with its file and line
    assert sorted(int(str(r["amount"])) for r in jsonl(tmp_path / "out.jsonl")) == [1, 3]


MISSING = """
[dispatcher]
poll_interval = "50ms"

[[inputs]]
name = "present"
paths = ["a.log"]

[[inputs]]
name = "absent"
paths = ["nothing/*.log"]
{missing_ok}
[[rules]]
name = "all"
regex = 'line'
handler = {{ type = "json", file = "out.jsonl", fields = ["line"] }}
"""


@pytest.mark.parametrize("missing_ok", [False, True])
def test_once_with_an_input_that_matches_no_file(tmp_path: Path, missing_ok: bool) -> None:
    """--once exits 1 naming an input that matched no file, or 0 if it says missing_ok = true."""
    pipeline_file(tmp_path, MISSING.format(missing_ok="missing_ok = true" if missing_ok else ""))
    append(tmp_path / "a.log", "line 1", "line 2")
    result = eventmp_command("run", "--once", str(tmp_path / "pipeline.toml"))
    assert [r["line"] for r in jsonl(tmp_path / "out.jsonl")] == ["line 1", "line 2"]
    assert "2 events: 2 processed, 0 failed" in result.stderr
    warning = f"tail:absent: no file matches {tmp_path / 'nothing/*.log'}"
    if missing_ok:
        assert result.returncode == 0, result.stderr
        assert "no file matches" not in result.stderr
        assert "No file matched" not in result.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert f"WARNING: {warning}\n" in result.stderr
        assert "No file matched input absent." in result.stderr


def test_check_refuses_a_directory_in_paths(tmp_path: Path) -> None:
    """`eventmp check` exits 2 with one line naming the key when paths names a directory."""
    (tmp_path / "logs").mkdir()
    pipeline_file(tmp_path, MISSING.format(missing_ok="").replace('"a.log"', '"a.log", "logs"'))
    result = eventmp_command("check", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"eventmp: {tmp_path / 'pipeline.toml'}: inputs[1].paths[2]: {tmp_path / 'logs'} is a "
        f"directory (to follow the files in it, give a pattern such as {tmp_path / 'logs/*.log'})"
    ]


def test_follow_mode_handles_appended_lines_and_drains_on_sigterm(tmp_path: Path) -> None:
    """Follow mode picks up lines appended while it runs; SIGTERM drains and exits 0."""
    pipeline_file(tmp_path, FOLLOW)
    log = tmp_path / "app.log"
    append(log, "ERROR before-start (at the end already: skipped)")
    follow = Follow(tmp_path)
    try:
        started_at_the_end(tmp_path)
        append(log, "ERROR one", "fine", "ERROR two")
        assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) == 2)
    finally:
        status, _out, err = follow.stop()
    assert status == 0, err
    assert [r["what"] for r in jsonl(tmp_path / "seen.jsonl")] == ["one", "two"]
    assert "Traceback" not in err


def test_restart_resumes_from_the_checkpoint_without_loss_or_repeat(tmp_path: Path) -> None:
    """Lines written while the command was stopped are handled after a restart, none twice."""
    pipeline_file(tmp_path, FOLLOW)
    log = tmp_path / "app.log"
    log.touch()
    follow = Follow(tmp_path)
    try:
        started_at_the_end(tmp_path)
        append(log, "ERROR a1", "ERROR a2")
        assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) == 2)
    finally:
        assert follow.stop()[0] == 0
    append(log, "ERROR down1", "ERROR down2")  # while it is not running
    follow = Follow(tmp_path)
    try:
        assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) >= 4)
        append(log, "ERROR b1")
        assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) >= 5)
    finally:
        assert follow.stop()[0] == 0
    assert [r["what"] for r in jsonl(tmp_path / "seen.jsonl")] == [
        "a1",
        "a2",
        "down1",
        "down2",
        "b1",
    ]


BREAKS = """
[dispatcher]
poll_interval = "50ms"
start_method = "spawn"

[[inputs]]
name = "app"
paths = ["app.log"]
start_at = "beginning"

[[rules]]
regex = 'CRASH'
handler = "crashing:CrashAndBreak"
"""

CRASHING_HANDLER = """
import os

class CrashAndBreak:
    def process_event(self, event):
        open(os.environ["EVENTMP_TEST_FLAG"], "w").close()
        os._exit(1)
"""

# A spawned worker runs sitecustomize before anything else: once the flag exists, every new
# worker exits before it is ready, so the dead one cannot be replaced.
NO_REPLACEMENT = """
import os, sys
if "--multiprocessing-fork" in sys.argv and os.path.exists(os.environ["EVENTMP_TEST_FLAG"]):
    os._exit(3)
"""


@pytest.mark.timeout(90)
def test_follow_mode_that_stops_on_its_own_exits_1(tmp_path: Path) -> None:
    """Follow mode whose crashed worker cannot be replaced stops by itself and exits 1, not 0."""
    pipeline_file(tmp_path, BREAKS)
    (tmp_path / "crashing.py").write_text(CRASHING_HANDLER)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_REPLACEMENT)
    (tmp_path / "app.log").write_text("CRASH here\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "EVENTMP_TEST_FLAG": str(tmp_path / "flag"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "eventmp", "run", str(tmp_path / "pipeline.toml")],
        capture_output=True,
        text=True,
        timeout=80,
        env=env,
    )
    assert (tmp_path / "flag").exists(), result.stderr
    assert result.returncode == 1, result.stderr
    assert "before it was ready" in result.stderr, result.stderr


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_follow_mode_survives_rotation(tmp_path: Path, rotation: str) -> None:
    """Rotation by rename-and-create or by copy-truncate loses no line and repeats none."""
    pipeline_file(tmp_path, FOLLOW)
    log = tmp_path / "app.log"
    log.touch()
    follow = Follow(tmp_path)
    try:
        started_at_the_end(tmp_path)
        append(log, "ERROR r1", "ERROR r2")
        assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) == 2)
        if rotation == "rename":
            log.rename(tmp_path / "app.log.1")
            append(tmp_path / "app.log.1", "ERROR late")  # written to the old file after rename
            append(log, "ERROR n1")
        else:
            shutil.copy(log, tmp_path / "app.log.1")
            with log.open("r+") as f:
                f.truncate(0)
            # A truncation is seen as the file shrinking below the read position: give the
            # tail a poll to see it before the file grows past that position again.
            time.sleep(0.5)
            append(log, "ERROR n1")
        append(log, "ERROR n2")
        expected = 5 if rotation == "rename" else 4
        assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) >= expected)
        time.sleep(0.5)  # room for a wrong duplicate to show up
    finally:
        assert follow.stop()[0] == 0
    seen = [r["what"] for r in jsonl(tmp_path / "seen.jsonl")]
    if rotation == "rename":
        assert sorted(seen) == sorted(["r1", "r2", "late", "n1", "n2"])
    else:
        assert seen == ["r1", "r2", "n1", "n2"]


def test_stats_line_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Under a supervisor (stderr not a terminal) a plain stats line is logged periodically."""
    pipeline = pipeline_file(tmp_path, FOLLOW)
    (tmp_path / "app.log").touch()
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventmp", "run", "--stats-interval", "0.2", str(pipeline)],
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            start_new_session=True,
        )
    try:
        # However long the start takes on a loaded machine: until two lines have come.
        assert wait_until(lambda: stderr.read_text().count("eventmp stats:") >= 2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    err = stderr.read_text()
    assert status == 0
    stats_lines = [line for line in err.splitlines() if "eventmp stats:" in line]
    assert len(stats_lines) >= 2
    assert "pending 0" in stats_lines[-1] and "worker rss" in stats_lines[-1]
    assert "\r" not in err
    for line in stats_lines:  # stamped like the log lines: ISO 8601 with the UTC offset
        stamp = datetime.fromisoformat(line.split(" ", 1)[0])
        assert stamp.utcoffset() is not None


def test_the_shipped_example_shows_matches_an_error_event_and_the_summary() -> None:
    """The log-watching example in --once mode prints alerts, one failure and the summary."""
    result = eventmp_command("run", "--once", str(ROOT / "examples/logwatch/pipeline.toml"))
    assert result.returncode == 1, result.stderr
    assert "ALERT: brute force from 203.0.113.9" in result.stdout
    assert result.stdout.count('"rule": "failed-password"') == 5
    assert '"process": "java"' in result.stdout
    assert "ValueError: order 1235: amount -5 below 0" in result.stderr
    assert "1 x ValueError in CheckPayment" in result.stderr


def test_live_status_line_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, --once redraws a status line with a progress bar in place."""
    import pty

    append(tmp_path / "a.log", *[f"amount={n}" for n in range(20)])
    # A handler slow enough for the status line (every 0.5 s) to be drawn a few times.
    slow = textwrap.dedent(
        """
        [dispatcher]
        poll_interval = "50ms"

        [[inputs]]
        paths = ["a.log"]

        [[rules]]
        regex = 'amount=(?P<amount>\\d+)'
        handler = { type = "exec", command = "import time; time.sleep(0.1)" }
        """
    )
    (tmp_path / "pipeline.toml").write_text(slow)
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventmp", "run", "--once", str(tmp_path / "pipeline.toml")],
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        output = bytearray()
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closes when the command exits
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=WAIT) == 0
    finally:
        os.close(leader)
    text = output.decode(errors="replace")
    assert text.count("\r\x1b[K") >= 2, text
    assert "ev/s" in text and "processed" in text and "worker rss" in text
    assert "MB" in text and "%" in text and "[" in text  # the progress bar over bytes read
    assert "eventmp: read 20 lines" in text


# == --help: examples and the exit statuses ======================================================


def help_text(*command: str) -> str:
    """What ``eventmp [command] --help`` prints (argparse exits 0 after printing it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        cli.main([*command, "--help"])
    assert exited.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize(
    "command", [(), ("run",), ("check",), ("test",)], ids=["eventmp", "run", "check", "test"]
)
def test_help_lists_every_exit_status_the_command_uses(command: tuple[str, ...]) -> None:
    """Each --help ends with the table of exit statuses: every code in EXIT_CODES, no other."""
    text = help_text(*command)
    table = text[text.index("\nexit status:\n") :]
    assert [int(code) for code in re.findall(r"^  (\d+) ", table, re.M)] == list(EXIT_CODES)
    for meaning in EXIT_CODES.values():
        assert " ".join(table.split()).count(meaning) == 1


@pytest.mark.parametrize(
    ("command", "examples"),
    [
        ((), ["eventmp check pipeline.toml", "eventmp run pipeline.toml", "--once"]),
        (("run",), ["eventmp run pipeline.toml", "eventmp run --once pipeline.toml"]),
        (("check",), ["eventmp check pipeline.toml"]),
        (("test",), ["eventmp test pipeline.toml '", "| eventmp test pipeline.toml -", "--file"]),
    ],
    ids=["eventmp", "run", "check", "test"],
)
def test_help_shows_examples(command: tuple[str, ...], examples: list[str]) -> None:
    """Each --help has an examples section with the command lines a newcomer needs."""
    text = help_text(*command)
    section = text[text.index("\nexamples:\n") : text.index("\nexit status:\n")]
    for example in examples:
        assert example in section
    assert max(len(line) for line in text.splitlines()) <= 80


def test_every_exit_status_in_the_code_is_in_the_table() -> None:
    """cli.py decides every exit status, only with named EXIT_* constants, all in EXIT_CODES."""
    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.startswith("EXIT_")
        and isinstance(node.value, ast.Constant)
    }
    assert sorted(constants.values()) == sorted(EXIT_CODES)
    deciders = ("main", "_run", "_exit_status", "_signal_status", "_test", "run_main")
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in deciders
    }
    assert len(functions) == len(deciders)
    statuses = []
    for function in functions.values():
        for node in ast.walk(function):
            returns = isinstance(node, ast.Return)
            sets_status = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "status" for t in node.targets
            )
            if returns or sets_status:
                statuses.append(node.value)
    for value in statuses:
        if isinstance(value, ast.Call):  # the status of another decider, checked here too
            assert isinstance(value.func, ast.Name) and value.func.id in deciders
        else:  # a constant, or `status`, itself set from a decider (checked above)
            assert isinstance(value, ast.Name), ast.unparse(value)
            assert value.id in constants or value.id == "status", ast.unparse(value)
    # argparse exits 2 on bad arguments and 0 after --help and --version: both in the table.
    assert cli.EXIT_USAGE == 2 and cli.EXIT_OK == 0


def test_keyboard_interrupt_outside_the_run_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt that reaches the entry point (Ctrl-C while loading) exits 130."""

    def interrupted(argv: object = None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as exited:
        cli.run_main()
    assert exited.value.code == cli.EXIT_INTERRUPTED == 130


def interruptible_batch(tmp_path: Path) -> Path:
    """A pipeline and a log for a --once run that a signal stops before the end of its input.

    One match, then more than a poll reads of lines that match nothing, then more matches:
    while the first event's handler runs (it writes its n to seen.txt, then sleeps a second),
    nothing else is read (max_pending = 1).
    """
    pipeline = pipeline_file(
        tmp_path,
        """
        [dispatcher]
        poll_interval = "50ms"
        max_pending = 1

        [[inputs]]
        paths = ["a.log"]

        [[rules]]
        name = "slow"
        regex = 'n=(?P<n>\\d+)'
        handlers = [
          { type = "print", file = "seen.txt", format = "{n}" },
          { type = "exec", command = "import time; time.sleep(1)" },
        ]
        """,
    )
    filler = "x" * 99 + "\n"
    with (tmp_path / "a.log").open("w") as f:
        f.write("n=0\n" + filler * 60_000 + "".join(f"n={n}\n" for n in range(1, 50)))
    return pipeline


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
    ids=["SIGTERM", "SIGINT", "SIGHUP"],
)
def test_once_stopped_by_a_signal_before_its_end_exits_128_plus_it(
    tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    """A --once run stopped by a signal drains what it read, says so, exits 128 + the signal."""
    interruptible_batch(tmp_path)
    seen = tmp_path / "seen.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "eventmp", "run", "--once", str(tmp_path / "pipeline.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: seen.exists() and seen.read_text() != "")
        process.send_signal(signum)
        _out, err = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, err
    assert f"{signum.name} received: draining" in err
    assert "1 events: 1 processed, 0 failed" in err
    assert f"Interrupted by {signum.name} after reading" in err
    assert seen.read_text() == "0\n"


# == log lines: ISO 8601 with the UTC offset ======================================================


def test_log_formatter_writes_iso_8601_with_milliseconds_and_offset() -> None:
    """A real log record is stamped in local time with milliseconds and the local UTC offset."""
    record = logging.getLogger("eventmp").makeRecord(
        "eventmp", logging.WARNING, __file__, 1, "rule %s failed", ("x",), None
    )
    record.created = 1_795_971_837.25  # 2026-11-29T17:03:57.250Z
    with time_zone("IST-5:30"):
        line = LogFormatter().format(record)
    assert line == "2026-11-29T22:33:57.250+05:30 eventmp WARNING: rule x failed"
    with time_zone("UTC0"):
        assert LogFormatter().format(record).startswith("2026-11-29T17:03:57.250+00:00 eventmp")


def test_command_log_lines_carry_the_local_utc_offset(tmp_path: Path) -> None:
    """The command's own warnings (a failed event) are stamped with the local UTC offset."""
    pipeline_file(tmp_path, ONCE)
    append(tmp_path / "a.log", "amount=-1")
    before = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "eventmp", "run", "--once", str(tmp_path / "pipeline.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "IST-5:30"},
    )
    after = time.time()
    assert result.returncode == 1, result.stderr
    warnings = [line for line in result.stderr.splitlines() if " eventmp WARNING: " in line]
    assert warnings, result.stderr
    stamp = datetime.fromisoformat(warnings[0].split(" ", 1)[0])
    assert stamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert before - 1 <= stamp.timestamp() <= after + 1
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+05:30 eventmp", warnings[0])


# == the status line's rate =======================================================================


def rates(meter: RateMeter, samples: list[tuple[float, int]]) -> list[float]:
    """The rate the meter gives after each (time, count) sample."""
    return [meter.update(now, count) for now, count in samples]


def test_rate_of_a_steady_flow_is_steady() -> None:
    """100 events/s, counted every half second, reads 100 ev/s from the first update on."""
    shown = rates(RateMeter(5.0), [(t / 2, 50 * t) for t in range(40)])
    assert shown[0] == 0.0  # one sample: no time has passed yet
    assert shown[1:] == pytest.approx([100.0] * 39)


def test_rate_of_bursty_input_does_not_flicker() -> None:
    """Events arriving as 200 every second (0, then 200 per half second) read about 200 ev/s."""
    samples = [(t / 2, 200 * ((t + 1) // 2)) for t in range(40)]
    old = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    assert min(old) == 0 and max(old) == 400, "what the status line used to show"
    shown = rates(RateMeter(5.0), samples)[10:]  # once the 5 s window is full
    assert min(shown) >= 180 and max(shown) <= 220


def test_a_burst_is_spread_over_the_window_and_then_gone() -> None:
    """1000 events at once read as 1000/5 s for the window, never higher, then exactly 0."""
    meter = RateMeter(5.0)
    quiet = rates(meter, [(t / 2, 0) for t in range(21)])  # 0 .. 10 s, nothing
    assert set(quiet) == {0.0}
    after = rates(meter, [(10 + t / 2, 1000) for t in range(1, 21)])  # 10.5 .. 20 s
    assert after[0] == pytest.approx(200.0)
    assert all(a >= b for a, b in itertools.pairwise(after)), "never rises again"
    assert max(after) == pytest.approx(200.0)
    burst_is_a_window_old = 10  # 15.5 s: the sample that saw the burst is now the base
    assert after[burst_is_a_window_old:] == [0.0] * (20 - burst_is_a_window_old)


def test_rate_with_samples_further_apart_than_the_window() -> None:
    """A stats line a minute: the rate is that of the last minute, whatever came before."""
    shown = rates(RateMeter(5.0), [(0.0, 0), (60.0, 6000), (120.0, 6000), (180.0, 6600)])
    assert shown == [0.0, 100.0, 0.0, 10.0]


def test_rate_meter_edge_cases() -> None:
    """Two samples at the same instant give 0, not a division by zero; a bad window is refused."""
    meter = RateMeter()
    assert meter.update(1.0, 5) == 0.0
    assert meter.update(1.0, 9) == 0.0
    with pytest.raises(ValueError, match="window"):
        RateMeter(0)


# == print with a format, end to end =============================================================

PRINT_FORMAT = """
[dispatcher]
poll_interval = "50ms"

[[inputs]]
paths = ["auth.log"]

[[rules]]
name = "ssh"
regex = 'Failed password for (?P<user>.+) from (?P<ip>\\S+)'
handler = { type = "print", format = "{time} {ip} {user}" }
"""


def test_print_format_end_to_end(tmp_path: Path) -> None:
    """print with format writes one filled line per match to the command's stdout."""
    pipeline_file(tmp_path, PRINT_FORMAT)
    append(
        tmp_path / "auth.log",
        "Failed password for root from 203.0.113.9 port 22",
        "Accepted password for alice from 198.51.100.7 port 22",
        "Failed password for bob from 198.51.100.8 port 22",
    )
    result = eventmp_command("run", "--once", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["203.0.113.9 root", "198.51.100.8 bob"]
    for line in lines:
        assert datetime.fromisoformat(line.split(" ", 1)[0]).utcoffset() is not None


def test_print_format_end_to_end_escapes_what_a_log_line_smuggles(tmp_path: Path) -> None:
    """A log line cannot make print write a forged extra line or move the terminal's cursor."""
    pipeline_file(tmp_path, PRINT_FORMAT)
    forged = "x\r2026-11-29T17:03:57.000+00:00 10.0.0.1 admin LOGIN OK\x1b[1A\x1b[2K\u2028\x85y"
    with (tmp_path / "auth.log").open("w", encoding="utf-8", newline="") as f:
        f.write(f"Failed password for {forged} from 203.0.113.9 port 22\n")
    result = eventmp_command("run", "--once", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1, repr(result.stdout)
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert result.stdout.split(" ", 1)[1] == (
        "203.0.113.9 x\\r2026-11-29T17:03:57.000+00:00 10.0.0.1 admin LOGIN OK"
        "\\x1b[1A\\x1b[2K\\u2028\\x85y\n"
    )


def test_print_without_format_is_unchanged(tmp_path: Path) -> None:
    """Without format, print still writes the event as before: its time, originator and data."""
    pipeline_file(
        tmp_path,
        PRINT_FORMAT.replace(
            'handler = { type = "print", format = "{time} {ip} {user}" }', 'handler = "print"'
        ),
    )
    append(tmp_path / "auth.log", "Failed password for root from 203.0.113.9 port 22")
    result = eventmp_command("run", "--once", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 0, result.stderr
    assert "'named': {'user': 'root', 'ip': '203.0.113.9'}" in result.stdout
    assert len(result.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("format", "what"),
    [
        ("{time} {ip", "setting 'format': bad template '{time} {ip' at position 7"),
        ("{time} {host}", "names {host}, a field these events do not have; available: "),
        ("{ip.__class__}", "attribute access in {ip.__class__} is not allowed"),
    ],
)
def test_check_rejects_a_bad_print_format_in_one_line(
    tmp_path: Path, format: str, what: str
) -> None:
    """eventmp check on a bad or unknown-field format: exit 2, one line naming file and key."""
    pipeline_file(tmp_path, PRINT_FORMAT.replace("{time} {ip} {user}", format))
    result = eventmp_command("check", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f'eventmp: {tmp_path / "pipeline.toml"}: rules[1] ("ssh").handler[1]'
    )
    assert what in lines[0]


def test_check_shows_the_print_format(tmp_path: Path) -> None:
    """eventmp check on a good print format exits 0 and shows the format with the handler."""
    pipeline_file(tmp_path, PRINT_FORMAT)
    result = eventmp_command("check", str(tmp_path / "pipeline.toml"))
    assert result.returncode == 0, result.stderr
    assert "PrintEventHandler(file='stdout', format='{time} {ip} {user}')" in result.stdout


def test_input_settings_reach_the_tail(tmp_path: Path) -> None:
    """max_line_bytes and missing_ok from the pipeline file are the tail's settings."""
    text = FOLLOW.replace('rescan_interval = "100ms"', 'max_line_bytes = "1KiB"\nmissing_ok = true')
    pipeline = eventmp.load_pipeline(pipeline_file(tmp_path, text))
    dispatcher, inputs = runner.build(pipeline, once=True)
    (tail,) = inputs.tails
    try:
        assert tail.max_line_bytes == 1024
        assert tail.missing_ok is True
    finally:
        dispatcher.stop()


PLANTED = """
import os
open(os.environ["EVENTMP_TEST_MARKER"], "a").close()
"""

OWN_HANDLER = """
class Record:
    def __init__(self, file):
        self.file = file

    def process_event(self, event):
        with open(self.file, "a") as out:
            out.write(event.data["line"] + "\\n")
        return True
"""


def test_a_module_beside_the_pipeline_never_replaces_an_installed_one(tmp_path: Path) -> None:
    """A psutil.py next to the pipeline file is not imported by eventmp or its workers."""
    pipeline_file(
        tmp_path,
        f"""
        [[inputs]]
        paths = ["app.log"]

        [[rules]]
        regex = 'ERROR'
        handler = {{ type = "own_handlers:Record", file = "{tmp_path / "seen.txt"}" }}
        """,
    )
    (tmp_path / "own_handlers.py").write_text(OWN_HANDLER)
    (tmp_path / "psutil.py").write_text(PLANTED)
    (tmp_path / "app.log").write_text("ERROR one\nfine\nERROR two\n")
    marker = tmp_path / "planted-module-ran"
    result = subprocess.run(
        [sys.executable, "-m", "eventmp", "run", str(tmp_path / "pipeline.toml"), "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVENTMP_TEST_MARKER": str(marker)},
    )
    assert not marker.exists(), result.stderr
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seen.txt").read_text() == "ERROR one\nERROR two\n"


# == secrets =====================================================================================

TOKEN = "TOKEN-5ecret-42"


def eventmp_with_env(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(
        [sys.executable, "-m", "eventmp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **environ},
    )


SECRETS = """
[[inputs]]
paths = ["a.log"]

[[rules]]
name = "hook"
regex = '(?P<w>x)'
handlers = [
  { type = "command", argv = ["true"], env = { API_KEY = "${HOOK_TOKEN}", MODE = "plain-9" } },
  { type = "webhook", url = "https://alice:p@ss@hooks.example.com/${HOOK_TOKEN}?k=${HOOK_TOKEN}" },
]
"""


def test_check_never_prints_a_url_token_or_password(tmp_path: Path) -> None:
    """`eventmp check` shows a webhook URL as scheme and host only: no token, no p@ss."""
    pipeline = pipeline_file(tmp_path, SECRETS)
    result = eventmp_with_env("check", str(pipeline), HOOK_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert TOKEN not in output and "p@ss" not in output and "alice" not in output
    assert "url='https://***@hooks.example.com/***'" in output


def test_check_never_prints_a_command_env_value(tmp_path: Path) -> None:
    """`eventmp check` names a command's env variables but shows none of their values."""
    pipeline = pipeline_file(tmp_path, SECRETS)
    result = eventmp_with_env("check", str(pipeline), HOOK_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout and "plain-9" not in result.stdout
    assert "env={'API_KEY': '***', 'MODE': '***'}" in result.stdout


class FailingHook:
    """An HTTP server on 127.0.0.1 that answers 500 to every request and records its paths."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.paths.append(self.path)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


def test_a_failing_webhook_logs_and_sums_up_without_the_token(tmp_path: Path) -> None:
    """A webhook answered with 500 is logged, summed up and recorded without its URL's token."""
    hook = FailingHook()
    try:
        pipeline_file(
            tmp_path,
            f"""
            [[inputs]]
            paths = ["a.log"]
            start_at = "beginning"

            [error_handler]
            type = "json"
            file = "errors.jsonl"

            [[rules]]
            regex = '(?P<w>x)'
            handler = {{ type = "webhook", url = "{hook.origin}/h/${{HOOK_TOKEN}}", retries = 0 }}
            """,
        )
        append(tmp_path / "a.log", "x")
        result = eventmp_with_env(
            "run", "--once", str(tmp_path / "pipeline.toml"), HOOK_TOKEN=TOKEN
        )
    finally:
        hook.close()
    assert hook.paths == [f"/h/{TOKEN}"], "the token was sent"
    assert result.returncode == 1, result.stderr
    assert "failed: WebhookError: webhook " in result.stderr
    assert "1 x WebhookError in WebhookEventHandler(" in result.stderr
    assert f"{hook.origin}/***" in result.stderr
    errors = (tmp_path / "errors.jsonl").read_text()
    assert "WebhookEventHandler" in errors
    assert TOKEN not in result.stdout + result.stderr + errors


def test_a_substituted_value_with_braces_is_written_literally(tmp_path: Path) -> None:
    """${TOKEN} = 'a{line}b' in a print format is written as it is, never filled as a field."""
    pipeline_file(
        tmp_path,
        """
        [[inputs]]
        paths = ["a.log"]
        start_at = "beginning"

        [[rules]]
        regex = '(?P<w>x)'
        handler = { type = "print", file = "out.txt", format = "${TOKEN} {w}" }
        """,
    )
    append(tmp_path / "a.log", "x")
    for token in ("a{line}b", "x{"):
        result = eventmp_with_env("run", "--once", str(tmp_path / "pipeline.toml"), TOKEN=token)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out.txt").read_text() == f"{token} x\n"
        (tmp_path / "out.txt").unlink()
        (tmp_path / "pipeline.state").unlink(missing_ok=True)
