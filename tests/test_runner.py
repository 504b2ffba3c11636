"""eventmp.runner: `eventmp run` under signals (reload, start-up), a real subprocess, real files."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import psutil
import pytest
from test_cli import WAIT, append, jsonl, pipeline_file, wait_until

from eventmp.pipeline import load_pipeline
from eventmp.runner import restart_settings, same_handler, settle_garbage_collector

# No state_file and start_at = "beginning": a reload that built its tails naively would read
# the whole file again; one that started them at the end would skip what came meanwhile.
RELOAD_V1 = """
[dispatcher]
poll_interval = "20ms"

[[inputs]]
name = "app"
paths = ["app.log"]
start_at = "beginning"
rescan_interval = "100ms"

[[rules]]
name = "error"
regex = 'ERROR (?P<n>\\d+)'
handler = { type = "json", file = "seen.jsonl", fields = ["rule", "line_number", "n"] }
"""

RELOAD_V2 = (
    RELOAD_V1.replace('poll_interval = "20ms"', 'poll_interval = "20ms"\nworkers = 2')
    + """
[[rules]]
name = "warn"
regex = 'WARN (?P<n>\\d+)'
handler = { type = "json", file = "seen.jsonl", fields = ["rule", "line_number", "n"] }
"""
)


class Command:
    """`eventmp run` in its own session, its stderr read line by line as it comes."""

    def __init__(self, pipeline: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventmp", "run", str(pipeline), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def saw(self, text: str) -> bool:
        return text in self.err

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self) -> int:
        try:
            status = self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            raise
        self._reader.join(10)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class Writer:
    """Appends "ERROR n" and "WARN n" lines to a log until stopped; counts what it wrote."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.written = 0  # lines; line k (from 1) is ERROR k if odd, WARN k if even
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while not self._stop.wait(0.002):
            number = self.written + 1
            append(self.log, f"{'ERROR' if number % 2 else 'WARN'} {number}")
            self.written = number

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(WAIT)
        return self.written


def test_sighup_reload_adds_a_rule_without_skipping_or_repeating_a_line(tmp_path: Path) -> None:
    """A SIGHUP reload under a steady stream of lines adds a rule: every line is read once."""
    pipeline = pipeline_file(tmp_path, RELOAD_V1)
    log = tmp_path / "app.log"
    log.touch()
    seen = tmp_path / "seen.jsonl"
    command = Command(pipeline)
    writer = Writer(log)
    try:
        assert wait_until(lambda: len(jsonl(seen)) >= 20)
        pipeline.write_text(textwrap.dedent(RELOAD_V2))
        # Lines up to the last one handled so far were surely read by the old pipeline.
        handled_before = max(int(str(r["line_number"])) for r in jsonl(seen))
        command.signal(signal.SIGHUP)
        assert wait_until(lambda: command.saw("reloaded "))
        after_reload = writer.written
        assert wait_until(lambda: writer.written >= after_reload + 40)
        written = writer.stop()
        errors = (written + 1) // 2
        assert wait_until(lambda: sum(r["rule"] == "error" for r in jsonl(seen)) >= errors)
        assert wait_until(lambda: any(r["line_number"] == written for r in jsonl(seen)))
    finally:
        writer.stop()
        command.signal(signal.SIGTERM)
        status = command.wait()
    assert status == 0, command.err
    records = jsonl(seen)
    # Each line's number is its n: one record per line and rule, no line read twice.
    assert all(r["line_number"] == int(str(r["n"])) for r in records)
    lines = Counter(int(str(r["line_number"])) for r in records)
    assert max(lines.values()) == 1, command.err
    error_lines = {n for n in lines if n % 2}
    assert error_lines == set(range(1, written + 1, 2)), "an ERROR line was skipped"
    warn_lines = {n for n in lines if not n % 2}
    assert warn_lines, "the added rule matched nothing"
    assert min(warn_lines) > handled_before, "a line read before the reload was read again"
    assert warn_lines == set(range(min(warn_lines), written + 1, 2)), "a WARN line was skipped"
    assert min(warn_lines) <= after_reload + 2, "lines after the reload went unmatched"
    assert "dispatcher.workers changed" in command.err
    assert "needs a restart" in command.err


