"""Benchmark eventmp against the IPC ceiling and its peers; write docs/performance.md.

Usage::

    .venv/bin/python scripts/bench.py [--quick] [--runs N] [--json PATH] [--baseline REF]
                                      [--only GROUP[,GROUP...]] [--log-lines N]
                                      [--follow-backlog SIZE] [--log-time-limit SECONDS]
                                      [--write-docs [--docs-dir DIR]]
    .venv/bin/python scripts/bench.py --report-from PATH [--write-docs [--docs-dir DIR]]

Progress goes to stderr; at the end markdown tables, the ratios eventmp / peer and the goal
checks go to stdout, and every figure is written as JSON (default ``bench-results.json``), with
a stamp of what was measured (commit, Python, machine, date, command). Each run performs every
measurement once, and the runs are interleaved (run 1 does them all, then run 2, ...), so that
a burst of load elsewhere on the machine hits every path rather than one; the tables show the
median over the runs and the min-max range. ``--quick`` does one run with about ten times fewer
events: a smoke test that the script works, not a measurement. A failed measurement is reported
and the script goes on; the exit code is 0 whatever the goals say (this is a measurement, not a
test).

``--only GROUP[,GROUP...]`` measures some groups of rows only (throughput, latency, spin, cpu,
restart, rss, gc, logs), for instance ``--quick --only logs`` while working on the log reader;
with ``--write-docs`` it needs ``--docs-dir``, so that a partial page does not replace the full
one. The log-reading rows (group ``logs``) run ``grep``, a plain Python loop and the ``eventmp``
command as processes of their own on a log generated once per invocation; ``--log-lines``,
``--follow-backlog`` and ``--log-time-limit`` set the log's size, the follow-mode row's backlog
and the time after which a row that is still running is stopped (and fails, with how far it
got in the notes).

``--write-docs`` also writes ``docs/performance.md`` and its two charts,
``docs/performance-throughput.svg`` and ``docs/performance-latency.svg`` (plain SVG written
here, no plotting library). ``--report-from PATH`` measures nothing: it rebuilds the report from
a results JSON this script wrote, so a saved run can be re-rendered (and the report tested).

What each measurement does, and why, is written next to it: the :class:`Section` texts
(``INTRO``, ``THROUGHPUT``, ``LATENCY``, ``SPIN``, ``SCALING``, ``RESTART``, ``MEMORY``,
``GC``, ``LOGS``), which are the explanatory paragraphs of the generated page. Keep them true
when a measurement changes; they are formatted with the run's sizes (:func:`text_context`), so
they carry no figure of their own.

A/B against a baseline commit (``--baseline REF``): the script checks REF out with ``git worktree
add --detach`` into a temporary directory (removed at the end, also on error, then ``git worktree
prune``) and measures every eventmp row twice per run, once with this tree's ``eventmp`` and
once with the baseline's: throughput by ``submit()`` and by a generator under each start method,
the two ``workers=N`` reference rows, idle latency, busy-producer latency (with the
``idle_spin=0`` row), the idle spin's CPU cost, the CPU-heavy rows, restart time, and the
``eventmp run`` rows of the log group (whose command then imports that tree's eventmp). The
peers, the raw Pipe and Queue references, ``grep`` and the naive loop, the RSS and the GC rows
run once, in this process, as usual: they are not eventmp code (RSS and GC are left out to keep
the A/B short). Both sides of a row
run the same function of this script, each in a fresh interpreter (``bench.py --one-case KEY
--json-out FILE``) whose ``PYTHONPATH`` is that tree's root, so that both pay the same start-up
and neither inherits the other's heap; spawn and forkserver workers inherit ``PYTHONPATH``. The
two run back to back, which one first alternating from row to row and run to run. Before
measuring, a probe in each tree checks that ``eventmp.__file__``, in the interpreter and in its
workers under every start method, lies under that tree, and whether ``poll_interval=0`` works
there (if it fails in either, both generator rows use 0.001). The measurements use eventmp's
public API only, so any commit with the same API can serve as the baseline; a row the baseline
cannot run is shown as failed. The usual tables then show this tree's figures from those fresh
interpreters (the peers still run in this process), and one more table, "this tree vs
baseline", shows for each eventmp row and figure the median and min-max of each side and the
ratio of the medians (this / baseline; for events/s higher is better, for latency, restart time
and CPU lower is better), flagging a row more than 10% worse. The JSON holds the same (``ab``),
both commits, and each row's baseline runs.

Worker-side functions and classes are at module level and the script only runs under
``if __name__ == "__main__":``, so ``spawn`` and ``forkserver`` workers can import it.
"""

from __future__ import annotations

import argparse
import array
import compileall
import concurrent.futures
import contextlib
import functools
import gc
import inspect
import itertools
import json
import locale as pylocale
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import psutil

import eventmp
from eventmp import Event, EventDispatcher, EventGenerator, WorkerCrashedError
from eventmp import default_start_method as eventmp_default_start_method
from eventmp.testing import ErrorCollector
from eventmp.units import parse_duration, parse_size

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

    # Enough for a row to run about a second on a fast machine: a shorter one measures the
    # scheduler's moods (the A/B ratios of 200,000-event rows scattered over 20%).
    throughput_events: int = 1_000_000
    queue_events: int = 50_000
    ppe_submit_events: int = 20_000
    latency_events: int = 2_000
    latency_gap_s: float = 0.002
    busy_rate: int = 30_000
    busy_seconds: float = 3.0
    spin_rates: tuple[int, ...] = (1_000, 5_000, 30_000)
    spin_seconds: float = 2.0
    cpu_events: int = 400
    cpu_handler_ms: float = 5.0
    restarts: int = 10
    rss_events: int = 1_000_000
    gc_events: int = 500_000
    gc_heap_objects: int = 2_000_000
    log_lines: int = 2_000_000  # the generated log of the log-reading rows
    follow_backlog_bytes: int = 1 << 30  # the follow-mode row's backlog (0: no such row)
    log_time_limit_s: float = WAIT_TIMEOUT  # a log-reading row still running then fails


