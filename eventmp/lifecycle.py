"""Each slot's workers, one after another: start one, settle what it held when it leaves, and
start the next (or none, and then what was queued for it is stranded).

Runs in the parent process with the dispatcher's lock held: in the dispatcher thread (a
worker's exit, a restart due, stopping) and in ``start()``'s caller (the first workers).
Starting a worker forks or asks the forkserver; nothing here sleeps or joins (reaping is
:mod:`eventmp.workers`' and runs without the lock). Which exits fail an event and which slots
get a fresh worker is the table "Workers that leave" in ``docs/design.md``.

:class:`~eventmp.pool.WorkerPool` owns it: the pool reads a leaving worker's last messages
before it hands the exit here, and acts on what each restart and exit returns
(:class:`SlotChange`: a replacement started, a worker recycled, one that cannot start, an
event failed): it counts them, notifies the lock's waiters and wakes the dispatcher thread.
Nothing here calls back into the pool or touches the lock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, NamedTuple

from . import workers
from .errors import (
    EventAbandonedError,
    EventmpError,
    HandlerTimeoutError,
    WorkerCrashedError,
    WorkerStartError,
    describe_exit,
)
from .ledger import Ledger
from .messages import FINISHED, STARTED
from .shared import Mode, Waker
from .workers import Slot, WorkerHandle, WorkerSettings, processor_label, processor_name

__all__ = ["NO_CHANGE", "SlotChange", "WorkerLifecycle"]

logger = logging.getLogger("eventmp")

_START_RETRIES = 5


class SlotChange(NamedTuple):
    """What a restart or a worker's exit changed that the pool counts or acts on."""

    restarted: bool = False  # a replacement worker was started
    recycled: bool = False  # a worker left at its recycling limit, for a fresh one
    start_error: WorkerStartError | None = None  # a worker cannot start: the pipeline breaks
    failed: bool = False  # the event a dead worker ran failed: the dispatcher thread delivers it


NO_CHANGE = SlotChange()


