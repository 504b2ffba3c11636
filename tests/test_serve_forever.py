"""serve_forever(): signals from a terminal, supervisord or systemd end a pipeline cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import START_METHODS

SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, time
    from eventmp import Event, EventDispatcher, EventGenerator
    from eventmp.testing import ErrorCollector, RecordingHandler

    class Counter(EventGenerator):
        '''Makes 20 events a poll and writes down each one it made, in the parent.'''

        def __init__(self, produced_path, handler):
            self.produced_path = produced_path
            self.handler = handler
            self.n = 0

        def get_events(self):
            events = [Event("counter", self.handler, self.n + i) for i in range(20)]
            self.n += 20
            with open(self.produced_path, "a") as f:
                f.write("".join(f"{e.data}\\n" for e in events))
            return events

    class SlowRecorder(RecordingHandler):
        def process_event(self, event):
            time.sleep(float(os.environ.get("HANDLER_SLEEP", "0.002")))
            return super().process_event(event)

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        out = sys.argv[1]
        handler = SlowRecorder(out + "/seen.jsonl")
        errors = ErrorCollector()
        d = EventDispatcher(0.01, start_method=sys.argv[2], workers=int(sys.argv[3]))
        d.error_handler(errors)
        d.add_event_generator(Counter(out + "/produced.txt", handler))
        d.start()
        print(json.dumps({"pids": list(d.stats().worker_pids)}), flush=True)
        d.serve_forever()
        s = d.stats()
        print(json.dumps({"accepted": s.accepted, "processed": s.processed,
                          "failed": s.failed, "abandoned": s.abandoned,
                          "errors": [type(e).__name__ for e in errors.exceptions]}), flush=True)
    """
)


def _run_until_signalled(
    tmp_path: Path, method: str, workers: int, signals: list[tuple[str, int]], sleep: str = "0.002"
) -> tuple[subprocess.CompletedProcess[str], dict[str, object], set[int]]:
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, HANDLER_SLEEP=sleep)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), method, str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as under supervisord or systemd
    )
    try:
        assert proc.stdout is not None
        pids = set(json.loads(proc.stdout.readline())["pids"])
        seen = tmp_path / "seen.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if seen.exists() and len(seen.read_text().splitlines()) >= 100:
                break
            time.sleep(0.02)
        for target, signum in signals:
            if target == "group":
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    summary = json.loads(lines[-1]) if lines else {}
    return (
        subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
        summary,
        pids,
    )


def _produced_and_seen(tmp_path: Path) -> tuple[list[int], list[int]]:
    produced = [int(x) for x in (tmp_path / "produced.txt").read_text().split()]
    seen = [json.loads(line)["data"] for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    return produced, seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("target", ["parent", "group"])
def test_sigterm_drains_every_accepted_event(tmp_path: Path, method: str, target: str) -> None:
    """SIGTERM to the parent or its whole process group ends with exit 0 and nothing lost."""
    result, summary, _pids = _run_until_signalled(tmp_path, method, 1, [(target, signal.SIGTERM)])
    assert result.returncode == 0, result.stderr
    produced, seen = _produced_and_seen(tmp_path)
    assert sorted(seen) == sorted(produced), "every produced event was handled exactly once"
    assert seen == produced, "one worker keeps the order"
    assert summary["accepted"] == summary["processed"] == len(produced)
    assert summary["failed"] == 0


@pytest.mark.timeout(120)
def test_sigterm_to_group_with_two_workers_loses_nothing(tmp_path: Path) -> None:
    """With two workers, a process-group SIGTERM still gives every event exactly one run."""
    result, summary, _pids = _run_until_signalled(
        tmp_path, "forkserver", 2, [("group", signal.SIGTERM)]
    )
    assert result.returncode == 0, result.stderr
    produced, seen = _produced_and_seen(tmp_path)
    assert sorted(seen) == sorted(produced)
    assert summary["processed"] == len(produced)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", START_METHODS)
def test_workers_told_to_leave_by_a_group_sigterm_are_not_crashes(
    tmp_path: Path, method: str
) -> None:
    """A process-group SIGTERM: workers say they leave on SIGTERM; none is logged as a crash."""
    result, summary, _pids = _run_until_signalled(tmp_path, method, 2, [("group", signal.SIGTERM)])
    assert result.returncode == 0, result.stderr
    produced, seen = _produced_and_seen(tmp_path)
    assert sorted(seen) == sorted(produced)
    assert summary["failed"] == 0
    # Before workers said why they left, a forkserver's children reported status 255 (their
    # server died with them) and were logged as idle workers that crashed.
    assert "idle worker" not in result.stderr
    assert "exited with status" not in result.stderr
    assert "left on SIGTERM" in result.stderr or "left (SIGTERM)" in result.stderr


@pytest.mark.timeout(120)
def test_sigint_drains_like_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) drains and exits 0: workers ignore SIGINT."""
    result, _summary, pids = _run_until_signalled(
        tmp_path, "forkserver", 1, [("group", signal.SIGINT)]
    )
    assert result.returncode == 0, result.stderr
    produced, seen = _produced_and_seen(tmp_path)
    assert seen == produced
    assert {
        json.loads(line)["pid"] for line in (tmp_path / "seen.jsonl").read_text().splitlines()
    } == pids


@pytest.mark.timeout(120)
def test_second_signal_stops_at_once_and_reports_abandoned(tmp_path: Path) -> None:
    """A second SIGTERM abandons what is queued, reports each as EventAbandonedError, exits 0."""
    result, summary, _pids = _run_until_signalled(
        tmp_path,
        "forkserver",
        1,
        [("parent", signal.SIGTERM), ("parent", signal.SIGTERM)],
        sleep="0.05",
    )
    assert result.returncode == 0, result.stderr
    produced, seen = _produced_and_seen(tmp_path)
    assert summary["abandoned"] > 0
    assert set(summary["errors"]) == {"EventAbandonedError"}
    assert summary["processed"] + summary["abandoned"] == len(produced)
    assert len(seen) == summary["processed"]
    assert "abandoned" in result.stderr


@pytest.mark.timeout(60)
def test_no_worker_outlives_serve_forever(tmp_path: Path) -> None:
    """After serve_forever() returns and the script exits, its workers are gone."""
    result, _summary, pids = _run_until_signalled(
        tmp_path, "forkserver", 2, [("parent", signal.SIGTERM)]
    )
    assert result.returncode == 0
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
