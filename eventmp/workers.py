"""One worker process, parent side: start it, terminate it, tell when it is gone, reap, kill.

Runs in the parent process. :func:`start_worker` and :func:`terminate` run under the
dispatcher's lock (one forks or asks the forkserver, the other signals and sets a deadline);
:func:`confirm_exit`, :func:`reap` and :func:`kill` may sleep or join and run **without** it,
in the dispatcher thread (or ``start()``/``stop()``'s caller). The worker's own side is
:mod:`eventmp.processor`.

A worker lives in a :class:`Slot`, which outlives the processes that fill it one after another
(its progress array, its restart back-off). A :class:`WorkerHandle` is the parent's handle on
one process: its pipes, what it was sent (the ledger's batches), and why it is leaving.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import psutil

from .errors import describe_exit
from .ledger_records import Batch
from .messages import FLOODED, PROGRESS_FIELDS, RING, FrameReader
from .processor import EventProcessor, worker_main

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "Slot",
    "WorkerHandle",
    "WorkerSettings",
    "close",
    "confirm_exit",
    "kill",
    "process_gone",
    "processor_label",
    "processor_name",
    "reap",
    "restart_delay",
    "send_signal",
    "start_failure_message",
    "start_worker",
    "terminate",
]

logger = logging.getLogger("eventmp")

# A worker that crashes again at once is restarted after a delay that doubles from the first
# to the last: a handler that kills every worker must not turn the parent into a fork loop.
# A task pipe holds a whole batch (MAX_BATCH_BYTES) where the system allows it: Linux's
# default pipe-max-size, which an unprivileged process may ask for.
TASK_PIPE_BYTES = 1 << 20
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
# The sentinel of a forkserver's child may fire for the server's death; the worker gets this
# long to show it is really gone (see confirm_exit).
_EXIT_CONFIRM = 0.2

_worker_ids = itertools.count(1)


class WorkerHandle:
    """The parent's handle on one worker process and its two pipes."""

    def __init__(
        self, slot: int, process: Any, task_fd: int, result_fd: int, batches: deque[Batch]
    ) -> None:
        self.id = next(_worker_ids)  # unique for the dispatcher's life: the ledger's key
        self.slot = slot
        self.process = process
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.reader = FrameReader()
        self.outbuf = bytearray()
        self.batches = batches  # the ledger's record of what it holds (read only here)
        self.last_batch = 0  # batch_no of the last batch sent
        self.progressed_at = 0.0  # when it last took work with nothing in flight, or acknowledged
        self.known_handlers: set[int] = set()
        # The handler of the last event sent: consecutive events usually share it.
        self.last_handler: Any = None
        self.last_handler_id = -1
        self.forget: list[int] = []  # handler ids to tell it to drop
        self.ready = False
        self.stop_sent = False  # its poison pill was written
        self.exited = False  # reaped, pipes closed
        self.gone = False  # its exit is being confirmed and reaped: send it nothing more
        self.signalled = False  # it said it leaves on SIGTERM, as told (not a crash)
        self.timed_out: int | None = None  # position of the event it was killed for
        self.kill_at: float | None = None
        self.settle_after = 0.0  # monotonic: its finished events are next settled early then
        self.rss = 0
        self.counters: dict[str, int] = {}  # the last HandlerCounters it sent (cumulative)
        self.retiring: str | None = None  # why it is leaving for a fresh worker, if it is
        # Under forkserver the sentinel reports the server's death as the worker's: once it
        # fired for a worker still alive, the worker is watched by its result pipe and pid.
        self.orphaned = False

    @property
    def inflight_events(self) -> int:
        return sum(len(batch.seqs) for batch in self.batches)

    @property
    def open(self) -> bool:
        """Running, and still to be sent events: not told to stop, not leaving."""
        return not (self.exited or self.gone or self.stop_sent or self.retiring is not None)


class Slot:
    """A worker position: it outlives the processes that fill it one after another."""

    def __init__(self, index: int, progress: Any) -> None:
        self.index = index
        self.progress = progress
        # The same memory as int64s: an item read costs a fraction of a ctypes one.
        self.view = memoryview(progress).cast("B").cast("q")
        self.worker: WorkerHandle | None = None
        self.restart_at: float | None = None
        self.crash_streak = 0
        self.start_failures = 0
        self.retired = False  # processed its poison pill: not to be restarted


class WorkerSettings(NamedTuple):
    """What every worker of a dispatcher is started with, from the dispatcher's settings."""

    idle_spin: float  # seconds
    max_events: int | None  # max_events_per_worker
    max_memory: int | None  # max_memory_per_worker, bytes
    stamp_starts: bool  # the clock is read at each event's start: event_timeout is set


def processor_label(slot_index: int) -> str:
    """What a slot's :class:`~eventmp.processor.EventProcessor` is called, process after process."""
    return f"EventProcessor-{slot_index}"


def processor_name(worker: WorkerHandle) -> str:
    """The originator of an event the worker failed: its slot's label and its pid."""
    return f"{processor_label(worker.slot)}[pid {worker.pid}]"


def restart_delay(crash_streak: int) -> float:
    """How long to wait before restarting a slot whose workers crashed ``crash_streak`` times."""
    if crash_streak <= 1:
        return 0.0
    return float(min(BACKOFF_FIRST * 2 ** (crash_streak - 2), BACKOFF_MAX))


