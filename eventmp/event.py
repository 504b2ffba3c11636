"""The values that flow through a pipeline: :class:`Event`, and the :class:`EventGenerator` base."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Event", "EventGenerator", "describe_originator"]


def describe_originator(originator: object) -> str:
    """Name an originator for humans: a string as it is, anything else by its ``str()``."""
    if isinstance(originator, str):
        return originator
    try:
        return str(originator)
    except Exception:
        return f"<{type(originator).__qualname__}>"


class Event:
    """Something that happened: who saw it (``originator``), what runs it, and its ``data``.

    ``timestamp`` is ``time.time()`` when the event was created, unless given. An event is a
    plain value: it pickles, and two events with the same fields compare equal.
    """

    __slots__ = ("data", "handler", "originator", "timestamp")

    def __init__(
        self,
        originator: Any,
        handler: Any,
        data: Any = None,
        timestamp: float | None = None,
    ) -> None:
        self.originator = originator
        self.handler = handler
        self.data = data
        self.timestamp = time.time() if timestamp is None else float(timestamp)

    def __str__(self) -> str:
        whole, fraction = divmod(self.timestamp, 1.0)
        seconds = int(whole)
        millis = min(int(fraction * 1000), 999)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
        data = self.data if isinstance(self.data, str) else repr(self.data)
        return f"{when}.{millis:03d} {describe_originator(self.originator)}: {data}"

    def __repr__(self) -> str:
        return (
            f"Event(originator={self.originator!r}, handler={self.handler!r}, "
            f"data={self.data!r}, timestamp={self.timestamp!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (
            self.originator == other.originator
            and self.handler == other.handler
            and self.data == other.data
            and self.timestamp == other.timestamp
        )

    __hash__ = None  # type: ignore[assignment]  # mutable value: not hashable

    def __getstate__(self) -> tuple[Any, Any, Any, float]:
        return (self.originator, self.handler, self.data, self.timestamp)

    def __setstate__(self, state: tuple[Any, Any, Any, float]) -> None:
        self.originator, self.handler, self.data, self.timestamp = state


class EventGenerator:
    """A source of events, polled by the dispatcher in the parent process.

    ``get_events()`` returns every event that occurred since the last call, an empty list when
    none did. ``stop()`` releases the generator's resources; the dispatcher calls it once, from
    its own thread, after the last poll. A generator that will never produce more events sets
    ``finished`` true (it may do so in the same call that returns its last events); the
    dispatcher then stops polling it and ``EventDispatcher.wait()`` can return.

    A generator that stopped early (a per-poll read budget, say) sets ``has_more`` true: the
    dispatcher polls it again at once, while ``max_pending`` has room, instead of after
    ``poll_interval``.

    A generator whose events can be big defines ``event_size(event)``, which
    ``max_pending_bytes`` counts.

    A generator that sets ``track_outcomes`` true has ``settled(event, exception)`` called,
    from the dispatcher thread, once each event it produced has its outcome (``exception`` is
    None when the handler returned): a file tail saves its position only up to settled lines.
    """

    finished: bool = False
    track_outcomes: bool = False
    has_more: bool = False

    def get_events(self) -> list[Event]:
        raise NotImplementedError(f"{type(self).__qualname__}.get_events()")

    def stop(self) -> None:
        """Release resources; the base has none."""

    def event_size(self, event: Event) -> int:
        """About how many bytes ``event`` holds in the parent; 0 leaves it uncounted.

        The dispatcher polls no generator while the pending events that generators sized
        hold ``max_pending_bytes`` (docs/api.md): a generator whose events can be big (a file
        tail with long lines) says how big, so the parent's memory is bounded in bytes, not
        only in events. Called without the dispatcher's lock, for each event of a poll; it
        should cost far less than making the event.
        """
        return 0

    def event_sizes(self, events: list[Event]) -> list[int]:
        """:meth:`event_size` of each of a poll's events, in order, in one call.

        The dispatcher calls it for each poll of a generator that overrides either method;
        override it to size a whole poll at once (a call per event costs more than the
        sizing itself). This default calls ``event_size()`` for each.
        """
        return [self.event_size(event) for event in events]

    def settled(self, event: Event, exception: BaseException | None) -> None:
        """Called for each of this generator's events once it has its outcome (if tracked)."""

    def settled_batch(self, outcomes: list[tuple[Event, BaseException | None]]) -> None:
        """Several of this generator's outcomes at once, in order, as ``(event, exception)``.

        The dispatcher calls it, when a generator overrides it, instead of ``settled()`` for
        each: a generator that keeps books per event may take a lock once per batch. This
        default calls ``settled()`` for each (the dispatcher never calls it then).
        """
        for event, exception in outcomes:
            self.settled(event, exception)

    def __str__(self) -> str:
        return type(self).__qualname__
