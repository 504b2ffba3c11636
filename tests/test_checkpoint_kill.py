"""What a SIGKILL costs a checkpointing ``eventmp run``, under a real supervisord.

docs/tailing.md promises that after a ``kill -9`` the lines handled again are those whose
events had no outcome at the last save, and that the tail saves at most a checkpoint interval
apart (one second) while it runs *and* while it drains, when nothing polls it any more. Here a
real supervisord runs ``eventmp run`` on a file of numbered lines with a slow handler, once
killed with SIGKILL while reading, once by supervisord itself: ``supervisorctl stop`` with a
``stopwaitsecs`` shorter than the drain. Then it is started again, runs to the end of the file
and stops cleanly. The handler stamps each line it finishes with the time, so the test judges
from what the handler wrote: no line is skipped, and every line handled twice was finished in
the last moments before the kill (the interval, the 0.2 s it takes an outcome to reach the
tail, and a margin for a loaded machine), never one finished long before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from conftest import wait_until

PROGRAM = "eventmp-slow"
LINES = 48
HANDLER_SECONDS = 0.25  # per line: a drain of the queue takes far longer than STOPWAITSECS
STOPWAITSECS = 2
CHECKPOINT_INTERVAL = 1.0  # the tail's default (docs/tailing.md)
SETTLE = 0.2  # how long a finished event takes to reach the tail (docs/tailing.md)
MARGIN = 2.0  # a loaded machine: a poll, an outcome or a save may come late
WAIT = 60.0

SLOW_HANDLER = '''\
"""A slow handler that stamps each line it finishes, with one O_APPEND write."""

import os
import time

from eventmp import Event, EventHandler


class Slow(EventHandler):
    def __init__(self, out: str, seconds: str) -> None:
        self.out = out
        self.seconds = float(seconds)

    def process_event(self, event: Event) -> bool:
        time.sleep(self.seconds)
        line = f"{event.data['named']['n']} {time.time():.6f}\\n"
        fd = os.open(self.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return True
'''


@dataclass
class Supervised:
    """A supervisord with one program: ``eventmp run`` on a slow pipeline."""

    root: Path
    conf: Path
    log: Path
    handled: Path
    state_file: Path

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=STOPWAITSECS + WAIT,
        )

    def pid(self) -> int:
        return int(self.ctl("pid", PROGRAM).stdout.strip())

    def finished(self) -> list[tuple[int, float]]:
        """(line number, when it finished) for each line the handler finished, in order."""
        if not self.handled.exists():
            return []
        rows = [line.split() for line in self.handled.read_text().splitlines()]
        return [(int(n), float(at)) for n, at in rows]

    def checkpoint_line(self) -> int:
        """How many lines of the log the state file counts as done."""
        entry = json.loads(self.state_file.read_text())["files"][str(self.log)]
        return int(entry["line"])


def _eventmp_command() -> str:
    script = Path(sys.executable).parent / "eventmp"
    return str(script) if script.exists() else f"{sys.executable} -m eventmp"


def _wait(what: str, condition: Callable[[], object]) -> None:
    assert wait_until(lambda: bool(condition()), WAIT), f"timed out waiting for {what}"


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    """Lay out the pipeline, its handler and the log, and run supervisord on them."""
    root = tmp_path
    log, handled, state = root / "app.log", root / "handled.txt", root / "app.state"
    log.write_text("".join(f"line {n}\n" for n in range(1, LINES + 1)))
    (root / "slow.py").write_text(SLOW_HANDLER)
    pipeline = root / "pipeline.toml"
    pipeline.write_text(
        textwrap.dedent(
            f"""\
            [dispatcher]
            workers = 1
            poll_interval = "50ms"

            [[inputs]]
            name = "app"
            paths = ["{log}"]
            start_at = "beginning"
            state_file = "{state}"

            [[rules]]
            name = "numbered"
            regex = '^line (?P<n>\\d+)$'
            handler = {{ type = "slow:Slow", out = "{handled}", seconds = "{HANDLER_SECONDS}" }}
            """
        )
    )
    # A Unix socket's path is limited to 107 bytes, which pytest's directory names can pass.
    sockets = Path(tempfile.mkdtemp(prefix="eventmp-sv-"))
    conf = root / "supervisord.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [unix_http_server]
            file={sockets}/supervisor.sock

            [supervisord]
            logfile={root}/supervisord.log
            pidfile={root}/supervisord.pid
            childlogdir={root}
            nodaemon=true

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl=unix://{sockets}/supervisor.sock

            [program:{PROGRAM}]
            command={_eventmp_command()} run {pipeline}
            directory={root}
            autostart=false
            autorestart=false
            startsecs=1
            stopsignal=TERM
            stopasgroup=false
            killasgroup=true
            stopwaitsecs={STOPWAITSECS}
            stdout_logfile={root}/out.log
            stderr_logfile={root}/err.log
            """
        )
    )
    with open(root / "supervisord.output", "wb") as output:
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    service = Supervised(root, conf, log, handled, state)
    try:
        _wait("supervisord", lambda: service.ctl("status").returncode in (0, 3))
        yield service
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            service.ctl("shutdown")
        try:
            supervisord.wait(WAIT)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait(WAIT)
        shutil.rmtree(sockets, ignore_errors=True)


