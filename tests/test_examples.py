"""The service examples in examples/logwatch/: the supervisord program under a real supervisord,
and the systemd unit, checked by ``systemd-analyze verify`` where it exists and against the
pipeline file and the supervisord program in any case.

The supervisord test lays the files out as supervisord.conf's comment says, under a root in
pytest's temporary directory: the same paths with that root in front (/etc/eventmp,
/var/lib/eventmp, /var/log/...), and the eventmp command of this environment instead of
/opt/eventmp/.venv's. ``user=eventmp`` becomes ``user=`` the current user: there is no eventmp
user here, a supervisord that is not root cannot change user, and another user may not be able
to run this environment's Python (under /root/.pyenv, say). The test checks that eventmp and
every process under it run as that user.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from eventmp.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "logwatch"
PROGRAM = "eventmp-logwatch"
SHIPPED_EVENTMP = "/opt/eventmp/.venv/bin/eventmp"
# Bounds for waits that only matter when something is broken.
WAIT = 30.0


def _program(conf_text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(conf_text)
    return parser[f"program:{PROGRAM}"]


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are cased
    parser.read_string((EXAMPLES / f"{PROGRAM}.service").read_text())
    return parser


def _eventmp_command() -> str:
    """This environment's eventmp command, in place of the shipped /opt/eventmp/.venv one."""
    script = Path(sys.executable).parent / "eventmp"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m eventmp"


# == the supervisord program =====================================================================


@dataclass
class Service:
    """A supervisord running the shipped program, with the files it works on."""

    root: Path
    conf: Path
    user: pwd.struct_passwd
    out_log: Path
    err_log: Path
    state_file: Path
    auth_log: Path
    syslog: Path
    stopwaitsecs: int
    pids: list[int] = field(default_factory=list)  # of the program, for the teardown

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=self.stopwaitsecs + WAIT,
        )

    def status(self) -> str:
        return self.ctl("status", PROGRAM).stdout

    def pid(self) -> int:
        pid = int(self.ctl("pid", PROGRAM).stdout.strip())
        self.pids.append(pid)
        return pid


def _install(root: Path) -> pwd.struct_passwd:
    """Lay the example out under ``root`` as supervisord.conf says; return the program's user."""

    def adapt(text: str) -> str:
        text = text.replace(SHIPPED_EVENTMP, _eventmp_command())
        return re.sub(r"(?<![\w./])/(?=(?:etc|var)/)", f"{root}/", text)

    etc = root / "etc/eventmp"
    etc.mkdir(parents=True)
    (etc / "logwatch.toml").write_text(adapt((EXAMPLES / "logwatch.toml").read_text()))
    shutil.copy(EXAMPLES / "handlers.py", etc / "handlers.py")
    user = pwd.getpwuid(os.getuid())
    state = root / "var/lib/eventmp"
    state.mkdir(parents=True, mode=0o750)
    os.chown(state, user.pw_uid, user.pw_gid)
    logs = root / "var/log/eventmp"
    logs.mkdir(parents=True, mode=0o750)
    conf_d = root / "etc/supervisor/conf.d"
    conf_d.mkdir(parents=True)
    program = adapt((EXAMPLES / "supervisord.conf").read_text())
    program, replaced = re.subn(r"(?m)^user=eventmp$", f"user={user.pw_name}", program)
    assert replaced == 1, "the shipped program has no user=eventmp line"
    (conf_d / f"{PROGRAM}.conf").write_text(program)
    (root / "run").mkdir()
    (root / "etc/supervisor/supervisord.conf").write_text(
        f"""\
[unix_http_server]
file={root}/run/supervisor.sock
chmod=0700

[supervisord]
logfile={root}/var/log/supervisord.log
pidfile={root}/run/supervisord.pid
childlogdir={root}/var/log
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{root}/run/supervisor.sock

[include]
files = conf.d/*.conf
"""
    )
    return user


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """Install the example and start supervisord on it; shut both down afterwards."""
    root = tmp_path / "root"
    root.mkdir()
    conf = root / "etc/supervisor/supervisord.conf"
    supervisord: subprocess.Popen[bytes] | None = None
    service: Service | None = None
    try:
        user = _install(root)
        logs = root / "var/log"
        # The watched logs exist with a history, which the first start must skip.
        auth_log, syslog = logs / "auth.log", logs / "syslog"
        auth_log.write_text(
            "Nov 29 06:00:01 web1 sshd[1100]: Failed password for root from 192.0.2.1 port 1 ssh2\n"
        )
        syslog.write_text("Nov 29 06:00:02 web1 kernel: Out of memory: Killed process 1 (old)\n")
        program = _program((root / f"etc/supervisor/conf.d/{PROGRAM}.conf").read_text())
        with open(root / "supervisord.output", "wb") as output:
            supervisord = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=root,
                # What the program's environment= says, not what this one happens to hold.
                env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            )
        service = Service(
            root=root,
            conf=conf,
            user=user,
            out_log=Path(program["stdout_logfile"]),
            err_log=Path(program["stderr_logfile"]),
            state_file=root / "var/lib/eventmp/logwatch.state",
            auth_log=auth_log,
            syslog=syslog,
            stopwaitsecs=int(program["stopwaitsecs"]),
        )
        yield service
    finally:
        if supervisord is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(
                    [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), "shutdown"],
                    capture_output=True,
                    timeout=WAIT + 60,
                )
            try:
                supervisord.wait(WAIT)
            except subprocess.TimeoutExpired:
                supervisord.kill()
                supervisord.wait(WAIT)
        for pid in service.pids if service is not None else []:
            # Only if supervisord failed to stop its program: nothing is left otherwise.
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                for leftover in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.Error):
                        leftover.kill()


