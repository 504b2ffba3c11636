"""A tail's lines: a file's bytes cut into lines, matched, and made into events.

Runs in the parent process, in the dispatcher thread (called by :mod:`eventmp.tail` as it
reads); pure but for the warning a slow rule logs: it reads no file, it is given the bytes.
:class:`LineEvents` takes the bytes the tail read into a file's buffer, has the complete lines
matched (:mod:`eventmp.block_search`), cuts a line over ``max_line_bytes`` into pieces that
carry the line's number (also while the line is still being written), and makes one event per
line (or piece) and matching rule. Each event's line is recorded for the
tail's checkpoint, which stays behind lines whose events have no outcome yet. What this
promises: docs/tailing.md, "Following files" (lines, long lines) and "Slow rules".
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from .block_search import BlockSearch
from .event import Event, EventGenerator
from .matching import Hits, LineMatcher
from .tail_files import _File

__all__ = ["Inflight", "LineEvents"]

logger = logging.getLogger("eventmp")

_new_event = Event.__new__

# Per event (by id) while its outcome is awaited: the event, its file's table of lines without
# outcomes, and its line's offset, the key in that table.
Inflight = dict[int, tuple[Event, OrderedDict[int, list[int]], int]]


class LineEvents:
    """Turns a tail's buffered bytes into events, line by line, as its rules match them.

    ``owner`` is the tail: the events' originator, named in the warnings. While it tracks
    outcomes, each event made is recorded in ``inflight`` and its line in its file's
    ``outstanding`` table. A call stops adding to the list it is given once that holds
    ``max_events``.
    """

    def __init__(
        self,
        owner: EventGenerator,
        name: str,
        matcher: LineMatcher,
        *,
        max_events: int,
        inflight: Inflight,
    ) -> None:
        self._owner = owner
        self.name = name
        self._matcher = matcher
        self._block_search = BlockSearch(matcher)
        self.max_line_bytes = matcher.max_line_bytes
        self._max_events = max_events
        self._inflight = inflight
        self._slow_reported: set[str] = set()  # rules already logged as slow
        self.lines_read = 0  # a line cut into pieces counts once

    def cut_lines(self, f: _File, events: list[Event], deadline: float) -> None:
        """Match the buffer's complete lines, and pieces of a partial line over the limit.

        The block search stops at ``deadline`` (``time.perf_counter``), a line at least done.
        """
        buf = f.buffer
        limit = self.max_line_bytes
        max_events = self._max_events
        consumed = 0
        whole = buf.rfind(b"\n") + 1
        if whole and len(events) < max_events:
            block = self._block_search.block(buf, max_events - len(events), deadline, whole)
            self._emit(
                f,
                [
                    (f.lines + line.line_index, piece.text, piece.offset, piece.hits)
                    for line in block.lines
                    for piece in line.pieces
                ],
                events,
            )
            for name, index in block.slow:
                self._slow(f, name, f.lines + index + 1)
            f.lines += block.lines_done
            self.lines_read += block.lines_done
            consumed = block.bytes_done
        if consumed == whole:
            # The partial line after the last newline: cut only what exceeds the limit (one
            # byte more, which may be the \r of a line of exactly the limit). Its pieces count
            # as a line when its newline comes.
            while len(buf) - consumed > limit + 1 and len(events) < max_events:
                self._piece(f, buf[consumed : consumed + limit], consumed, events)
                consumed += limit
        if consumed:
            del buf[:consumed]
            f.offset += consumed

    def _piece(self, f: _File, raw: bytes | bytearray, start: int, events: list[Event]) -> None:
        """A piece of the line being read (not complete yet), at ``start`` in the buffer."""
        text = self._matcher.decode(raw)
        hits, slow = self._matcher.match_line(text)
        for name in slow:
            self._slow(f, name, f.lines + 1)
        if hits:
            self._emit(f, [(f.lines, text, start, hits)], events)

    def emit_rest(self, f: _File, events: list[Event]) -> None:
        """A file's last line, without its newline: emitted when nothing can complete it."""
        rest = f.buffer
        if rest:
            self.lines_read += 1
        while rest:
            piece = rest[: self.max_line_bytes]
            self._piece(f, piece, 0, events)
            del rest[: len(piece)]
            f.offset += len(piece)

    def _slow(self, f: _File, rule: str, line_number: int) -> None:
        """A rule slower than the threshold on one line: said once per rule, always counted."""
        if rule in self._slow_reported:
            return
        self._slow_reported.add(rule)
        logger.warning(
            "%s: rule %r took over %g s on line %d of %s; it holds up every input while it "
            "runs (see 'Slow rules' in docs/tailing.md)",
            self._owner,
            rule,
            self._matcher.slow_seconds,
            line_number,
            f.path,
        )

    def _emit(self, f: _File, lines: list[tuple[int, str, int, Hits]], events: list[Event]) -> None:
        """The events of lines (or pieces) with hits: ``(lines before it, its text, where it
        starts in the buffer, its hits)`` each, in order."""
        name, path, owner = self.name, f.path, self._owner
        inflight = self._inflight if owner.track_outcomes else None
        outstanding = f.outstanding
        append = events.append
        for before, text, start, hits in lines:
            line_number = before + 1
            now = time.time()
            for rule, match in hits:
                # Built field by field, as the worker builds events: Event.__init__ is a call
                # in Python per event, and checks nothing these values need.
                event = _new_event(Event)
                event.originator = owner
                event.handler = rule.handler
                event.data = {
                    "input": name,
                    "file": path,
                    "line_number": line_number,
                    "line": text,
                    "rule": rule.name,
                    "match": match.group(0),
                    "groups": list(match.groups()),
                    "named": match.groupdict(),
                }
                event.timestamp = now
                append(event)
                if inflight is not None:
                    inflight[id(event)] = (event, outstanding, f.offset + start)
            if inflight is not None:
                outstanding[f.offset + start] = [len(hits), before]
