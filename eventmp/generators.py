"""The event generators a dispatcher polls: which are due, one poll, and their end.

Parent-side, dispatcher thread. A poll calls the user's ``get_events()`` without the
dispatcher's lock (a slow generator must not block ``submit()``) and returns what it learned as
a :class:`Polled`; the dispatcher accepts the events and acts on the rest with the lock held.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import repeat

from .event import Event, EventGenerator

__all__ = ["Generators", "Polled"]

logger = logging.getLogger("eventmp")


@dataclass
class Polled:
    """What one ``get_events()`` call produced."""

    events: list[Event] = field(default_factory=list)
    # The generator hears of each of these events' outcomes (``track_outcomes``).
    tracks: bool = False
    # get_events() raised, or returned items that are not events: each is an error event.
    errors: list[BaseException] = field(default_factory=list)
    finished: bool = False  # it says it will produce nothing more
    has_more: bool = False  # it has more right now: poll again without waiting
    # Each event's estimated bytes, if the generator sizes its events (event_size()).
    sizes: list[int] | None = None


class Generators:
    """The generators added to one dispatcher, and which of them said they are finished."""

    def __init__(self) -> None:
        self.all: list[EventGenerator] = []
        self._finished: set[int] = set()  # by id(): a generator need not be hashable

    def add(self, generator: EventGenerator) -> None:
        self.all.append(generator)

    def due(self) -> list[EventGenerator]:
        """The generators to poll now (a copy, to iterate without the lock)."""
        return [g for g in self.all if id(g) not in self._finished]

    def all_finished(self) -> bool:
        return all(id(g) in self._finished for g in self.all)

    def wants_polling(self) -> bool:
        return bool(self.all) and not self.all_finished()

    def mark_finished(self, generator: EventGenerator) -> None:
        """``generator`` produces nothing more: it is not polled again (lock held)."""
        self._finished.add(id(generator))

    @staticmethod
    def poll(generator: EventGenerator, *, sized: bool = False) -> Polled:
        """Call ``generator.get_events()`` once, without the lock, and say what came of it.

        With ``sized``, also each event's ``event_size()``, if the generator defines it.
        """
        try:
            items = list(generator.get_events() or ())
        except Exception as exc:
            logger.warning("generator %s failed in get_events(): %r", generator, exc)
            return Polled(errors=[exc])
        polled = Polled(tracks=bool(getattr(generator, "track_outcomes", False)))
        # C-level passes: this runs for every event a generator makes.
        if all(map(isinstance, items, repeat(Event))):
            polled.events = items
        else:
            polled.events = [item for item in items if isinstance(item, Event)]
            polled.errors = [
                TypeError(f"get_events() returned a {type(item).__qualname__}, not an Event")
                for item in items
                if not isinstance(item, Event)
            ]
        if sized and polled.events:
            polled.sizes = _sizes(generator, polled.events)
        if getattr(generator, "finished", False):
            polled.finished = True
        else:
            polled.has_more = bool(getattr(generator, "has_more", False))
        return polled

    def stop_all(self) -> None:
        """Call every generator's ``stop()``; one that raises is logged, the rest still stop."""
        for generator in list(self.all):
            try:
                generator.stop()
            except Exception:
                logger.exception("generator %s failed in stop()", generator)


def _sizes(generator: EventGenerator, events: list[Event]) -> list[int] | None:
    """The events' sizes by ``generator.event_sizes()``; None if it does not size them."""
    kind = type(generator)
    batched = getattr(kind, "event_sizes", None) not in (None, EventGenerator.event_sizes)
    if not batched and getattr(kind, "event_size", None) in (None, EventGenerator.event_size):
        return None
    try:
        sizes = list(map(int, generator.event_sizes(events)))
        if len(sizes) != len(events):
            raise ValueError(f"{len(sizes)} sizes for {len(events)} events")
        return sizes  # the ledger counts only sizes above 0
    except Exception as exc:
        # The events are accepted all the same: losing them would be worse than not counting.
        logger.warning(
            "generator %s failed in %s(): %r; its events are not counted in max_pending_bytes",
            generator,
            "event_sizes" if batched else "event_size",
            exc,
        )
        return None