def _wait_for(what: str, condition: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def _append(path: Path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))


def _handled(service: Service) -> tuple[list[str], list[str]]:
    """What the handlers wrote: the log lines in the json records, and the ALERT lines."""
    records, alerts = [], []
    for line in service.out_log.read_text().splitlines() if service.out_log.exists() else []:
        if line.startswith("{"):
            records.append(json.loads(line)["line"])
        else:
            alerts.append(line)
    return records, alerts


def _all_handled(service: Service, lines: list[str]) -> Callable[[], bool]:
    return lambda: set(lines) <= set(_handled(service)[0])


def _state_covers_both_files(service: Service) -> bool:
    try:
        files = json.loads(service.state_file.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return {str(service.auth_log), str(service.syslog)} <= set(files)


def _failed_password(n: int, user: str, ip: str) -> str:
    sshd = f"Nov 29 07:00:{n:02} web1 sshd[2{n:03}]"
    return f"{sshd}: Failed password for {user} from {ip} port {n} ssh2"


def _stops(service: Service) -> int:
    log = service.root / "var/log/supervisord.log"
    return log.read_text().count(f"stopped: {PROGRAM} (exit status 0)")


def _stop(service: Service) -> None:
    """Stop the program; it must exit 0 within stopwaitsecs, its workers with it."""
    pid = service.pid()
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    stops = _stops(service)
    started = time.monotonic()
    result = service.ctl("stop", PROGRAM)
    took = time.monotonic() - started
    assert result.returncode == 0 and "stopped" in result.stdout, result
    assert took < service.stopwaitsecs, f"stopping took {took:.1f} s: SIGKILLed?"
    assert "STOPPED" in service.status()
    assert _stops(service) == stops + 1  # not "terminated by SIGKILL"
    _gone, alive = psutil.wait_procs(processes, timeout=WAIT)
    assert not alive, f"left running after the stop: {alive}"


@pytest.mark.timeout(240)
def test_supervisord_runs_stops_and_resumes_the_shipped_program(service: Service) -> None:
    """Under supervisord the program runs as its user, keeps logs apart, stops cleanly, and
    handles each line written while it was stopped exactly once after a restart."""
    _wait_for(f"{PROGRAM} RUNNING", lambda: "RUNNING" in service.status())
    # The first start skips the history and checkpoints the end of each file.
    _wait_for("the first checkpoint", lambda: _state_covers_both_files(service))
    processes = [psutil.Process(service.pid())]
    processes += processes[0].children(recursive=True)
    assert len(processes) >= 3  # eventmp, its forkserver or workers
    assert {p.uids().real for p in processes} == {service.user.pw_uid}

    running = [_failed_password(n, f"a{n}", "203.0.113.50") for n in (1, 2, 3)]
    oom = "Nov 29 07:01:00 web1 kernel: Out of memory: Killed process 5001 (first)"
    _append(service.auth_log, *running)
    _append(service.syslog, oom, "Nov 29 07:01:01 web1 app[7]: payment ok order=77 amount=-1")
    running.append(oom)
    _wait_for("the handlers' output", _all_handled(service, running))
    # As it happens, not when a worker exits and flushes its stdout.
    _wait_for("the alert", lambda: _handled(service)[1] == ["ALERT: brute force from 203.0.113.50"])
    _wait_for(
        "the failure in the stderr log",
        lambda: "ValueError: order 77: amount -1 below 0" in service.err_log.read_text(),
    )

    _stop(service)
    state = json.loads(service.state_file.read_text())["files"]
    assert service.state_file.stat().st_uid == service.user.pw_uid
    for path in (service.auth_log, service.syslog):
        assert state[str(path)]["offset"] == path.stat().st_size  # everything read, settled

    stopped = [_failed_password(n, f"b{n}", "198.51.100.60") for n in (4, 5, 6)]
    oom = "Nov 29 07:02:00 web1 kernel: Out of memory: Killed process 5002 (second)"
    _append(service.auth_log, *stopped)
    _append(service.syslog, oom)
    stopped.append(oom)
    started = service.ctl("start", PROGRAM)
    assert started.returncode == 0 and "RUNNING" in service.status(), started
    _wait_for("the lines written while stopped", _all_handled(service, stopped))
    after = [_failed_password(7, "c7", "192.0.2.70")]
    _append(service.auth_log, *after)
    _wait_for("a line written after the restart", _all_handled(service, after))
    _stop(service)

    records, alerts = _handled(service)
    for line in running + stopped + after:
        assert records.count(line) == 1, line
    assert len(records) == len(running + stopped + after)  # the history: never
    assert sorted(alerts) == [
        "ALERT: brute force from 198.51.100.60",
        "ALERT: brute force from 203.0.113.50",
    ]
    err = service.err_log.read_text()
    assert err.count("SIGTERM received: draining") == 2
    assert err.count("eventmp: read ") == 2  # the exit summary, once per run
    out = service.out_log.read_text()
    assert "WARNING" not in out and "eventmp:" not in out


# == the systemd unit ============================================================================


def test_systemd_unit_agrees_with_the_pipeline_file_and_the_supervisord_program() -> None:
    """The unit has the settings that matter, and runs the shipped pipeline as supervisord does."""
    service = _unit()["Service"]
    for key, value in {
        "Type": "exec",
        "User": "eventmp",
        "KillMode": "mixed",
        "KillSignal": "SIGTERM",
        "Restart": "always",
        "RestartPreventExitStatus": "2",
        "StateDirectory": "eventmp",
        "LogsDirectory": "eventmp",
        "WorkingDirectory": "/var/lib/eventmp",
        "Environment": "PYTHONUNBUFFERED=1",
    }.items():
        assert service.get(key) == value, key
    # `systemctl reload` is eventmp's SIGHUP reload, sent to the main process alone.
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"

    argv = shlex.split(service["ExecStart"])
    assert argv[:2] == [SHIPPED_EVENTMP, "run"]
    installed = Path(argv[2])
    assert installed.parent == Path("/etc/eventmp")
    shipped = EXAMPLES / installed.name
    assert shipped.exists(), f"ExecStart runs {installed}, but examples/logwatch ships no such file"
    pipeline = load_pipeline(shipped)
    state_directory = Path("/var/lib") / service["StateDirectory"]
    assert pipeline.inputs and all(
        spec.state_file is not None and Path(spec.state_file).parent == state_directory
        for spec in pipeline.inputs
    ), "every input has a checkpoint in the unit's StateDirectory"
    assert all(spec.start_at == "end" for spec in pipeline.inputs)

    program = _program((EXAMPLES / "supervisord.conf").read_text())
    assert shlex.split(program["command"]) == argv
    assert program["user"] == service["User"]
    assert program["directory"] == service["WorkingDirectory"]
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == "false" and program["killasgroup"] == "true"
    assert program["redirect_stderr"] == "false"
    assert program["stdout_logfile"] != program["stderr_logfile"]
    assert all(
        Path(program[key]).parent == Path("/var/log") / service["LogsDirectory"]
        for key in ("stdout_logfile", "stderr_logfile")
    )
    assert "PYTHONUNBUFFERED" in program["environment"]
    # Both leave room for the drain: at least one event_timeout and the kill grace after it.
    options = pipeline.dispatcher_options
    drain = options["event_timeout"] + options.get("kill_grace", 1.0)
    assert int(program["stopwaitsecs"]) == int(service["TimeoutStopSec"]) > drain


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the unit (ExecStart pointed here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (not a systemd system)")
    # verify checks that ExecStart's program exists: this environment's, not /opt/eventmp's.
    unit = tmp_path / f"{PROGRAM}.service"
    text = (EXAMPLES / unit.name).read_text()
    unit.write_text(text.replace(SHIPPED_EVENTMP, _eventmp_command()))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=WAIT
    )
    about_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if unit.name in line
    ]
    assert result.returncode == 0 and not about_unit, result.stdout + result.stderr


SPOOFED = (
    "Nov 26 07:03:00 web1 sshd[1299]: Failed password for invalid user "
    "x from 192.0.2.66 port 1 ssh2 from 203.0.113.6 port 4444 ssh2"
)


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "docs/pipeline.md",
        "examples/logwatch/pipeline.toml",
        "examples/logwatch/logwatch.toml",
    ],
)
def test_the_shipped_sshd_rule_takes_the_address_sshd_wrote(path: str) -> None:
    """A user name that spells out another address cannot choose the ip field."""
    text = (ROOT / path).read_text()
    match = re.search(r"^regex = '(Failed password for .*)'$", text, re.MULTILINE)
    assert match is not None, path
    rule = re.compile(match.group(1))
    spoofed = rule.search(SPOOFED)
    assert spoofed is not None
    assert spoofed["ip"] == "203.0.113.6"
    assert spoofed["user"] == "x from 192.0.2.66 port 1 ssh2"
    option = rule.search("sshd[1]: Failed password for bob from -j port 22 ssh2")
    assert option is None
    plain = rule.search("sshd[2]: Failed password for root from 2001:db8::7 port 22 ssh2")
    assert plain is not None and (plain["user"], plain["ip"]) == ("root", "2001:db8::7")