def test_a_bad_reload_keeps_the_running_pipeline_and_names_file_and_key(tmp_path: Path) -> None:
    """A SIGHUP with a broken file logs the file and key, and the old pipeline runs on."""
    pipeline = pipeline_file(tmp_path, RELOAD_V1)
    log = tmp_path / "app.log"
    append(log, "ERROR 1")
    seen = tmp_path / "seen.jsonl"
    command = Command(pipeline)
    try:
        assert wait_until(lambda: len(jsonl(seen)) == 1)
        broken = RELOAD_V2.replace("'WARN (?P<n>\\d+)'", "'WARN (?P<n>\\d+'")
        pipeline.write_text(textwrap.dedent(broken))
        command.signal(signal.SIGHUP)
        assert wait_until(lambda: command.saw("reload refused"))
        append(log, "WARN 2", "ERROR 3")
        assert wait_until(lambda: len(jsonl(seen)) == 2)
    finally:
        command.signal(signal.SIGTERM)
        status = command.wait()
    assert status == 0, command.err
    assert [r["n"] for r in jsonl(seen)] == ["1", "3"]
    (refused,) = [line for line in command.lines if "reload refused" in line]
    assert f'{pipeline}: rules[2] ("warn").regex: bad regular expression' in refused
    assert "Traceback" not in command.err


COUNTING = """
[dispatcher]
poll_interval = "20ms"

[[inputs]]
name = "app"
paths = ["app.log"]
start_at = "beginning"

[[rules]]
name = "error"
regex = 'ERROR (?P<n>\\d+)'
handlers = [
  { type = "count", count = 2, window = "10m" },
  { type = "json", file = "seen.jsonl", fields = ["n"] },
]
"""


def test_a_reload_keeps_the_state_of_rules_it_does_not_change(tmp_path: Path) -> None:
    """A rule whose handlers a reload leaves alone keeps its count window across the reload."""
    pipeline = pipeline_file(tmp_path, COUNTING)
    log = tmp_path / "app.log"
    append(log, "ERROR 1")
    seen = tmp_path / "seen.jsonl"
    command = Command(pipeline, "-v", "--stats-format", "json", "--stats-interval", "0.1")

    def processed() -> int:
        stats = [json.loads(line) for line in list(command.lines) if line.startswith("{")]
        return int(stats[-1]["rules"]["error"]["processed"]) if stats else 0

    try:
        assert wait_until(lambda: processed() == 1)  # counted once: the chain stopped there
        changed = COUNTING + '[[rules]]\nname = "other"\nregex = "OTHER"\nhandler = "print"\n'
        pipeline.write_text(textwrap.dedent(changed))
        command.signal(signal.SIGHUP)
        assert wait_until(lambda: command.saw("reloaded "))
        append(log, "ERROR 2")
        assert wait_until(lambda: len(jsonl(seen)) == 1)
    finally:
        command.signal(signal.SIGTERM)
        status = command.wait()
    assert status == 0, command.err
    assert [r["n"] for r in jsonl(seen)] == ["2"]  # the second occurrence passes the count
    assert "keep them (and their state): error" in command.err


# The signals the command handles, and the status each ends a run with (128 + it).
EACH_SIGNAL = pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)

SLOW_IMPORT = """
import os, time
open(os.environ["EVENTMP_TEST_MARKER"], "w").close()
time.sleep(60)

def Handler():
    return print
"""


