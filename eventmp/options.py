"""The dispatcher's settings and its counters: what a caller passes in and what it reads back.

Parent process, caller's thread: :func:`check_settings` runs in ``EventDispatcher()`` before
anything starts, so a bad setting is a ``ValueError`` naming it, never a half-built pipeline.
docs/api.md describes each setting.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping
from dataclasses import dataclass, field

from .units import parse_size

__all__ = [
    "DEFAULT_MAX_PENDING_BYTES",
    "DispatcherStats",
    "check_settings",
    "default_start_method",
]

# What the pending events that generators sized may hold before polling pauses: with the
# interpreter, the workers' buffers and one poll's overshoot, the parent stays near 256 MB
# (docs/api.md, docs/tailing.md).
DEFAULT_MAX_PENDING_BYTES = 128 << 20
# The longest idle spin accepted: a longer one keeps each worker's CPU busy long after a burst
# ends, for a wake-up that costs far less (docs/design.md, "Idle spin").
MAX_IDLE_SPIN = 0.01


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``; never ``fork`` by default.

    The dispatcher's own process has threads (the dispatcher thread, and usually the user's),
    and a fork taken while another thread holds a lock (logging's, an allocator's, a C
    library's) leaves that lock held forever in the child. Python 3.14 moved its own default
    off fork for this reason. forkserver forks workers from a clean single-threaded server, so
    a restart costs a fork, not a new interpreter.
    """
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def check_settings(
    *,
    poll_interval: float,
    start_method: str | None,
    workers: int,
    event_timeout: float | None,
    kill_grace: float,
    start_timeout: float,
    max_pending: int,
    max_pending_bytes: int | str | None,
    idle_spin: float,
    max_events_per_worker: int | None,
) -> None:
    """Raise ``ValueError`` naming the first setting out of its range."""
    if poll_interval < 0:
        raise ValueError(f"poll_interval must be >= 0, got {poll_interval!r}")
    methods = multiprocessing.get_all_start_methods()
    if start_method is not None and start_method not in methods:
        raise ValueError(f"start_method must be one of {methods}, got {start_method!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if event_timeout is not None and event_timeout <= 0:
        raise ValueError(f"event_timeout must be > 0, got {event_timeout!r}")
    if kill_grace < 0:
        raise ValueError(f"kill_grace must be >= 0, got {kill_grace!r}")
    if start_timeout <= 0:
        raise ValueError(f"start_timeout must be > 0, got {start_timeout!r}")
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
    if max_pending_bytes is not None:
        try:
            size = parse_size(max_pending_bytes)
        except ValueError as exc:
            raise ValueError(f"max_pending_bytes: {exc}") from None
        if size < 1:
            raise ValueError(f"max_pending_bytes must be >= 1 byte, got {max_pending_bytes!r}")
    if not 0 <= idle_spin <= MAX_IDLE_SPIN:
        raise ValueError(
            f"idle_spin must be between 0 and {MAX_IDLE_SPIN} seconds, got {idle_spin!r}"
        )
    if max_events_per_worker is not None and max_events_per_worker < 1:
        raise ValueError(f"max_events_per_worker must be >= 1, got {max_events_per_worker!r}")


@dataclass(frozen=True)
class DispatcherStats:
    """A snapshot of a dispatcher's counters."""

    accepted: int
    processed: int
    failed: int
    pending: int
    abandoned: int
    worker_restarts: int
    worker_recycles: int
    worker_pids: tuple[int, ...]
    worker_rss: tuple[int, ...] = field(default=())
    # Estimated bytes of the pending events that generators sized (max_pending_bytes).
    pending_bytes: int = 0
    # What handlers count in the workers (their counters(): "evicted_keys" for count and
    # throttle), summed over every worker this dispatcher ran.
    handler_counters: Mapping[str, int] = field(default_factory=dict)
