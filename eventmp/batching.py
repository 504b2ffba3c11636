"""The choice of batches: how many events go to which worker, and when.

Runs in the parent process, under the dispatcher's lock, from whichever thread holds it; no
I/O. The dispatcher asks; these answer from what the workers hold (the ledger's batches), what
events cost a worker (as the workers report it), and how fast events arrive.

The rules, each explained where it is decided (and in ``docs/design.md``):

- An idle worker gets what there is at once; a busy one gets a second batch only once that
  batch is full, or while little is in flight (a modest rate), so under load batches are full
  and acknowledgements few, with no linger timer (:func:`wants_batch`).
- With several workers, events that cost a worker more than a round trip spread out at once;
  cheap ones go together to one worker while others are busy (:func:`hold_back`), since a
  round trip per few events would cost the parent more than the events.
- A flood (:class:`FloodGauge`) keeps workers from spinning between batches: batches grow while
  a worker sleeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .messages import ACKED
from .workers import Slot, WorkerHandle

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "MAX_INFLIGHT_BATCHES",
    "PIPELINE_BELOW",
    "SPREAD_AT_ONCE_NS",
    "STALLED_AFTER",
    "Estimates",
    "FloodGauge",
    "caught_up",
    "hold_back",
    "idle_worker",
    "inflight_progressing",
    "wants_batch",
    "workers_with_room",
]

# Unacknowledged batches a worker may hold: two keep it busy while the next one is in flight.
MAX_INFLIGHT_BATCHES = 2
# A batch holds at most this many events and, past its first event, this many bytes. Fewer,
# larger batches cost the parent less per event, up to about this size (measured in
# scripts/bench.py; see docs/design.md and docs/performance.md).
MAX_BATCH_EVENTS = 1024
MAX_BATCH_BYTES = 1 << 20
# Events in flight under which a busy worker gets its next batch at once.
PIPELINE_BELOW = 64
# With several workers sharing a backlog, a batch holds about this much work (by the workers'
# measure), so slow handlers go one by one and stay balanced while fast ones travel in bulk.
BATCH_WORK_NS = 2_000_000
# An event that costs a worker more than this goes to an idle worker at once, even while
# another is busy; cheaper ones wait to go together (see hold_back).
SPREAD_AT_ONCE_NS = 50_000
# A worker with events in flight that has acknowledged nothing for this long is not waited for
# (a hung handler, a slow event): idle workers get cheap events at once meanwhile.
STALLED_AFTER = 0.01
_SMOOTHING = 0.3
# Events accepted faster than this, by the whole pipeline, make a flood.
FLOOD_EVENTS_PER_S = 100_000
# The arrival rate is measured over windows at least this long, so that a producer catching up
# after being held up for a few ms (a GIL switch, a preempted vCPU) is not a flood.
RATE_WINDOW = 0.01


class FloodGauge:
    """Tells a flood from a trickle by the events accepted over windows of at least 10 ms.

    Under a flood the workers do not spin between batches (FLOODED in the progress array):
    batches grow while a worker sleeps, where one that answers at once keeps them small and
    the parent pays per batch. Batch size cannot tell a flood from a trickle, for that reason,
    and a worker cannot either: with two workers, each sees half the rate.
    """

    __slots__ = ("arrived_then", "flooded", "window_at")

    def __init__(self) -> None:
        self.flooded = False
        self.window_at = -math.inf
        self.arrived_then = 0

    def update(self, now: float, arrived: int) -> bool:
        """Close the window if it is long enough; true if the verdict changed."""
        elapsed = now - self.window_at
        if elapsed < RATE_WINDOW:
            return False
        flooded = arrived - self.arrived_then > FLOOD_EVENTS_PER_S * elapsed
        self.window_at = now
        self.arrived_then = arrived
        if flooded == self.flooded:
            return False
        self.flooded = flooded
        return True


class Estimates:
    """What an event costs a worker and weighs pickled, smoothed over batches.

    Until a worker has said, events count as costly: the first ones spread across the workers
    in small batches.
    """

    __slots__ = ("event_bytes", "event_cost_ns")

    def __init__(self) -> None:
        self.event_cost_ns = float(SPREAD_AT_ONCE_NS)
        self.event_bytes = 0.0

    @property
    def cheap(self) -> bool:
        """Events cost a worker less than a round trip through the parent."""
        return self.event_cost_ns < SPREAD_AT_ONCE_NS

    def note_batch(self, busy_ns: int, events: int) -> None:
        """A worker ran ``events`` events in ``busy_ns``."""
        if events > 0:
            self.event_cost_ns += (busy_ns / events - self.event_cost_ns) * _SMOOTHING

    def note_bytes(self, size: int, events: int) -> None:
        """``events`` events pickled to ``size`` bytes."""
        if events > 0:
            self.event_bytes += (size / events - self.event_bytes) * _SMOOTHING

    def batch_limit(self, pooled: bool) -> int:
        """At most this many events in the next batch (``pooled``: workers share a backlog)."""
        limit = min(MAX_BATCH_EVENTS, max(1, int(MAX_BATCH_BYTES / (self.event_bytes or 1))))
        if pooled:
            limit = min(limit, max(1, int(BATCH_WORK_NS / max(self.event_cost_ns, 1.0))))
        return limit


def wants_batch(worker: WorkerHandle, queued: int, limit: int) -> bool:
    """Whether ``worker`` gets a batch now from ``queued`` events (see the module docstring).

    A busy worker whose batch in hand is small gets the next one at once: it then waits in the
    pipe for the worker instead of a round trip through the parent.
    """
    batches = worker.batches
    if not batches:
        return queued > 0
    return (
        queued > 0
        and len(batches) < MAX_INFLIGHT_BATCHES
        and (queued >= limit or worker.inflight_events < PIPELINE_BELOW)
    )


def hold_back(slots: Sequence[Slot], queued: int, limit: int, flooded: bool, now: float) -> bool:
    """True if a partial batch of cheap events should wait for more, several workers sharing.

    The workers then act as one with more room. Were every idle worker given what there is at
    once, a flood would go out in batches of what arrives between two looks, and the parent
    would pay a round trip per few events. So a batch that is not full goes out only while
    little is in flight: at a modest rate, at once; under a flood, when the workers run dry.
    """
    if queued >= limit:
        return False
    inflight = inflight_progressing(slots, now)
    return bool(inflight) and (flooded or inflight >= PIPELINE_BELOW)


def inflight_progressing(slots: Sequence[Slot], now: float) -> int:
    """Events in flight to workers that acknowledged something lately (see STALLED_AFTER).

    A worker stuck on one event (until event_timeout, or for good) must not hold back the
    others: its events in flight would otherwise count for ever.
    """
    stalled_before = now - STALLED_AFTER
    total = 0
    for slot in slots:
        worker = slot.worker
        if worker is not None and worker.batches and worker.progressed_at > stalled_before:
            total += worker.inflight_events
    return total


def idle_worker(slots: Sequence[Slot]) -> WorkerHandle | None:
    """A worker with nothing in flight that may take events, if any."""
    for slot in slots:
        worker = slot.worker
        if worker is not None and worker.open and not worker.batches:
            return worker
    return None


def caught_up(slots: Sequence[Slot]) -> bool:
    """True if a worker has acknowledged every batch sent to it, by the progress array.

    A hint, read without the lock, that the acknowledgement waits in the pipe and reading it
    now frees a worker.
    """
    return caught_up_worker(slots) is not None


def caught_up_worker(slots: Sequence[Slot]) -> WorkerHandle | None:
    """A worker that has run and acknowledged every batch sent to it, its acknowledgements
    maybe not read yet: idle in fact, though the ledger still counts its last batch."""
    for slot in slots:
        worker = slot.worker
        if worker is not None and worker.batches and slot.view[ACKED] >= worker.last_batch:
            return worker
    return None


def workers_with_room(slots: Sequence[Slot]) -> int:
    """Workers that may take another batch now (at least 1, to divide by)."""
    count = 0
    for slot in slots:
        worker = slot.worker
        if worker is not None and worker.open and len(worker.batches) < MAX_INFLIGHT_BATCHES:
            count += 1
    return max(1, count)
