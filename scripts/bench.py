"""Benchmark eventmp against the IPC ceiling and its peers (issue 4).

Usage::

    .venv/bin/python scripts/bench.py [--quick] [--runs N] [--json PATH] [--baseline REF]

Progress goes to stderr; at the end a markdown table (for the README), the ratios
eventmp / peer and the goal checks of issue 4 go to stdout, and every figure is written as JSON
(default ``bench-results.json``). Each run performs every measurement once, and the runs are
interleaved (run 1 does them all, then run 2, ...), so that a burst of load elsewhere on the
machine hits every path rather than one; the table shows the median over the runs and the
min-max range. ``--quick`` does one run with about ten times fewer events: a smoke test that
the script works, not a measurement. A failed measurement is reported and the script goes on;
the exit code is 0 whatever the goals say (this is a measurement, not a test).

What is measured:

1. Throughput: a no-op handler, one worker, small events (``data`` is an int), events/s. Every
   eventmp path runs under ``fork`` and under eventmp's default start method (forkserver on
   Linux); the peers run under ``fork`` (Python 3.11's default on Linux), loky under its own.

   a. eventmp ``submit()``: events are built before timing, once the worker runs (as on every
      other path: under ``fork``, objects built before the fork and written after it cost the
      parent a copy-on-write fault per page); the clock runs from the first ``submit()`` until
      ``wait()`` returns.
   b. eventmp fed by a generator that returns chunks of 1,000 events per poll
      (``poll_interval=0``); the clock runs from ``add_event_generator()`` to ``wait()``.
   c. The hand-written batched-Pipe ceiling: the parent pickles lists of 256 whole
      ``eventmp.Event`` objects (protocol 5) and writes them with ``Connection.send_bytes`` to
      one worker, which loads each list, calls every event's handler and acknowledges each list;
      at most two lists are unacknowledged; the worker runs ``gc.freeze()``. The goals use it
      as the issue defines it; a reference row runs it with lists of 1,024 (eventmp's largest
      batch), under ``fork``.
   d. ``multiprocessing.Queue``, one ``put()`` per event and one acknowledgement per event on a
      return queue: the naive design (fewer events).
   e. ``concurrent.futures.ProcessPoolExecutor(max_workers=1)``: ``submit()`` per event (fewer
      events) and ``map(chunksize=1024)``.
   f. loky ``get_reusable_executor(max_workers=1).map(chunksize=1024)`` and pebble
      ``ProcessPool(max_workers=1).map(chunksize=1024)``, skipped with a note if not installed
      (they are the project's optional ``bench`` extra).

   The peers carry the same ``Event`` objects as eventmp and the ceiling, and run the same
   handler on each (``fn(event)``). One reference row maps the executor over bare ints instead,
   to show how much of any path's cost is the payload; two more run eventmp's ``submit()`` with
   one worker per CPU, shared and routed by a key of 8 values (cheap events then batch up as
   for one worker, rather than go out a few at a time to whichever worker is idle). The goals
   use none of them.

2. Idle latency: one event at a time with the pipeline idle (2 ms between events), from
   ``submit()`` to the handler starting; median and p99. The parent stores
   ``time.monotonic_ns()`` in ``event.data`` just before ``submit()``; the handler, one instance
   of :class:`LatencyRecorder` kept in the worker, stamps ``time.monotonic_ns()`` on entry and
   keeps both in a list, which a final event makes it write to a file the parent then reads.
   CLOCK_MONOTONIC is system-wide on Linux, so the stamps compare across processes. The
   reference is a raw ``multiprocessing`` Pipe one-way trip measured the same way: the parent
   stamps, then ``send_bytes``; the worker stamps when ``recv_bytes`` returns.

3. Latency under a busy producer: a producer thread submits at a fixed offered rate (30,000
   events/s for about 3 s), pacing itself with a busy loop on ``time.perf_counter`` so that it
   holds the GIL like a real busy producer; median and p99 latency as above, and the same for
   a raw Pipe sender (one ``send_bytes`` per event) at the same rate.

   Every latency row also shows the share of all CPU time the hypervisor took (steal, from
   ``/proc/stat``) while it was measured: on a shared VM the worker is now and then not run
   for milliseconds, which no design on this side of the hypervisor can hide. So after the goals
   the busy-producer p99 is listed run by run, ordered by steal, eventmp beside the raw Pipe,
   with the median over the quiet runs (under 1% steal): the comparison at equal steal. A
   reference row runs the busy producer with ``idle_spin=0`` (workers sleep as soon as they run
   out of batches, where by default they poll a moment first); the goal uses the default.

4. A CPU-heavy handler (a pure-Python loop of about 5 ms, calibrated in the parent) over
   ``workers=1..os.cpu_count()``: events/s and the speed-up against one worker, as the median
   of the per-run ratios (each run measures both rows close together, so a noisy minute moves
   both rather than one).

5. Restart time after a crash: the handler calls ``os._exit(1)`` on a marked event; the time
   from submitting that event to the handler of the next event starting in the fresh worker
   (which appends its ``time.monotonic_ns()`` to a file); median, min and max of 10 crashes,
   under ``fork`` and under the default start method.

6. Parent RSS while 1,000,000 events are submitted as fast as possible to one worker whose
   handler (a tiny busy loop) is slower than the producer, with ``max_pending`` at its default
   and at ten times that. A thread samples ``psutil.Process().memory_info().rss`` (and the
   dispatcher's pending count) every 50 ms; reported: baseline, peak, peak minus baseline (MB),
   and the peak pending count. It runs in a fresh interpreter (a spawned process that starts
   the dispatcher), so that memory the other measurements freed, but the allocator kept, does
   not absorb the growth. The point: memory is bounded by ``max_pending``, not by the number
   of events; for scale, the table also shows what holding every event at once would take
   (traced with ``tracemalloc`` on a sample of events kept in a dict).

7. GC in a forked worker (the issue asks to measure it): the parent holds 2,000,000 small lists
   when the worker forks; the handler keeps a small list per event (as a handler that
   aggregates does), so the worker's collector keeps promoting objects and now and then runs a
   full collection, which re-scans whatever it inherited. eventmp's worker calls
   ``gc.freeze()`` as it starts; the second row patches that out. The figure is the worker's
   CPU time per event (psutil), since the parent, not the worker, limits the events/s.

A/B against a baseline commit (``--baseline REF``): the script checks REF out with ``git worktree
add --detach`` into a temporary directory (removed at the end, also on error, then ``git worktree
prune``) and measures every eventmp row twice per run, once with this tree's ``eventmp`` and
once with the baseline's: throughput by ``submit()`` and by a generator under each start method,
the two ``workers=N`` reference rows, idle latency, busy-producer latency (with the
``idle_spin=0`` row), the CPU-heavy rows and restart time. The peers, the raw Pipe and Queue
references, the RSS and the GC rows run once, in this process, as usual: they are not eventmp
code (RSS and GC are left out to keep the A/B short). Both sides of a row run the same function of
this script, each in a fresh interpreter (``bench.py --one-case KEY --json-out FILE``) whose
``PYTHONPATH`` is that tree's root, so that both pay the same start-up and neither inherits the
other's heap; spawn and forkserver workers inherit ``PYTHONPATH``. The two run back to back,
which one first alternating from row to row and run to run. Before measuring, a probe in each
tree checks that ``eventmp.__file__``, in the interpreter and in its workers under every start
method, lies under that tree, and whether ``poll_interval=0`` works there (if it fails in either,
both generator rows use 0.001). The measurements use eventmp's public API only, so any commit
with the same API can serve as the baseline; a row the baseline cannot run is shown as failed.
The usual tables then show this tree's figures from those fresh interpreters (the peers still
run in this process), and one more table, "this tree vs baseline", shows for each eventmp row and
figure the median and min-max of each side and the ratio of the medians (this / baseline; for
events/s higher is better, for latency and restart time lower is better), flagging a row more
than 10% worse. The JSON holds the same (``ab``), both commits, and each row's baseline runs.

Worker-side functions and classes are at module level and the script only runs under
``if __name__ == "__main__":``, so ``spawn`` and ``forkserver`` workers can import it.
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures
import contextlib
import functools
import gc
import inspect
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

import eventmp
from eventmp import Event, EventDispatcher, EventGenerator, WorkerCrashedError
from eventmp import default_start_method as eventmp_default_start_method
from eventmp.testing import ErrorCollector

Connection = multiprocessing.connection.Connection

PICKLE_PROTOCOL = 5
CEILING_BATCH = 256  # events per pickled list in the batched-Pipe ceiling
CEILING_WINDOW = 2  # lists a worker may hold unacknowledged
# eventmp sends up to 1,024 events per batch; the ceiling of the issue is 256, so a reference
# row shows the hand-written Pipe at eventmp's batch size too.
MAX_BATCH_REFERENCE = 1024
GENERATOR_CHUNK = 1_000  # events per poll for the generator-fed path
WARM_UP_EVENTS = 1_000  # events through a pipeline before the clock starts
LATENCY_WARM_UP = 50  # first latency samples dropped (handler definition, cold caches)
RSS_HANDLER_ITERATIONS = 200  # the "slightly slower than the producer" handler's loop
RSS_SAMPLE_PERIOD = 0.05
RSS_SLACK_MB = 16.0  # allocator slack allowed on top of max_pending's worth of events
WAIT_TIMEOUT = 300.0  # no single wait in this script should come near it
QUIET_STEAL_PCT = 1.0  # a latency run with less CPU steal than this counts as quiet
DUMP = "dump"  # event data that makes a LatencyRecorder write its samples
AB_WORSE = 0.10  # an A/B row this much worse than the baseline is flagged
AB_CHILD_TIMEOUT = WAIT_TIMEOUT + 120.0  # one measurement in a fresh interpreter
THIS_TREE = Path(__file__).resolve().parents[1]  # the checkout this script belongs to


# == worker side (module level, so that spawn and forkserver workers can import it) ============


def noop_handler(event: Event) -> bool:
    """The no-op handler of the throughput measurements."""
    return True


def eighth(event: Event) -> int:
    """The routing key of the keyed throughput row: 8 keys, spread over the workers."""
    return int(event.data) & 7


def noop_task(value: int) -> None:
    """A no-op function of the bare data: the executors' warm-up, and the bare-ints reference."""


