"""Scans of the whole ledger: strict mode's audit, and who holds an event the parent would fail.

Runs in the parent process, from whichever thread holds the dispatcher's lock, called by
:class:`~eventmp.ledger.Ledger` with the parts of its state a scan reads. Pure functions: they
change nothing and report what they find (the problems, the holder); the ledger acts on it.
Each is a pass over every event queued or in flight, which is why the ledger's per-batch
paths never call them: the audit runs only in strict mode, and only while the ledger holds few
events; the other scans run when an event fails in the parent.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from .ledger_records import Batch

__all__ = ["AUDIT_UP_TO", "audit_problems", "held_seqs", "holder"]

# Strict mode audits the whole ledger after each transition only while it holds at most this
# many events: an audit costs a pass over them.
AUDIT_UP_TO = 4096


def audit_problems(
    pending: Mapping[int, Any],
    *,
    shared: Iterable[int],
    lanes: Sequence[Iterable[int]],
    resync: Sequence[Iterable[int]],
    held: Mapping[int, Iterable[Batch]],
    in_hand: Collection[int],
    sizes: Mapping[int, int],
    bytes_held: int,
) -> list[str]:
    """What breaks the rule that each pending event is in exactly one place; none if too many.

    ``held`` maps each worker to the batches it holds, ``in_hand`` lists the events taken from
    a backlog and not yet assigned, ``sizes`` and ``bytes_held`` are the sized events' bytes.
    """
    if len(pending) > AUDIT_UP_TO:
        return []
    problems: list[str] = []
    places: dict[int, str] = {}

    def place(seq: int, where: str) -> None:
        if seq in places:
            problems.append(f"event {seq} is both {places[seq]} and {where}")
        places[seq] = where

    for seq in shared:
        place(seq, "in the shared backlog")
    for slot, lane in enumerate(lanes):
        for seq in lane:
            place(seq, f"in slot {slot}'s backlog")
    for slot, seqs in enumerate(resync):
        for seq in seqs:
            if seq in pending:
                place(seq, f"in slot {slot}'s resync list")
    for worker, batches in held.items():
        for batch in batches:
            for index, seq in enumerate(batch.seqs):
                if index < batch.settled or (batch.failed and index in batch.failed):
                    if seq in pending and seq not in in_hand:
                        problems.append(f"event {seq} settled by worker {worker}, yet pending")
                    continue
                if seq not in pending:
                    problems.append(f"event {seq} held by worker {worker} has an outcome")
                place(seq, f"held by worker {worker}")
    for seq in in_hand:
        place(seq, "in hand")
    queued_or_held = set(places)
    for seq in queued_or_held:
        if seq not in pending:
            problems.append(f"event {seq} is {places[seq]} but not pending")
    if bytes_held != sum(sizes.values()) or not sizes.keys() <= pending.keys():
        problems.append(f"{bytes_held} bytes held, but the pending events' sizes differ")
    return problems


def holder(held: Mapping[int, Iterable[Batch]], seq: int) -> int | None:
    """The worker holding ``seq`` without an outcome given yet, if any."""
    for worker, batches in held.items():
        for batch in batches:
            if seq in batch.seqs:
                index = batch.seqs.index(seq)
                if index >= batch.settled and not (batch.failed and index in batch.failed):
                    return worker
    return None


def held_seqs(held: Mapping[int, Iterable[Batch]]) -> set[int]:
    """Every seq some worker holds, settled or not (for bulk checks)."""
    return {seq for batches in held.values() for b in batches for seq in b.seqs}
