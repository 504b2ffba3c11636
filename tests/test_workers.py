"""Tests for eventmp.workers: the parent's side of a worker's life, on real child processes."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from conftest import WAIT

from eventmp import EventDispatcher
from eventmp.batching import MAX_BATCH_BYTES
from eventmp.workers import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    WorkerHandle,
    close,
    confirm_exit,
    kill,
    process_gone,
    processor_label,
    processor_name,
    reap,
    restart_delay,
    send_signal,
    start_failure_message,
    terminate,
)

# == targets of the child processes (module level: spawn and forkserver children import them) ===


def exit_with(code: int) -> None:
    """Ends the process at once with exit status ``code``."""
    os._exit(code)


def kill_myself() -> None:
    """Ends the process with SIGKILL, as the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(WAIT)


def sleep_after_ready(ready: Any, ignore_sigterm: bool) -> None:
    """Ignores SIGTERM if told to, says it is ready, then sleeps far longer than any test."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(WAIT * 4)


StartChild = Callable[..., WorkerHandle]


@pytest.fixture
def start_child(start_method: str) -> Iterator[StartChild]:
    """Start real child processes, each wrapped in a WorkerHandle; none outlives the test."""
    context: Any = multiprocessing.get_context(start_method)
    started: list[WorkerHandle] = []
    read_ends: list[int] = []

    def start(target: Callable[..., None], *args: Any, ready: bool = False) -> WorkerHandle:
        event = context.Event() if ready else None
        process = context.Process(target=target, args=(event, *args) if ready else args)
        process.start()
        # Both of the worker's descriptors write to one pipe (made after the start, so that no
        # child holds it): the read end, kept here, sees EOF once both are closed.
        read_end, write_end = os.pipe()
        read_ends.append(read_end)
        worker = WorkerHandle(0, process, write_end, os.dup(write_end), deque())
        worker.peer_fd = read_end  # type: ignore[attr-defined]
        started.append(worker)
        if event is not None:
            assert event.wait(WAIT), "the child never said it was ready"
        return worker

    yield start
    for worker in started:
        if not worker.exited:
            if worker.process.exitcode is None:
                send_signal(worker.pid, signal.SIGKILL)
                worker.process.join(WAIT)
            close(worker)
    for fd in read_ends:
        os.close(fd)


# == restart_delay, start_failure_message, the processor's names =================================


def test_restart_delay_doubles_from_the_second_crash_up_to_the_cap() -> None:
    """No delay for a first crash; then 0.05 s, doubling each time, never past 1 s."""
    delays = [restart_delay(streak) for streak in range(10)]
    assert delays == pytest.approx([0.0, 0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert restart_delay(2) == BACKOFF_FIRST
    assert restart_delay(1000) == BACKOFF_MAX


def test_start_failure_message_under_fork_has_no_import_hint() -> None:
    """Under fork the worker imports nothing anew: the message says how it died, no more."""
    message = start_failure_message("fork", 1234, 3)
    assert message.startswith("worker process 1234 exited with status 3")
    assert message.endswith("before it was ready.")
    assert "__main__" not in message


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_start_failure_message_under_spawn_hints_at_the_main_guard_and_imports(
    method: str,
) -> None:
    """Under spawn or forkserver the message names the method, the main guard and imports."""
    message = start_failure_message(method, 1234, -signal.SIGKILL)
    assert message.startswith("worker process 1234 killed by SIGKILL")
    assert f"Under {method!r}" in message
    assert "if __name__ == '__main__':" in message
    assert "importable" in message
    assert message != start_failure_message("fork", 1234, -signal.SIGKILL)


def test_processor_name_is_its_slot_label_and_its_pid() -> None:
    """The originator of a worker's failures names the slot's processor and the process."""
    worker = WorkerHandle(3, SimpleNamespace(pid=4242, sentinel=-1), -1, -1, deque())
    assert processor_label(3) == "EventProcessor-3"
    assert processor_name(worker) == "EventProcessor-3[pid 4242]"


# == process_gone and send_signal =================================================================


def test_process_gone_is_false_for_a_running_child() -> None:
    """A child that still runs is not gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not process_gone(child.pid)
    finally:
        child.kill()
        child.wait(WAIT)


def test_process_gone_for_a_zombie_and_for_a_reaped_child() -> None:
    """A child that exited counts as gone while a zombie and once reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + WAIT
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert process_gone(child.pid)  # exited, not reaped: a zombie
    finally:
        assert child.wait(WAIT) == 0
    assert process_gone(child.pid)  # reaped: no such process


def test_send_signal_to_a_reaped_child_is_quiet() -> None:
    """Signalling a process that is gone raises nothing."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(WAIT)
    send_signal(child.pid, signal.SIGKILL)


# == terminate, reap, kill, confirm_exit, close ===================================================


