"""eventmp.actions.command: the command handler, running real subprocesses.

Each command is a real Python subprocess that reports its arguments, working directory and
environment in a file; the last test runs one from a real worker process.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import sys
from pathlib import Path

import dill
import psutil
import pytest
from conftest import STAMP, WAIT, tail_event, wait_until

from eventmp import Event
from eventmp.actions.command import ENV_TOTAL_MAX, ENV_VALUE_MAX, CommandEventHandler
from eventmp.errors import CommandFailedError, CommandTimeoutError, EventmpError, TemplateError
from eventmp.testing import run_events

# Writes its arguments (after the output path), working directory and EVENTMP_* environment
# to the file named by its first argument. No braces: every argument is a template.
REPORT = (
    "import json, os, sys; json.dump(dict(argv=sys.argv[2:], cwd=os.getcwd(), "
    "env=dict((k, v) for k, v in os.environ.items() if k.startswith('EVENTMP_') "
    "or k == 'EXTRA')), open(sys.argv[1], 'w'))"
)


def test_command_gets_arguments_and_environment_from_the_event(tmp_path: Path) -> None:
    """Each argument is filled from the event, and each field of env_fields is in the
    environment."""
    out = tmp_path / "report.json"
    exported = ["ip", "line", "line_number", "0", "2", "groups", "originator", "timestamp"]
    handler = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out), "{ip}", "user={user}", "{line}"],
        env={"EXTRA": "yes"},
        env_fields=exported,
    )
    assert handler.process_event(tail_event()) is True
    report = json.loads(out.read_text())
    assert report["argv"] == [
        "203.0.113.9",
        "user=root",
        "Failed password for root from 203.0.113.9 port 22",
    ]
    env = report["env"]
    assert env["EVENTMP_IP"] == "203.0.113.9"
    assert env["EVENTMP_LINE"] == "Failed password for root from 203.0.113.9 port 22"
    assert env["EVENTMP_LINE_NUMBER"] == "42"
    assert env["EVENTMP_0"] == "for root from 203.0.113.9"
    assert env["EVENTMP_2"] == "203.0.113.9"
    assert json.loads(env["EVENTMP_GROUPS"]) == ["root", "203.0.113.9"]
    assert env["EVENTMP_ORIGINATOR"] == "tail"
    assert float(env["EVENTMP_TIMESTAMP"]) == STAMP
    assert env["EXTRA"] == "yes"
    assert "EVENTMP_USER" not in env


def test_command_string_is_split_before_filling_and_never_shell(tmp_path: Path) -> None:
    """A command string is split like a shell would, but a field's value stays one argument
    and shell syntax in it is never interpreted."""
    out = tmp_path / "report.json"
    hostile = "a b; touch pwned $(touch pwned) `touch pwned` 'q\" | cat"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(REPORT)} {out} '{{line}}' tail"
    handler = CommandEventHandler(command)
    handler.process_event(tail_event(line=hostile))
    assert json.loads(out.read_text())["argv"] == [hostile, "tail"]
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


def test_command_runs_in_cwd(tmp_path: Path) -> None:
    """cwd sets the working directory of the command."""
    out = tmp_path / "report.json"
    workdir = tmp_path / "work"
    workdir.mkdir()
    CommandEventHandler([sys.executable, "-c", REPORT, str(out)], cwd=workdir).process_event(
        tail_event()
    )
    assert json.loads(out.read_text())["cwd"] == str(workdir)


def test_command_environment_for_non_dict_data_and_nul(tmp_path: Path) -> None:
    """Non-dict data goes in EVENTMP_DATA; a NUL in a value does not stop the command."""
    out = tmp_path / "report.json"
    handler = CommandEventHandler([sys.executable, "-c", REPORT, str(out)], env_fields="data")
    handler.process_event(Event("app", None, "bad\x00byte", timestamp=STAMP))
    assert json.loads(out.read_text())["env"]["EVENTMP_DATA"] == "bad\ufffdbyte"


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("{user}", "--output=/tmp/eventmp-test-x"),
        ("{ip}", "-j"),
        ("{user}", "-"),
        ("{user}{ip}", "-j"),
    ],
)
def test_command_field_that_would_be_an_option_is_refused(
    tmp_path: Path, template: str, value: str
) -> None:
    """An argument that a field starts with '-' fails the event and the program never runs."""
    out = tmp_path / "report.json"
    handler = CommandEventHandler([sys.executable, "-c", REPORT, str(out), template])
    event = tail_event(
        named={"user": value, "ip": value}
        if template != "{user}{ip}"
        else {
            "user": "",
            "ip": value,
        }
    )
    with pytest.raises(ValueError, match=r"argv\[4\].*starts with '-' from a field"):
        handler.process_event(event)
    assert not out.exists()


def test_command_option_from_a_field_only_where_the_author_allows_it(tmp_path: Path) -> None:
    """A '-' value is passed after a literal '--', after the author's own text, or with
    options_from_fields."""
    out = tmp_path / "report.json"
    event = tail_event(named={"user": "--output=/tmp/x", "ip": "-j"})
    after_dashes = [sys.executable, "-c", REPORT, str(out), "--user={user}", "--", "{ip}"]
    CommandEventHandler(after_dashes).process_event(event)
    assert json.loads(out.read_text())["argv"] == ["--user=--output=/tmp/x", "--", "-j"]
    allowed = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out), "{user}", "{ip}"], options_from_fields="true"
    )
    allowed.process_event(event)
    assert json.loads(out.read_text())["argv"] == ["--output=/tmp/x", "-j"]


def test_command_nul_in_a_field_becomes_u_fffd(tmp_path: Path) -> None:
    """A NUL in a field's value reaches the program as U+FFFD instead of failing the event."""
    out = tmp_path / "report.json"
    event = tail_event(named={"user": "ro\x00ot", "ip": "\x00"})
    CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out), "{user}", "x{ip:>4}"]
    ).process_event(event)
    assert json.loads(out.read_text())["argv"] == ["ro\ufffdot", "x   \ufffd"]
    CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out)], env_fields=["user"]
    ).process_event(event)
    assert json.loads(out.read_text())["env"]["EVENTMP_USER"] == "ro\ufffdot"