def burn(iterations: int) -> int:
    """A pure-Python loop that holds the CPU (and its process's GIL)."""
    total = 0
    for i in range(iterations):
        total += i
    return total


class CpuBurner:
    """The CPU-heavy handler: ``event.data`` iterations of :func:`burn`.

    With a ``path``, it then appends its worker's pid to that file, so the parent can tell how
    the events were spread over the workers (one short write next to a 5 ms loop).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def process_event(self, event: Event) -> bool:
        burn(event.data)
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        return True


class Keeper:
    """A stateful handler: keeps a small list per event, as a handler that aggregates does."""

    def __init__(self) -> None:
        self.kept: list[list[Any]] = []

    def process_event(self, event: Event) -> bool:
        self.kept.append([event.data])
        return True


def rss_handler(event: Event) -> bool:
    """A handler a little slower than the producer, so that the backlog fills up."""
    burn(RSS_HANDLER_ITERATIONS)
    return True


class LatencyRecorder:
    """Keeps ``(submit stamp, handler-start stamp)`` pairs in the worker; dumps them on demand.

    eventmp keeps one instance of a handler per worker, so ``samples`` accumulates across
    events. An event whose data is :data:`DUMP` writes the list to ``path`` as JSON.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # A flat array of ints, not a list of tuples: 90,000 tuples would make the worker's
        # garbage collector, not the pipeline, the cause of the worst latencies measured.
        self.samples = array.array("q")

    def process_event(self, event: Event) -> bool:
        now = time.monotonic_ns()
        if type(event.data) is int:
            self.samples.append(event.data)
            self.samples.append(now)
            return True
        Path(self.path).write_text(json.dumps(_pairs(self.samples)))
        self.samples = array.array("q")
        return True


