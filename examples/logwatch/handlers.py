"""Handlers of the log-watching example, named in pipeline.toml as ``handlers:CheckPayment``.

The pipeline file's directory is on ``sys.path`` while eventmp loads it, so a module next to
the pipeline file can hold your own handlers.
"""

from __future__ import annotations

from eventmp import Event, EventHandler


class CheckPayment(EventHandler):
    """Rejects payments with a negative amount: the failure comes back as an error event."""

    def __init__(self, minimum: int | str = 0) -> None:
        self.minimum = int(minimum)

    def process_event(self, event: Event) -> bool:
        named = event.data["named"]
        amount = int(named["amount"])
        if amount < self.minimum:
            raise ValueError(f"order {named['order']}: amount {amount} below {self.minimum}")
        return True
