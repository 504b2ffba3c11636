"""A handler in a worker process, and an error event coming back to the parent.

Run it with ``scripts/demo`` (or ``python examples/worker_and_errors.py``).
"""

from __future__ import annotations

import logging
import os

from eventmp import ChainEventHandler, Event, EventDispatcher, PrintEventHandler
from eventmp.testing import ListEventGenerator


def check_payment(event: Event) -> bool:
    """Fails for negative amounts, in the worker process."""
    amount = event.data["amount"]
    if amount < 0:
        raise ValueError(f"negative amount {amount} for order {event.data['order']}")
    print(f"  worker pid {os.getpid()}: order {event.data['order']} ok ({amount})", flush=True)
    return True


def report_error(error_event: Event) -> None:
    """The error handler: runs in the parent, with data = (exception, original event)."""
    exception, original = error_event.data
    print(
        f"  parent pid {os.getpid()}: error event from {error_event.originator}: "
        f"{type(exception).__name__}: {exception} (order {original.data['order']})",
        flush=True,
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"parent pid {os.getpid()}")
    handler = ChainEventHandler(check_payment, PrintEventHandler("stdout"))
    orders = [{"order": n, "amount": amount} for n, amount in enumerate([30, 12, -5, 7], 1)]
    with EventDispatcher(poll_interval=0.1) as dispatcher:
        dispatcher.error_handler(report_error)
        dispatcher.add_event_generator(
            ListEventGenerator(Event("orders", handler, data) for data in orders)
        )
        dispatcher.submit(Event("api", lambda event: print(f"  lambda got {event.data}"), "hi"))
        dispatcher.wait(timeout=30)
        stats = dispatcher.stats()
    print(
        f"accepted {stats.accepted}, processed {stats.processed}, failed {stats.failed}, "
        f"pending {stats.pending}"
    )


if __name__ == "__main__":
    main()
