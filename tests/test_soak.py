"""Randomized soak test of the first promise: every accepted event has exactly one outcome.

Each case builds a seeded random plan of events whose data says what the handler does in the
worker: return, raise, raise ``SystemExit``, ``os._exit(3)``, segfault, SIGKILL itself, or hang
past ``event_timeout``. Crashes come alone and in bursts of consecutive events, so that several
workers die within moments of each other. The handler appends ``start <id>`` before it acts and
``done <id>`` just before it returns, one ``os.write`` on an ``O_APPEND`` file per line, so the
test judges from what really ran in the workers, not from the dispatcher's counters: each event
ran at most once, and has a ``done`` line and no error event, or no ``done`` line and exactly one
error event. Only then must ``stats()`` agree. Only the public API is used. Events are submitted
in seeded waves of up to ten per worker, most of them followed by ``wait()``, which must drain.

The default run (2 seeds x 1-3 workers x 3 start methods x 3 fault mixes, plus small cases that
feed a generator or route by ``key``: 58 cases) takes about three minutes on two cores. For a
longer soak::

    EVENTMP_SOAK_SEEDS=20 pytest tests/test_soak.py             # seeds 1..20
    EVENTMP_SOAK_SEEDS=50 EVENTMP_SOAK_FIRST_SEED=1000 \\
        EVENTMP_SOAK_EVENTS=2000 pytest tests/test_soak.py -k crashes

``EVENTMP_SOAK_SEEDS`` is how many seeds (default 2), ``EVENTMP_SOAK_FIRST_SEED`` the first one
(default 1), ``EVENTMP_SOAK_EVENTS`` the most events per case (default 600; each case draws
between half that and that). The seed is in every test id (``fork-s7-w2-crashes``), and a
failure prints what was planned, what ran, which events broke the promise and how, and the
command that reruns the case: the events and waves depend only on what the id names (and
``EVENTMP_SOAK_EVENTS``), so the same id replays the same plan. Nothing here comes from the test
suite's conftest, so the module also runs with ``--noconftest`` against another eventmp.
"""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import multiprocessing
import os
import random
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventmp import (
    DispatcherStats,
    Event,
    EventDispatcher,
    HandlerTimeoutError,
    RemoteError,
    WorkerCrashedError,
)
from eventmp.testing import ErrorCollector, ListEventGenerator

# The list conftest.py has, kept here so that this module imports nothing from the test suite:
# a spawn worker imports this module for its handler, and conftest follows eventmp's internals.
START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]
SEEDS_COUNT = int(os.environ.get("EVENTMP_SOAK_SEEDS", "2"))
FIRST_SEED = int(os.environ.get("EVENTMP_SOAK_FIRST_SEED", "1"))
SEEDS = list(range(FIRST_SEED, FIRST_SEED + SEEDS_COUNT))
MAX_EVENTS = int(os.environ.get("EVENTMP_SOAK_EVENTS", "600"))

# Seconds a handler may run; a hang costs this plus KILL_GRACE and a restart. The first event
# of a fresh worker also imports this module (and pytest) under spawn and forkserver.
EVENT_TIMEOUT = 1.0
KILL_GRACE = 0.2
HANG_SECONDS = 30.0  # far past EVENT_TIMEOUT: only the timeout ends it
STOP_TIMEOUT = 30.0

# Worker-killing events a case may hold, by start method. A fork restart costs milliseconds; a
# forkserver or spawn one some tenths of a second (the worker imports eventmp, and this module
# for its first event), and on one worker a crash streak backs off up to 1 s a restart. So fork
# cases are the crash-heavy ones; the others keep their bursts and few lone crashes.
CRASH_BUDGET = {"fork": 40, "forkserver": 8, "spawn": 5}


# == what the handler does in the worker (module level, so spawn workers import it) ==============


class SoakError(Exception):
    """The exception a ``raise`` event raises in the worker."""


def _fine() -> None:
    pass


def _busy() -> None:
    time.sleep(0.01)  # long enough that other workers hold batches in flight meanwhile


def _raise() -> None:
    raise SoakError("raised as planned")


def _system_exit() -> None:
    raise SystemExit(5)


def _exit3() -> None:
    os._exit(3)


def _segfault() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    faulthandler.disable()  # inherited under fork: spare the test log a worker's stack dump
    ctypes.string_at(0)


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(HANG_SECONDS)


def _hang() -> None:
    time.sleep(HANG_SECONDS)


