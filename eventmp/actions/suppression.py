"""``count`` and ``throttle``: the links of a chain that stop it, by key, within a window.

The handlers are built in the parent, and what they remember (timestamps per key) lives in the
worker that runs them, one memory per worker process: the parent's copy is emptied when it
travels, and a worker that is replaced starts afresh.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from ..event import Event
from ..handlers import EventHandler
from ..templates import render
from .settings import _duration, _function, _integer, _template

logger = logging.getLogger("eventmp")


MAX_KEYS = 100_000
"""How many keys ``count`` and ``throttle`` keep by default, per worker."""
EVICTION_LOG_INTERVAL = 60.0
"""Seconds between two log lines of one handler about the keys it evicted."""


class _KeyedWindow(EventHandler):
    """Timestamps per key within a time window, for count and throttle (state per worker).

    At most ``max_keys`` keys are kept: a new key beyond that evicts the least recently seen
    one, whose occurrences are forgotten (seen again, it starts afresh).
    """

    _window: float

    def _setup(self, owner: str, key: Any, max_keys: Any, clock: Any) -> None:
        self.key = _template(owner, "key", key)
        self.max_keys = _integer(owner, "max_keys", max_keys, 1)
        self._clock: Callable[[], float] = _function(owner, "clock", clock)
        # Least recently seen first: each event moves its key to the end.
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._swept: float | None = None
        self._evicted = 0
        self._reported = 0
        self._reported_at: float | None = None

    def counters(self) -> dict[str, int]:
        """What this copy counts for the command's stats: the keys it evicted."""
        return {"evicted_keys": self._evicted}

    @property
    def evictions(self) -> int:
        """How many keys this copy of the handler evicted to stay within ``max_keys``."""
        return self._evicted

    def _recent(self, event: Event) -> tuple[float, deque[float]]:
        """Now, and the key's timestamps younger than the window (older ones dropped)."""
        now = self._clock()
        key = render(self.key, event) if self.key else ""
        horizon = now - self._window
        if self._swept is None or now - self._swept >= self._window:
            # Once a window, forget keys not seen within it, so memory follows the keys that
            # are active, not every key ever seen.
            self._swept = now
            for stale in [k for k, t in self._times.items() if not t or t[-1] <= horizon]:
                del self._times[stale]
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque()
            if len(self._times) > self.max_keys:
                self._times.popitem(last=False)
                self._evicted += 1
                self._report_evictions(now)
        else:
            self._times.move_to_end(key)
        while times and times[0] <= horizon:
            times.popleft()
        return now, times

    def _report_evictions(self, now: float) -> None:
        """Log the evictions, at most once every EVICTION_LOG_INTERVAL seconds."""
        if self._reported_at is not None and now - self._reported_at < EVICTION_LOG_INTERVAL:
            return
        logger.warning(
            "%s: more than max_keys=%d keys: evicted %d least recently seen keys since the "
            "last report, %d in all in this worker (an evicted key seen again starts afresh)",
            self,
            self.max_keys,
            self._evicted - self._reported,
            self._evicted,
        )
        self._reported, self._reported_at = self._evicted, now

    def __getstate__(self) -> dict[str, Any]:
        # Each worker starts counting from zero, whatever the parent's copy has seen.
        return dict(
            vars(self),
            _times=OrderedDict(),
            _swept=None,
            _evicted=0,
            _reported=0,
            _reported_at=None,
        )


class CountEventHandler(_KeyedWindow):
    """Pass on only the ``count``-th occurrence within ``window``: a link in a chain.

    Returns true when this event makes ``count`` events of the same key within the last
    ``window`` seconds (a sliding window: occurrences older than ``window`` no longer count),
    then starts counting again from zero; false otherwise, which stops the chain. ``key`` is a
    template (``"{ip}"``): events count separately per filled key; ``""`` counts every event
    together.

    The counts live in the worker process, per worker: with several workers, route events with
    the dispatcher's ``key=`` so that equal keys meet the same worker; a worker that is
    replaced (crash, recycling) starts from zero. At most ``max_keys`` keys are kept (default
    :data:`MAX_KEYS`): a new key beyond them evicts the least recently seen one, whose count
    is lost. :attr:`evictions` counts them, and a warning on the ``eventmp`` logger says how
    many, at most once every :data:`EVICTION_LOG_INTERVAL` seconds. ``clock`` (default
    :func:`time.monotonic`) is there for tests.
    """

    def __init__(
        self,
        count: int | str,
        window: float | str = "60s",
        key: str = "",
        max_keys: int | str = MAX_KEYS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        owner = type(self).__name__
        self.count = _integer(owner, "count", count, 1)
        self.window = self._window = _duration(owner, "window", window)
        self._setup(owner, key, max_keys, clock)

    def process_event(self, event: Event) -> bool:
        now, times = self._recent(event)
        times.append(now)
        if len(times) >= self.count:
            times.clear()
            return True
        return False


class ThrottleEventHandler(_KeyedWindow):
    """Pass on at most ``limit`` events per key in any ``interval``: a link in a chain.

    A sliding window: an event passes (true) when fewer than ``limit`` events of its key passed
    within the last ``interval`` seconds, and is suppressed (false, which stops the chain)
    otherwise. Suppressed events do not count, so a steady flood passes ``limit`` events every
    ``interval``, never a burst of twice that across a boundary as a fixed window would. ``key``
    is a template (``"{ip}"``); ``""`` throttles every event together.

    The state lives in the worker process, per worker: with several workers, route events with
    the dispatcher's ``key=`` so that equal keys meet the same worker; a worker that is
    replaced starts afresh. At most ``max_keys`` keys are kept, as for
    :class:`CountEventHandler`: an evicted key seen again passes as if new. ``clock``
    (default :func:`time.monotonic`) is there for tests.
    """

    def __init__(
        self,
        limit: int | str,
        interval: float | str = "60s",
        key: str = "",
        max_keys: int | str = MAX_KEYS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        owner = type(self).__name__
        self.limit = _integer(owner, "limit", limit, 1)
        self.interval = self._window = _duration(owner, "interval", interval)
        self._setup(owner, key, max_keys, clock)

    def process_event(self, event: Event) -> bool:
        now, times = self._recent(event)
        if len(times) < self.limit:
            times.append(now)
            return True
        return False