def test_reap_returns_the_exit_status_of_a_child(start_child: StartChild) -> None:
    """A child that exits with status 3 is reaped with exit code 3."""
    worker = start_child(exit_with, 3)
    assert reap(worker, grace=WAIT) == 3
    assert process_gone(worker.pid)


def test_reap_returns_the_negative_signal_of_a_child_killed_by_sigkill(
    start_child: StartChild,
) -> None:
    """A child killed by SIGKILL is reaped with exit code -9."""
    worker = start_child(kill_myself)
    assert reap(worker, grace=WAIT) == -signal.SIGKILL


def test_reap_kills_a_child_that_does_not_leave_within_grace(start_child: StartChild) -> None:
    """A child still running after ``grace`` is killed with SIGKILL, and reaped."""
    worker = start_child(sleep_after_ready, False, ready=True)
    began = time.monotonic()
    assert reap(worker, grace=0.2) == -signal.SIGKILL
    assert time.monotonic() - began < 10
    assert process_gone(worker.pid)


def test_terminate_sends_sigterm_and_sets_the_kill_deadline_once(start_child: StartChild) -> None:
    """terminate() signals at once and does not wait; a second call keeps the first deadline."""
    worker = start_child(sleep_after_ready, False, ready=True)
    began = time.monotonic()
    terminate(worker, grace=5.0)
    assert worker.kill_at is not None and began + 5.0 <= worker.kill_at < began + 10
    deadline = worker.kill_at
    terminate(worker, grace=60.0)
    assert worker.kill_at == deadline
    worker.process.join(WAIT)
    assert worker.process.exitcode == -signal.SIGTERM


def test_kill_ends_a_child_that_ignores_sigterm_with_sigkill(start_child: StartChild) -> None:
    """A child that ignores SIGTERM is killed with SIGKILL once ``grace`` is over, in bounds."""
    worker = start_child(sleep_after_ready, True, ready=True)
    began = time.monotonic()
    kill(worker, grace=0.2)
    elapsed = time.monotonic() - began
    assert worker.process.exitcode == -signal.SIGKILL
    assert 0.2 <= elapsed < 10  # the grace was waited out; the kill did not hang
    assert process_gone(worker.pid)


def test_kill_ends_a_child_that_honours_sigterm_with_sigterm(start_child: StartChild) -> None:
    """A child that leaves on SIGTERM is not sent SIGKILL."""
    worker = start_child(sleep_after_ready, False, ready=True)
    kill(worker, grace=WAIT)
    assert worker.process.exitcode == -signal.SIGTERM


def test_kill_leaves_a_child_that_exited_alone(start_child: StartChild) -> None:
    """kill() of a child already reaped sends nothing and keeps its exit code."""
    worker = start_child(exit_with, 5)
    assert reap(worker, grace=WAIT) == 5
    kill(worker, grace=WAIT)
    assert worker.process.exitcode == 5


def test_an_orphaned_worker_is_killed_at_once_and_reaped_without_a_status(
    start_child: StartChild,
) -> None:
    """An orphaned worker is sent SIGKILL at once; reap waits for it but has no exit code."""
    worker = start_child(sleep_after_ready, True, ready=True)
    worker.orphaned = True
    began = time.monotonic()
    kill(worker, grace=WAIT)
    assert reap(worker, grace=WAIT) is None
    assert time.monotonic() - began < 10
    assert process_gone(worker.pid)


def test_confirm_exit_waits_only_under_forkserver(start_child: StartChild) -> None:
    """Under fork or spawn the sentinel is trusted; under forkserver a live pid is not gone."""
    worker = start_child(sleep_after_ready, False, ready=True)
    assert confirm_exit(worker, "fork")
    assert confirm_exit(worker, "spawn")
    began = time.monotonic()
    assert not confirm_exit(worker, "forkserver")
    assert time.monotonic() - began >= 0.2
    kill(worker, grace=WAIT)
    assert confirm_exit(worker, "forkserver")


def test_close_closes_the_pipes_and_marks_the_worker_exited(start_child: StartChild) -> None:
    """close() closes both pipe ends and releases the process object of a reaped worker."""
    worker = start_child(exit_with, 0)
    assert reap(worker, grace=WAIT) == 0
    close(worker)
    assert worker.exited
    assert os.read(worker.peer_fd, 1) == b""  # type: ignore[attr-defined]  # EOF: both closed
    with pytest.raises(ValueError):
        worker.process.is_alive()  # released


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_task_pipe_holds_a_whole_batch() -> None:
    """A worker's task pipe takes a batch of MAX_BATCH_BYTES while the parent is busy elsewhere."""
    with EventDispatcher(start_method="fork") as dispatcher:
        (slot,) = dispatcher._pool.slots
        assert slot.worker is not None
        size = fcntl.fcntl(slot.worker.task_fd, fcntl.F_GETPIPE_SZ)
    assert size >= MAX_BATCH_BYTES