QUICK_SIZES = Sizes(
    throughput_events=20_000,
    queue_events=5_000,
    ppe_submit_events=2_000,
    latency_events=200,
    busy_seconds=0.5,
    spin_seconds=0.3,
    cpu_events=80,
    restarts=3,
    rss_events=200_000,
    gc_events=50_000,
    gc_heap_objects=200_000,
    log_lines=200_000,
    follow_backlog_bytes=30 << 20,
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
    log_dir: str = ""  # where the generated logs are, shared with the A/B mode's children


@dataclass(frozen=True)
class Section:
    """A section of the report: its heading, and what it measures and how, for a reader.

    ``about`` is markdown, formatted with :func:`text_context` (the sizes and plan of the run
    shown), so the page states the sizes of its own run and no figure that could drift.
    """

    group: str  # the Case.group the section shows ("" for the introduction)
    title: str
    about: str

    def text(self, context: dict[str, Any]) -> str:
        """The markdown, formatted and re-wrapped (the figures change the lines' lengths)."""
        return reflow(inspect.cleandoc(self.about).format_map(context))


def reflow(markdown: str, width: int = 100) -> str:
    """Re-wrap paragraphs and ``- `` list items (their continuation lines indented by two)."""
    blocks = []
    for block in markdown.split("\n\n"):
        items: list[list[str]] = []
        for line in block.splitlines():
            if line.startswith("- ") or not items:
                items.append([line.strip()])
            else:
                items[-1].append(line.strip())
        wrapped = []
        for item in items:
            indent = "  " if item[0].startswith("- ") else ""
            wrapped.append(
                textwrap.fill(
                    " ".join(item),
                    width,
                    subsequent_indent=indent,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
        blocks.append("\n".join(wrapped))
    return "\n\n".join(blocks)


INTRO = Section(
    "",
    "Performance",
    """
    `scripts/bench.py` measures eventmp side by side with what a Python program would otherwise
    use to hand events to another process, and against the IPC ceiling: a hand-written batched
    pipe that only moves pickled events to one worker and acknowledges them. The ceiling is the
    least that a correct design has to do (pickle, write, read, unpickle, call the handler,
    acknowledge), written by hand for this one job; what eventmp adds on top of it (a ledger of
    every event, acknowledgements per event, crash recovery, timeouts, backpressure, several
    workers) is what the comparison prices. The peers are `multiprocessing.Queue`,
    `concurrent.futures.ProcessPoolExecutor`, [loky](https://github.com/joblib/loky) and
    [pebble](https://github.com/noxdafox/pebble), each with one worker, carrying the same
    `Event` objects to the same handler. Why eventmp is built the way it is lives in
    [the design notes](design.md); this page shows what that design measures.

    Each run performs every measurement once, and the runs are interleaved (run 1 does them
    all, then run 2, ...), so that a burst of load elsewhere on the machine hits every path
    rather than one. The tables show the median over {runs_text} and, in brackets, the range
    from the lowest to the highest run. On a shared virtual machine figures swing from
    run to run, which the ranges show: compare rows of one page, not figures of two pages.
    """,
)


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


THROUGHPUT = Section(
    "throughput",
    "Throughput",
    """
    A no-op handler, one worker, small events (`data` is an int): events per second, from the
    first event handed over until the last one is done. Every eventmp path runs under `fork`
    and under eventmp's default start method (`{default_start_method}` here); the peers run
    under `fork` (Python's default on Linux before 3.14), loky under its own. Every path builds
    its events once its worker runs: under `fork`, objects built before the fork and written
    after it (reference counts) cost the parent a copy-on-write page fault per page.

    - **eventmp `submit()`**: {throughput_events:,} events submitted one at a time; the clock
      runs from the first `submit()` until `wait()` returns.
    - **eventmp generator-fed**: an `EventGenerator` that returns {generator_chunk:,} events per
      poll (`poll_interval={generator_poll_interval:g}`); the clock runs from
      `add_event_generator()` until `wait()` returns.
    - **batched-Pipe ceiling**: the parent pickles lists of {ceiling_batch} whole `Event`
      objects (protocol 5) and writes them with `Connection.send_bytes` to one worker, which
      loads each list, calls every event's handler and acknowledges the list; at most
      {ceiling_window} lists are unacknowledged, and the worker runs `gc.freeze()` as eventmp's
      does. A reference row sends lists of {max_batch:,}, eventmp's largest batch. eventmp can
      beat its ceiling: it sends flat tuples with a handler id rather than pickled `Event`
      objects, and its batches grow up to {max_batch:,} events while the worker is busy.
    - **`multiprocessing.Queue`**: one `put()` per event and one acknowledgement per event on a
      return queue, the naive design ({queue_events:,} events).
    - **`ProcessPoolExecutor(max_workers=1)`**: `submit()` per event ({ppe_submit_events:,}
      events), and `map(chunksize=1024)`.
    - **loky** `get_reusable_executor(max_workers=1).map(chunksize=1024)` and **pebble**
      `ProcessPool(max_workers=1).map(chunksize=1024)`, installed by the `bench` extra
      (`pip install -e ".[bench]"`); a peer that is not installed is left out.

    The peers carry the same `Event` objects and run the same handler on each (`fn(event)`).
    Rows marked "(reference)" are not peers and no goal uses them: the executor's `map` over
    bare ints shows how much of any path's cost is the payload; and, on a machine with more
    than one CPU, eventmp's `submit()` with one worker per CPU, shared or routed by a key of 8
    values. With a no-op handler it is the parent that limits the rate, so extra workers add
    processes that compete for the same CPUs rather than capacity; several workers pay off
    for handlers that do work (see [Scaling with workers](#scaling-with-workers)).
    """,
)


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


LATENCY = Section(
    "latency",
    "Latency",
    """
    The time from `submit()` to the handler starting, median and 99th percentile (p99), in µs.
    The parent stores `time.monotonic_ns()` in `event.data` just before `submit()`; the
    handler, one instance kept in the worker, stamps `time.monotonic_ns()` on entry and keeps
    both stamps in a flat array (a list of tuples would make the worker's garbage collector,
    not the pipeline, the cause of the worst latencies); a final event makes it write them to
    a file the parent reads. `CLOCK_MONOTONIC` is system-wide on Linux, so the stamps of two
    processes compare. The first {latency_warm_up} samples are dropped (cold caches). The
    reference is a raw `multiprocessing` Pipe measured the same way (the parent stamps, then
    calls `send_bytes`; the worker stamps when `recv_bytes` returns): the least that any
    design crossing a process boundary pays.

    - **Idle**: {latency_events:,} events one at a time, {latency_gap_ms:g} ms apart: what a
      lone event costs when the pipeline has nothing else to do.
    - **Busy producer**: a producer thread submits {busy_rate:,} events/s for {busy_seconds:g} s,
      pacing itself with a busy loop on `time.perf_counter`, so that it holds the GIL as a
      real busy producer does; the raw Pipe sends one `send_bytes` per event at the same rate.
      A reference row runs eventmp with `idle_spin=0` (see
      [CPU cost of the idle spin](#cpu-cost-of-the-idle-spin)).

    Every row also shows the CPU steal while it was measured: the share of all CPU time that
    the hypervisor took (from `/proc/stat`). On a shared virtual machine a vCPU is now and then
    not run for milliseconds, which no design inside the guest can hide, and which sets the p99
    of every path. So after the table the busy-producer p99 is listed run by run in order of
    steal, eventmp beside the raw Pipe, with the median over the quiet runs (under
    {quiet_steal_pct:g}% steal): the comparison at equal steal.
    """,
)


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


# == 3b. CPU cost of the idle spin ===============================================================


SPIN = Section(
    "spin",
    "CPU cost of the idle spin",
    """
    A worker that runs out of batches polls its pipe for the next one for a moment before it
    sleeps (`idle_spin`, at most {idle_spin_us:g} µs by default, a window that adapts to the
    gaps between batches, so that a pipeline that goes quiet costs no CPU). On a virtual
    machine this keeps the worker's vCPU from halting between batches, and the next batch from
    waiting until the hypervisor runs it again; the busy-producer rows of [Latency](#latency),
    with and without the spin, show what that is worth. Why the spin works as it does, and why
    workers sleep at once under a flood: [the design notes](design.md#idle-spin).

    What the spin costs is CPU in the worker while events come at a modest rate. Here a
    producer thread submits no-op events at a steady rate for {spin_seconds:g} s under
    `{default_start_method}`, once with the default `idle_spin` and once with `idle_spin=0`;
    the figure is the worker's CPU time (user + system, from psutil) over the wall-clock time,
    in % of one CPU, and per event. The kernel's haltpoll makes the same trade by default, with
    one difference: it polls in the idle loop, which gives way to any runnable task, where a
    spinning worker competes for the CPU like any process. Where a core matters more than the
    tail latency, set `idle_spin=0` ([operations](operations.md#cpu-the-idle-spin)).
    """,
)


def default_idle_spin() -> float | None:
    """``EventDispatcher``'s default ``idle_spin`` (s); None if it has no such parameter."""
    parameter = inspect.signature(EventDispatcher).parameters.get("idle_spin")
    return None if parameter is None else float(parameter.default)


def spin_cpu(method: str, per_second: int, seconds: float, spin: bool) -> dict[str, Any]:
    """The worker's CPU while a producer thread submits no-op events at ``per_second``.

    ``spin`` false runs the dispatcher with ``idle_spin=0``; true leaves the default.
    """
    options: dict[str, Any] = {"poll_interval": 1.0, "start_method": method}
    if not spin:
        options["idle_spin"] = 0.0
    with dispatcher(**options) as (instance, errors):
        before = warm_up(instance, noop_handler)
        pid = instance.stats().worker_pids[0]
        submit = instance.submit

        def send(stamp: int) -> None:
            submit(Event("bench", noop_handler, stamp))

        cpu_before = worker_cpu_seconds(pid)
        start = time.perf_counter()
        extra = in_thread(lambda: paced(send, per_second, seconds))
        wait_idle(instance)
        elapsed = time.perf_counter() - start
        cpu = worker_cpu_seconds(pid) - cpu_before
        check_outcomes(instance, errors, before + extra["sent"])
    return {
        **extra,
        "seconds": elapsed,
        "worker_cpu_pct": 100.0 * cpu / elapsed,
        "worker_cpu_us_per_event": cpu / extra["sent"] * 1e6,
    }


# == 4. CPU-heavy handler ========================================================================


SCALING = Section(
    "cpu",
    "Scaling with workers",
    """
    A CPU-heavy handler, a pure-Python loop of about {cpu_handler_ms:g} ms ({cpu_iterations:,}
    iterations, calibrated on this machine), {cpu_events:,} events, with `workers=1` up to one
    worker per CPU: events/s, and the speed-up over one worker. The speed-up is the median of
    the per-run ratios: each run measures every row close together, so a noisy minute moves
    both figures of a ratio rather than one. The last column shows how evenly the events were
    spread: the number handled by the busiest worker.
    """,
)

GC = Section(
    "gc",
    "CPU cost per event: garbage collection in the worker",
    """
    A forked worker inherits the parent's heap, and its garbage collector tracks those objects
    too. A handler that keeps objects (as one that aggregates does) makes the collector promote
    them and now and then run a full collection, which re-scans everything inherited. eventmp's
    worker calls `gc.freeze()` as it starts, which takes the inherited objects out of the
    collector's sight. Here the parent holds {gc_heap_objects:,} small lists when the worker
    forks, and the handler keeps a small list per event, {gc_events:,} events under `fork`;
    the second row patches `gc.freeze()` out. The figure is the worker's CPU time (user +
    system, from psutil) per event, since the parent, not the worker, limits the events/s.
    """,
)


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


RESTART = Section(
    "restart",
    "Restart after a crash",
    """
    The handler calls `os._exit(1)` on a marked event, which fails with `WorkerCrashedError`;
    the figure is the time from submitting that event to the handler of the next event
    starting in the replacement worker (which appends its `time.monotonic_ns()` to a file):
    median, fastest and slowest of {restarts} crashes per run. Under `fork` the replacement is
    a fork of the parent; under `forkserver` most of the time is multiprocessing starting the
    process.
    """,
)


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


MEMORY = Section(
    "rss",
    "Memory",
    """
    The parent's resident memory (RSS) while {rss_events:,} events are submitted as fast as
    possible to one worker whose handler (a short busy loop) is slower than the producer, with
    `max_pending` at its default and at ten times that. `submit()` blocks while the pipeline
    holds `max_pending` events without an outcome, so memory is bounded by `max_pending`, not
    by the number of events. A thread samples the RSS and the dispatcher's pending count every
    {rss_sample_ms:g} ms; the table shows the RSS before the first event (baseline), its peak,
    the growth (MB) and the peak pending count. Each row runs in a fresh interpreter (a spawned
    process that starts the dispatcher), so that memory which earlier measurements freed, but
    the allocator kept, does not absorb the growth. For scale: holding all {rss_events:,}
    events at once would take about {holding_all_mb:,.0f} MB ({holding_bytes_per_event:,.0f}
    bytes per event, traced with `tracemalloc`).
    """,
)


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


# == 7. reading logs =============================================================================


LOGS = Section(
    "logs",
    "Reading logs",
    """
    `eventmp run` reads its log files in its own process and finds there the lines that match
    its rules; only those become events for the workers. What that costs is measured on a
    generated sshd-style `auth.log` of
    {log_lines:,} lines ({log_mb:,.0f} MB, {log_line_bytes:.0f} bytes a line on average), made
    once per invocation of the script from a fixed seed: {log_match_pct:.1f}% of its lines are
    `Failed password for [invalid user ]USER from IP port N ssh2`, the rest a mix of other
    sshd, CRON, sudo and systemd-logind lines of similar lengths, near misses such as `Failed
    publickey` and `Invalid user` among them. The rule's regular expression is
    `{log_pattern}`, written so that `grep -E` takes the same text. Every path runs as a
    process of its own, start-up included, on the same file (in the page cache by then), and
    checks its count of matching lines against the number generated: a path that loses or
    repeats a line fails instead of giving a figure.

    - **`grep -cE`** with the same expression counts the matching lines: reading and matching
      in C, the speed to aim at. It runs with `LC_ALL={log_grep_locale}`, so that it reads the
      file as UTF-8 text, as eventmp and the loop do; a reference row runs it with `LC_ALL=C`,
      which matches bytes and is several times faster on the same file (GNU grep matches
      `[^ ]` per character in a UTF-8 locale).
    - **Naive Python loop**: `for line in f: m = rx.search(line)` over the file opened as
      text (UTF-8, `errors="replace"`), writing `json.dumps(m.groups())` to a file for each
      match: what a short script does.
    - **`eventmp run --once`**: a pipeline file with one input (`start_at = "beginning"`), one
      rule and a `json` handler that writes each match to a file (its default fields:
      `timestamp`, `time`, `originator` and `data`, which holds the line, its number, the match
      and the groups), every other setting at its default, run as `python -m eventmp run p.toml
      --once -q`. The clock runs from starting
      the command until it exits (status 0), and the output must then hold one line per
      match. The same with `[dispatcher] workers = 2`, and with {log_rules} rules: the one,
      plus {log_extra_rules} that match nothing or about one line in a thousand (a `maximum
      authentication attempts` error, a `POSSIBLE BREAK-IN ATTEMPT`), all writing to the same
      file; the output must then hold one line per match of any rule. A reference row replaces
      the `json` handler by one that writes a newline per event: what reading and matching cost
      with the handlers' own cost left out.
    - **Follow mode catching up a backlog**: `eventmp run p.toml -q` without `--once`, on a
      file that already holds a backlog of {follow_mb:,.0f} MB ({follow_lines:,} lines, from
      another seed), with `start_at = "beginning"`. The clock runs from starting the command
      until its output holds every match (the script counts the output's lines every
      {follow_poll_ms:g} ms); then SIGTERM, after which the command must drain and exit with
      status 0, its output holding every match exactly once. The row is left out when the
      temporary directory has less than {follow_free_factor}x the backlog free.

    For each eventmp row a thread samples the RSS of the eventmp process (not of its workers)
    every {rss_sample_ms:g} ms; the last column shows its peak. A row that has not finished
    after {log_time_limit_s:g} s is stopped and fails; the notes say how far it got. MB are
    10^6 bytes. Below the table, each eventmp row's time per byte is divided by that of
    `grep -cE` and of the naive loop (the follow row read another file, so bytes, not runs,
    are compared). The goals: at most {log_goal_ratio:g}x both at default settings and in
    follow mode, and a follow-mode peak RSS under {log_rss_goal_mb:g} MB.
    """,
)

LOG_PATTERN = r"Failed password for (invalid user )?([^ ]+) from ([^ ]+) port ([0-9]+) ssh2"
LOG_RULE = "failed-password"
LOG_MATCHING_KIND = "failed_password"  # the generator's kind of line that LOG_PATTERN matches
LOG_SEED = 20_240_303
LOG_HOST = "bastion-02.prod.eu-west-1"
LOG_LINES_PER_SECOND = 20  # of the log's timestamps
LOG_BLOCK = 10_000  # lines generated and written at a time
LOG_POOL = 4_096  # distinct messages per kind of line (a power of two)
FOLLOW_POLL = 0.02  # how often the follow row counts its output's lines
FOLLOW_FREE_FACTOR = 3  # the follow row needs this many times its backlog free on the disk
LOG_STOP_TIMEOUT = 60.0  # from SIGTERM to exit in follow mode
LOG_GOAL_RATIO = 2.0  # eventmp's time per byte over grep's, and over the naive loop's
LOG_RSS_GOAL_MB = 256.0  # the eventmp process while it catches up a backlog
LOG_PEERS = {"log.grep": "grep -cE", "log.naive": "naive loop"}  # key: name in the ratios
LOG_GREP_LOCALE = "C.UTF-8"  # grep's locale, so that it reads UTF-8 as eventmp does
# The 10-rule set: the rule above, then these (name, regex, the generator's kind each one
# matches, or None): rare lines and lines the generated log never holds.
LOG_EXTRA_RULES: tuple[tuple[str, str, str | None], ...] = (
    (
        "max-auth-tries",
        r"error: maximum authentication attempts exceeded for (invalid user )?([^ ]+) from",
        "max_auth_tries",
    ),
    ("break-in", r"POSSIBLE BREAK-IN ATTEMPT", "break_in"),
    ("oom", r"Out of memory: Killed process ([0-9]+)", None),
    ("segfault", r"segfault at [0-9a-f]+ ip [0-9a-f]+", None),
    ("bad-protocol", r"Bad protocol version identification '(.*)' from ([^ ]+)", None),
    ("no-ident", r"Did not receive identification string from ([^ ]+)", None),
    ("su-failed", r"FAILED SU \(to ([^ ]+)\) ([^ ]+) on", None),
    ("sudo-incorrect", r"sudo: +([^ ]+) : [0-9]+ incorrect password attempts", None),
    ("refused", r"refused connect from ([^ ]+)", None),
)

# The naive loop, run as ``python -c NAIVE_LOOP LOG PATTERN OUT``; it prints its count.
NAIVE_LOOP = """\
import json, re, sys
rx = re.compile(sys.argv[2])
count = 0
with open(sys.argv[1], encoding="utf-8", errors="replace") as f, open(sys.argv[3], "w") as out:
    for line in f:
        m = rx.search(line)
        if m:
            out.write(json.dumps(m.groups()) + "\\n")
            count += 1
print(count)
"""


def _log_kinds(rng: random.Random) -> list[tuple[str, float, Callable[[], str]]]:
    """The kinds of line of the generated log: (name, weight, a maker of one message)."""
    r, pick, number = rng.random, rng.choice, rng.randrange
    users = [
        "root", "admin", "ubuntu", "oracle", "postgres", "test", "git", "deploy", "user", "pi",
        "ftpuser", "jenkins", "hadoop", "nagios", "guest", "support", "mysql", "www-data",
        "elastic", "minecraft",
    ]  # fmt: skip
    staff = ["deploy", "alice", "bob", "backup", "ansible"]
    outside = [
        f"{number(1, 224)}.{number(256)}.{number(256)}.{number(1, 255)}" for _ in range(4096)
    ]
    inside = [f"10.20.{number(256)}.{number(1, 255)}" for _ in range(64)]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    keys = ["".join(pick(alphabet) for _ in range(43)) for _ in range(16)]
    jobs = [
        "   cd / && run-parts --report /etc/cron.hourly",
        "[ -x /usr/lib/php/sessionclean ] && if [ ! -d /run/systemd/system ]; then "
        "/usr/lib/php/sessionclean; fi",
        "test -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }",
        "/usr/local/bin/backup-rotate --keep 14 --target /srv/backup >/dev/null 2>&1",
    ]
    services = ["nginx", "postgresql", "haproxy", "docker", "prometheus-node-exporter"]

    def sshd() -> str:
        return f"sshd[{number(1000, 65000)}]: "

    def port() -> int:
        return number(1024, 65536)

    def invalid() -> str:
        return "invalid user " if r() < 0.4 else ""

    return [
        (
            LOG_MATCHING_KIND,
            0.06,
            lambda: (
                f"{sshd()}Failed password for {invalid()}{pick(users)} from {pick(outside)} "
                f"port {port()} ssh2"
            ),
        ),
        (
            "auth_failure",
            0.14,
            lambda: (
                f"{sshd()}pam_unix(sshd:auth): authentication failure; logname= uid=0 "
                f"euid=0 tty=ssh ruser= rhost={pick(outside)}  user={pick(users)}"
            ),
        ),
        (
            "invalid_user",
            0.07,
            lambda: f"{sshd()}Invalid user {pick(users)} from {pick(outside)} port {port()}",
        ),
        (
            "received_disconnect",
            0.07,
            lambda: (
                f"{sshd()}Received disconnect from {pick(outside)} port {port()}:11: "
                "Bye Bye [preauth]"
            ),
        ),
        (
            "disconnected",
            0.07,
            lambda: (
                f"{sshd()}Disconnected from {invalid() or 'authenticating user '}"
                f"{pick(users)} {pick(outside)} port {port()} [preauth]"
            ),
        ),
        (
            "connection_closed",
            0.05,
            lambda: (
                f"{sshd()}Connection closed by authenticating user {pick(users)} "
                f"{pick(outside)} port {port()} [preauth]"
            ),
        ),
        (
            "failed_publickey",
            0.02,
            lambda: (
                f"{sshd()}Failed publickey for {pick(staff)} from {pick(inside)} port "
                f"{port()} ssh2: ED25519 SHA256:{pick(keys)}"
            ),
        ),
        (
            "accepted_publickey",
            0.065,
            lambda: (
                f"{sshd()}Accepted publickey for {pick(staff)} from {pick(inside)} port "
                f"{port()} ssh2: ED25519 SHA256:{pick(keys)}"
            ),
        ),
        (
            "ssh_session_opened",
            0.06,
            lambda: (
                f"{sshd()}pam_unix(sshd:session): session opened for user {pick(staff)}"
                f"(uid={number(1000, 1010)}) by (uid=0)"
            ),
        ),
        (
            "ssh_session_closed",
            0.05,
            lambda: f"{sshd()}pam_unix(sshd:session): session closed for user {pick(staff)}",
        ),
        (
            "cron_session_opened",
            0.11,
            lambda: (
                f"CRON[{number(1000, 65000)}]: pam_unix(cron:session): session opened for "
                "user root(uid=0) by (uid=0)"
            ),
        ),
        (
            "cron_command",
            0.12,
            lambda: f"CRON[{number(1000, 65000)}]: (root) CMD ({pick(jobs)})",
        ),
        (
            "cron_session_closed",
            0.07,
            lambda: (
                f"CRON[{number(1000, 65000)}]: pam_unix(cron:session): session closed for user root"
            ),
        ),
        (
            "logind_new_session",
            0.03,
            lambda: (
                f"systemd-logind[{number(500, 900)}]: New session {number(1, 99_999)} of "
                f"user {pick(staff)}."
            ),
        ),
        (
            "sudo_command",
            0.0135,
            lambda: (
                f"sudo:   {pick(staff)} : TTY=pts/{number(8)} ; PWD=/home/{pick(staff)} ; "
                f"USER=root ; COMMAND=/usr/bin/systemctl restart {pick(services)}.service"
            ),
        ),
        (
            "max_auth_tries",
            0.001,
            lambda: (
                f"{sshd()}error: maximum authentication attempts exceeded for "
                f"{invalid()}{pick(users)} from {pick(outside)} port {port()} ssh2 [preauth]"
            ),
        ),
        (
            "break_in",
            0.0005,
            lambda: (
                f"{sshd()}reverse mapping checking getaddrinfo for "
                f"host-{pick(outside).replace('.', '-')}.dynamic.example.net [{pick(outside)}] "
                "failed - POSSIBLE BREAK-IN ATTEMPT!"
            ),
        ),
    ]


@dataclass(frozen=True)
class LogFile:
    """A generated log: where it is, its size, and how many lines of each kind it holds."""

    path: str
    lines: int
    bytes: int
    kinds: dict[str, int]
    seed: int

    @property
    def matches(self) -> int:
        """The lines that :data:`LOG_PATTERN` matches."""
        return self.kinds.get(LOG_MATCHING_KIND, 0)

    def expected(self, rules: int) -> int:
        """The events that the first ``rules`` rules (1 or 10) make from this file."""
        extra = [kind for _, _, kind in LOG_EXTRA_RULES[: rules - 1] if kind is not None]
        return self.matches + sum(self.kinds.get(kind, 0) for kind in extra)


def generate_log(
    path: Path, *, lines: int | None = None, min_bytes: int | None = None, seed: int = LOG_SEED
) -> LogFile:
    """Write an sshd-style auth.log of ``lines`` lines (or of at least ``min_bytes``).

    The same arguments give the same bytes. Each kind of line has a pool of messages made
    from the seed; a line is a syslog prefix (a timestamp that advances one second every
    :data:`LOG_LINES_PER_SECOND` lines, the host) and a message drawn from its kind's pool.
    """
    if (lines is None) == (min_bytes is None):
        raise ValueError("give lines or min_bytes")
    rng = random.Random(seed)
    kinds = _log_kinds(rng)
    names = [name for name, _, _ in kinds]
    pools = [[f"{make()}\n" for _ in range(LOG_POOL)] for _, _, make in kinds]
    cumulative = list(itertools.accumulate(weight for _, weight, _ in kinds))
    indices = range(len(kinds))
    draw = rng.getrandbits
    pool_bits = LOG_POOL.bit_length() - 1
    counts: Counter[int] = Counter()
    start = 1_709_470_800  # 2024-03-03 13:00 UTC
    written = 0
    done = 0
    prefix = ""
    with open(path, "wb") as out:
        while (lines is not None and done < lines) or (
            min_bytes is not None and written < min_bytes
        ):
            count = LOG_BLOCK if lines is None else min(LOG_BLOCK, lines - done)
            chosen = rng.choices(indices, cum_weights=cumulative, k=count)
            counts.update(chosen)
            parts = []
            for index, kind in enumerate(chosen, done):
                if index % LOG_LINES_PER_SECOND == 0 or not prefix:
                    stamp = time.gmtime(start + index // LOG_LINES_PER_SECOND)
                    prefix = time.strftime("%b %e %H:%M:%S ", stamp) + LOG_HOST + " "
                parts.append(prefix)
                parts.append(pools[kind][draw(pool_bits)])
            block = "".join(parts).encode()
            out.write(block)
            written += len(block)
            done += count
    return LogFile(str(path), done, written, {names[i]: counts[i] for i in indices}, seed)


def log_fixture(
    directory: Path, *, lines: int | None = None, min_bytes: int | None = None
) -> LogFile:
    """The generated log of that size in ``directory``: made the first time, then reused.

    A JSON file next to it records its counts once it is complete, so that a fresh
    interpreter (the A/B mode's) finds the same file instead of writing it again.
    """
    if lines is not None:
        name, seed = f"auth-{lines}-lines", LOG_SEED
    else:
        name, seed = f"backlog-{min_bytes}-bytes", LOG_SEED + 1
    path = directory / f"{name}.log"
    record = directory / f"{name}.json"
    if record.exists() and path.exists():
        known = LogFile(**json.loads(record.read_text()))
        if path.stat().st_size == known.bytes:
            return known
    log(f"  generating {path.name} ...")
    started = time.perf_counter()
    made = generate_log(path, lines=lines, min_bytes=min_bytes, seed=seed)
    # Written back to disk now, not by the kernel's flusher threads in the middle of the
    # measurements: on two CPUs they took time from the rows that use both (eventmp's) and
    # hardly from those that use one (grep's).
    os.sync()
    partial = record.with_suffix(".part")
    partial.write_text(json.dumps(asdict(made)))
    partial.replace(record)
    log(
        f"  {made.lines:,} lines, {made.bytes / 1e6:,.0f} MB, {made.matches:,} matches "
        f"[{time.perf_counter() - started:.1f} s]"
    )
    return made


def count_lines(path: Path) -> int:
    """The newlines in ``path`` (0 if it does not exist)."""
    try:
        with open(path, "rb") as file:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def log_rates(log_file: LogFile, seconds: float) -> dict[str, Any]:
    return {
        "lines": log_file.lines,
        "bytes": log_file.bytes,
        "seconds": seconds,
        "lines_per_s": log_file.lines / seconds,
        "mb_per_s": log_file.bytes / 1e6 / seconds,
    }


def compile_eventmp() -> None:
    """Write the bytecode of the eventmp this script imported, as installing it would.

    An ``eventmp`` command imports it in the parent, the forkserver and each worker; from a
    source tree under ``PYTHONDONTWRITEBYTECODE`` (this project's checkouts, and the machine
    the benchmark runs on) each of them would compile every module first, a cost no installed
    eventmp pays (pip compiles a package's bytecode when it installs it). Modules already
    compiled are left alone.
    """
    compileall.compile_dir(str(Path(str(eventmp.__file__)).resolve().parent), quiet=1)


def eventmp_env() -> dict[str, str]:
    """The environment of an ``eventmp`` command: it imports the eventmp this script imported.

    The A/B mode gives each side's interpreter ``PYTHONPATH``; the command inherits it, and
    runs in a directory that holds no ``eventmp`` package (``python -m`` puts the working
    directory first on ``sys.path``).
    """
    root = str(Path(str(eventmp.__file__)).resolve().parents[1])
    inherited = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + inherited if inherited else "")}


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the session a command was started in (it and its workers), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def run_in_session(
    command: list[str], limit: float, **options: Any
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``command`` in a session of its own for at most ``limit`` s: its result and seconds.

    On a timeout the whole session is killed and :class:`subprocess.TimeoutExpired` raised.
    """
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **options,
    )
    try:
        stdout, stderr = process.communicate(timeout=limit)
    finally:
        if process.poll() is None:
            kill_group(process)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    return result, time.perf_counter() - start


class RssSampler:
    """Samples one process's RSS every :data:`RSS_SAMPLE_PERIOD` in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._process = psutil.Process(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return  # gone
            if self._done.wait(RSS_SAMPLE_PERIOD):
                return

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._done.set()
        self._thread.join(5)
        return self.peak / (1024 * 1024)


class TooSlow(BenchError):
    """A row stopped at its time limit; ``figures`` go into its result beside the error."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


def too_slow(what: str, limit: float, done: int, expected: int, log_file: LogFile) -> TooSlow:
    """The failure of a row stopped after ``limit`` s, with how far it got (``done`` events)."""
    share = done / expected if expected else 0.0
    lines, megabytes = share * log_file.lines / limit, share * log_file.bytes / 1e6 / limit
    return TooSlow(
        f"{what} did not finish within {limit:g} s: {done:,} of {expected:,} matches written "
        f"by then, so about {lines:,.0f} lines/s and {megabytes:,.1f} MB/s",
        {
            "timed_out_after_s": limit,
            "lines": log_file.lines,
            "bytes": log_file.bytes,
            "matches_done": done,
            "matches_expected": expected,
        },
    )


def locale_exists(name: str) -> bool:
    """Whether the C library has the locale ``name`` (grep falls back to C without a word)."""
    saved = pylocale.setlocale(pylocale.LC_CTYPE)
    try:
        pylocale.setlocale(pylocale.LC_CTYPE, name)
    except pylocale.Error:
        return False
    finally:
        pylocale.setlocale(pylocale.LC_CTYPE, saved)
    return True


def log_grep(log_file: LogFile, limit: float, locale: str | None) -> dict[str, Any]:
    """``grep -cE`` with ``LC_ALL=locale`` (None: the inherited environment)."""
    command = ["grep", "-cE", LOG_PATTERN, log_file.path]
    env = {**os.environ, "LC_ALL": locale} if locale is not None else None
    try:
        result, elapsed = run_in_session(command, limit, env=env)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"grep -cE did not finish within {limit:g} s") from exc
    if result.returncode != 0:
        raise BenchError(f"grep exited with {result.returncode}: {result.stderr.strip()}")
    found = int(result.stdout.strip())
    if found != log_file.matches:
        raise BenchError(f"grep -cE counted {found:,} lines, {log_file.matches:,} were generated")
    return {**log_rates(log_file, elapsed), "matches": found, "locale": locale or "inherited"}


def log_naive(log_file: LogFile, tmp: Path, limit: float) -> dict[str, Any]:
    out = tmp / "naive-out.jsonl"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-c", NAIVE_LOOP, log_file.path, LOG_PATTERN, str(out)]
    try:
        result, elapsed = run_in_session(command, limit, cwd=tmp)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise BenchError(f"the naive loop exited with {result.returncode}: {tail}")
        printed, written = int(result.stdout.strip()), count_lines(out)
    except subprocess.TimeoutExpired as exc:
        raise too_slow(
            "the naive loop", limit, count_lines(out), log_file.matches, log_file
        ) from exc
    finally:
        out.unlink(missing_ok=True)
    if printed != log_file.matches or written != log_file.matches:
        raise BenchError(
            f"the naive loop found {printed:,} matches and wrote {written:,} lines; "
            f"{log_file.matches:,} were generated"
        )
    return {**log_rates(log_file, elapsed), "matches": written}


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


# The handler of the reference row that leaves out the json handler's cost: one newline
# written per event, so that its output is counted like the others'.
COUNT_HANDLER_MODULE = "bench_count_handler"
COUNT_HANDLER = """\
import os


class Count:
    def __init__(self, file):
        self.file = file
        self.fd = None

    def __getstate__(self):
        return {"file": self.file, "fd": None}

    def process_event(self, event):
        if self.fd is None:
            self.fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self.fd, b"\\n")
        return True
"""


def log_pipeline(
    log_file: LogFile, out: Path, workers: int | None, rules: int, handler: str = "json"
) -> str:
    """The pipeline file of an eventmp row: one input, ``rules`` rules, a json handler (or,
    with ``handler="count"``, :data:`COUNT_HANDLER`, whose module goes next to the file)."""
    lines = []
    if workers is not None:
        lines += ["[dispatcher]", f"workers = {workers}", ""]
    lines += [
        "[[inputs]]",
        'name = "auth"',
        f"paths = [{toml_string(log_file.path)}]",
        'start_at = "beginning"',
    ]
    kind = "json" if handler == "json" else f"{COUNT_HANDLER_MODULE}:Count"
    handler = f"{{ type = {toml_string(kind)}, file = {toml_string(str(out))} }}"
    for name, regex, _ in ((LOG_RULE, LOG_PATTERN, None), *LOG_EXTRA_RULES[: rules - 1]):
        lines += [
            "",
            "[[rules]]",
            f"name = {toml_string(name)}",
            f"regex = {toml_string(regex)}",
            f"handler = {handler}",
        ]
    return "\n".join(lines) + "\n"


SUMMARY_LINES = re.compile(r"read ([\d,]+) lines")
SUMMARY_FAILED = re.compile(r"([\d,]+) failed")


def check_summary(stderr: str, log_file: LogFile) -> None:
    """The command's summary, where it has the usual form: every line read, none failed."""
    read = SUMMARY_LINES.search(stderr)
    if read and int(read.group(1).replace(",", "")) != log_file.lines:
        raise BenchError(f"eventmp says it read {read.group(1)} lines of {log_file.lines:,}")
    failed = SUMMARY_FAILED.search(stderr)
    if failed and failed.group(1) != "0":
        raise BenchError(f"eventmp says {failed.group(1)} events failed: {stderr.strip()}")


def log_eventmp(
    log_file: LogFile,
    tmp: Path,
    limit: float,
    *,
    workers: int | None = None,
    rules: int = 1,
    follow: bool = False,
    handler: str = "json",
) -> dict[str, Any]:
    """``eventmp run p.toml`` on ``log_file``: with ``--once`` until it exits, or in follow
    mode until its output holds every match, then SIGTERM.
    """
    tag = f"{'follow' if follow else 'once'}-{workers}-{rules}-{handler}"
    out, pipeline, errors = (tmp / f"eventmp-{tag}{ext}" for ext in (".jsonl", ".toml", ".err"))
    out.unlink(missing_ok=True)
    if handler != "json":
        (tmp / f"{COUNT_HANDLER_MODULE}.py").write_text(COUNT_HANDLER)
    pipeline.write_text(log_pipeline(log_file, out, workers, rules, handler))
    expected = log_file.expected(rules)
    command = [sys.executable, "-m", "eventmp", "run", str(pipeline), "-q"]
    if not follow:
        command.append("--once")
    compile_eventmp()
    what = f"eventmp run{'' if follow else ' --once'}"
    try:
        with open(errors, "w") as stderr:
            start = time.perf_counter()
            process = subprocess.Popen(
                command,
                cwd=tmp,
                env=eventmp_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a command that must be killed goes with its workers
            )
            sampler = RssSampler(process.pid)
            try:
                if follow:
                    elapsed = follow_until(process, out, expected, start, limit)
                    if elapsed is None:
                        raise too_slow(what, limit, count_lines(out), expected, log_file)
                    process.send_signal(signal.SIGTERM)
                    process.wait(LOG_STOP_TIMEOUT)
                else:
                    process.wait(limit)
                    elapsed = time.perf_counter() - start
            except subprocess.TimeoutExpired as exc:
                if follow:
                    raise BenchError(f"no exit within {LOG_STOP_TIMEOUT:g} s of SIGTERM") from exc
                raise too_slow(what, limit, count_lines(out), expected, log_file) from exc
            finally:
                peak = sampler.stop()
                if process.poll() is None:
                    kill_group(process)
        messages = errors.read_text(errors="replace")
        if process.returncode != 0:
            tail = " | ".join(messages.strip().splitlines()[-3:])
            raise BenchError(f"{what} exited with {process.returncode}: {tail}")
        check_summary(messages, log_file)
        written = count_lines(out)
    finally:
        out.unlink(missing_ok=True)
    if written != expected:
        raise BenchError(f"{what} wrote {written:,} events, {expected:,} lines match")
    return {**log_rates(log_file, elapsed), "matches": written, "peak_rss_mb": peak}


def follow_until(
    process: subprocess.Popen[Any], out: Path, expected: int, start: float, limit: float
) -> float | None:
    """Seconds from ``start`` until ``out`` holds ``expected`` lines; None after ``limit``.

    Counts the new bytes of ``out`` every :data:`FOLLOW_POLL` s. BenchError if the command
    exits first.
    """
    seen = 0
    offset = 0
    while True:
        with contextlib.suppress(FileNotFoundError), open(out, "rb") as file:
            file.seek(offset)
            data = file.read()
            offset += len(data)
            seen += data.count(b"\n")
        now = time.perf_counter()
        if seen >= expected:
            return now - start
        if process.poll() is not None:
            raise BenchError(
                f"eventmp run exited with {process.returncode} in follow mode, having written "
                f"{seen:,} of {expected:,} events"
            )
        if now - start > limit:
            return None
        time.sleep(FOLLOW_POLL)


def log_record(log_file: LogFile) -> dict[str, Any]:
    """What the results record about a generated log (not its temporary path)."""
    return {
        "lines": log_file.lines,
        "bytes": log_file.bytes,
        "matches": log_file.matches,
        "seed": log_file.seed,
        "kinds": log_file.kinds,
    }


def log_cases(
    sizes: Sizes, tmp: Path, notes: list[str], meta: dict[str, Any], plan: Plan
) -> list[Case]:
    """The log-reading rows. Their logs are generated here, once for every run."""
    directory = Path(plan.log_dir) if plan.log_dir else tmp
    limit = sizes.log_time_limit_s
    main_log = log_fixture(directory, lines=sizes.log_lines)
    meta["logs"] = {"pattern": LOG_PATTERN, "log": log_record(main_log), "follow": None}
    notes.append(
        "The `eventmp run` rows run with eventmp's bytecode compiled, as installing it leaves "
        "it: from a source tree under PYTHONDONTWRITEBYTECODE each process would first compile "
        "every module."
    )
    notes.append(
        "The generated logs are synced to disk before the first row: the kernel writing them "
        "back during the rows took CPU from those that use both CPUs (eventmp's) and hardly "
        "from those that use one (grep's)."
    )

    def eventmp_case(key: str, label: str) -> Case:
        run = eventmp_runner(key, sizes, tmp, plan)
        assert run is not None, key
        return Case(key, "logs", label, plan.default_method, run, ab=True)

    utf8: str | None = LOG_GREP_LOCALE
    if not locale_exists(LOG_GREP_LOCALE):
        utf8 = None
        notes.append(
            f"There is no {LOG_GREP_LOCALE} locale here: the `grep -cE` row runs in the "
            f"inherited locale (LC_ALL={os.environ.get('LC_ALL', '')!r}, "
            f"LANG={os.environ.get('LANG', '')!r})."
        )
        log(f"  NOTE: {notes[-1]}")
    meta["logs"]["grep_locale"] = utf8 or "(inherited)"
    cases = [
        Case("log.grep", "logs", "`grep -cE`", "", lambda: log_grep(main_log, limit, utf8)),
        Case(
            "log.grep_bytes",
            "logs",
            "`grep -cE` with `LC_ALL=C`: bytes, not UTF-8 (reference)",
            "",
            lambda: log_grep(main_log, limit, "C"),
        ),
        Case(
            "log.naive",
            "logs",
            "naive Python loop, `json.dumps` per match",
            "",
            lambda: log_naive(main_log, tmp, limit),
        ),
        eventmp_case("log.once", "eventmp `run --once`, default settings"),
        eventmp_case("log.once_workers2", "eventmp `run --once`, `workers = 2`"),
        eventmp_case("log.once_rules10", f"eventmp `run --once`, {1 + len(LOG_EXTRA_RULES)} rules"),
        eventmp_case(
            "log.once_count",
            "eventmp `run --once`, a handler that writes a newline per event (reference)",
        ),
    ]
    backlog = sizes.follow_backlog_bytes
    free = shutil.disk_usage(directory).free
    if backlog <= 0:
        notes.append("The follow-mode log row was left out (--follow-backlog 0).")
    elif free < FOLLOW_FREE_FACTOR * backlog:
        notes.append(
            f"The follow-mode log row was left out: it needs {FOLLOW_FREE_FACTOR}x its "
            f"{backlog / 1e6:,.0f} MB backlog free in {directory}, which has "
            f"{free / 1e6:,.0f} MB free (see --follow-backlog)."
        )
        log(f"  NOTE: {notes[-1]}")
    else:
        follow_log = log_fixture(directory, min_bytes=backlog)
        meta["logs"]["follow"] = log_record(follow_log)
        cases.append(
            eventmp_case(
                "log.follow",
                f"eventmp `run` (follow mode) catching up a {follow_log.bytes / 1e6:,.0f} MB "
                "backlog",
            )
        )
    return cases


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
    for per_second in sizes.spin_rates:
        for spin in (True, False):
            runners[f"spin.{per_second}.{'default' if spin else 'off'}"] = functools.partial(
                spin_cpu, default, per_second, sizes.spin_seconds, spin
            )
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
    logs = Path(plan.log_dir) if plan.log_dir else tmp
    limit = sizes.log_time_limit_s

    def log_once(
        workers: int | None = None, rules: int = 1, handler: str = "json"
    ) -> dict[str, Any]:
        log_file = log_fixture(logs, lines=sizes.log_lines)
        return log_eventmp(log_file, tmp, limit, workers=workers, rules=rules, handler=handler)

    runners["log.once"] = log_once
    runners["log.once_workers2"] = functools.partial(log_once, workers=2)
    runners["log.once_rules10"] = functools.partial(log_once, rules=1 + len(LOG_EXTRA_RULES))
    runners["log.once_count"] = functools.partial(log_once, handler="count")
    runners["log.follow"] = lambda: log_eventmp(
        log_fixture(logs, min_bytes=sizes.follow_backlog_bytes), tmp, limit, follow=True
    )
    return runners.get(key)


def build_cases(
    sizes: Sizes,
    tmp: Path,
    notes: list[str],
    meta: dict[str, Any],
    plan: Plan,
    groups: tuple[str, ...] = (),
) -> list[Case]:
    """The measurements of ``groups`` (all of them when it is empty), in the report's order."""
    groups = groups or GROUPS
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

    cores = plan.cores

    if "throughput" in groups:
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

    if "latency" in groups:
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

    if "spin" in groups:
        spin = default_idle_spin()
        meta["idle_spin_default"] = spin
        if spin is None:
            notes.append(
                "EventDispatcher has no idle_spin parameter: the idle-spin rows are skipped."
            )
        else:
            for per_second in sizes.spin_rates:
                for on in (True, False):
                    setting = f"idle_spin={spin * 1e6:g} µs (default)" if on else "idle_spin=0"
                    add_eventmp(
                        f"spin.{per_second}.{'default' if on else 'off'}",
                        "spin",
                        f"{per_second:,} events/s, {setting}",
                        default,
                    )

    if "cpu" in groups:
        for workers in range(1, cores + 1):
            add_eventmp(f"cpu.{workers}", "cpu", f"workers={workers}", default)

    if "restart" in groups:
        for method in methods:
            add_eventmp(f"restart.{method}", "restart", "crash → next event's handler", method)

    if "gc" in groups:
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

    if "rss" in groups:
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

    if "logs" in groups:
        cases += log_cases(sizes, tmp, notes, meta, plan)
    return cases


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error']}"
    if "median_us" in result:
        return f"median {result['median_us']:.0f} µs, p99 {result['p99_us']:.0f} µs"
    if "median_ms" in result:
        return f"median {result['median_ms']:.1f} ms"
    if "worker_cpu_pct" in result and "events_per_s" not in result:
        return f"worker CPU {result['worker_cpu_pct']:.0f}% of one CPU"
    if "growth_mb" in result:
        return (
            f"RSS {result['baseline_mb']:.0f} → {result['peak_mb']:.0f} MB, "
            f"peak pending {result['peak_pending']:,}"
        )
    if "lines_per_s" in result:
        text = f"{result['lines_per_s']:,.0f} lines/s, {result['mb_per_s']:,.1f} MB/s"
        if "peak_rss_mb" in result:
            text += f", peak RSS {result['peak_rss_mb']:,.0f} MB"
        return text
    return f"{result['events_per_s']:,.0f} events/s"


def run_all(cases: list[Case], runs: int, ab: ABRunner | None = None) -> None:
    """Every case once per run, the runs one after the other.

    With ``ab``, an eventmp row runs in a fresh interpreter per tree, back to back; which tree
    goes first alternates from row to row and from run to run.
    """
    for run in range(1, runs + 1):
        for index, case in enumerate(cases, 1):
            method = f" ({case.method})" if case.method else ""
            prefix = f"[run {run}/{runs}, {index}/{len(cases)}] {case.label}{method}"
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
                result = {"error": f"{type(exc).__name__}: {exc}", **getattr(exc, "figures", {})}
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
        result = {"error": f"{type(exc).__name__}: {exc}", **getattr(exc, "figures", {})}
    answer["result"] = result
    answer["notes"] = notes
    json_out.write_text(json.dumps(answer, indent=2) + "\n")
    log(f"{key}: {result if key == 'probe' else describe(result)}")
    return 0


# == summaries and the report ===================================================================


GROUPS = ("throughput", "latency", "spin", "cpu", "restart", "rss", "gc", "logs")  # report order

# For each group of eventmp rows, the figures the A/B table compares and which way is better.
AB_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [("events_per_s", "events/s", "higher")],
    "latency": [("median_us", "median µs", "lower"), ("p99_us", "p99 µs", "lower")],
    "cpu": [("events_per_s", "events/s", "higher")],
    "restart": [("median_ms", "median ms", "lower")],
    "spin": [("worker_cpu_pct", "worker CPU %", "lower")],
    "logs": [("lines_per_s", "lines/s", "higher")],
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

    def runs(self) -> int:
        return max((len(c.results) for c in self.order), default=0)

    def tables(self) -> str:
        """Every table, each under a bold caption: the stdout report."""
        meta = self.meta
        lines = [
            f"Median over {self.runs()} run(s), (min-max) in brackets. Python "
            f"{meta.get('python', '?')}, {meta.get('cpu_count', '?')} CPUs, eventmp "
            f"{meta.get('eventmp_version', '?')}, default start method "
            f"{meta.get('default_start_method', '?')}.",
        ]
        for group in GROUPS:
            if not self.group(group):
                continue
            caption, table = self.table(group)
            lines += ["", f"**{caption}**", "", *table]
        return "\n".join(lines)

    def table(self, group: str) -> tuple[str, list[str]]:
        """The caption and the markdown table of one group of rows."""
        return {
            "throughput": self.throughput_table,
            "latency": self.latency_table,
            "spin": self.spin_table,
            "cpu": self.cpu_table,
            "restart": self.restart_table,
            "rss": self.rss_table,
            "gc": self.gc_table,
            "logs": self.logs_table,
        }[group]()

    def throughput_table(self) -> tuple[str, list[str]]:
        lines = ["| path | start method | events | events/s |", "|---|---|---:|---:|"]
        for case in self.group("throughput"):
            events = self.value(case.key, "events")
            shown = f"{events:,.0f}" if events is not None else "n/a"
            lines.append(
                f"| {case.label} | {case.method} | {shown} | "
                f"{self.cell(case.key, 'events_per_s', ',.0f')} |"
            )
        caption = (
            "Throughput: no-op handler, one worker (unless the row says), small events "
            "(data = an int)"
        )
        return caption, lines

    def latency_table(self) -> tuple[str, list[str]]:
        lines = [
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
        caption = "Latency: `submit()` (or `send_bytes`) to the handler (or `recv_bytes`), µs"
        return caption, lines

    def spin_table(self) -> tuple[str, list[str]]:
        lines = [
            "| offered rate, idle spin | start method | worker CPU % | worker CPU µs/event | "
            "events/s achieved |",
            "|---|---|---:|---:|---:|",
        ]
        for case in self.group("spin"):
            lines.append(
                f"| {case.label} | {case.method} | "
                f"{self.cell(case.key, 'worker_cpu_pct', ',.0f')} | "
                f"{self.cell(case.key, 'worker_cpu_us_per_event', ',.1f')} | "
                f"{self.cell(case.key, 'achieved_per_s', ',.0f')} |"
            )
        caption = (
            f"Idle spin: the worker's CPU (% of one CPU) while no-op events come at a steady "
            f"rate for {self.sizes.spin_seconds:g} s"
        )
        return caption, lines

    def cpu_table(self) -> tuple[str, list[str]]:
        lines = [
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
        iterations = self.meta.get("cpu_handler_iterations", 0)
        caption = (
            f"CPU-heavy handler (~{self.sizes.cpu_handler_ms:g} ms pure-Python loop, "
            f"{iterations:,} iterations), {self.sizes.cpu_events} events"
        )
        return caption, lines

    def restart_table(self) -> tuple[str, list[str]]:
        lines = ["| start method | median ms | fastest ms | slowest ms |", "|---|---:|---:|---:|"]
        for case in self.group("restart"):
            lines.append(
                f"| {case.method} | {self.cell(case.key, 'median_ms', ',.1f')} | "
                f"{self.cell(case.key, 'min_ms', ',.1f')} | "
                f"{self.cell(case.key, 'max_ms', ',.1f')} |"
            )
        caption = (
            f"Restart after a crash (`os._exit(1)` in the handler), {self.sizes.restarts} "
            "crashes per run, from submitting the crashing event to the next event's handler"
        )
        return caption, lines

    def rss_table(self) -> tuple[str, list[str]]:
        lines = [
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
        holding = float(self.meta.get("holding_all_mb", 0.0))
        caption = (
            f"Parent RSS while {self.sizes.rss_events:,} events are submitted as fast as "
            f"possible to one slower worker (holding them all at once would take "
            f"~{holding:,.0f} MB)"
        )
        return caption, lines

    def gc_table(self) -> tuple[str, list[str]]:
        lines = ["| worker | worker CPU µs/event | events/s |", "|---|---:|---:|"]
        for case in self.group("gc"):
            lines.append(
                f"| {case.label} | {self.cell(case.key, 'worker_cpu_us_per_event', ',.2f')} | "
                f"{self.cell(case.key, 'events_per_s', ',.0f')} |"
            )
        caption = (
            f"GC in a forked worker: a handler that keeps a small list per event, "
            f"{self.sizes.gc_events:,} events, the parent holding "
            f"{self.sizes.gc_heap_objects:,} extra objects when the worker forks"
        )
        return caption, lines

    def logs_table(self) -> tuple[str, list[str]]:
        lines = [
            "| path | lines | MB | seconds | lines/s | MB/s | peak RSS MB (eventmp process) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        logs = self.meta.get("logs") or {}
        for case in self.group("logs"):
            generated = (logs.get("follow") if case.key == "log.follow" else logs.get("log")) or {}
            size = [
                self.value(case.key, name) or generated.get(name) for name in ("lines", "bytes")
            ]
            shown = [f"{size[0]:,.0f}" if size[0] else "n/a"]
            shown.append(f"{size[1] / 1e6:,.0f}" if size[1] else "n/a")
            lines.append(
                f"| {case.label} | {' | '.join(shown)} | "
                f"{self.cell(case.key, 'seconds', ',.2f')} | "
                f"{self.cell(case.key, 'lines_per_s', ',.0f')} | "
                f"{self.cell(case.key, 'mb_per_s', ',.1f')} | "
                f"{self.cell(case.key, 'peak_rss_mb', ',.0f')} |"
            )
        matches = (logs.get("log") or {}).get("matches", 0)
        caption = (
            f"Reading logs: a generated sshd-style auth.log of {self.sizes.log_lines:,} lines, "
            f"{matches:,} of them matching the rule; each path a process of its own, start-up "
            "included"
        )
        return caption, lines

    def log_ratios(self) -> list[dict[str, Any]]:
        """Each eventmp log row's time per byte over grep's and the naive loop's (medians)."""
        out: list[dict[str, Any]] = []
        for mine in self.group("logs"):
            if not mine.key.startswith(("log.once", "log.follow")):  # the eventmp rows
                continue
            ours = self.value(mine.key, "mb_per_s")
            for peer_key, peer in LOG_PEERS.items():
                theirs = self.value(peer_key, "mb_per_s")
                if ours and theirs:
                    out.append(
                        {
                            "eventmp_key": mine.key,
                            "eventmp": mine.label,
                            "peer_key": peer_key,
                            "peer": peer,
                            "ratio": theirs / ours,
                        }
                    )
        return out

    def log_ratio_lines(self) -> list[str]:
        by_row: dict[str, list[str]] = {}
        for ratio in self.log_ratios():
            by_row.setdefault(ratio["eventmp"], []).append(f"{ratio['ratio']:.2f}x {ratio['peer']}")
        return [f"- {row}: " + ", ".join(cells) for row, cells in by_row.items()]

    def log_goals(self) -> list[dict[str, Any]]:
        """eventmp within 2x grep and the naive loop, by time per byte; memory in follow mode."""
        checks: list[dict[str, Any]] = []
        for key, what in (
            ("log.once", "eventmp run --once (default settings)"),
            ("log.follow", "follow-mode catch-up"),
        ):
            for peer_key, peer in LOG_PEERS.items():
                text, passed = self.log_goal(key, what, peer_key, peer)
                checks.append({"check": text, "passed": passed})
        peak = self.value("log.follow", "peak_rss_mb")
        follow = ((self.meta.get("logs") or {}).get("follow") or {}).get("bytes", 0)
        text = "follow-mode catch-up, peak RSS of the eventmp process: "
        if peak is not None:
            text += f"{peak:,.0f} MB for a {follow / 1e6:,.0f} MB backlog"
        else:
            text += "no figure"
        checks.append(
            {
                "check": text + f" (goal < {LOG_RSS_GOAL_MB:g} MB)",
                "passed": None if peak is None else peak < LOG_RSS_GOAL_MB,
            }
        )
        return checks

    def log_goal(self, key: str, what: str, peer_key: str, peer: str) -> tuple[str, bool | None]:
        name = f"{what} / {peer}, time per byte"
        goal = f"(goal <= {LOG_GOAL_RATIO:g}x)"
        ours = self.value(key, "mb_per_s")
        theirs = self.value(peer_key, "mb_per_s")
        if key not in self.cases:
            return f"{name}: no such row (see the notes) {goal}", None
        if not theirs:
            return f"{name}: no figure {goal}", None
        if ours:
            ratio = theirs / ours
            return (
                f"{name}: {ratio:.2f}x ({ours:,.1f} vs {theirs:,.1f} MB/s) {goal}",
                ratio <= LOG_GOAL_RATIO,
            )
        # Stopped at the time limit: that bounds its time per byte from below.
        stopped = [r for r in self.cases[key].results if "timed_out_after_s" in r]
        if not stopped:
            return f"{name}: no figure {goal}", None
        least = min(theirs * r["timed_out_after_s"] / (r["bytes"] / 1e6) for r in stopped)
        text = f"{name}: did not finish within {stopped[0]['timed_out_after_s']:g} s"
        if least > LOG_GOAL_RATIO:
            return f"{text}, so more than {least:.1f}x {goal}", False
        return f"{text} {goal}", None

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

    def peer_ratio_table(self) -> list[str]:
        """eventmp's one-worker paths (columns) over each peer (rows): the page's ratio table."""
        mine = [
            case
            for case in self.group("throughput")
            if case.key.startswith(("tp.submit.", "tp.generator."))
        ]
        by_pair = {(r["eventmp_key"], r["peer_key"]): r["ratio"] for r in self.ratios()}
        peers = [key for key in self.peer_keys("fork") if not key.startswith("tp.ceiling")]
        rows: list[tuple[str, list[str]]] = [
            (
                "batched-Pipe ceiling (same start method)",
                [f"tp.ceiling.{case.method}" for case in mine],
            )
        ]
        rows += [
            (f"{self.cases[key].label} ({self.cases[key].method})", [key] * len(mine))
            for key in peers
        ]
        lines = [
            "| eventmp / peer | " + " | ".join(f"{c.label} ({c.method})" for c in mine) + " |",
            "|---|" + "---:|" * len(mine),
        ]
        for label, keys in rows:
            cells = [
                f"{by_pair[(case.key, key)]:.2f}x" if (case.key, key) in by_pair else "n/a"
                for case, key in zip(mine, keys, strict=True)
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    def latency_ratio_lines(self) -> list[str]:
        """eventmp's median and p99 over the raw Pipe's, idle and under a busy producer."""
        lines = []
        for mine, pipe in (
            ("lat.idle.eventmp", "lat.idle.pipe"),
            ("lat.busy.eventmp", "lat.busy.pipe"),
            ("lat.busy.eventmp_nospin", "lat.busy.pipe"),
        ):
            cells = []
            for figure, name in (("median_us", "median"), ("p99_us", "p99")):
                ours, theirs = self.value(mine, figure), self.value(pipe, figure)
                if ours is not None and theirs:
                    cells.append(f"{name} {ours / theirs:.2f}x")
            if cells and mine in self.cases:
                lines.append(f"- {self.cases[mine].label}: " + ", ".join(cells))
        return lines

    def goals(self) -> list[dict[str, Any]]:
        """The goals eventmp is held to, checked against the medians."""
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

        if self.group("latency"):
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

        if self.group("cpu"):
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

        if self.group("rss"):
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

        if self.group("logs"):
            checks += self.log_goals()
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
        lines = [self.tables()]
        if self.group("throughput"):
            lines += ["", "**Throughput ratios** (eventmp / peer, medians)", ""]
            lines.append(self.ratio_table())
        log_ratios = self.log_ratio_lines()
        if log_ratios:
            lines += ["", "**Reading logs: eventmp's time per byte over each peer's** (medians)"]
            lines += ["", *log_ratios]
        lines += ["", "**Goals**", ""]
        lines += self.goal_lines()
        by_steal = self.busy_by_steal()
        if by_steal:
            lines += ["", "**Busy-producer p99, run by run, by CPU steal** (lowest first)", ""]
            lines += by_steal
        lines += self.ab_table()
        notes = self.note_lines()
        if notes:
            lines += ["", "**Notes**", "", *notes]
        return "\n".join(lines)

    def goal_lines(self) -> list[str]:
        verdicts = {True: "PASS", False: "FAIL", None: "N/A"}
        return [f"- {verdicts[goal['passed']]} {goal['check']}" for goal in self.goals()]

    def note_lines(self) -> list[str]:
        """The run's notes and every failed measurement, as markdown list items."""
        failures = [
            f"{case.label}{f' ({case.method})' if case.method else ''}{side}, run {i}: {r['error']}"
            for case in self.order
            for side, results in (("", case.results), (", baseline", case.baseline))
            for i, r in enumerate(results, 1)
            if "error" in r
        ]
        notes = [f"- {note}" for note in self.meta.get("notes", [])]
        return notes + [f"- measurement failed: {failure}" for failure in failures]

    def json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "sizes": asdict(self.sizes),
            "results": {
                case.key: {
                    "group": case.group,
                    "label": case.label,
                    "start_method": case.method,
                    "ab": case.ab,
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
            "log_ratios": self.log_ratios(),
            "goals": self.goals(),
            "busy_by_steal": self.busy_by_steal(),
            "markdown": self.text(),
        }


# == the page: docs/performance.md and its two charts ===========================================


PAGE = "performance.md"
THROUGHPUT_SVG = "performance-throughput.svg"
LATENCY_SVG = "performance-latency.svg"
GENERATED = "Generated by scripts/bench.py; do not edit by hand."
SECTIONS = {s.group: s for s in (THROUGHPUT, LATENCY, SPIN, SCALING, RESTART, MEMORY, GC, LOGS)}


def constants() -> dict[str, float]:
    """The constants the explanatory texts mention, recorded with the results."""
    return {
        "generator_chunk": GENERATOR_CHUNK,
        "ceiling_batch": CEILING_BATCH,
        "ceiling_window": CEILING_WINDOW,
        "max_batch": MAX_BATCH_REFERENCE,
        "latency_warm_up": LATENCY_WARM_UP,
        "quiet_steal_pct": QUIET_STEAL_PCT,
        "rss_sample_ms": RSS_SAMPLE_PERIOD * 1000,
        "follow_poll_ms": FOLLOW_POLL * 1000,
        "follow_free_factor": FOLLOW_FREE_FACTOR,
        "log_goal_ratio": LOG_GOAL_RATIO,
        "log_rss_goal_mb": LOG_RSS_GOAL_MB,
    }


def text_context(report: Report) -> dict[str, Any]:
    """What the :class:`Section` texts are formatted with: the sizes and plan of the run."""
    meta = report.meta
    spin = meta.get("idle_spin_default")
    return {
        **asdict(report.sizes),
        **constants(),
        **meta.get("constants", {}),
        "runs": report.runs(),
        "runs_text": plural(report.runs(), "run"),
        "latency_gap_ms": report.sizes.latency_gap_s * 1000,
        "default_start_method": meta.get("default_start_method", "?"),
        "generator_poll_interval": meta.get("generator_poll_interval", 0.0),
        "cpu_iterations": meta.get("cpu_handler_iterations", 0),
        "holding_all_mb": meta.get("holding_all_mb", 0.0),
        "holding_bytes_per_event": meta.get("holding_bytes_per_event", 0.0),
        "idle_spin_us": 0.0 if spin is None else spin * 1e6,
        **log_context(meta),
    }


def log_context(meta: dict[str, Any]) -> dict[str, Any]:
    """What the text of the log-reading section says about the generated logs."""
    logs = meta.get("logs") or {}
    main = logs.get("log") or {"lines": 0, "bytes": 0, "matches": 0}
    follow = logs.get("follow") or {"lines": 0, "bytes": 0}
    lines = main["lines"] or 1
    return {
        "log_mb": main["bytes"] / 1e6,
        "log_line_bytes": main["bytes"] / lines,
        "log_match_pct": 100.0 * main["matches"] / lines,
        "log_pattern": logs.get("pattern", LOG_PATTERN),
        "log_grep_locale": logs.get("grep_locale", LOG_GREP_LOCALE),
        "log_rules": 1 + len(LOG_EXTRA_RULES),
        "log_extra_rules": len(LOG_EXTRA_RULES),
        "follow_mb": follow["bytes"] / 1e6,
        "follow_lines": follow["lines"],
    }


def commit_stamp() -> str:
    """``git rev-parse --short HEAD``, with ``-dirty`` if the tree has changes (or new files)."""
    try:
        short = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain")
    except (BenchError, OSError):
        return "unknown (not a git checkout)"
    return short + ("-dirty" if dirty else "")


def machine_stamp() -> dict[str, Any]:
    """CPU model, core count, whether a hypervisor is present, OS and kernel."""
    model = ""
    virtual: bool | None = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            name, _, value = line.partition(":")
            name = name.strip()
            if not model and name in ("model name", "Hardware", "cpu model", "Processor"):
                model = value.strip()
            if name == "flags" and virtual is None:
                virtual = "hypervisor" in value.split()
    distribution = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distribution = line.partition("=")[2].strip().strip('"')
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "virtual_machine": virtual,
        "system": platform.system(),
        "kernel": platform.release(),
        "distribution": distribution,
        "architecture": platform.machine(),
    }


def command_line(args: list[str]) -> str:
    """How this script was invoked, as one would type it at the root of the tree."""
    python = Path(os.path.abspath(sys.executable))
    shown = str(python.relative_to(THIS_TREE)) if python.is_relative_to(THIS_TREE) else python.name
    script = Path(__file__).resolve().relative_to(THIS_TREE)
    return shlex.join([shown, str(script), *args])


def run_stamp(args: list[str]) -> dict[str, Any]:
    """What the page says was measured: commit, Python, machine, date and command."""
    return {
        "commit": commit_stamp(),
        "python_implementation": platform.python_implementation(),
        "machine": machine_stamp(),
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command_line(args),
        "constants": constants(),
    }


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def stamp_lines(report: Report, rendered_by: str | None) -> list[str]:
    meta = report.meta
    machine = meta.get("machine", {})
    unknown = "not recorded"
    cpus = f"{machine.get('cpu_count', meta.get('cpu_count', '?'))} CPUs"
    if machine.get("cpus_usable") not in (None, machine.get("cpu_count")):
        cpus += f" ({machine['cpus_usable']} usable)"
    hardware = [machine.get("cpu_model", unknown), cpus]
    if machine.get("virtual_machine"):
        hardware.append("virtual machine")
    system = " ".join(str(machine[k]) for k in ("system", "kernel") if machine.get(k))
    if machine.get("distribution"):
        system += f" ({machine['distribution']})"
    if machine.get("architecture"):
        system += f", {machine['architecture']}"
    seconds = float(meta.get("seconds", 0.0))
    took = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    runs = report.runs()
    python = f"{meta.get('python', unknown)} ({meta.get('python_implementation', 'CPython')})"
    lines = [
        f"- **Commit**: `{meta.get('commit', unknown)}` (eventmp "
        f"{meta.get('eventmp_version', '?')})",
        f"- **Python**: {python}",
        f"- **Machine**: {', '.join(hardware)}; {system or meta.get('platform', unknown)}",
        f"- **Date**: {meta.get('started_utc', meta.get('started', unknown))}",
        f"- **Command**: `{meta.get('command', unknown)}` ({plural(runs, 'run')}, {took})",
    ]
    if rendered_by is not None:
        lines.append(f"- **Page rendered from the saved results by**: `{rendered_by}`")
    return lines


def performance_page(report: Report, rendered_by: str | None = None) -> str:
    """docs/performance.md: the stamp, then each section's text, table and ratios."""
    context = text_context(report)
    lines = [
        f"# {INTRO.title}",
        "",
        f"_{GENERATED}_ Measure and regenerate it with "
        "`.venv/bin/python scripts/bench.py --write-docs` on a quiet machine (with the `bench` "
        "extra installed: `.venv/bin/pip install -e '.[bench]'`), or re-render a saved run with "
        "`.venv/bin/python scripts/bench.py --report-from bench-results.json --write-docs`.",
        "",
        *stamp_lines(report, rendered_by),
        "",
    ]
    if report.meta.get("quick"):
        lines += [
            "> **A `--quick` run**: one run with about ten times fewer events, a smoke test "
            "of the script, not a measurement.",
            "",
        ]
    lines += [INTRO.text(context), "", "## Goals", ""]
    lines += [
        "The goals eventmp's design is held to, checked against the medians of this run:",
        "",
    ]
    verdicts = {True: "**PASS**", False: "**FAIL**", None: "**N/A**"}
    lines += [f"- {verdicts[goal['passed']]} {goal['check']}" for goal in report.goals()]
    for group in GROUPS:
        if not report.group(group):
            continue
        section = SECTIONS[group]
        caption, table = report.table(group)
        lines += ["", f"## {section.title}", "", section.text(context), ""]
        if group == "throughput":
            lines += [
                f"![{caption}; eventmp against its peers, bar chart]({THROUGHPUT_SVG})",
                "",
            ]
        if group == "latency":
            lines += [f"![{caption}; median and p99 per path, bar chart]({LATENCY_SVG})", ""]
        lines += table
        if group == "throughput":
            lines += [
                "",
                "eventmp's events/s over each peer's (medians; above 1x, eventmp carries more):",
                "",
                *report.peer_ratio_table(),
            ]
        if group == "logs" and report.log_ratio_lines():
            lines += [
                "",
                "eventmp's time per byte over each peer's (medians; the goal is at most "
                f"{LOG_GOAL_RATIO:g}x at default settings):",
                "",
                *report.log_ratio_lines(),
            ]
        if group == "latency":
            ratios = report.latency_ratio_lines()
            if ratios:
                lines += ["", "eventmp's latency over the raw Pipe's (medians):", "", *ratios]
            by_steal = report.busy_by_steal()
            if by_steal:
                lines += [
                    "",
                    "Busy-producer p99, run by run, in order of CPU steal (lowest first):",
                    "",
                    *by_steal,
                ]
    ab = report.ab_table()
    if ab:
        lines += ["", "## This tree against a baseline", *ab]
    notes = report.note_lines()
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"


# -- the charts: plain SVG, no plotting library --------------------------------------------------

SVG_WIDTH = 760
SVG_LEFT = 20
SVG_RIGHT = 120  # room for the value labels
SVG_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
# (bar, light bar) per kind of path: eventmp, the hand-written pipes, the peers
SVG_COLOURS = {
    "eventmp": ("#2f6db5", "#9dbde6"),
    "pipe": ("#6f6f6f", "#c4c4c4"),
    "peer": ("#d9822b", "#f2c491"),
}
SVG_KIND_NAMES = {
    "eventmp": "eventmp",
    "pipe": "hand-written Pipe",
    "peer": "peers",
}


def path_kind(key: str) -> str:
    """eventmp, pipe (the hand-written ceiling and raw Pipe references) or peer."""
    if key.startswith(("tp.submit", "tp.generator", "lat.idle.eventmp", "lat.busy.eventmp")):
        return "eventmp"
    if key.startswith(("tp.ceiling", "tp.pipe", "lat.")):
        return "pipe"
    return "peer"


def svg_text(x: float, y: float, text: str, **attributes: str | float) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{xml_escape(text)}</text>'


def svg_bar(
    key: str, figure: str, x: float, y: float, width: float, height: float, fill: str, tip: str
) -> str:
    row = xml_escape(key, {'"': "&quot;"})
    return (
        f'<rect class="bar" data-row="{row}" data-figure="{figure}" x="{x:.1f}" '
        f'y="{y:.1f}" width="{max(width, 1.0):.1f}" height="{height:.1f}" fill="{fill}">'
        f"<title>{xml_escape(tip)}</title></rect>"
    )


def svg_whisker(low: float, high: float, middle: float) -> str:
    if high - low < 1:
        return ""
    return (
        f'<path class="whisker" d="M{low:.1f} {middle:.1f}H{high:.1f}M{low:.1f} {middle - 4:.1f}'
        f'V{middle + 4:.1f}M{high:.1f} {middle - 4:.1f}V{middle + 4:.1f}" stroke="#222" '
        'stroke-width="1" fill="none"/>'
    )


def svg_document(height: float, title: str, description: str, body: list[str]) -> str:
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height:.0f}" '
            f'viewBox="0 0 {SVG_WIDTH} {height:.0f}" role="img">',
            f"<title>{xml_escape(title)}</title>",
            f"<desc>{xml_escape(description)}</desc>",
            '<rect width="100%" height="100%" fill="#ffffff"/>',
            f'<g font-family="{SVG_FONT}" font-size="12" fill="#222222">',
            *body,
            "</g>",
            "</svg>",
            "",
        ]
    )


def svg_legend(y: float, kinds: list[tuple[str, str]]) -> list[str]:
    """Swatches with their names in one line: ``(colour, name)`` each."""
    body, x = [], float(SVG_LEFT)
    for colour, name in kinds:
        body.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{colour}"/>')
        body.append(svg_text(x + 17, y, name))
        x += 17 + 6.5 * len(name) + 18
    return body


def nice_step(span: float, ticks: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) that cuts ``span`` in ~``ticks``."""
    raw = span / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def log_ticks(low: float, high: float) -> list[float]:
    """The 1-2-5 ticks from the last one at or below ``low`` to the first at or above ``high``."""
    decade = 10.0 ** math.floor(math.log10(max(low, 1e-9)))
    candidates = [decade * m * 10**k for k in range(0, 12) for m in (1, 2, 5)]
    first = max(t for t in candidates if t <= low * 1.0001)
    last = min((t for t in candidates if t >= high * 0.9999), default=candidates[-1])
    ticks = [t for t in candidates if first <= t <= last]
    return ticks if len(ticks) > 1 else [first, first * 2]


def short_number(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def duration_us(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.0f} µs"


def chart_label(case: Case) -> str:
    return f"{case.label.replace('`', '')} ({case.method})"


def throughput_svg(report: Report) -> str:
    """Horizontal bars of events/s, fastest first, on a linear scale, min-max whiskers."""
    rows = [
        (case, summary)
        for case in report.group("throughput")
        if (summary := report.summaries[case.key].get("events_per_s")) is not None
    ]
    rows.sort(key=lambda row: -row[1]["median"])
    title = "Throughput: no-op handler, one worker unless the row says, events/s"
    subtitle = (
        f"median of {plural(report.runs(), 'run')}; whisker: lowest to highest run; lighter: "
        "reference rows, which no goal uses; linear scale"
    )
    body = [
        svg_text(SVG_LEFT, 24, title, font_size=15, font_weight="bold"),
        svg_text(SVG_LEFT, 42, subtitle, fill="#555555"),
        *svg_legend(64, [(SVG_COLOURS[k][0], SVG_KIND_NAMES[k]) for k in SVG_COLOURS]),
    ]
    top = 82.0
    row_height = 38.0
    bottom = top + row_height * len(rows)
    plot = SVG_WIDTH - SVG_LEFT - SVG_RIGHT
    highest = max((max(s["max"], s["median"]) for _, s in rows), default=1.0) or 1.0
    step = nice_step(highest)
    end = math.ceil(highest / step) * step

    def x(value: float) -> float:
        return SVG_LEFT + plot * value / end

    tick = 0.0
    while tick <= end + step / 2:
        body.append(
            f'<line x1="{x(tick):.1f}" y1="{top:.1f}" x2="{x(tick):.1f}" y2="{bottom:.1f}" '
            'stroke="#e2e2e2"/>'
        )
        body.append(svg_text(x(tick), bottom + 16, short_number(tick), text_anchor="middle"))
        tick += step
    for index, (case, summary) in enumerate(rows):
        y = top + index * row_height
        colour = SVG_COLOURS[path_kind(case.key)]["(reference)" in case.label]
        median = summary["median"]
        body.append(svg_text(SVG_LEFT, y + 13, chart_label(case)))
        tip = f"{chart_label(case)}: {median:,.0f} events/s"
        body.append(
            svg_bar(case.key, "events_per_s", x(0), y + 18, x(median) - x(0), 14, colour, tip)
        )
        body.append(svg_whisker(x(summary["min"]), x(summary["max"]), y + 25))
        label_x = max(x(median), x(summary["max"])) + 6
        body.append(svg_text(label_x, y + 29, f"{median:,.0f}"))
    if not rows:
        body.append(svg_text(SVG_LEFT, top + 20, "no throughput figures in this run"))
    description = "; ".join(
        f"{chart_label(case)}: {summary['median']:,.0f} events/s" for case, summary in rows
    )
    return svg_document(bottom + 30, title, description, [b for b in body if b])


def latency_svg(report: Report) -> str:
    """Median and p99 bars per path, idle and busy producer, on a log scale of µs."""
    panels: list[tuple[str, list[Case]]] = [
        (
            f"Idle: one event every {report.sizes.latency_gap_s * 1000:g} ms",
            [c for c in report.group("latency") if c.key.startswith("lat.idle.")],
        ),
        (
            f"Busy producer: {report.sizes.busy_rate:,} events/s offered",
            [c for c in report.group("latency") if c.key.startswith("lat.busy.")],
        ),
    ]
    figures = ("median_us", "p99_us")
    shown = [
        (title, [c for c in cases if all(report.summaries[c.key].get(f) for f in figures)])
        for title, cases in panels
    ]
    values = [
        value
        for _, cases in shown
        for case in cases
        for figure in figures
        for value in (
            report.summaries[case.key][figure]["min"],
            report.summaries[case.key][figure]["max"],
        )
        if value > 0
    ]
    ticks = log_ticks(min(values, default=10.0), max(values, default=1000.0))
    low, high = ticks[0], ticks[-1]
    labelled = ticks if len(ticks) <= 10 else [t for t in ticks if f"{t:g}"[0] == "1"]
    plot = SVG_WIDTH - SVG_LEFT - SVG_RIGHT

    def x(value: float) -> float:
        share = (math.log10(max(value, low)) - math.log10(low)) / (
            math.log10(high) - math.log10(low)
        )
        return SVG_LEFT + plot * share

    title = "Latency: submit() to the handler starting (eventmp), send_bytes to recv_bytes (Pipe)"
    subtitle = (
        f"median and p99 per path, median of {plural(report.runs(), 'run')}; whisker: lowest "
        "to highest run; log scale"
    )
    body = [
        svg_text(SVG_LEFT, 24, title, font_size=15, font_weight="bold"),
        svg_text(SVG_LEFT, 42, subtitle, fill="#555555"),
        *svg_legend(
            64,
            [
                (SVG_COLOURS["eventmp"][0], "eventmp median"),
                (SVG_COLOURS["eventmp"][1], "eventmp p99"),
                (SVG_COLOURS["pipe"][0], "raw Pipe median"),
                (SVG_COLOURS["pipe"][1], "raw Pipe p99"),
            ],
        ),
    ]
    top = 82.0
    row_height = 50.0
    heading = 26.0
    rows: list[str] = []
    y = top
    description = []
    for panel_title, cases in shown:
        if not cases:
            continue
        rows.append(svg_text(SVG_LEFT, y + 16, panel_title, font_size=13, font_weight="bold"))
        y += heading
        for case in cases:
            dark, light = SVG_COLOURS[path_kind(case.key)]
            rows.append(svg_text(SVG_LEFT, y + 13, chart_label(case)))
            for offset, figure, colour, name in (
                (18.0, "median_us", dark, "median"),
                (32.0, "p99_us", light, "p99"),
            ):
                summary = report.summaries[case.key][figure]
                value = summary["median"]
                tip = f"{chart_label(case)}: {name} {duration_us(value)}"
                rows.append(
                    svg_bar(case.key, name, x(low), y + offset, x(value) - x(low), 12, colour, tip)
                )
                rows.append(svg_whisker(x(summary["min"]), x(summary["max"]), y + offset + 6))
                label_x = max(x(value), x(summary["max"])) + 6
                rows.append(svg_text(label_x, y + offset + 10, f"{name} {duration_us(value)}"))
                description.append(f"{chart_label(case)}: {name} {duration_us(value)}")
            y += row_height
    bottom = y
    for tick in ticks:
        major = tick in labelled
        body.append(
            f'<line x1="{x(tick):.1f}" y1="{top:.1f}" x2="{x(tick):.1f}" y2="{bottom:.1f}" '
            f'stroke="{"#d0d0d0" if major else "#ececec"}"/>'
        )
        if major:
            label = f"{tick:g} µs" if tick < 1000 else f"{tick / 1000:g} ms"
            body.append(svg_text(x(tick), bottom + 16, label, text_anchor="middle"))
    if not description:
        rows.append(svg_text(SVG_LEFT, top + 20, "no latency figures in this run"))
    body += rows
    return svg_document(bottom + 30, title, "; ".join(description), [b for b in body if b])


def write_docs(report: Report, directory: Path, rendered_by: str | None = None) -> list[Path]:
    """Write the page and its two charts into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        (PAGE, performance_page(report, rendered_by)),
        (THROUGHPUT_SVG, throughput_svg(report)),
        (LATENCY_SVG, latency_svg(report)),
    ):
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def not_measured() -> dict[str, Any]:
    raise BenchError("a row loaded from a results file is not measured again")


def load_report(path: Path) -> Report:
    """The report of a results JSON this script wrote (``--report-from``)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    known = {item.name for item in fields(Sizes)}
    raw = {name: value for name, value in data["sizes"].items() if name in known}
    if "spin_rates" in raw:
        raw["spin_rates"] = tuple(raw["spin_rates"])
    cases = [
        Case(
            key,
            entry["group"],
            entry["label"],
            entry["start_method"],
            not_measured,
            results=list(entry["runs"]),
            ab=bool(entry.get("ab", "baseline_runs" in entry)),
            baseline=list(entry.get("baseline_runs", [])),
        )
        for key, entry in data["results"].items()
    ]
    return Report(cases, Sizes(**raw), dict(data["meta"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="The module docstring explains the runs and the A/B mode; the Section text next "
        "to each measurement says what it measures and how (docs/performance.md carries them).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one run, ~10x fewer events (a smoke test)"
    )
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs (default 3)")
    parser.add_argument(
        "--only",
        metavar="GROUP[,GROUP...]",
        type=groups_argument,
        default=(),
        help=f"measure only these groups of rows: {', '.join(GROUPS)} (default: all); with "
        "--write-docs, only with --docs-dir, so that the full page is not overwritten by a "
        "partial one",
    )
    parser.add_argument(
        "--log-lines",
        metavar="N",
        type=int,
        help=f"lines of the generated log of the log-reading rows (default "
        f"{Sizes().log_lines:,}; --quick {QUICK_SIZES.log_lines:,})",
    )
    parser.add_argument(
        "--follow-backlog",
        metavar="SIZE",
        type=size_argument,
        help="the backlog the follow-mode log row catches up, e.g. 1GiB, 300MB (powers of 1024; "
        f"default {Sizes().follow_backlog_bytes >> 20:,} MiB, --quick "
        f"{QUICK_SIZES.follow_backlog_bytes >> 20} MiB; 0 leaves the row out). The row is left "
        f"out when the temporary directory has less than {FOLLOW_FREE_FACTOR}x that free",
    )
    parser.add_argument(
        "--log-time-limit",
        metavar="SECONDS",
        type=duration_argument,
        help="stop a log-reading row that is still running after this long (e.g. 300, 10m; "
        f"default {Sizes().log_time_limit_s:g} s): it fails, and the notes say how far it got",
    )
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
        "tp.submit.fork, lat.idle.eventmp, cpu.1, restart.forkserver, log.once; 'probe' checks "
        "where eventmp is imported from) in this interpreter and write it to --json-out",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"also write docs/{PAGE}, docs/{THROUGHPUT_SVG} and docs/{LATENCY_SVG}",
    )
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=None,
        help="where --write-docs writes (default: the docs directory of this tree)",
    )
    parser.add_argument(
        "--report-from",
        metavar="PATH",
        type=Path,
        help="measure nothing: print the report of a results JSON this script wrote (with "
        "--write-docs, write the page from it)",
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
    log_options = (args.log_lines, args.follow_backlog, args.log_time_limit)
    if args.report_from is not None and (
        args.baseline or args.one_case or args.quick or args.only or log_options != (None,) * 3
    ):
        parser.error(
            "--report-from measures nothing: no --baseline, --one-case, --quick, --only or "
            "--log-* option"
        )
    if args.log_lines is not None and args.log_lines < 1:
        parser.error("--log-lines must be >= 1")
    if args.write_docs and args.only and args.docs_dir is None:
        parser.error(
            "--only with --write-docs needs --docs-dir: the page of a partial run would "
            "replace the full docs/performance.md"
        )
    if args.docs_dir is None:
        args.docs_dir = THIS_TREE / "docs"
    return args


def groups_argument(text: str) -> tuple[str, ...]:
    """``--only``'s value: group names separated by commas, in the report's order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(GROUPS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown group {', '.join(unknown) or '(none given)'}; the groups are "
            + ", ".join(GROUPS)
        )
    return tuple(group for group in GROUPS if group in names)


def size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_argument(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def sizes_from(args: argparse.Namespace) -> Sizes:
    """``--quick``'s sizes or the full ones, with the --log-* options applied."""
    sizes = QUICK_SIZES if args.quick else Sizes()
    for name, value in (
        ("log_lines", args.log_lines),
        ("follow_backlog_bytes", args.follow_backlog),
        ("log_time_limit_s", args.log_time_limit),
    ):
        if value is not None:
            sizes = replace(sizes, **{name: value})
    return sizes


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
    arguments = sys.argv[1:] if argv is None else list(argv)
    if args.one_case is not None:
        return run_one_case(args.one_case, args.json_out, args.case_config, args.quick)
    if args.report_from is not None:
        report = load_report(args.report_from)
        print(report.text())
        if args.write_docs:
            for path in write_docs(report, args.docs_dir, command_line(arguments)):
                log(f"wrote {path}")
        return 0
    sizes = sizes_from(args)
    groups: tuple[str, ...] = args.only or GROUPS
    # The poll_interval=0 probe and the CPU loop's calibration serve these groups only.
    planned = bool({"throughput", "cpu"} & set(groups))
    notes: list[str] = []
    meta: dict[str, Any] = {
        "argv": sys.argv,
        "quick": args.quick,
        "runs": args.runs,
        "groups": list(groups),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "eventmp_version": eventmp.__version__,
        **run_stamp(arguments),
        "notes": notes,
    }
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eventmp-bench-")))
        ab: ABRunner | None = None
        if args.baseline is None:
            plan = make_plan(sizes, notes) if planned else base_plan()
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
            plan = (
                make_plan(sizes, notes, " and ".join(failing) or None) if planned else base_plan()
            )
            info["probes"] = probes
            meta["ab"] = info
            notes.append(
                f"--baseline {args.baseline}: the eventmp rows of the tables above are this "
                "tree's, each measured in a fresh interpreter; the peers and references ran in "
                "this process."
            )
        plan = replace(plan, log_dir=str(tmp))
        if ab is not None:
            ab.plan = plan
        cases = build_cases(sizes, tmp, notes, meta, plan, groups)
        run_all(cases, args.runs, ab)
        if ab is not None:
            meta["ab"]["eventmp_files"] = ab.eventmp_files
    meta["seconds"] = time.perf_counter() - began
    report = Report(cases, sizes, meta)
    print(report.text())
    args.json.write_text(json.dumps(report.json(), indent=2, ensure_ascii=False) + "\n")
    log(f"\nresults written to {args.json} ({meta['seconds']:.0f} s in all)")
    if args.write_docs:
        for path in write_docs(report, args.docs_dir):
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