def _kill_while_reading(service: Supervised) -> float:
    """SIGKILL the whole program (eventmp and its workers) in the middle of the file.

    Returns a moment no later than the kill.
    """
    pid = service.pid()
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    killed_at = time.time()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=WAIT)
    return killed_at


def _stop_past_stopwaitsecs(service: Supervised) -> float:
    """``supervisorctl stop``: SIGTERM starts a drain, which supervisord cuts with SIGKILL.

    Returns a moment no later than the kill: supervisord sends it stopwaitsecs after SIGTERM,
    or later.
    """
    asked_at = time.time()
    result = service.ctl("stop", PROGRAM)
    assert result.returncode == 0, result
    log = (service.root / "supervisord.log").read_text()
    assert f"killing '{PROGRAM}'" in log and "SIGKILL" in log, log
    return asked_at + STOPWAITSECS


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "kill", [_kill_while_reading, _stop_past_stopwaitsecs], ids=["reading", "draining"]
)
def test_sigkill_repeats_only_lines_finished_just_before_it(
    supervised: Supervised, kill: Callable[[Supervised], float]
) -> None:
    """After a SIGKILL, reading or draining, no line is skipped and the lines handled again
    are only those finished within a checkpoint interval (plus margins) before the kill."""
    assert supervised.ctl("start", PROGRAM).returncode == 0
    _wait("ten lines handled", lambda: len(supervised.finished()) >= 10)
    before_kill = len(supervised.finished())
    # No later than the kill: a line finished before ``late`` below really was that old.
    killed_at = kill(supervised)
    first = supervised.finished()
    assert len(first) < LINES, "the run ended before the kill: nothing was tested"
    saved = supervised.checkpoint_line()
    if kill is _stop_past_stopwaitsecs:
        # The drain finished lines after the SIGTERM; the checkpoint followed them.
        assert len(first) > before_kill + 1
        assert saved > before_kill

    assert supervised.ctl("start", PROGRAM).returncode == 0
    _wait(
        "every line handled",
        lambda: {n for n, _ in supervised.finished()} >= set(range(1, LINES + 1)),
    )
    stopped = supervised.ctl("stop", PROGRAM)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped

    second = supervised.finished()[len(first) :]
    first_at = dict(first)
    again = sorted(n for n, _ in second if n in first_at)
    assert len({n for n, _ in second}) == len(second), "a line ran twice in one run"
    late = killed_at - (CHECKPOINT_INTERVAL + SETTLE + MARGIN)
    too_old = [(n, round(killed_at - first_at[n], 2)) for n in again if first_at[n] < late]
    assert not too_old, (
        f"handled again although finished long before the kill (line, seconds before): "
        f"{too_old}; checkpoint at line {saved}"
    )
    # The second run starts where the checkpoint says: each line it handles again is past it.
    assert all(n > saved for n in again), (again, saved)
    assert os.path.getsize(supervised.log) > 0
