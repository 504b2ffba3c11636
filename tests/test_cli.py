"""The eventmp command, end to end: a real subprocess, real files, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import eventmp

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


def test_follow_mode_handles_appended_lines_and_drains_on_sigterm(tmp_path: Path) -> None:
    """Follow mode picks up lines appended while it runs; SIGTERM drains and exits 0."""
    pipeline_file(tmp_path, FOLLOW)
    log = tmp_path / "app.log"
    append(log, "ERROR before-start (at the end already: skipped)")
    follow = Follow(tmp_path)
    try:
        time.sleep(1.0)
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
        time.sleep(1.0)
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


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_follow_mode_survives_rotation(tmp_path: Path, rotation: str) -> None:
    """Rotation by rename-and-create or by copy-truncate loses no line and repeats none."""
    pipeline_file(tmp_path, FOLLOW)
    log = tmp_path / "app.log"
    log.touch()
    follow = Follow(tmp_path)
    try:
        time.sleep(1.0)
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
    pipeline_file(tmp_path, FOLLOW)
    (tmp_path / "app.log").touch()
    follow = Follow(tmp_path, "--stats-interval", "0.2")
    try:
        time.sleep(1.5)
    finally:
        status, _out, err = follow.stop()
    assert status == 0
    stats_lines = [line for line in err.splitlines() if "eventmp stats:" in line]
    assert len(stats_lines) >= 2
    assert "pending 0" in stats_lines[-1] and "worker rss" in stats_lines[-1]
    assert "\r" not in err


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