class WorkerLifecycle:
    """Starts the worker of a slot, and settles each exit by the table of workers that leave."""

    def __init__(
        self,
        ledger: Ledger,
        waker: Waker,
        mode: Mode,
        slots: list[Slot],
        *,
        context: Any,
        settings: WorkerSettings,
        event_timeout: float | None,
    ) -> None:
        self.ledger = ledger
        self.waker = waker  # its pipe's ends, which a forked worker closes or rings
        self.mode = mode
        self.slots = slots  # the pool's, filled by WorkerPool.start_all
        self.context = context
        self.start_method: str = context.get_start_method()
        self.settings = settings
        self.event_timeout = event_timeout

    def start_worker(self, slot: Slot, *, ringing: bool, flooded: bool) -> None:
        """Start a worker process in ``slot`` (not ready yet) and open its record in the ledger.

        ``ringing`` and ``flooded`` are the pool's and the sender's marks now, which the fresh
        progress array starts with.
        """
        close_fds = [self.waker.read_fd, self.waker.write_fd]
        for other in self.slots:
            if other.worker is not None and not other.worker.exited:
                close_fds += [other.worker.task_fd, other.worker.result_fd]
        handle = workers.start_worker(
            self.context,
            slot,
            deque(),
            self.settings,
            label=processor_label(slot.index),
            wake_fd=self.waker.write_fd,
            close_fds=close_fds,
            ringing=ringing,
            flooded=flooded,
        )
        handle.batches = self.ledger.worker_started(handle.id, slot.index)
        slot.worker = handle
        slot.restart_at = None

    def restart(self, slot: Slot, *, ringing: bool, flooded: bool) -> SlotChange:
        """Start the fresh worker due in ``slot``, unless everything is being abandoned."""
        if self.mode.abandoning is not None or slot.retired:
            slot.restart_at = None
            return NO_CHANGE
        try:
            self.start_worker(slot, ringing=ringing, flooded=flooded)
        except Exception as exc:
            # A forkserver killed by the same process-group signal refuses connections for a
            # moment before multiprocessing starts a new one: retry a few times, then give up.
            slot.start_failures += 1
            if slot.start_failures > _START_RETRIES:
                error = WorkerStartError(f"could not start a replacement worker: {exc}")
                return SlotChange(start_error=error)
            logger.warning("could not start a worker (%s); retrying", exc)
            slot.restart_at = time.monotonic() + workers.BACKOFF_FIRST * 2**slot.start_failures
            return NO_CHANGE
        slot.start_failures = 0
        return SlotChange(restarted=True)

    def worker_exited(self, worker: WorkerHandle, exitcode: int | None) -> SlotChange:
        """Settle every event the reaped worker held, then arrange its replacement (or not).

        Call it once every message the worker wrote was read: they come before its marks.
        """
        slot = self.slots[worker.slot]
        started = int(slot.view[STARTED])
        finished = int(slot.view[FINISHED])
        workers.close(worker)
        slot.worker = None
        outcome = self.ledger.worker_exited(
            worker.id,
            started,
            finished,
            resync_unstarted=(
                exitcode != 0 and self.mode.abandoning is None and not worker.signalled
            ),
        )
        failed = outcome.crashed is not None and self.ledger.fail(
            outcome.crashed,
            processor_name(worker),
            self._death_error(worker, started, exitcode),
        )
        start_error = None
        start_failed = not worker.ready and self.mode.running and (exitcode or 0) > 0
        if start_failed:
            # What it held is queued again by now: Stopping.break_down fails it with the reason.
            start_error = WorkerStartError(
                workers.start_failure_message(self.start_method, worker.pid, exitcode)
            )
        told_to_leave = worker.signalled or (
            exitcode == 0 and outcome.crashed is None and worker.retiring is None
        )
        recycled = False
        if outcome.took_pill or self.mode.abandoning is not None or start_failed:
            # It took its poison pill and left, everything is abandoned, or the pipeline is
            # breaking because a worker cannot start: no fresh worker.
            slot.retired = True
        elif (
            told_to_leave
            and not self.mode.running
            and not (self.ledger.backlog(slot.index) or self.ledger.resync[slot.index])
        ):
            # Told to leave while stopping (a SIGTERM to the whole process group, say), with
            # nothing left for it to drain: not a crash, and no fresh worker.
            slot.retired = True
            logger.info("worker %s left on SIGTERM while stopping", worker.pid)
        else:
            delay = 0.0
            if told_to_leave:
                logger.info("worker %s left (SIGTERM); starting a fresh one", worker.pid)
            elif worker.retiring is not None and outcome.crashed is None:
                recycled = True
                logger.info("recycling worker %s: %s", worker.pid, worker.retiring)
            else:
                slot.crash_streak += 1
                delay = workers.restart_delay(slot.crash_streak)
                if outcome.crashed is None:
                    logger.warning(
                        "idle worker %s %s; starting a fresh one",
                        worker.pid,
                        describe_exit(exitcode),
                    )
            slot.restart_at = time.monotonic() + delay
        return SlotChange(recycled=recycled, start_error=start_error, failed=failed)

    def take_stranded(self) -> list[int]:
        """Take from the queues the events no worker is left to run (stopping).

        A worker that leaves on SIGTERM while the dispatcher stops (systemd's
        ``KillMode=control-group`` signals every process of the service) is not replaced: what
        was queued for its slot alone, and the shared backlog once no slot has a worker, has
        no one else to run it.
        """
        ledger = self.ledger
        if not ledger.queued():
            return []
        stranded: list[int] = []
        for slot in self.slots:
            if slot.retired:
                stranded += ledger.take_resync(slot.index)
                if ledger.keyed:
                    stranded += ledger.take(slot.index, len(ledger.lanes[slot.index]))
        if not ledger.keyed and all(slot.retired for slot in self.slots):
            stranded += ledger.take(0, len(ledger.shared))
        return stranded

    def _death_error(self, worker: WorkerHandle, pos: int, exitcode: int | None) -> EventmpError:
        """Why the event a dead worker held failed."""
        if self.mode.abandoning is not None:
            return EventAbandonedError(self.mode.abandoning)
        if worker.timed_out == pos and self.event_timeout is not None:
            return HandlerTimeoutError(self.event_timeout, worker.pid)
        return WorkerCrashedError(exitcode, worker.pid)