@EACH_SIGNAL
def test_a_signal_while_loading_exits_128_plus_it_without_a_traceback(
    tmp_path: Path, signum: int, status: int
) -> None:
    """A signal while the pipeline file loads (a slow handler import) ends the command cleanly."""
    (tmp_path / "slow_handlers.py").write_text(SLOW_IMPORT)
    pipeline = pipeline_file(
        tmp_path,
        """
        [[inputs]]
        paths = ["app.log"]

        [[rules]]
        regex = 'x'
        handler = "slow_handlers:Handler"
        """,
    )
    marker = tmp_path / "importing"
    command = Command(pipeline, env={**os.environ, "EVENTMP_TEST_MARKER": str(marker)})
    try:
        assert wait_until(marker.exists)
        command.signal(signum)
        assert command.wait() == status, command.err
    finally:
        command.kill()
    assert f"{signal.Signals(signum).name} received while loading" in command.err
    assert "Traceback" not in command.err


# On PYTHONPATH, run by every Python process at its start: a spawned worker (its command line
# says --multiprocessing-fork) says it is starting, then takes its time to be ready.
SLOW_WORKER = """
import os, time
if b"--multiprocessing-fork" in open("/proc/self/cmdline", "rb").read():
    open(os.environ["EVENTMP_TEST_MARKER"], "a").close()
    time.sleep(float(os.environ["EVENTMP_TEST_SLEEP"]))
"""


SLOW_START = """
[dispatcher]
workers = 2
start_method = "spawn"

[[inputs]]
paths = ["app.log"]
start_at = "beginning"

[[rules]]
regex = 'ERROR'
handler = { type = "json", file = "seen.jsonl" }
"""


def slow_start(tmp_path: Path, sleep: float) -> tuple[Command, Path]:
    """`eventmp run` whose spawned workers each take ``sleep`` seconds to start, and the
    marker file the first of them creates as it begins."""
    pipeline = pipeline_file(tmp_path, SLOW_START)
    append(tmp_path / "app.log", "ERROR 1")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_WORKER)
    marker = tmp_path / "worker-starting"
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "site"),
        "EVENTMP_TEST_MARKER": str(marker),
        "EVENTMP_TEST_SLEEP": str(sleep),
    }
    return Command(pipeline, env=env), marker


@EACH_SIGNAL
def test_a_signal_while_workers_start_exits_128_plus_it_and_leaves_no_process(
    tmp_path: Path, signum: int, status: int
) -> None:
    """A signal while the workers start stops them, reads nothing, and exits 128 + it."""
    command, marker = slow_start(tmp_path, 5)
    descendants: set[psutil.Process] = set()
    try:
        assert wait_until(marker.exists)
        descendants.update(psutil.Process(command.process.pid).children(recursive=True))
        command.signal(signum)
        assert command.wait() == status, command.err
    finally:
        command.kill()
    assert f"{signal.Signals(signum).name} received while starting; stopped" in command.err
    assert "Traceback" not in command.err
    assert not (tmp_path / "seen.jsonl").exists()
    assert descendants
    assert wait_until(lambda: not any(p.is_running() for p in descendants), timeout=10)


def test_a_second_signal_while_workers_start_does_not_wait_for_them(tmp_path: Path) -> None:
    """A second SIGTERM during a start that would take minutes stops it at once, cleanly."""
    command, marker = slow_start(tmp_path, 600)
    descendants: set[psutil.Process] = set()
    try:
        assert wait_until(marker.exists)
        descendants.update(psutil.Process(command.process.pid).children(recursive=True))
        command.signal(signal.SIGTERM)
        assert wait_until(lambda: command.saw("SIGTERM received while starting: stopping once"))
        command.signal(signal.SIGTERM)
        assert command.wait() == 143, command.err
    finally:
        command.kill()
    assert "eventmp: SIGTERM received while starting; stopped" in command.err
    assert "Traceback" not in command.err
    assert descendants
    assert wait_until(lambda: not any(p.is_running() for p in descendants), timeout=10)