def test_command_with_a_200_kib_line_runs_and_exports_only_what_is_asked(tmp_path: Path) -> None:
    """A 200 KiB line is not exported unless asked, and then it is cut to ENV_VALUE_MAX bytes
    and marked in EVENTMP_TRUNCATED."""
    out = tmp_path / "report.json"
    line = "Failed password for " + "A" * 200 * 1024 + " from 203.0.113.9 port 22 ssh2"
    event = tail_event(line=line)
    CommandEventHandler([sys.executable, "-c", REPORT, str(out), "{ip}"]).process_event(event)
    report = json.loads(out.read_text())
    assert report["argv"] == ["203.0.113.9"]
    assert set(report["env"]) <= {"EVENTMP_STRICT_LEDGER"}  # the test suite's own
    handler = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out)], env_fields=["ip", "line"]
    )
    handler.process_event(event)
    env = json.loads(out.read_text())["env"]
    assert env["EVENTMP_IP"] == "203.0.113.9"
    assert env["EVENTMP_LINE"] == line[:ENV_VALUE_MAX]
    assert env["EVENTMP_TRUNCATED"] == "EVENTMP_LINE"


def test_command_environment_is_capped_in_total_without_splitting_a_character(
    tmp_path: Path,
) -> None:
    """Several large fields together stay within ENV_TOTAL_MAX, each cut on a character."""
    out = tmp_path / "report.json"
    big = "\u00e9" * 100_000  # two bytes each in UTF-8
    data = {name: big for name in "abcdef"}
    handler = CommandEventHandler(
        [sys.executable, "-c", REPORT, str(out)], env_fields=list("abcdef")
    )
    handler.process_event(Event("app", None, data, timestamp=STAMP))
    env = json.loads(out.read_text())["env"]
    env.pop("EVENTMP_STRICT_LEDGER", None)  # the test suite's own
    truncated = env.pop("EVENTMP_TRUNCATED")
    assert truncated == " ".join(f"EVENTMP_{name.upper()}" for name in "abcdef")
    sizes = [len(f"{name}={value}".encode()) + 1 for name, value in env.items()]
    assert sum(sizes) <= ENV_TOTAL_MAX
    assert sum(sizes) > ENV_TOTAL_MAX - 2  # a two-byte character may not fit
    for value in env.values():
        assert len(value.encode()) <= ENV_VALUE_MAX
        assert big.startswith(value)
    assert len(env["EVENTMP_A"]) == ENV_VALUE_MAX // 2


def test_command_missing_env_field_is_a_template_error(tmp_path: Path) -> None:
    """A field in env_fields that the event lacks raises TemplateError before anything runs."""
    out = tmp_path / "report.json"
    handler = CommandEventHandler([sys.executable, "-c", REPORT, str(out)], env_fields="usr")
    with pytest.raises(TemplateError, match="usr"):
        handler.process_event(tail_event())
    assert not out.exists()