ACTIONS: dict[str, Callable[[], None]] = {
    "fine": _fine,
    "busy": _busy,
    "raise": _raise,
    "system_exit": _system_exit,
    "exit3": _exit3,
    "segfault": _segfault,
    "sigkill": _sigkill,
    "hang": _hang,
}
KILLERS = ("exit3", "segfault", "sigkill")  # the worker dies mid-event


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def soak_handler(event: Event) -> bool:
    """Log ``start <id>``, do what ``event.data`` says, log ``done <id>`` if still alive."""
    event_id, action, path = event.data
    _append(path, f"start {event_id}\n")
    ACTIONS[action]()
    _append(path, f"done {event_id}\n")
    return True


# == plans =======================================================================================


@dataclass(frozen=True)
class Mix:
    """How likely each action is; how many bursts of consecutive crashes, and hangs, to add."""

    name: str
    weights: dict[str, float]
    bursts: tuple[int, int] = (0, 0)
    burst_actions: tuple[str, ...] = KILLERS
    hangs: tuple[int, int] = (0, 0)


MIXES = [
    Mix("raises", {"fine": 80, "busy": 5, "raise": 13, "system_exit": 2}),
    Mix("crashes", {"fine": 85, "busy": 5, "exit3": 10}, bursts=(2, 4), burst_actions=("exit3",)),
    Mix(
        "mixed",
        {
            "fine": 64,
            "busy": 6,
            "raise": 10,
            "system_exit": 4,
            "exit3": 6,
            "segfault": 5,
            "sigkill": 5,
        },
        bursts=(1, 3),
        burst_actions=(*KILLERS, "raise"),
        hangs=(1, 1),
    ),
]
MIXES_BY_NAME = {mix.name: mix for mix in MIXES}