def test_restart_settings_are_the_dispatcher_table_and_the_key(tmp_path: Path) -> None:
    """A reload reports every [dispatcher] setting that differs, the routing key included."""
    old = load_pipeline(pipeline_file(tmp_path, RELOAD_V1, "old.toml"))
    new_text = RELOAD_V1.replace(
        'poll_interval = "20ms"', 'poll_interval = "1s"\nevent_timeout = "5s"\nkey = "{n}"'
    )
    new = load_pipeline(pipeline_file(tmp_path, new_text, "new.toml"))
    assert [key for key, _old, _new in restart_settings(old, new)] == [
        "poll_interval",
        "key",
        "event_timeout",
    ]
    assert restart_settings(old, old) == []


def test_same_handler_compares_every_setting_secrets_included() -> None:
    """Handlers built alike are the same; a changed password or chain link makes them differ."""
    from eventmp.actions import CountEventHandler, MailEventHandler
    from eventmp.handlers import ChainEventHandler

    def mail(password: str) -> MailEventHandler:
        return MailEventHandler(to="ops@example.com", username="u", password=password)

    assert same_handler(mail("one"), mail("one"))
    assert not same_handler(mail("one"), mail("two"))  # settings() shows both as ***
    chain = ChainEventHandler(CountEventHandler(count=2), mail("one"))
    assert same_handler(chain, ChainEventHandler(CountEventHandler(count=2), mail("one")))
    assert not same_handler(chain, ChainEventHandler(CountEventHandler(count=3), mail("one")))
    assert not same_handler(print, print)  # not built from settings: never taken for the same


FAILING = """
[dispatcher]
poll_interval = "20ms"

[error_handler]
type = "json"
file = "failures-1.jsonl"

[[inputs]]
name = "app"
paths = ["app.log"]
start_at = "beginning"

[[rules]]
name = "bad"
regex = 'BAD'
handler = { type = "exec", command = "raise ValueError('no')" }
"""


def test_a_reload_brings_the_new_error_handler(tmp_path: Path) -> None:
    """After a reload, failures go to the [error_handler] of the new file."""
    pipeline = pipeline_file(tmp_path, FAILING)
    log = tmp_path / "app.log"
    append(log, "BAD 1")
    command = Command(pipeline)
    try:
        assert wait_until(lambda: len(jsonl(tmp_path / "failures-1.jsonl")) == 1)
        pipeline.write_text(textwrap.dedent(FAILING.replace("failures-1", "failures-2")))
        command.signal(signal.SIGHUP)
        assert wait_until(lambda: command.saw("reloaded "))
        append(log, "BAD 2")
        assert wait_until(lambda: len(jsonl(tmp_path / "failures-2.jsonl")) == 1)
    finally:
        command.signal(signal.SIGTERM)
        status = command.wait()
    assert status == 0, command.err
    assert len(jsonl(tmp_path / "failures-1.jsonl")) == 1


# == standard input ==============================================================================

STDIN_PIPELINE = """
[dispatcher]
poll_interval = "20ms"

[[inputs]]
name = "stdin"
paths = ["-"]
max_line_bytes = 64

[[rules]]
name = "error"
regex = 'ERROR (?P<n>\\d+)'
handler = { type = "json", file = "seen.jsonl", fields = ["line_number", "n"] }
"""