def _pairs(flat: array.array[int]) -> list[tuple[int, int]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


class CrashOrStamp:
    """``os._exit(1)`` on the event ``"crash"``; otherwise append ``monotonic_ns`` to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def process_event(self, event: Event) -> bool:
        now = time.monotonic_ns()
        if event.data == "crash":
            os._exit(1)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{now}\n".encode())
        finally:
            os.close(fd)
        return True


class WhereIsEventmp:
    """Writes the worker's ``eventmp.__file__`` to ``path``: which tree the worker imported."""

    def __init__(self, path: str) -> None:
        self.path = path

    def process_event(self, event: Event) -> bool:
        Path(self.path).write_text(str(sys.modules["eventmp"].__file__))
        return True


def pipe_ceiling_worker(tasks: Connection, acks: Connection) -> None:
    """The batched-Pipe ceiling's worker: load a list of events, run them, ack the list."""
    gc.freeze()
    acks.send_bytes(b"r")
    while True:
        data = tasks.recv_bytes()
        if not data:
            break
        for event in pickle.loads(data):
            event.handler(event)
        acks.send_bytes(b"a")


def queue_worker(tasks: Any, acks: Any) -> None:
    """The naive design's worker: one event per ``get()``, one ack per event."""
    while True:
        event = tasks.get()
        if event is None:
            break
        event.handler(event)
        acks.put(True)


def raw_latency_worker(tasks: Connection, ready: Connection, path: str) -> None:
    """Stamp each 8-byte submit stamp on receipt; write the pairs to ``path`` at the end."""
    samples = array.array("q")  # flat, as in LatencyRecorder: no garbage-collector pauses
    ready.send_bytes(b"r")
    while True:
        data = tasks.recv_bytes()
        now = time.monotonic_ns()
        if len(data) != 8:
            break
        samples.append(int.from_bytes(data, "little"))
        samples.append(now)
    Path(path).write_text(json.dumps(_pairs(samples)))


# == helpers ====================================================================================


class BenchError(Exception):
    """A measurement could not be taken (or its result cannot be trusted)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    throughput_events: int = 200_000
    queue_events: int = 50_000
    ppe_submit_events: int = 20_000
    latency_events: int = 2_000
    latency_gap_s: float = 0.002
    busy_rate: int = 30_000
    busy_seconds: float = 3.0
    cpu_events: int = 400
    cpu_handler_ms: float = 5.0
    restarts: int = 10
    rss_events: int = 1_000_000
    gc_events: int = 500_000
    gc_heap_objects: int = 2_000_000


QUICK_SIZES = Sizes(
    throughput_events=20_000,
    queue_events=5_000,
    ppe_submit_events=2_000,
    latency_events=200,
    busy_seconds=0.5,
    cpu_events=80,
    restarts=3,
    rss_events=200_000,
    gc_events=50_000,
    gc_heap_objects=200_000,
)


@dataclass
class Case:
    """One measurement: ``run()`` returns its figures for one run."""

    key: str
    group: str
    label: str
    method: str
    run: Callable[[], dict[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    ab: bool = False  # an eventmp row: with --baseline, measured in both trees
    baseline: list[dict[str, Any]] = field(default_factory=list)  # the baseline's results


@dataclass(frozen=True)
class Plan:
    """What the measurements need beyond :class:`Sizes`, decided once in the parent.

    A child interpreter of the A/B mode gets it as JSON, so that both trees measure exactly the
    same thing (the same start methods, generator poll interval and CPU-heavy loop).
    """

    default_method: str
    methods: tuple[str, ...]
    cores: int
    generator_interval: float = 0.0
    cpu_iterations: int = 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolated between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no samples")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_figures(pairs: list[tuple[int, int]], expected: int) -> dict[str, Any]:
    """Median, p99 and max (µs) of ``receive - submit`` over the pairs after the warm-up."""
    if len(pairs) != expected:
        raise BenchError(f"expected {expected} latency samples, got {len(pairs)}")
    micros = [(received - sent) / 1000 for sent, received in pairs[LATENCY_WARM_UP:]]
    return {
        "samples": len(micros),
        "median_us": statistics.median(micros),
        "p99_us": percentile(micros, 0.99),
        "max_us": max(micros),
        "mean_us": statistics.fmean(micros),
    }


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def with_steal(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measure`` and add the share of CPU time the hypervisor took meanwhile (%)."""
    before = cpu_ticks()
    result = measure()
    after = cpu_ticks()
    if before is not None and after is not None and after[1] > before[1]:
        result["steal_pct"] = 100.0 * (after[0] - before[0]) / (after[1] - before[1])
    return result


@contextlib.contextmanager
def dispatcher(**options: Any) -> Iterator[tuple[EventDispatcher, ErrorCollector]]:
    """A started dispatcher with an error collector; stopped (bounded) on the way out."""
    errors = ErrorCollector()
    instance = EventDispatcher(**options)
    instance.error_handler(errors)
    instance.start()
    try:
        yield instance, errors
    finally:
        instance.stop(timeout=30)


def wait_idle(instance: EventDispatcher, timeout: float = WAIT_TIMEOUT) -> None:
    if not instance.wait(timeout):
        raise BenchError(f"wait() did not return within {timeout}s: {instance.stats()}")


def check_outcomes(instance: EventDispatcher, errors: ErrorCollector, processed: int) -> None:
    """Every event was processed, none failed."""
    stats = instance.stats()
    if errors.events:
        first = errors.exceptions[0]
        raise BenchError(
            f"{len(errors.events)} events failed, first: {type(first).__name__}: {first}"
        )
    if stats.processed != processed:
        raise BenchError(f"expected {processed} events processed: {stats}")


def warm_up(instance: EventDispatcher, handler: Any, count: int = WARM_UP_EVENTS) -> int:
    """Run ``count`` events through the pipeline; return how many were processed so far."""
    for i in range(count):
        instance.submit(Event("bench", handler, i))
    wait_idle(instance)
    return instance.stats().processed


def make_events(count: int, handler: Any = noop_handler) -> list[Event]:
    return [Event("bench", handler, i) for i in range(count)]


def rate(count: int, seconds: float) -> dict[str, Any]:
    return {"events": count, "seconds": seconds, "events_per_s": count / seconds}


class ChunkGenerator(EventGenerator):
    """Returns the given events ``chunk`` at a time, then says it is finished.

    (``eventmp.testing.ListEventGenerator`` re-slices its remaining list on every poll, which
    is quadratic in the number of events: fine for tests, a distortion here.)
    """

    def __init__(self, events: list[Event], chunk: int) -> None:
        self._events = events
        self._chunk = chunk
        self._next = 0

    def get_events(self) -> list[Event]:
        start = self._next
        self._next = min(start + self._chunk, len(self._events))
        if self._next >= len(self._events):
            self.finished = True
        return self._events[start : self._next]


def probe_poll_interval_zero(method: str) -> bool:
    """True if a dispatcher with ``poll_interval=0`` completes one submitted event."""
    instance = EventDispatcher(0, start_method=method)
    instance.start()
    try:
        instance.submit(Event("bench", noop_handler, 0))
        return instance.wait(3.0)
    finally:
        instance.stop(timeout=2)


# == 1. throughput ===============================================================================


def tp_eventmp_submit(
    method: str, count: int, workers: int = 1, key: Callable[[Event], int] | None = None
) -> dict[str, Any]:
    options = {"poll_interval": 1.0, "start_method": method, "workers": workers, "key": key}
    with dispatcher(**options) as (instance, errors):
        before = warm_up(instance, noop_handler)
        # Made once the worker runs, as every other path here makes them: under fork, objects
        # made before it and written after (reference counts) cost the parent a copy-on-write
        # page fault per page (6,700 faults for 200,000 events, about 0.3 us/event).
        events = make_events(count)
        start = time.perf_counter()
        for event in events:
            instance.submit(event)
        wait_idle(instance)
        elapsed = time.perf_counter() - start
        check_outcomes(instance, errors, before + count)
    return rate(count, elapsed)


def tp_eventmp_generator(method: str, count: int, poll_interval: float) -> dict[str, Any]:
    with dispatcher(poll_interval=poll_interval, start_method=method) as (instance, errors):
        before = warm_up(instance, noop_handler)
        events = make_events(count)  # after the fork, as in tp_eventmp_submit
        generator = ChunkGenerator(events, GENERATOR_CHUNK)
        start = time.perf_counter()
        instance.add_event_generator(generator)
        wait_idle(instance)
        elapsed = time.perf_counter() - start
        check_outcomes(instance, errors, before + count)
    return {**rate(count, elapsed), "poll_interval": poll_interval}


def tp_pipe_ceiling(method: str, count: int, batch: int = CEILING_BATCH) -> dict[str, Any]:
    context = multiprocessing.get_context(method)
    task_r, task_w = context.Pipe(duplex=False)
    ack_r, ack_w = context.Pipe(duplex=False)
    process = context.Process(  # type: ignore[attr-defined]
        target=pipe_ceiling_worker, args=(task_r, ack_w), daemon=True
    )
    process.start()
    task_r.close()
    ack_w.close()
    try:
        ack_r.recv_bytes()  # ready
        events = make_events(count)
        unacked = 0
        start = time.perf_counter()
        for first in range(0, count, batch):
            if unacked >= CEILING_WINDOW:
                ack_r.recv_bytes()
                unacked -= 1
            task_w.send_bytes(pickle.dumps(events[first : first + batch], PICKLE_PROTOCOL))
            unacked += 1
        while unacked:
            ack_r.recv_bytes()
            unacked -= 1
        elapsed = time.perf_counter() - start
        task_w.send_bytes(b"")
    finally:
        task_w.close()
        process.join(10)
        if process.exitcode is None:
            process.kill()
            process.join()
        ack_r.close()
    if process.exitcode != 0:
        raise BenchError(f"ceiling worker exited with {process.exitcode}")
    return {**rate(count, elapsed), "batch": batch, "window": CEILING_WINDOW}


def tp_mp_queue(count: int) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    tasks = context.Queue()
    acks = context.Queue()
    process = context.Process(target=queue_worker, args=(tasks, acks), daemon=True)
    process.start()
    try:
        tasks.put(Event("bench", noop_handler, -1))
        acks.get(timeout=60)
        events = make_events(count)
        start = time.perf_counter()
        for event in events:
            tasks.put(event)
        for _ in range(count):
            acks.get(timeout=60)
        elapsed = time.perf_counter() - start
        tasks.put(None)
    finally:
        process.join(10)
        if process.exitcode is None:
            process.kill()
            process.join()
        for queue in (tasks, acks):
            queue.close()
            queue.join_thread()
    return rate(count, elapsed)


def tp_ppe_submit(count: int) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        executor.submit(noop_task, -1).result()
        events = make_events(count)
        start = time.perf_counter()
        futures = [executor.submit(noop_handler, event) for event in events]
        concurrent.futures.wait(futures)
        elapsed = time.perf_counter() - start
        for future in futures:
            future.result()
    return rate(count, elapsed)


def tp_ppe_map(count: int, bare_ints: bool = False) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        executor.submit(noop_task, -1).result()
        if bare_ints:
            start = time.perf_counter()
            for _ in executor.map(noop_task, range(count), chunksize=1024):
                pass
        else:
            events = make_events(count)
            start = time.perf_counter()
            for _ in executor.map(noop_handler, events, chunksize=1024):
                pass
        elapsed = time.perf_counter() - start
    return rate(count, elapsed)


def tp_loky_map(count: int) -> dict[str, Any]:
    import loky  # type: ignore[import-untyped]

    executor = loky.get_reusable_executor(max_workers=1)
    try:
        executor.submit(noop_task, -1).result()
        events = make_events(count)
        start = time.perf_counter()
        for _ in executor.map(noop_handler, events, chunksize=1024):
            pass
        elapsed = time.perf_counter() - start
    finally:
        executor.shutdown(wait=True, kill_workers=True)
    return rate(count, elapsed)


def tp_pebble_map(count: int) -> dict[str, Any]:
    import pebble

    pool = pebble.ProcessPool(max_workers=1, context=multiprocessing.get_context("fork"))
    try:
        pool.submit(noop_task, None, -1).result()
        events = make_events(count)
        start = time.perf_counter()
        for _ in pool.map(noop_handler, events, chunksize=1024).result():
            pass
        elapsed = time.perf_counter() - start
    finally:
        pool.close()  # type: ignore[no-untyped-call]
        pool.join()
    return rate(count, elapsed)


# == 2. and 3. latency ===========================================================================


def paced(send: Callable[[int], None], per_second: int, seconds: float) -> dict[str, Any]:
    """Call ``send(monotonic_ns())`` at ``per_second``, busy-waiting between calls."""
    count = int(per_second * seconds)
    period = 1.0 / per_second
    clock = time.perf_counter
    stamp = time.monotonic_ns
    start = clock()
    for i in range(count):
        due = start + i * period
        while clock() < due:
            pass
        send(stamp())
    elapsed = clock() - start
    return {"offered_per_s": per_second, "sent": count, "achieved_per_s": count / elapsed}


def in_thread(target: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``target`` in a producer thread (not the main thread) and return what it returned."""
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.update(target())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name="bench-producer")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result


def lat_eventmp(
    method: str, tmp: Path, sizes: Sizes, busy: bool, idle_spin: float | None = None
) -> dict[str, Any]:
    path = tmp / f"latency-eventmp-{method}-{'busy' if busy else 'idle'}-{idle_spin}.json"
    path.unlink(missing_ok=True)
    recorder = LatencyRecorder(str(path))
    extra: dict[str, Any] = {}
    options: dict[str, Any] = {"poll_interval": 1.0, "start_method": method}
    if idle_spin is not None:
        options["idle_spin"] = idle_spin
    with dispatcher(**options) as (instance, errors):
        submit = instance.submit
        for _ in range(LATENCY_WARM_UP):
            submit(Event("bench", recorder, time.monotonic_ns()))
            time.sleep(sizes.latency_gap_s)
        if busy:

            def send(stamp: int) -> None:
                submit(Event("bench", recorder, stamp))

            extra = in_thread(lambda: paced(send, sizes.busy_rate, sizes.busy_seconds))
            expected = LATENCY_WARM_UP + extra["sent"]
        else:
            for _ in range(sizes.latency_events):
                event = Event("bench", recorder, 0)
                event.data = time.monotonic_ns()
                submit(event)
                time.sleep(sizes.latency_gap_s)
            expected = LATENCY_WARM_UP + sizes.latency_events
        submit(Event("bench", recorder, DUMP))
        wait_idle(instance)
        check_outcomes(instance, errors, expected + 1)
    pairs = [tuple(pair) for pair in json.loads(path.read_text())]
    return {**latency_figures(pairs, expected), **extra}


def lat_raw_pipe(method: str, tmp: Path, sizes: Sizes, busy: bool) -> dict[str, Any]:
    path = tmp / f"latency-pipe-{method}-{'busy' if busy else 'idle'}.json"
    path.unlink(missing_ok=True)
    context = multiprocessing.get_context(method)
    task_r, task_w = context.Pipe(duplex=False)
    ready_r, ready_w = context.Pipe(duplex=False)
    process = context.Process(  # type: ignore[attr-defined]
        target=raw_latency_worker, args=(task_r, ready_w, str(path)), daemon=True
    )
    process.start()
    task_r.close()
    ready_w.close()
    extra: dict[str, Any] = {}
    try:
        ready_r.recv_bytes()
        send_bytes = task_w.send_bytes

        def send(stamp: int) -> None:
            send_bytes(stamp.to_bytes(8, "little"))

        for _ in range(LATENCY_WARM_UP):
            send(time.monotonic_ns())
            time.sleep(sizes.latency_gap_s)
        if busy:
            extra = in_thread(lambda: paced(send, sizes.busy_rate, sizes.busy_seconds))
            expected = LATENCY_WARM_UP + extra["sent"]
        else:
            for _ in range(sizes.latency_events):
                send(time.monotonic_ns())
                time.sleep(sizes.latency_gap_s)
            expected = LATENCY_WARM_UP + sizes.latency_events
        task_w.send_bytes(b"end")
        process.join(60)
    finally:
        task_w.close()
        ready_r.close()
        if process.exitcode is None:
            process.kill()
            process.join()
    if process.exitcode != 0:
        raise BenchError(f"raw pipe worker exited with {process.exitcode}")
    pairs = [tuple(pair) for pair in json.loads(path.read_text())]
    return {**latency_figures(pairs, expected), **extra}


# == 4. CPU-heavy handler ========================================================================


def worker_cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def gc_in_worker(freeze: bool, count: int, heap_objects: int) -> dict[str, Any]:
    """Worker CPU per event for a stateful handler, forked from a parent with a large heap.

    eventmp's worker calls ``gc.freeze()`` as it starts; with ``freeze`` false it is patched
    out (``fork`` copies the patched module), to show what the collector costs the worker
    when it re-scans the heap it inherited.
    """
    heap = [[i] for i in range(heap_objects)]  # containers the collector tracks
    handler = Keeper()
    events = [Event("bench", handler, i) for i in range(count)]
    with contextlib.ExitStack() as stack:
        real_freeze = gc.freeze
        if not freeze:
            gc.freeze = lambda: None
        try:
            instance, errors = stack.enter_context(
                dispatcher(poll_interval=1.0, start_method="fork")
            )
        finally:
            gc.freeze = real_freeze
        before = warm_up(instance, handler)
        pid = instance.stats().worker_pids[0]
        cpu_before = worker_cpu_seconds(pid)
        start = time.perf_counter()
        for event in events:
            instance.submit(event)
        wait_idle(instance)
        elapsed = time.perf_counter() - start
        cpu = worker_cpu_seconds(pid) - cpu_before
        check_outcomes(instance, errors, before + count)
    del heap
    return {
        **rate(count, elapsed),
        "worker_cpu_us_per_event": cpu / count * 1e6,
        "heap_objects": heap_objects,
    }


def calibrate_burn(milliseconds: float) -> int:
    """Iterations of :func:`burn` that take about ``milliseconds`` here (best of 5)."""
    probe = 200_000
    best = min(_timed(lambda: burn(probe)) for _ in range(5))
    return max(1, int(probe * milliseconds / 1000 / best))


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def cpu_scaling(
    workers: int, count: int, iterations: int, tmp: Path, method: str
) -> dict[str, Any]:
    path = tmp / f"cpu-{workers}.txt"
    path.unlink(missing_ok=True)
    options = {"poll_interval": 1.0, "workers": workers, "start_method": method}
    with dispatcher(**options) as (instance, errors):
        handler = CpuBurner(str(path))
        warm = 4 * workers  # data = i: tiny loops, and every worker gets the handler
        before = warm_up(instance, handler, count=warm)
        events = [Event("bench", handler, iterations) for _ in range(count)]
        start = time.perf_counter()
        for event in events:
            instance.submit(event)
        wait_idle(instance)
        elapsed = time.perf_counter() - start
        check_outcomes(instance, errors, before + count)
    spread = sorted(Counter(path.read_text().split()[warm:]).values(), reverse=True)
    return {
        **rate(count, elapsed),
        "workers": workers,
        "iterations": iterations,
        "busiest_worker_events": spread[0],
        "events_per_worker": spread,
    }


# == 5. restart after a crash ====================================================================


def restart_time(method: str, tmp: Path, crashes: int) -> dict[str, Any]:
    path = tmp / f"restart-{method}.txt"
    path.unlink(missing_ok=True)
    handler = CrashOrStamp(str(path))
    samples: list[float] = []
    with dispatcher(poll_interval=1.0, start_method=method) as (instance, errors):
        instance.submit(Event("bench", handler, "ok"))
        wait_idle(instance)
        for _ in range(crashes):
            start = time.monotonic_ns()
            instance.submit(Event("bench", handler, "crash"))
            instance.submit(Event("bench", handler, "ok"))
            wait_idle(instance)
            stamped = int(path.read_text().split()[-1])
            samples.append((stamped - start) / 1e6)
        stats = instance.stats()
    crashed = [exc for exc in errors.exceptions if isinstance(exc, WorkerCrashedError)]
    if len(crashed) != crashes or len(errors.events) != crashes:
        raise BenchError(f"expected {crashes} WorkerCrashedError, got {errors.exceptions!r}")
    if stats.worker_restarts != crashes or stats.processed != crashes + 1:
        raise BenchError(f"unexpected counters after {crashes} crashes: {stats}")
    return {
        "crashes": crashes,
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "samples_ms": samples,
    }


# == 6. parent RSS under backpressure ============================================================


def default_max_pending() -> int:
    default = inspect.signature(EventDispatcher).parameters["max_pending"].default
    return int(default)


def holding_bytes_per_event(sample: int = 20_000) -> float:
    """Bytes the parent needs per event to hold events by sequence number (traced)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = {i + 1_000: Event("bench", rss_handler, i + 1_000) for i in range(sample)}
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del held
    return (after - before) / sample


def rss_under_backpressure(max_pending: int, count: int) -> dict[str, Any]:
    process = psutil.Process()
    gc.collect()
    peak = {"rss": 0, "pending": 0}
    done = threading.Event()
    with dispatcher(poll_interval=1.0, max_pending=max_pending) as (instance, errors):
        before = warm_up(instance, rss_handler, count=100)
        baseline = process.memory_info().rss

        def sample() -> None:
            while True:
                peak["rss"] = max(peak["rss"], process.memory_info().rss)
                peak["pending"] = max(peak["pending"], instance.stats().pending)
                if done.wait(RSS_SAMPLE_PERIOD):
                    return

        sampler = threading.Thread(target=sample, name="bench-rss-sampler")
        sampler.start()
        try:
            submit = instance.submit
            start = time.perf_counter()
            for i in range(count):
                submit(Event("bench", rss_handler, i))
            submitted = time.perf_counter() - start
            wait_idle(instance)
            elapsed = time.perf_counter() - start
        finally:
            done.set()
            sampler.join()
        peak["rss"] = max(peak["rss"], process.memory_info().rss)
        check_outcomes(instance, errors, before + count)
    mb = 1024 * 1024
    return {
        **rate(count, elapsed),
        "max_pending": max_pending,
        "submit_seconds": submitted,
        "baseline_mb": baseline / mb,
        "peak_mb": peak["rss"] / mb,
        "growth_mb": (peak["rss"] - baseline) / mb,
        "peak_pending": peak["pending"],
    }


def rss_child(max_pending: int, count: int, results: Connection) -> None:
    """Runs in a fresh interpreter: :func:`rss_under_backpressure`, result sent back."""
    try:
        results.send(rss_under_backpressure(max_pending, count))
    except Exception as exc:
        results.send({"error": f"{type(exc).__name__}: {exc}"})


def rss_in_fresh_process(max_pending: int, count: int) -> dict[str, Any]:
    """:func:`rss_under_backpressure` in a spawned process, so that the heap the other
    measurements left in this one (freed but kept by the allocator) does not absorb the growth.
    """
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    # Not a daemon: the child starts eventmp workers of its own.
    process = context.Process(
        target=rss_child, args=(max_pending, count, send), name="bench-rss", daemon=False
    )
    process.start()
    send.close()
    try:
        if not receive.poll(WAIT_TIMEOUT):
            raise BenchError(f"the RSS measurement gave no result within {WAIT_TIMEOUT}s")
        result: dict[str, Any] = receive.recv()
    finally:
        process.join(60)
        if process.exitcode is None:
            process.kill()
            process.join()
        receive.close()
    if "error" in result:
        raise BenchError(result["error"])
    return result


# == the run =====================================================================================


def base_plan() -> Plan:
    default = eventmp_default_start_method()
    return Plan(default, tuple(dict.fromkeys(["fork", default])), os.cpu_count() or 1)


def make_plan(sizes: Sizes, notes: list[str], zero_poll_fails_in: str | None = None) -> Plan:
    """Probe ``poll_interval=0`` and calibrate the CPU-heavy loop.

    ``zero_poll_fails_in`` names another tree (the A/B baseline) where the probe failed: the
    generator rows then use 0.001 in both trees, so that both measure the same thing.
    """
    plan = base_plan()
    interval = 0.0
    log(f"probing EventDispatcher(poll_interval=0) under {plan.default_method} ...")
    if not probe_poll_interval_zero(plan.default_method):
        interval = 0.001
        notes.append(
            "eventmp bug: with poll_interval=0 the dispatcher thread never reads the workers' "
            "acknowledgements (wait() does not return for a single submitted event), so the "
            "generator-fed path runs with poll_interval=0.001 instead."
        )
        log(f"  NOTE: {notes[-1]}")
    elif zero_poll_fails_in is not None:
        interval = 0.001
        notes.append(
            f"with poll_interval=0, wait() does not return in {zero_poll_fails_in}, so the "
            "generator-fed rows run with poll_interval=0.001 in both trees."
        )
        log(f"  NOTE: {notes[-1]}")
    log(f"calibrating a {sizes.cpu_handler_ms} ms pure-Python loop ...")
    iterations = calibrate_burn(sizes.cpu_handler_ms)
    return replace(plan, generator_interval=interval, cpu_iterations=iterations)


def eventmp_runner(
    key: str, sizes: Sizes, tmp: Path, plan: Plan
) -> Callable[[], dict[str, Any]] | None:
    """The measurement of the eventmp row ``key`` (None for a peer or reference row).

    These are the rows the A/B mode measures in both trees; a child interpreter finds its
    measurement here by key.
    """
    n = sizes.throughput_events
    default = plan.default_method
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "tp.submit_workers": lambda: tp_eventmp_submit(default, n, workers=plan.cores),
        "tp.submit_keyed": lambda: tp_eventmp_submit(default, n, workers=plan.cores, key=eighth),
        "lat.idle.eventmp": lambda: with_steal(
            lambda: lat_eventmp(default, tmp, sizes, busy=False)
        ),
        "lat.busy.eventmp": lambda: with_steal(lambda: lat_eventmp(default, tmp, sizes, busy=True)),
        "lat.busy.eventmp_nospin": lambda: with_steal(
            lambda: lat_eventmp(default, tmp, sizes, busy=True, idle_spin=0.0)
        ),
    }
    for method in plan.methods:
        runners[f"tp.submit.{method}"] = functools.partial(tp_eventmp_submit, method, n)
        runners[f"tp.generator.{method}"] = functools.partial(
            tp_eventmp_generator, method, n, plan.generator_interval
        )
        runners[f"restart.{method}"] = functools.partial(restart_time, method, tmp, sizes.restarts)
    for workers in range(1, plan.cores + 1):
        runners[f"cpu.{workers}"] = functools.partial(
            cpu_scaling, workers, sizes.cpu_events, plan.cpu_iterations, tmp, default
        )
    return runners.get(key)


def build_cases(
    sizes: Sizes, tmp: Path, notes: list[str], meta: dict[str, Any], plan: Plan
) -> list[Case]:
    default = plan.default_method
    methods = plan.methods
    meta["default_start_method"] = default
    meta["generator_poll_interval"] = plan.generator_interval
    meta["cpu_handler_iterations"] = plan.cpu_iterations

    n = sizes.throughput_events
    cases: list[Case] = []

    def add(key: str, group: str, label: str, method: str, run: Callable[..., Any]) -> None:
        cases.append(Case(key, group, label, method, run))

    def add_eventmp(key: str, group: str, label: str, method: str) -> None:
        run = eventmp_runner(key, sizes, tmp, plan)
        assert run is not None, key
        cases.append(Case(key, group, label, method, run, ab=True))

    for method in methods:
        add_eventmp(f"tp.submit.{method}", "throughput", "eventmp `submit()`", method)
        add_eventmp(
            f"tp.generator.{method}",
            "throughput",
            f"eventmp generator-fed ({GENERATOR_CHUNK:,}/poll)",
            method,
        )
        add(
            f"tp.ceiling.{method}",
            "throughput",
            f"batched-Pipe ceiling ({CEILING_BATCH} Events/message)",
            method,
            lambda m=method: tp_pipe_ceiling(m, n),
        )
    cores = plan.cores
    if cores > 1:
        add_eventmp(
            "tp.submit_workers",
            "throughput",
            f"eventmp `submit()`, workers={cores} (reference)",
            default,
        )
        add_eventmp(
            "tp.submit_keyed",
            "throughput",
            f"eventmp `submit()`, workers={cores}, 8 keys (reference)",
            default,
        )
    add(
        "tp.pipe1024",
        "throughput",
        f"batched Pipe, {MAX_BATCH_REFERENCE:,} Events/message (reference)",
        "fork",
        lambda: tp_pipe_ceiling("fork", n, MAX_BATCH_REFERENCE),
    )
    add(
        "tp.mp_queue",
        "throughput",
        "`multiprocessing.Queue`, put + ack per event",
        "fork",
        lambda: tp_mp_queue(sizes.queue_events),
    )
    add(
        "tp.ppe_submit",
        "throughput",
        "`ProcessPoolExecutor.submit()` per event",
        "fork",
        lambda: tp_ppe_submit(sizes.ppe_submit_events),
    )
    add(
        "tp.ppe_map",
        "throughput",
        "`ProcessPoolExecutor.map(chunksize=1024)`",
        "fork",
        lambda: tp_ppe_map(n),
    )
    add(
        "tp.ppe_map_ints",
        "throughput",
        "`ProcessPoolExecutor.map(chunksize=1024)`, bare ints, no Event (reference)",
        "fork",
        lambda: tp_ppe_map(n, bare_ints=True),
    )
    for name, key, label, method, run in (
        ("loky", "tp.loky_map", "loky `map(chunksize=1024)`", "loky", tp_loky_map),
        ("pebble", "tp.pebble_map", "pebble `map(chunksize=1024)`", "fork", tp_pebble_map),
    ):
        try:
            module = __import__(name)
        except ImportError:
            notes.append(f"{name} is not installed: skipped (pip install -e '.[bench]').")
            log(f"  NOTE: {notes[-1]}")
            continue
        meta[f"{name}_version"] = getattr(module, "__version__", "?")
        add(key, "throughput", label, method, lambda run=run: run(n))

    add_eventmp("lat.idle.eventmp", "latency", "eventmp, idle (`submit()` → handler)", default)
    add(
        "lat.idle.pipe",
        "latency",
        "raw Pipe one-way, idle (`send_bytes` → `recv_bytes`)",
        default,
        lambda: with_steal(lambda: lat_raw_pipe(default, tmp, sizes, busy=False)),
    )
    add_eventmp(
        "lat.busy.eventmp",
        "latency",
        f"eventmp, busy producer ({sizes.busy_rate:,}/s offered)",
        default,
    )
    add_eventmp(
        "lat.busy.eventmp_nospin",
        "latency",
        f"eventmp with idle_spin=0, busy producer ({sizes.busy_rate:,}/s offered) (reference)",
        default,
    )
    add(
        "lat.busy.pipe",
        "latency",
        f"raw Pipe, `send_bytes` per event ({sizes.busy_rate:,}/s offered)",
        default,
        lambda: with_steal(lambda: lat_raw_pipe(default, tmp, sizes, busy=True)),
    )

    for workers in range(1, cores + 1):
        add_eventmp(f"cpu.{workers}", "cpu", f"workers={workers}", default)

    for method in methods:
        add_eventmp(f"restart.{method}", "restart", "crash → next event's handler", method)

    for freeze in (True, False):
        add(
            f"gc.{'freeze' if freeze else 'nofreeze'}",
            "gc",
            "`gc.freeze()` as the worker starts (as shipped)"
            if freeze
            else "without `gc.freeze()` (patched out)",
            "fork",
            lambda f=freeze: gc_in_worker(f, sizes.gc_events, sizes.gc_heap_objects),
        )

    limit = default_max_pending()
    per_event = holding_bytes_per_event()
    meta["holding_bytes_per_event"] = per_event
    meta["holding_all_mb"] = per_event * sizes.rss_events / (1024 * 1024)
    for key, value in (("rss.default", limit), ("rss.x10", 10 * limit)):
        add(
            key,
            "rss",
            f"max_pending={value:,}",
            default,
            lambda v=value: rss_in_fresh_process(v, sizes.rss_events),
        )
    return cases


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    if "median_us" in result:
        return f"median {result['median_us']:.0f} µs, p99 {result['p99_us']:.0f} µs"
    if "median_ms" in result:
        return f"median {result['median_ms']:.1f} ms"
    if "growth_mb" in result:
        return (
            f"RSS {result['baseline_mb']:.0f} → {result['peak_mb']:.0f} MB, "
            f"peak pending {result['peak_pending']:,}"
        )
    return f"{result['events_per_s']:,.0f} events/s"


def run_all(cases: list[Case], runs: int, ab: ABRunner | None = None) -> None:
    """Every case once per run, the runs one after the other.

    With ``ab``, an eventmp row runs in a fresh interpreter per tree, back to back; which tree
    goes first alternates from row to row and from run to run.
    """
    for run in range(1, runs + 1):
        for index, case in enumerate(cases, 1):
            prefix = f"[run {run}/{runs}, {index}/{len(cases)}] {case.label} ({case.method})"
            log(f"{prefix} ...")
            if ab is not None and case.ab:
                sides = [(ab.this, case.results), (ab.base, case.baseline)]
                if (run + index) % 2:
                    sides.reverse()
                for position, (tree, results) in enumerate(sides):
                    started = time.perf_counter()
                    result = ab.run_case(tree, case.key, f"{run}")
                    result["ran_first"] = position == 0
                    results.append(result)
                    took = time.perf_counter() - started
                    log(f"    {tree.name}: {describe(result)}  [{took:.1f} s]")
                continue
            started = time.perf_counter()
            try:
                result = case.run()
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            case.results.append(result)
            log(f"    {describe(result)}  [{time.perf_counter() - started:.1f} s]")


# == A/B against a baseline commit ==============================================================


def git(*args: str) -> str:
    """``git -C <this tree> ARGS``'s output, stripped; BenchError if it fails."""
    done = subprocess.run(
        ["git", "-C", str(THIS_TREE), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Tree:
    """One side of the A/B: a checkout whose ``eventmp`` package a child interpreter imports."""

    name: str  # "this tree" or "baseline <short sha>"
    root: Path
    commit: str


@contextlib.contextmanager
def baseline_worktree(commit: str) -> Iterator[Path]:
    """``git worktree add --detach`` of ``commit`` in a temporary directory, removed on exit."""
    holder = Path(tempfile.mkdtemp(prefix="eventmp-bench-baseline-"))
    root = holder / "tree"
    try:
        git("worktree", "add", "--detach", str(root), commit)
        yield root
    finally:
        with contextlib.suppress(BenchError):
            git("worktree", "remove", "--force", str(root))
        shutil.rmtree(holder, ignore_errors=True)
        with contextlib.suppress(BenchError):
            git("worktree", "prune")


def under(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


class ABRunner:
    """Runs one measurement of this script in a child interpreter that imports a given tree."""

    def __init__(self, this: Tree, base: Tree, sizes: Sizes, plan: Plan, tmp: Path) -> None:
        self.this = this
        self.base = base
        self.sizes = sizes
        self.plan = plan
        self.tmp = tmp
        self.eventmp_files: dict[str, str] = {}

    def run_case(self, tree: Tree, key: str, tag: str) -> dict[str, Any]:
        """The child's result (``{"error": ...}`` if it failed); never raises BenchError."""
        try:
            return self._run(tree, key, tag)
        except BenchError as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _run(self, tree: Tree, key: str, tag: str) -> dict[str, Any]:
        side = "base" if tree is self.base else "this"
        out = self.tmp / f"ab-{key}-{side}-{tag}.json"
        config = {
            "sizes": asdict(self.sizes),
            "plan": asdict(self.plan),
            "tree": str(tree.root),
            "tmp": str(self.tmp),  # removed by the parent, even after a child it had to kill
        }
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--one-case",
            key,
            "--json-out",
            str(out),
            "--case-config",
            json.dumps(config),
        ]
        env = {**os.environ, "PYTHONPATH": str(tree.root)}
        # A session of its own, so that a child that hangs goes with its workers; the working
        # directory is neither tree, so nothing but PYTHONPATH decides which eventmp loads.
        child = subprocess.Popen(
            command,
            env=env,
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = child.communicate(timeout=AB_CHILD_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"no result within {AB_CHILD_TIMEOUT:.0f}s") from exc
        finally:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
        if child.returncode != 0 or not out.exists():
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            raise BenchError(f"child exited with {child.returncode}: {tail}")
        answer = json.loads(out.read_text())
        out.unlink()
        if not under(answer["eventmp_file"], tree.root):
            raise BenchError(f"child imported {answer['eventmp_file']}, not from {tree.root}")
        self.eventmp_files.setdefault(tree.name, answer["eventmp_file"])
        result: dict[str, Any] = answer["result"]
        return result

    def probe(self, tree: Tree) -> dict[str, Any]:
        """Which eventmp the tree's child and its workers import; whether poll_interval=0 works."""
        result = self.run_case(tree, "probe", "0")
        if "error" in result:
            raise BenchError(f"{tree.name} ({tree.root}): {result['error']}")
        return result


def probe_tree(plan: Plan, tmp: Path, root: Path) -> dict[str, Any]:
    """The A/B probe, in a child: every start method's workers import eventmp from ``root``."""
    workers: dict[str, str] = {}
    for method in plan.methods:
        path = tmp / f"where-{method}.txt"
        with dispatcher(poll_interval=1.0, start_method=method) as (instance, errors):
            instance.submit(Event("bench", WhereIsEventmp(str(path)), 0))
            wait_idle(instance, 60.0)
            check_outcomes(instance, errors, 1)
        workers[method] = path.read_text()
        if not under(workers[method], root):
            raise BenchError(f"a {method} worker imported {workers[method]}, not from {root}")
    return {
        "eventmp_file": str(eventmp.__file__),
        "worker_eventmp_files": workers,
        "poll_interval_zero_ok": probe_poll_interval_zero(plan.default_method),
    }


def run_one_case(key: str, json_out: Path, case_config: str | None, quick: bool) -> int:
    """``--one-case``: one eventmp measurement in this interpreter, written to ``json_out``.

    The config (sizes, plan and the tree ``eventmp`` must come from) is what the A/B parent
    passes; run by hand without one, the sizes follow ``--quick`` and the plan is made here.
    ``key`` ``probe`` checks where this interpreter's and its workers' eventmp come from.
    """
    answer: dict[str, Any] = {
        "key": key,
        "eventmp_file": str(eventmp.__file__),
        "python": sys.executable,
        "pid": os.getpid(),
    }
    notes: list[str] = []
    config = json.loads(case_config) if case_config is not None else None
    try:
        parent_tmp = config.get("tmp") if config is not None else None
        with tempfile.TemporaryDirectory(prefix="eventmp-bench-case-", dir=parent_tmp) as tmp:
            if config is None:
                sizes = QUICK_SIZES if quick else Sizes()
                plan = make_plan(sizes, notes)
                root = Path(str(eventmp.__file__)).resolve().parents[1]
            else:
                sizes = Sizes(**config["sizes"])
                plan = Plan(**{**config["plan"], "methods": tuple(config["plan"]["methods"])})
                root = Path(config["tree"])
            if not under(str(eventmp.__file__), root):
                raise BenchError(f"imported eventmp from {eventmp.__file__}, not from {root}")
            if key == "probe":
                result = probe_tree(plan, Path(tmp), root)
            else:
                run = eventmp_runner(key, sizes, Path(tmp), plan)
                if run is None:
                    raise BenchError(f"no eventmp measurement is called {key!r}")
                result = run()
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    answer["result"] = result
    answer["notes"] = notes
    json_out.write_text(json.dumps(answer, indent=2) + "\n")
    log(f"{key}: {result if key == 'probe' else describe(result)}")
    return 0


# == summaries and the report ===================================================================


# For each group of eventmp rows, the figures the A/B table compares and which way is better.
AB_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [("events_per_s", "events/s", "higher")],
    "latency": [("median_us", "median µs", "lower"), ("p99_us", "p99 µs", "lower")],
    "cpu": [("events_per_s", "events/s", "higher")],
    "restart": [("median_ms", "median ms", "lower")],
}


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max over the successful runs of every numeric figure."""
    good = [r for r in results if "error" not in r]
    summary: dict[str, dict[str, float]] = {}
    if not good:
        return summary
    for name, value in good[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [float(r[name]) for r in good if name in r]
        summary[name] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return summary


class Report:
    """Turns the cases' results into markdown tables, ratios and goal checks."""

    def __init__(self, cases: list[Case], sizes: Sizes, meta: dict[str, Any]) -> None:
        self.cases = {case.key: case for case in cases}
        self.order = cases
        self.sizes = sizes
        self.meta = meta
        self.summaries = {case.key: summarize(case.results) for case in cases}
        self.baseline_summaries = {case.key: summarize(case.baseline) for case in cases}

    def value(self, key: str, name: str) -> float | None:
        figure = self.summaries.get(key, {}).get(name)
        return None if figure is None else figure["median"]

    def cell(self, key: str, name: str, fmt: str) -> str:
        figure = self.summaries.get(key, {}).get(name)
        if figure is None:
            case = self.cases.get(key)
            errors = [r["error"] for r in case.results if "error" in r] if case else []
            return "failed" if errors else "n/a"
        middle = format(figure["median"], fmt)
        if figure["min"] == figure["max"]:
            return middle
        return f"{middle} ({format(figure['min'], fmt)}-{format(figure['max'], fmt)})"

    def group(self, name: str) -> list[Case]:
        return [case for case in self.order if case.group == name]

    def tables(self) -> str:
        runs = max((len(c.results) for c in self.order), default=0)
        lines = [
            f"Median over {runs} run(s), (min-max) in brackets. Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, eventmp "
            f"{eventmp.__version__}, default start method {self.meta['default_start_method']}.",
            "",
            "**Throughput**: no-op handler, one worker (unless the row says), small events "
            "(data = an int)",
            "",
            "| path | start method | events | events/s |",
            "|---|---|---:|---:|",
        ]
        for case in self.group("throughput"):
            events = self.value(case.key, "events")
            shown = f"{events:,.0f}" if events is not None else "n/a"
            lines.append(
                f"| {case.label} | {case.method} | {shown} | "
                f"{self.cell(case.key, 'events_per_s', ',.0f')} |"
            )
        lines += [
            "",
            "**Latency**: `submit()` (or `send_bytes`) to the handler (or `recv_bytes`), µs",
            "",
            "| path | start method | median µs | p99 µs | samples | CPU steal % |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for case in self.group("latency"):
            samples = self.value(case.key, "samples")
            shown = f"{samples:,.0f}" if samples is not None else "n/a"
            achieved = self.value(case.key, "achieved_per_s")
            label = case.label
            if achieved is not None:
                label += f", {achieved:,.0f}/s achieved"
            lines.append(
                f"| {label} | {case.method} | {self.cell(case.key, 'median_us', ',.0f')} | "
                f"{self.cell(case.key, 'p99_us', ',.0f')} | {shown} | "
                f"{self.cell(case.key, 'steal_pct', ',.1f')} |"
            )
        iterations = self.meta.get("cpu_handler_iterations", 0)
        lines += [
            "",
            f"**CPU-heavy handler** (~{self.sizes.cpu_handler_ms:g} ms pure-Python loop, "
            f"{iterations:,} iterations), {self.sizes.cpu_events} events",
            "",
            "| workers | events/s | speed-up vs 1, run by run | events on the busiest worker |",
            "|---:|---:|---:|---:|",
        ]
        for case in self.group("cpu"):
            ratios = self.speedups(case.key)
            speedup = "n/a"
            if ratios:
                speedup = f"{statistics.median(ratios):.2f}x"
                if len(ratios) > 1:
                    speedup += f" ({min(ratios):.2f}-{max(ratios):.2f})"
            workers = case.key.split(".")[1]
            lines.append(
                f"| {workers} | {self.cell(case.key, 'events_per_s', ',.0f')} | {speedup} | "
                f"{self.cell(case.key, 'busiest_worker_events', ',.0f')} |"
            )
        lines += [
            "",
            f"**Restart after a crash** (`os._exit(1)` in the handler), {self.sizes.restarts} "
            "crashes per run, from submitting the crashing event to the next event's handler",
            "",
            "| start method | median ms | fastest ms | slowest ms |",
            "|---|---:|---:|---:|",
        ]
        for case in self.group("restart"):
            lines.append(
                f"| {case.method} | {self.cell(case.key, 'median_ms', ',.1f')} | "
                f"{self.cell(case.key, 'min_ms', ',.1f')} | "
                f"{self.cell(case.key, 'max_ms', ',.1f')} |"
            )
        holding = self.meta.get("holding_all_mb", 0.0)
        lines += [
            "",
            f"**Parent RSS** while {self.sizes.rss_events:,} events are submitted as fast as "
            "possible to one slower worker (holding them all at once would take "
            f"~{holding:,.0f} MB)",
            "",
            "| max_pending | baseline MB | peak MB | peak - baseline MB | peak pending | "
            "events/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for case in self.group("rss"):
            lines.append(
                f"| {case.label.split('=')[1]} | {self.cell(case.key, 'baseline_mb', ',.0f')} | "
                f"{self.cell(case.key, 'peak_mb', ',.0f')} | "
                f"{self.cell(case.key, 'growth_mb', ',.1f')} | "
                f"{self.cell(case.key, 'peak_pending', ',.0f')} | "
                f"{self.cell(case.key, 'events_per_s', ',.0f')} |"
            )
        lines += [
            "",
            f"**GC in a forked worker**: a handler that keeps a small list per event, "
            f"{self.sizes.gc_events:,} events, the parent holding {self.sizes.gc_heap_objects:,} "
            "extra objects when the worker forks",
            "",
            "| worker | worker CPU µs/event | events/s |",
            "|---|---:|---:|",
        ]
        for case in self.group("gc"):
            lines.append(
                f"| {case.label} | {self.cell(case.key, 'worker_cpu_us_per_event', ',.2f')} | "
                f"{self.cell(case.key, 'events_per_s', ',.0f')} |"
            )
        return "\n".join(lines)

    def ratios(self) -> list[dict[str, Any]]:
        """eventmp's throughput over every peer's (medians); the ceiling of the same method."""
        out: list[dict[str, Any]] = []
        for mine in self.group("throughput"):
            if not mine.key.startswith(("tp.submit", "tp.generator")):
                continue
            ours = self.value(mine.key, "events_per_s")
            for peer_key in self.peer_keys(mine.method):
                theirs = self.value(peer_key, "events_per_s")
                if ours is None or theirs is None:
                    continue
                peer = self.cases[peer_key]
                out.append(
                    {
                        "eventmp_key": mine.key,
                        "eventmp": f"{mine.label} ({mine.method})",
                        "peer_key": peer_key,
                        "peer": f"{peer.label} ({peer.method})",
                        "ratio": ours / theirs,
                    }
                )
        return out

    def peer_keys(self, method: str) -> list[str]:
        """The throughput cases eventmp is compared with: the ceiling of ``method``, the rest."""
        keys = [f"tp.ceiling.{method}"] if f"tp.ceiling.{method}" in self.cases else []
        return keys + [
            case.key
            for case in self.group("throughput")
            if not case.key.startswith(("tp.submit", "tp.generator", "tp.ceiling"))
        ]

    def ratio_table(self) -> str:
        columns = [key for key in self.peer_keys("fork") if not key.startswith("tp.ceiling")]
        heads = ["batched-Pipe ceiling (same start method)"]
        heads += [self.cases[key].label for key in columns]
        lines = [
            "| eventmp / | " + " | ".join(heads) + " |",
            "|---|" + "---:|" * len(heads),
        ]
        by_pair = {(r["eventmp_key"], r["peer_key"]): r["ratio"] for r in self.ratios()}
        for mine in self.group("throughput"):
            if not mine.key.startswith(("tp.submit", "tp.generator")):
                continue
            keys = [f"tp.ceiling.{mine.method}", *columns]
            cells = [
                f"{by_pair[(mine.key, key)]:.2f}x" if (mine.key, key) in by_pair else "n/a"
                for key in keys
            ]
            lines.append(f"| {mine.label} ({mine.method}) | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def goals(self) -> list[dict[str, Any]]:
        """The goals of issue 4, checked against the medians."""
        checks: list[dict[str, Any]] = []

        def check(text: str, passed: bool | None) -> None:
            checks.append({"check": text, "passed": passed})

        ppe = self.value("tp.ppe_map", "events_per_s")
        for case in self.group("throughput"):
            if not case.key.startswith("tp.submit."):  # one worker, as the goals say
                continue
            ours = self.value(case.key, "events_per_s")
            ceiling = self.value(f"tp.ceiling.{case.method}", "events_per_s")
            if ours is not None and ppe:
                ratio = ours / ppe
                check(
                    f"submit() ({case.method}) / PPE.map(1024): {ratio:.2f}x (goal >= 2x)",
                    ratio >= 2,
                )
            else:
                check(f"submit() ({case.method}) / PPE.map(1024): no figure", None)
            if ours is not None and ceiling:
                ratio = ours / ceiling
                check(
                    f"submit() ({case.method}) / batched-Pipe ceiling ({case.method}): "
                    f"{ratio:.2f}x (goal >= 0.8x)",
                    ratio >= 0.8,
                )
            else:
                check(f"submit() ({case.method}) / batched-Pipe ceiling: no figure", None)

        idle = self.value("lat.idle.eventmp", "median_us")
        raw = self.value("lat.idle.pipe", "median_us")
        if idle is not None and raw:
            check(
                f"idle latency median / raw Pipe one-way: {idle:.0f} / {raw:.0f} µs = "
                f"{idle / raw:.2f}x (goal <= 2x)",
                idle / raw <= 2,
            )
        else:
            check("idle latency median / raw Pipe one-way: no figure", None)
        p99 = self.value("lat.idle.eventmp", "p99_us")
        if p99 is not None:
            check(f"idle latency p99: {p99:.0f} µs (goal < 500 µs)", p99 < 500)
        else:
            check("idle latency p99: no figure", None)
        busy = self.value("lat.busy.eventmp", "p99_us")
        if busy is not None:
            check(
                f"busy producer ({self.sizes.busy_rate:,}/s offered) p99: {busy / 1000:.2f} ms "
                "(goal < 2 ms)",
                busy < 2000,
            )
        else:
            check("busy producer p99: no figure", None)

        one = self.value("cpu.1", "events_per_s")
        two = self.value("cpu.2", "events_per_s")
        ratios = self.speedups("cpu.2")
        if one and two is not None and ratios:
            paired = statistics.median(ratios)
            check(
                f"CPU-heavy workers=2 / workers=1: {paired:.2f}x, the median of the per-run "
                f"ratios ({two / one:.2f}x as a ratio of medians) (goal >= 1.7x)",
                paired >= 1.7,
            )
        else:
            check("CPU-heavy workers=2 / workers=1: no figure (needs 2 CPUs)", None)

        per_event = float(self.meta.get("holding_bytes_per_event", 0.0))
        holding = float(self.meta.get("holding_all_mb", 0.0))
        for key in ("rss.default", "rss.x10"):
            growth = self.value(key, "growth_mb")
            pending = self.value(key, "peak_pending")
            limit = self.value(key, "max_pending")
            if growth is None or pending is None or limit is None:
                check(f"RSS ({key}): no figure", None)
                continue
            # "Bounded by max_pending": a few times what max_pending events take, plus slack
            # for the allocator; far below what holding every event would take.
            bound = 3 * limit * per_event / (1024 * 1024) + RSS_SLACK_MB
            check(
                f"RSS growth with max_pending={limit:,.0f}: {growth:.1f} MB for "
                f"{self.sizes.rss_events:,} events (bound {bound:.0f} MB; holding them all: "
                f"~{holding:.0f} MB), peak pending {pending:,.0f} (goal: bounded by "
                "max_pending, not by the number of events)",
                pending <= limit and growth <= bound,
            )
        return checks

    def speedups(self, key: str) -> list[float]:
        """events/s of ``key`` over one worker's, run by run (the two ran minutes apart at most).

        A ratio of medians lets a noisy minute in either row swing it; each run measures both
        rows close together, so the median of the per-run ratios compares like with like.
        """
        ones = self.cases.get("cpu.1")
        mine = self.cases.get(key)
        if ones is None or mine is None:
            return []
        return [
            b["events_per_s"] / a["events_per_s"]
            for a, b in zip(ones.results, mine.results, strict=False)
            if a.get("events_per_s") and b.get("events_per_s") is not None
        ]

    def busy_by_steal(self) -> list[str]:
        """Busy-producer p99 run by run, ordered by CPU steal, eventmp beside the raw Pipe.

        The hypervisor not running a vCPU for a few milliseconds sets the tail of both; the
        fair comparison is at equal steal, and the quietest runs show what the code can do.
        """
        lines = []
        for key in ("lat.busy.eventmp", "lat.busy.eventmp_nospin", "lat.busy.pipe"):
            case = self.cases.get(key)
            runs = sorted(
                (r["steal_pct"], r["p99_us"])
                for r in (case.results if case else [])
                if "p99_us" in r and "steal_pct" in r
            )
            if not runs:
                continue
            cells = ", ".join(f"{p99 / 1000:.2f} ms at {steal:.1f}%" for steal, p99 in runs)
            quiet = [p99 for steal, p99 in runs if steal < QUIET_STEAL_PCT]
            summary = f"; no run under {QUIET_STEAL_PCT:g}% steal"
            if quiet:
                median = statistics.median(quiet) / 1000
                summary = (
                    f"; under {QUIET_STEAL_PCT:g}% steal: median {median:.2f} ms "
                    f"({len(quiet)} of {len(runs)} runs)"
                )
            lines.append(f"- {case.label if case else key}: {cells}{summary}")
        return lines

    def ab_rows(self) -> list[dict[str, Any]]:
        """This tree against the baseline: per eventmp row and figure, medians and their ratio."""
        if "ab" not in self.meta:
            return []
        rows: list[dict[str, Any]] = []
        for case in self.order:
            if not case.ab:
                continue
            for name, unit, better in AB_FIGURES.get(case.group, []):
                this = self.summaries[case.key].get(name)
                base = self.baseline_summaries[case.key].get(name)
                ratio = None
                if this is not None and base is not None and base["median"]:
                    ratio = this["median"] / base["median"]
                worse = ratio is not None and (
                    ratio < 1 - AB_WORSE if better == "higher" else ratio > 1 + AB_WORSE
                )
                rows.append(
                    {
                        "key": case.key,
                        "row": case.label,
                        "start_method": case.method,
                        "figure": name,
                        "unit": unit,
                        "better": better,
                        "this": this,
                        "baseline": base,
                        "this_good_runs": sum("error" not in r for r in case.results),
                        "baseline_good_runs": sum("error" not in r for r in case.baseline),
                        "ratio": ratio,
                        "worse_by_more_than_10pct": worse,
                    }
                )
        return rows

    def ab_table(self) -> list[str]:
        ab = self.meta.get("ab")
        if not ab:
            return []
        runs = max((len(c.results) for c in self.order if c.ab), default=0)
        this = ab["this_short"] + (" + uncommitted changes in eventmp/" if ab["this_dirty"] else "")
        lines = [
            "",
            f"**This tree ({this}) vs baseline {ab['baseline_short']}** (`--baseline "
            f"{ab['ref']}`): the eventmp rows, each side in a fresh interpreter, back to back; "
            f"median over {runs} run(s), (min-max) in brackets; ratio = this / baseline of the "
            f"medians; WORSE = more than {AB_WORSE:.0%} worse than the baseline"
            + (" (--quick: a smoke test, not a measurement)" if self.meta.get("quick") else ""),
            "",
            "| row | start method | figure | this tree | baseline | this / baseline | |",
            "|---|---|---|---:|---:|---:|---|",
        ]

        def shown(figure: dict[str, float] | None, fmt: str) -> str:
            if figure is None:
                return "failed"
            middle = format(figure["median"], fmt)
            if figure["min"] == figure["max"]:
                return middle
            return f"{middle} ({format(figure['min'], fmt)}-{format(figure['max'], fmt)})"

        for row in self.ab_rows():
            fmt = ",.1f" if row["figure"] == "median_ms" else ",.0f"
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            flag = "WORSE" if row["worse_by_more_than_10pct"] else ""
            if row["this"] is None or row["baseline"] is None:
                flag = "FAILED (see the notes)"
            lines.append(
                f"| {row['row']} | {row['start_method']} | {row['unit']}, {row['better']} is "
                f"better | {shown(row['this'], fmt)} | {shown(row['baseline'], fmt)} | {ratio} | "
                f"{flag} |"
            )
        return lines

    def text(self) -> str:
        lines = [self.tables(), "", "**Throughput ratios** (eventmp / peer, medians)", ""]
        lines.append(self.ratio_table())
        lines += ["", "**Goals** (issue 4)", ""]
        for goal in self.goals():
            verdict = {True: "PASS", False: "MISS", None: "N/A "}[goal["passed"]]
            lines.append(f"- {verdict} {goal['check']}")
        by_steal = self.busy_by_steal()
        if by_steal:
            lines += ["", "**Busy-producer p99, run by run, by CPU steal** (lowest first)", ""]
            lines += by_steal
        lines += self.ab_table()
        notes = self.meta.get("notes", [])
        failures = [
            f"{case.label} ({case.method}){side}, run {i}: {r['error']}"
            for case in self.order
            for side, results in (("", case.results), (", baseline", case.baseline))
            for i, r in enumerate(results, 1)
            if "error" in r
        ]
        if notes or failures:
            lines += ["", "**Notes**", ""]
            lines += [f"- {note}" for note in notes]
            lines += [f"- measurement failed: {failure}" for failure in failures]
        return "\n".join(lines)

    def json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "sizes": asdict(self.sizes),
            "results": {
                case.key: {
                    "group": case.group,
                    "label": case.label,
                    "start_method": case.method,
                    "runs": case.results,
                    "summary": self.summaries[case.key],
                    **(
                        {
                            "baseline_runs": case.baseline,
                            "baseline_summary": self.baseline_summaries[case.key],
                        }
                        if case.ab and "ab" in self.meta
                        else {}
                    ),
                }
                for case in self.order
            },
            "ab": {**self.meta["ab"], "rows": self.ab_rows()} if "ab" in self.meta else None,
            "ratios": self.ratios(),
            "goals": self.goals(),
            "busy_by_steal": self.busy_by_steal(),
            "markdown": self.text(),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="The module docstring explains every measurement and the A/B mode.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one run, ~10x fewer events (a smoke test)"
    )
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs (default 3)")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write every result (default bench-results.json)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="A/B: measure every eventmp row also with the eventmp package of git commit/ref "
        "REF (checked out with `git worktree add --detach` into a temporary directory, removed "
        "at the end), each side in a fresh interpreter, back to back in every run; adds the "
        "table 'this tree vs baseline' (medians, min-max, ratio; rows >10%% worse flagged)",
    )
    parser.add_argument(
        "--one-case",
        metavar="KEY",
        help="internal (used by --baseline): run only the eventmp measurement KEY (e.g. "
        "tp.submit.fork, lat.idle.eventmp, cpu.1, restart.forkserver; 'probe' checks where "
        "eventmp is imported from) in this interpreter and write it to --json-out",
    )
    parser.add_argument("--json-out", type=Path, help="with --one-case: where to write it")
    parser.add_argument(
        "--case-config",
        metavar="JSON",
        help="with --one-case: the sizes, plan and expected eventmp tree (--baseline passes it)",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.one_case is not None and args.json_out is None:
        parser.error("--one-case needs --json-out")
    return args


def ab_trees(ref: str) -> tuple[Tree, dict[str, Any]]:
    """This tree, and what the JSON records about both trees; SystemExit for a bad REF."""
    try:
        this_commit = git("rev-parse", "HEAD")
        base_commit = git("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
        info = {
            "ref": ref,
            "this_commit": this_commit,
            "this_short": git("rev-parse", "--short", this_commit),
            "this_dirty": bool(git("status", "--porcelain", "--", "eventmp")),
            "this_root": str(THIS_TREE),
            "baseline_commit": base_commit,
            "baseline_short": git("rev-parse", "--short", base_commit),
            "method": "each eventmp row runs in a fresh interpreter per tree (PYTHONPATH = the "
            "tree's root), back to back, which first alternating; the peers run in the parent",
        }
    except BenchError as exc:
        raise SystemExit(f"--baseline {ref}: {exc}") from exc
    return Tree("this tree", THIS_TREE, this_commit), info


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so that the baseline's worktree is removed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one_case is not None:
        return run_one_case(args.one_case, args.json_out, args.case_config, args.quick)
    sizes = QUICK_SIZES if args.quick else Sizes()
    notes: list[str] = []
    meta: dict[str, Any] = {
        "argv": sys.argv,
        "quick": args.quick,
        "runs": args.runs,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "eventmp_version": eventmp.__version__,
        "notes": notes,
    }
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventmp-bench-")))
        ab: ABRunner | None = None
        if args.baseline is None:
            plan = make_plan(sizes, notes)
        else:
            this, info = ab_trees(args.baseline)
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            log(f"checking out the baseline {info['baseline_short']} in a git worktree ...")
            try:
                root = stack.enter_context(baseline_worktree(info["baseline_commit"]))
            except BenchError as exc:
                raise SystemExit(f"--baseline {args.baseline}: {exc}") from exc
            base = Tree(f"baseline {info['baseline_short']}", root, info["baseline_commit"])
            info["baseline_worktree"] = str(root)
            ab = ABRunner(this, base, sizes, base_plan(), tmp)
            probes = {}
            for tree in (this, base):
                log(f"probing which eventmp {tree.name} and its workers import ...")
                try:
                    probes[tree.name] = ab.probe(tree)
                except BenchError as exc:
                    raise SystemExit(f"--baseline: {exc}") from exc
            failing = [name for name, probe in probes.items() if not probe["poll_interval_zero_ok"]]
            plan = make_plan(sizes, notes, " and ".join(failing) or None)
            ab.plan = plan
            info["probes"] = probes
            meta["ab"] = info
            notes.append(
                f"--baseline {args.baseline}: the eventmp rows of the tables above are this "
                "tree's, each measured in a fresh interpreter; the peers and references ran in "
                "this process."
            )
        cases = build_cases(sizes, tmp, notes, meta, plan)
        run_all(cases, args.runs, ab)
        if ab is not None:
            meta["ab"]["eventmp_files"] = ab.eventmp_files
    meta["seconds"] = time.perf_counter() - began
    report = Report(cases, sizes, meta)
    print(report.text())
    args.json.write_text(json.dumps(report.json(), indent=2, ensure_ascii=False) + "\n")
    log(f"\nresults written to {args.json} ({meta['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