def make_plan(seed: int, mix: Mix, crash_budget: int, max_events: int = MAX_EVENTS) -> list[str]:
    """The action of each event, drawn from ``seed``, ``mix`` and the budget alone."""
    rng = random.Random(f"eventmp-soak:{seed}:{mix.name}")
    count = rng.randint(max(1, max_events // 2), max(1, max_events))
    actions = rng.choices(list(mix.weights), weights=list(mix.weights.values()), k=count)
    # Bursts of consecutive crashes first, as long as the budget lasts; then lone killers past
    # the budget return instead.
    in_burst: set[int] = set()
    for _ in range(rng.randint(*mix.bursts)):
        left = crash_budget - sum(actions[i] in KILLERS for i in in_burst)
        length = min(rng.randint(2, 5), left)
        if length < 2:
            break
        first = rng.randrange(max(1, count - length))
        for index in range(first, min(count, first + length)):
            actions[index] = rng.choice(mix.burst_actions)
            in_burst.add(index)
    lone_killers = [i for i, a in enumerate(actions) if a in KILLERS and i not in in_burst]
    rng.shuffle(lone_killers)
    excess = sum(a in KILLERS for a in actions) - crash_budget
    for index in lone_killers[: max(0, excess)]:
        actions[index] = "fine"
    hang_slots = [i for i in range(count) if i not in in_burst]
    for index in rng.sample(hang_slots, min(len(hang_slots), rng.randint(*mix.hangs))):
        actions[index] = "hang"
    return actions


def waves(key: str, count: int, most: int) -> list[tuple[int, bool]]:
    """How to submit the plan: waves of events back to back, each ``(size, drain after it)``.

    Within a wave crashes come as fast as the workers meet them; a drain between waves lets a
    batch succeed, which resets the restart backoff (up to 1 s a crash in an endless backlog).
    """
    rng = random.Random(f"eventmp-soak-waves:{key}")
    plan: list[tuple[int, bool]] = []
    left = count
    while left:
        size = min(left, rng.randint(1, most))
        plan.append((size, rng.random() < 0.85))
        left -= size
    return plan


# == judging what ran ============================================================================


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return exc.type_name.rsplit(".", 1)[-1]
    return type(exc).__name__


CRASHED = WorkerCrashedError.__name__
TIMED_OUT = HandlerTimeoutError.__name__
EXPECTED_ERROR = {
    "raise": SoakError.__name__,
    "system_exit": SystemExit.__name__,
    "exit3": CRASHED,
    "segfault": CRASHED,
    "sigkill": CRASHED,
    "hang": TIMED_OUT,
}


@dataclass
class Verdict:
    """What the handler's log and the error events say about each event, and what is wrong."""

    problems: dict[str, list[str]]
    done_ids: set[int]
    error_count: int
    summary: str


def _read_log(path: Path) -> tuple[list[int], collections.Counter[int], collections.Counter[int]]:
    order: list[int] = []
    starts: collections.Counter[int] = collections.Counter()
    dones: collections.Counter[int] = collections.Counter()
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        word, _, number = line.partition(" ")
        event_id = int(number)
        if word == "start":
            starts[event_id] += 1
            order.append(event_id)
        elif word == "done":
            dones[event_id] += 1
        else:
            raise AssertionError(f"torn line in the handler's log: {line!r}")
    return order, starts, dones


def judge(
    actions: Sequence[str],
    log: Path,
    errors: ErrorCollector,
    stats: DispatcherStats,
    *,
    ordered_by: Callable[[int], object] | None,
    header: str,
) -> Verdict:
    """Check each event's outcome from the log and the error events; describe any breach."""
    order, starts, dones = _read_log(log)
    by_id: dict[int, list[BaseException]] = collections.defaultdict(list)
    strays: list[str] = []
    for error_event in errors.events:
        exc, original = error_event.data
        try:
            event_id = int(original.data[0])
        except Exception:
            strays.append(f"{_error_kind(exc)} for {original!r}")
            continue
        if 0 <= event_id < len(actions):
            by_id[event_id].append(exc)
        else:
            strays.append(f"{_error_kind(exc)} for id {event_id}")

    # lost: no done line and no error event; ran twice: two start lines; done+error: a done line
    # and an error event; 2+ errors: two error events; wrong outcome: not what its action does
    # (a crash blamed on another event, say); stray errors: for no event of the plan.
    problems: dict[str, list[str]] = {
        "lost": [],
        "ran twice": [],
        "done+error": [],
        "2+ errors": [],
        "wrong outcome": [],
        "out of order": [],
        "stray errors": strays,
    }

    def tag(i: int) -> str:
        return f"{i}:{actions[i]}"

    for i, action in enumerate(actions):
        kinds = [_error_kind(exc) for exc in by_id.get(i, [])]
        if starts[i] > 1 or dones[i] > 1:
            problems["ran twice"].append(f"{tag(i)} started {starts[i]}x")
        if dones[i] and kinds:
            problems["done+error"].append(f"{tag(i)} +{kinds}")
        if len(kinds) > 1:
            problems["2+ errors"].append(f"{tag(i)} {kinds}")
        if not dones[i] and not kinds:
            ran = "started" if starts[i] else "never started"
            problems["lost"].append(f"{tag(i)} ({ran})")
        elif len(kinds) == 1 and not dones[i]:
            expected = EXPECTED_ERROR.get(action)
            # A handler that never got to its first line may time out while it loads (a fresh
            # spawn worker imports this module first): one outcome all the same.
            slow_load = kinds[0] == TIMED_OUT and not starts[i]
            if kinds[0] != expected and not slow_load:
                problems["wrong outcome"].append(f"{tag(i)} -> {kinds[0]}")
        elif dones[i] and action not in ("fine", "busy"):
            problems["wrong outcome"].append(f"{tag(i)} -> done")

    if ordered_by is not None:
        last: dict[object, int] = {}
        for event_id in order:
            lane = ordered_by(event_id)
            if event_id <= last.get(lane, -1):
                problems["out of order"].append(f"{event_id} after {last[lane]}")
            last[lane] = max(event_id, last.get(lane, -1))

    done_ids = {i for i in range(len(actions)) if dones[i]}
    error_count = len(errors.events)
    planned = collections.Counter(actions)
    kinds_seen = collections.Counter(_error_kind(exc) for exc in errors.exceptions)
    counts = " ".join(f"{name}={len(items)}" for name, items in problems.items())
    lines = [
        header,
        f"breaches: {counts}",
        f"plan: {len(actions)} events {dict(sorted(planned.items()))}",
        f"log: {len(done_ids)} done, {sum(starts.values())} starts; "
        f"error events {error_count} {dict(sorted(kinds_seen.items()))}",
        f"stats: accepted={stats.accepted} processed={stats.processed} failed={stats.failed} "
        f"pending={stats.pending} abandoned={stats.abandoned} "
        f"restarts={stats.worker_restarts}",
    ]
    for name, items in problems.items():
        if items:
            shown = ", ".join(items[:15]) + (", ..." if len(items) > 15 else "")
            lines.append(f"{name}: {len(items)}: {shown}")
    return Verdict(problems, done_ids, error_count, "\n".join(lines))


def run_and_judge(
    actions: Sequence[str],
    tmp_path: Path,
    *,
    header: str,
    start_method: str,
    workers: int,
    rng_key: str,
    feed: str = "submit",
    key: Callable[[Event], object] | None = None,
    ordered_by: Callable[[int], object] | None = None,
) -> None:
    """Run the plan through a real dispatcher and assert one outcome per event."""
    log = tmp_path / "soak.log"
    events = [Event("soak", soak_handler, (i, a, str(log))) for i, a in enumerate(actions)]
    errors = ErrorCollector()
    options: dict[str, Any] = {}
    if key is not None:
        options["key"] = key
    dispatcher = EventDispatcher(
        0.01,
        start_method=start_method,
        workers=workers,
        event_timeout=EVENT_TIMEOUT,
        kill_grace=KILL_GRACE,
        **options,
    )
    dispatcher.error_handler(errors)
    if feed == "generator":
        per_poll = random.Random(f"eventmp-soak-poll:{rng_key}").choice((1, 7, 50, None))
        dispatcher.add_event_generator(ListEventGenerator(events, per_poll=per_poll))
    crashes = sum(a in KILLERS for a in actions)
    restart = {"fork": 0.2, "forkserver": 0.4, "spawn": 2.0}.get(start_method, 2.0)
    wait_bound = 60.0 + restart * crashes + 5.0 * actions.count("hang")
    started = time.monotonic()
    drained = True
    try:
        dispatcher.start()
        if feed == "submit":
            submitted = 0
            # About ten events a worker: a crash streak on one worker stays short.
            for size, drain in waves(rng_key, len(events), 10 * workers):
                for event in events[submitted : submitted + size]:
                    dispatcher.submit(event, timeout=30)
                submitted += size
                if drain and drained:
                    drained = dispatcher.wait(wait_bound)
        drained = dispatcher.wait(wait_bound) and drained
    finally:
        dispatcher.stop(timeout=STOP_TIMEOUT)
    elapsed = time.monotonic() - started
    stats = dispatcher.stats()

    verdict = judge(
        actions,
        log,
        errors,
        stats,
        ordered_by=ordered_by,
        header=f"{header}: wait() {'drained' if drained else 'TIMED OUT'} in {elapsed:.1f}s",
    )
    print(verdict.summary)
    breaches = {name: items for name, items in verdict.problems.items() if items}
    assert drained and not breaches, verdict.summary
    counters = (stats.accepted, stats.processed, stats.failed, stats.pending, stats.abandoned)
    expected = (len(actions), len(verdict.done_ids), verdict.error_count, 0, 0)
    assert counters == expected, (
        f"stats (accepted, processed, failed, pending, abandoned) {counters} != {expected} "
        f"from the log\n{verdict.summary}"
    )


def _rerun(test_id: str) -> str:
    return (
        f"rerun: EVENTMP_SOAK_FIRST_SEED={FIRST_SEED} EVENTMP_SOAK_SEEDS={SEEDS_COUNT} "
        f"EVENTMP_SOAK_EVENTS={MAX_EVENTS} pytest 'tests/test_soak.py::{test_id}'"
    )


# == the soak cases ==============================================================================

CASES = [
    pytest.param(seed, workers, mix.name, id=f"s{seed}-w{workers}-{mix.name}")
    for seed in SEEDS
    for workers in (1, 2, 3)
    for mix in MIXES
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("seed", "workers", "mix_name"), CASES)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_soak_every_event_has_one_outcome(
    seed: int,
    workers: int,
    mix_name: str,
    start_method: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A seeded mix of returns, raises, crashes and hangs: each event ran once, one outcome."""
    actions = make_plan(seed, MIXES_BY_NAME[mix_name], CRASH_BUDGET[start_method])
    run_and_judge(
        actions,
        tmp_path,
        header=f"seed={seed} workers={workers} start_method={start_method} mix={mix_name}; "
        + _rerun(request.node.name),
        start_method=start_method,
        workers=workers,
        rng_key=f"{seed}:{mix_name}",
        ordered_by=(lambda _id: 0) if workers == 1 else None,
    )


SMALL_EVENTS = 150
KEYS = 4


def _small_method(seed: int) -> str:
    """The start method of a small case: each seed takes the next one in turn."""
    return START_METHODS[seed % len(START_METHODS)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"s{seed}-{_small_method(seed)}")
def test_soak_generator_events_have_one_outcome(
    seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Events a generator yields, some crashing in bursts, each get exactly one outcome."""
    method = _small_method(seed)
    actions = make_plan(seed, MIXES_BY_NAME["mixed"], CRASH_BUDGET[method], SMALL_EVENTS)
    run_and_judge(
        actions,
        tmp_path,
        header=f"generator seed={seed} workers=2 start_method={method}; "
        + _rerun(request.node.name),
        start_method=method,
        workers=2,
        rng_key=f"{seed}:generator",
        feed="generator",
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"s{seed}-{_small_method(seed + 1)}")
def test_soak_keyed_events_have_one_outcome_in_key_order(
    seed: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Events routed by key, crashing in bursts, each get one outcome and start in key order."""
    method = _small_method(seed + 1)
    actions = make_plan(seed, MIXES_BY_NAME["crashes"], CRASH_BUDGET[method], SMALL_EVENTS)
    run_and_judge(
        actions,
        tmp_path,
        header=f"keyed seed={seed} workers=3 start_method={method}; " + _rerun(request.node.name),
        start_method=method,
        workers=3,
        rng_key=f"{seed}:keyed",
        key=lambda event: event.data[0] % KEYS,
        ordered_by=lambda event_id: event_id % KEYS,
    )