def test_command_non_zero_exit_raises_command_failed(tmp_path: Path) -> None:
    """A command that exits 3 raises CommandFailedError with the status and its stderr."""
    script = "import sys; sys.stderr.write('first line' + chr(10) + 'user not found'); sys.exit(3)"
    handler = CommandEventHandler([sys.executable, "-c", script, "{user}"])
    with pytest.raises(CommandFailedError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert isinstance(error, EventmpError)
    assert error.returncode == 3
    assert error.argv == [sys.executable, "-c", script, "root"]
    assert error.stderr.endswith("user not found")
    assert "status 3" in str(error)
    assert "user not found" in str(error)


def test_command_killed_by_signal_is_a_failure() -> None:
    """A command killed by a signal raises CommandFailedError naming the signal."""
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(CommandFailedError) as caught:
        CommandEventHandler([sys.executable, "-c", script]).process_event(tail_event())
    assert caught.value.returncode == -signal.SIGKILL
    assert "SIGKILL" in str(caught.value)


def test_command_stderr_passes_through_on_success(capsys: pytest.CaptureFixture[str]) -> None:
    """What a successful command writes to stderr reaches the worker's stderr."""
    script = "import sys; sys.stderr.write('warning: disk almost full')"
    CommandEventHandler([sys.executable, "-c", script]).process_event(tail_event())
    assert "warning: disk almost full" in capsys.readouterr().err


def test_command_past_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    """A command past its timeout is killed, its children too, and CommandTimeoutError raised."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "open(sys.argv[1], 'w').write(str(child.pid)); "
        "sys.stderr.write('started'); sys.stderr.flush(); time.sleep(60)"
    )
    handler = CommandEventHandler([sys.executable, "-c", script, str(pid_file)], timeout="1s")
    with pytest.raises(CommandTimeoutError) as caught:
        handler.process_event(tail_event())
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert error.timeout == 1.0
    assert error.stderr == "started"
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_until(gone)


def test_command_returns_though_a_child_it_left_holds_stderr(tmp_path: Path) -> None:
    """A command that exits, leaving a background child with its stderr open, still returns."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "open(sys.argv[1], 'w').write(str(child.pid))"
    )
    handler = CommandEventHandler([sys.executable, "-c", script, str(pid_file)], timeout="30s")
    try:
        assert handler.process_event(tail_event()) is True
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_command_that_does_not_exist() -> None:
    """A program that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="no-such-program-eventmp"):
        CommandEventHandler("no-such-program-eventmp {ip}").process_event(tail_event())


def test_command_errors_survive_a_round_trip() -> None:
    """CommandFailedError and CommandTimeoutError cross pickle with their attributes."""
    failed = CommandFailedError(["notify", "x"], 3, "boom")
    timed_out = CommandTimeoutError(["sleep", "9"], 2.5, "")
    for module in (pickle, dill):
        loaded = module.loads(module.dumps(failed))
        assert (loaded.argv, loaded.returncode, loaded.stderr) == (["notify", "x"], 3, "boom")
        assert str(loaded) == str(failed)
        loaded_timeout = module.loads(module.dumps(timed_out))
        assert (loaded_timeout.argv, loaded_timeout.timeout) == (["sleep", "9"], 2.5)
        assert str(loaded_timeout) == str(timed_out)


def test_command_env_as_string() -> None:
    """env given as a string is read as NAME=value items, quoted like a shell's."""
    handler = CommandEventHandler("true", env="A=1 'B=two words'")
    assert handler.env == {"A": "1", "B": "two words"}


SIGINT_REPORT = (
    "import signal, sys; open(sys.argv[1], 'w').write(str(signal.getsignal(signal.SIGINT)))"
)


def test_command_in_a_worker_does_not_inherit_ignored_sigint(tmp_path: Path) -> None:
    """A command started by a worker (which ignores SIGINT) gets SIGINT's default action."""
    out = tmp_path / "sigint.txt"
    handler = CommandEventHandler([sys.executable, "-c", SIGINT_REPORT, str(out)])
    assert run_events([Event("app", handler, 1)], timeout=WAIT, poll_interval=0.05) == []
    # Python installs its KeyboardInterrupt handler only where SIGINT was not ignored.
    assert out.read_text() == str(signal.default_int_handler)