def _run_on_a_pipe(pipeline: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventmp", "run", str(pipeline), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for the run (its stdin closed already) and read its stderr (a few lines)."""
    try:
        process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise
    assert process.stderr is not None
    return process.returncode, process.stderr.read()


@pytest.mark.parametrize("mode", [["--once"], []], ids=["once", "follow"])
def test_standard_input_is_read_to_its_end_then_the_run_ends(
    tmp_path: Path, mode: list[str]
) -> None:
    """paths = ["-"] reads a pipe to its end, a last line without newline and cut lines too."""
    pipeline = pipeline_file(tmp_path, STDIN_PIPELINE)
    process = _run_on_a_pipe(pipeline, *mode)
    assert process.stdin is not None
    long_line = "ERROR 3 " + "x" * 100  # cut into two pieces at 64 bytes; the first matches
    process.stdin.write("ERROR 1\nnothing\n")
    process.stdin.flush()
    assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) == 1)  # read as it comes
    process.stdin.write(f"{long_line}\r\nERROR 4")  # the last line has no newline
    process.stdin.close()
    status, err = _finish(process)
    assert status == 0, err
    assert [(r["line_number"], r["n"]) for r in jsonl(tmp_path / "seen.jsonl")] == [
        (1, "1"),
        (3, "3"),
        (4, "4"),
    ]
    assert "read 4 lines" in err and "3 processed" in err
    assert not list(tmp_path.glob("*.state*"))


def test_standard_input_refuses_a_reload_and_goes_on(tmp_path: Path) -> None:
    """A SIGHUP to a run reading standard input is refused, and no line is lost for it."""
    pipeline = pipeline_file(tmp_path, STDIN_PIPELINE)
    process = _run_on_a_pipe(pipeline)
    assert process.stdin is not None
    process.stdin.write("ERROR 1\nERROR 2 partial")  # a reload would lose the partial line
    process.stdin.flush()
    assert wait_until(lambda: len(jsonl(tmp_path / "seen.jsonl")) == 1)
    os.kill(process.pid, signal.SIGHUP)
    process.stdin.write(" end\nERROR 3\n")
    process.stdin.close()
    status, err = _finish(process)
    assert status == 0, err
    assert "reload refused" in err and "reads standard input" in err
    assert [r["n"] for r in jsonl(tmp_path / "seen.jsonl")] == ["1", "2", "3"]


# poll_interval of an hour: a read that waited for it would outlast every bound of these tests.
HOURLY_POLLS = """
[dispatcher]
poll_interval = "1h"

[[inputs]]
name = "app"
paths = ["app.log"]
start_at = "beginning"

[[rules]]
name = "error"
regex = 'ERROR (?P<n>\\d+)'
handler = { type = "json", file = "seen.jsonl", fields = ["n"] }
"""


def test_a_once_run_reads_at_once_whatever_its_poll_interval(tmp_path: Path) -> None:
    """`--once` starts reading as soon as its workers are up, not one poll_interval later."""
    pipeline = pipeline_file(tmp_path, HOURLY_POLLS)
    append(tmp_path / "app.log", *(f"ERROR {n}" for n in range(1, 101)))
    command = Command(pipeline, "--once", "-q")
    assert command.wait() == 0, command.err
    assert [r["n"] for r in jsonl(tmp_path / "seen.jsonl")] == [str(n) for n in range(1, 101)]


def test_a_reload_reads_at_once_whatever_its_poll_interval(tmp_path: Path) -> None:
    """The tails a SIGHUP builds read the lines written meanwhile at once, not at the next poll."""
    pipeline = pipeline_file(tmp_path, HOURLY_POLLS)
    log = tmp_path / "app.log"
    append(log, "ERROR 1")
    seen = tmp_path / "seen.jsonl"
    command = Command(pipeline, "-q")
    try:
        assert wait_until(lambda: len(jsonl(seen)) == 1), command.err
        append(log, "ERROR 2", "ERROR 3")  # the next poll is an hour away
        command.signal(signal.SIGHUP)
        assert wait_until(lambda: len(jsonl(seen)) == 3), command.err
    finally:
        command.signal(signal.SIGTERM)
        status = command.wait()
    assert status == 0, command.err
    assert [r["n"] for r in jsonl(seen)] == ["1", "2", "3"]


def test_the_command_freezes_its_start_up_and_collects_young_objects_less_often() -> None:
    """settle_garbage_collector(): start-up objects frozen, the youngest generation at 10,000."""
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (10_000, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