def start_worker(
    context: Any,
    slot: Slot,
    batches: deque[Batch],
    settings: WorkerSettings,
    *,
    label: str,
    wake_fd: int,
    close_fds: Sequence[int],
    ringing: bool,
    flooded: bool,
) -> WorkerHandle:
    """Start a worker process for ``slot`` on fresh pipes; it is not ready yet.

    ``close_fds`` are the parent's descriptors a forked worker must close (other workers'
    pipe ends, the wake-up pipe): holding them would keep pipes open that must close when
    their owner dies.
    """
    task_r, task_w = os.pipe2(os.O_CLOEXEC)
    _enlarge_pipe(task_w)
    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    for index in range(PROGRESS_FIELDS):
        slot.progress[index] = 0
    slot.progress[RING] = int(ringing)
    slot.progress[FLOODED] = int(flooded)
    fork_close = [task_w, result_r, *close_fds] if context.get_start_method() == "fork" else []
    tasks = multiprocessing.connection.Connection(task_r, writable=False)
    results = multiprocessing.connection.Connection(result_w, readable=False)
    # The worker's own copy of the wake-up pipe's write end (non-blocking, as it is here).
    ring = multiprocessing.connection.Connection(os.dup(wake_fd), readable=False)
    processor = EventProcessor(
        label,
        tasks,
        results,
        slot.progress,
        ring=ring,
        idle_spin_ns=int(settings.idle_spin * 1e9),
        close_fds=fork_close,
        max_events=settings.max_events,
        max_memory=settings.max_memory,
        stamp_starts=settings.stamp_starts,
    )
    process = context.Process(
        target=worker_main,
        args=(processor,),
        name=f"eventmp-worker-{slot.index}",
        daemon=False,  # so that handlers may start processes of their own
    )
    try:
        process.start()
    except BaseException:
        for fd in (task_w, result_r):
            os.close(fd)
        raise
    finally:
        tasks.close()
        results.close()
        ring.close()
    os.set_blocking(task_w, False)
    os.set_blocking(result_r, False)
    logger.debug("started worker %s in slot %d", process.pid, slot.index)
    return WorkerHandle(slot.index, process, task_w, result_r, batches)


def _enlarge_pipe(fd: int) -> None:
    """Give a task pipe room for a whole batch (Linux; elsewhere, or refused, it stays as is).

    The parent writes a batch while it has the time, between polls of its generators; what
    the pipe cannot take waits in the parent until its next turn, and a worker that has read
    the pipe empty meanwhile waits with it. See docs/design.md, "Transport".
    """
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if set_size is None:
        return
    with contextlib.suppress(OSError):  # EPERM over /proc/sys/fs/pipe-max-size, or the user's
        fcntl.fcntl(fd, set_size, TASK_PIPE_BYTES)


def start_failure_message(start_method: str, pid: int, exitcode: int | None) -> str:
    """Why a worker died before it was ready, and what usually causes it."""
    hint = ""
    if start_method != "fork":
        hint = (
            f" Under {start_method!r} the worker re-imports the main module and "
            "eventmp: a script needs an `if __name__ == '__main__':` guard, and every "
            "module the handlers use must be importable; the worker's traceback is on "
            "stderr."
        )
    return f"worker process {pid} {describe_exit(exitcode)} before it was ready.{hint}"


def confirm_exit(worker: WorkerHandle, start_method: str) -> bool:
    """After its sentinel fired: true if the worker is gone (may sleep; call without the lock).

    A direct child's sentinel is the truth; a forkserver child's may be the server's. The
    sentinel fires as the process closes its files, a moment before it is a zombie, so a
    forkserver child gets that moment to show it is gone.
    """
    if start_method != "forkserver":
        return True
    deadline = time.monotonic() + _EXIT_CONFIRM
    while not process_gone(worker.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def reap(worker: WorkerHandle, grace: float) -> int | None:
    """Wait (bounded) for a worker that is leaving; its exit code, None if unknowable.

    May join for ``grace`` seconds, then kill: call it without the dispatcher's lock.
    """
    if worker.orphaned:
        # Its forkserver, which alone could report the status, is gone.
        deadline = time.monotonic() + grace
        while not process_gone(worker.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not process_gone(worker.pid):
            send_signal(worker.pid, signal.SIGKILL)
        return None
    worker.process.join(grace)
    if worker.process.exitcode is None:
        send_signal(worker.pid, signal.SIGKILL)
        worker.process.join(grace)
    exitcode: int | None = worker.process.exitcode
    return exitcode


def terminate(worker: WorkerHandle, grace: float) -> None:
    """SIGTERM now, SIGKILL after ``grace`` if it has not exited (pebble's way).

    Does not wait: the SIGKILL is the pool's to send, at ``worker.kill_at``.
    """
    send_signal(worker.pid, signal.SIGTERM)
    if worker.kill_at is None:
        worker.kill_at = time.monotonic() + grace


def kill(worker: WorkerHandle, grace: float) -> None:
    """Terminate, wait ``grace``, then kill; never an unbounded join (pebble's way)."""
    if worker.orphaned:
        send_signal(worker.pid, signal.SIGKILL)
        return
    if worker.process.exitcode is not None:
        return
    send_signal(worker.pid, signal.SIGTERM)
    worker.process.join(grace)
    if worker.process.exitcode is None:
        send_signal(worker.pid, signal.SIGKILL)
        worker.process.join(grace * 5)


def close(worker: WorkerHandle) -> None:
    """Close the parent's ends of the worker's pipes and release the process object."""
    worker.exited = True
    for fd in (worker.task_fd, worker.result_fd):
        with contextlib.suppress(OSError):
            os.close(fd)
    # close() refuses a process still running: only when start() failed half-way.
    with contextlib.suppress(ValueError):
        worker.process.close()


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as gone: it runs no more code)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def send_signal(pid: int, signum: int) -> None:
    """``os.kill``, quiet if the process is gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
