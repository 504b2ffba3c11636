"""The block search: which lines of a block of log text a rule may match, one search per rule.

Runs in the parent process, in the dispatcher thread (called by :mod:`eventmp.tail_lines`); pure:
no I/O, no clock but ``time.perf_counter`` and ``time.thread_time`` for the per-rule statistics
and the poll's deadline (and a ``gc`` callback, so that a collection is not a rule's time).

Most lines of a log match no rule, so :meth:`BlockSearch.block` does not look at lines one
by one. It decodes a block of lines at once and searches the whole text with one pattern per
rule (C loops), then runs the definition, :meth:`eventmp.matching.LineMatcher.match_text`, on
the lines found. The pattern searched is the rule's own, rewritten by :func:`line_confined` so
that it cannot consume a newline and its anchors (``^``, ``$``, ``\\A``, ``\\Z``) mean the
line's start and end. A line holds no newline, so the rewrite matches every line exactly where
the rule does; and since no attempt can cross a newline, the engine does at each position of a
line what it would do on the line alone: the lines found are exactly the lines the rule
matches, and a search costs what the same lines cost one by one. Where that cannot be shown the
rule is checked line by line instead: a pattern the rewrite does not know, a pattern with a
repeat inside a repeat (the shape of catastrophic backtracking, whose cost per line must be
seen line by line), a rule that was once slow, and an encoding that may decode a block
otherwise than line by line (the whole block then goes to
:meth:`~eventmp.matching.LineMatcher.block_reference`, the definition one line at a time).

The docs: docs/design.md, "Matching lines".
"""

from __future__ import annotations

import codecs
import gc
import re
import threading
import time
from typing import Any

from .line_patterns import line_confined, nested_repeat
from .matching import Block, Hits, LineHits, LineMatcher, Piece

__all__ = ["BlockSearch"]

_new = tuple.__new__

# Size of a window of the block search, in lines of the maximum length: a deadline is checked
# between windows, and a window costs a polynomial pattern about what that many such lines do.
_WINDOW_LINES_BYTES_FACTOR = 4

# Encodings whose decoding of a block is the decoding of its lines joined by "\n": UTF-8 (a
# byte below 0x80 is never part of an invalid sequence, so errors="replace" works the same on
# a line alone) and stateless single-byte codecs (one character per byte, whatever it is).
_SINGLE_BYTE_PREFIXES = ("latin-1", "iso8859-", "cp125", "cp437", "cp850", "ascii", "koi8-")


def _block_safe(encoding: str) -> tuple[bool, bool]:
    """(a block decodes as its lines do, one character per byte) for ``encoding``."""
    name = codecs.lookup(encoding).name
    if name == "utf-8":
        return True, False
    single = name.startswith(_SINGLE_BYTE_PREFIXES) or name in ("mac-roman", "cp1006")
    return single, single


class BlockSearch:
    """The hits of blocks of lines, found with one search per rule over each block.

    ``matcher`` is the definition the hits agree with (its rules, encoding, cap and slow-line
    threshold), and it keeps the per-rule statistics of the search.
    """

    def __init__(self, matcher: LineMatcher) -> None:
        self._matcher = matcher
        self._block_safe, self._single_byte = _block_safe(matcher.encoding)
        # Per rule: its confined pattern's search, or None while it is checked line by line.
        self._scanners: list[Any] = []
        for rule in matcher.rules:
            confined = None if nested_repeat(rule.regex) else line_confined(rule.regex)
            self._scanners.append(None if confined is None else confined.search)
        # Rules checked line by line (a match of theirs is never known from a block search).
        self._line_by_line = {n for n, search in enumerate(self._scanners) if search is None}
        self._window_size = max(matcher.max_line_bytes * _WINDOW_LINES_BYTES_FACTOR, 4096)
        # Per rule: the rule, if a line it alone matched has that one hit (no exclude).
        self._alone = [None if rule.exclude is not None else rule for rule in matcher.rules]

    def block(
        self,
        data: bytes | bytearray,
        max_hits: int,
        deadline: float = float("inf"),
        size: int | None = None,
    ) -> Block:
        """The hits of the complete lines of ``data[:size]`` (which ends with a newline; all of
        ``data`` by default: a tail passes its whole buffer rather than copy the lines out).

        Stops after the line whose hits bring the total to ``max_hits``, or at the first line
        or window boundary past ``deadline`` (``time.perf_counter``), a line at least done.
        """
        matcher = self._matcher
        if size is None:
            size = len(data)
        if not self._block_safe:
            return matcher.block_reference(data[:size], max_hits, deadline)
        state = _BlockState(max_hits, deadline)
        limit = matcher.max_line_bytes
        at = 0
        while at < size and not state.stopped:
            # Lines of at most max_line_bytes raw bytes go to the block search; a longer one
            # (maybe a \r over the limit, maybe cut into pieces) to the per-line path.
            end = at
            while end < size:
                newline = data.rfind(b"\n", end, end + limit + 1)
                if newline < 0:
                    break
                end = newline + 1
            if end > at:
                self._segment(data, at, end, state)
            if end >= size or state.stopped:
                break
            newline = data.find(b"\n", end)
            pieces, slow_rules = matcher.match_pieces(data[end:newline], end)
            state.slow += [(matcher.rules[n].name, state.index) for n in slow_rules]
            state.line_done(pieces, newline + 1)
            at = newline + 1
        slow = list(dict.fromkeys(state.slow))
        matcher.count_slow(slow)
        return Block(state.lines, state.index, state.offset, slow)

    def _segment(self, data: bytes | bytearray, start: int, end: int, state: _BlockState) -> None:
        """Lines ``data[start:end]``, none over the cap, searched window by window."""
        matcher = self._matcher
        match_text, line_by_line = matcher.match_text, self._line_by_line
        text = matcher.decode_part(data, start, end)
        crlf = "\r" in text
        if crlf:
            text = text.replace("\r\n", "\n")
        # Byte offsets are text offsets when each character is one byte and no \r went away;
        # otherwise they are counted on the raw lines.
        raw: _RawOffsets | None = None
        if crlf or not (self._single_byte or text.isascii()):
            raw = _RawOffsets(bytes(data[start:end]).split(b"\n"), start)
        length = len(text)
        base = state.index  # lines before the segment
        matched = [0] * len(matcher.rules)  # hits of the lines match_text did not see
        position = 0  # of the window, a line start
        while position < length and not state.stopped:
            stop = text.rfind("\n", position, position + self._window_size) + 1
            if stop <= position:
                stop = text.find("\n", position) + 1
            found, slow, count, complete = self._window(text, position, stop, state.deadline)
            # Every rule was searched over the block (none line by line): a line one rule
            # matched, without an exclude, has that hit alone (match_text's answer, the
            # usual case, without its loop over the rules).
            alone = None if line_by_line else self._alone
            for line, line_start, known in found:
                line_end = text.find("\n", line_start)
                line_text = text[line_start:line_end]
                if alone is not None and len(known) == 1 and line_text:
                    ((number, match),) = known.items()
                    rule = alone[number]
                    if rule is not None:
                        hits: Hits = [(rule, match)]
                        matched[number] += 1
                    else:
                        hits, slow_here = match_text(line_text, known, line_by_line)
                        if slow_here:
                            slow.update((n, line) for n in slow_here)
                else:
                    hits, slow_here = match_text(line_text, known, line_by_line)
                    if slow_here:
                        slow.update((n, line) for n in slow_here)
                if hits:
                    offset = (
                        start + line_start if raw is None else raw.at(state.index - base + line)
                    )
                    # tuple.__new__: a NamedTuple's own constructor is a Python function.
                    state.lines.append(
                        _new(
                            LineHits, (state.index + line, [_new(Piece, (offset, line_text, hits))])
                        )
                    )
                    state.hits += len(hits)
                    if state.hits >= state.max_hits:
                        count = line + 1
                        complete = False
                        break
            if slow:
                state.slow += sorted(
                    (matcher.rules[n].name, state.index + line) for n, line in slow if line < count
                )
            if complete:
                position = stop
            else:
                position = _after_lines(text, position, count)
                state.stopped = True
            state.index += count
            state.offset = start + position if raw is None else raw.at(state.index - base)
            if time.perf_counter() > state.deadline:
                state.stopped = True
        matcher.count_matches(matched)

    def _window(
        self, text: str, start: int, stop: int, deadline: float
    ) -> tuple[list[tuple[int, int, dict[int, re.Match[str]]]], set[tuple[int, int]], int, bool]:
        """The lines of ``text[start:stop]`` that some rule matches: ``(index, offset, the
        matches known from the block search by rule)``.

        Also the (rule, line) pairs slower than the threshold, the number of lines gone
        through, and whether that is all of them (a rule checked line by line stops at the
        deadline).
        """
        starts: dict[int, dict[int, re.Match[str]]] = {}
        slow: set[tuple[int, int]] = set()
        by_line: list[int] = []
        threshold = self._matcher.slow_seconds
        add_seconds = self._matcher.add_seconds
        clock, cpu_clock = time.perf_counter, _searching_cpu_time
        rfind, find, known = text.rfind, text.find, starts.setdefault
        for number, search in enumerate(self._scanners):
            if search is None:
                by_line.append(number)
                continue
            began = clock()
            began_cpu = cpu_clock()
            at = start
            while at < stop:
                match = search(text, at, stop)
                if match is None:
                    break
                found = match.start()
                line_start = rfind("\n", start, found) + 1
                if line_start >= stop:
                    break
                known(line_start if line_start > start else start, {})[number] = match
                at = find("\n", found) + 1
            add_seconds(number, clock() - began)
            # The thread's CPU time, not the wall clock's: a pause of the whole process (the
            # machine busy, a VM's stolen time) must not turn a rule to line by line for good;
            # nor may a garbage collection that happened to run in the middle of the search.
            if cpu_clock() - began_cpu > threshold:
                # Slow somewhere in these lines: from now on this rule is checked line by line,
                # starting with this window, so that its slow lines are named.
                self._scanners[number] = None
                self._line_by_line.add(number)
                by_line.append(number)
        lines: list[tuple[int, int, dict[int, re.Match[str]]]] = []
        index, counted = 0, start
        for line_start in sorted(starts):
            index += text.count("\n", counted, line_start)
            counted = line_start
            lines.append((index, line_start, starts[line_start]))
        count = index + text.count("\n", counted, stop)
        if not by_line:
            return lines, slow, count, True  # in line order already
        lines_found = {line: line_start for line, line_start, _known in lines}
        matches = {line: known for line, _start, known in lines}
        complete = True
        last = self._by_line(text, start, stop, by_line, deadline, lines_found, slow)
        if last is not None:
            count, complete = last + 1, False
        return (
            sorted(
                (line, line_start, matches.get(line, {}))
                for line, line_start in lines_found.items()
                if line < count
            ),
            slow,
            count,
            complete,
        )

    def _by_line(
        self,
        text: str,
        start: int,
        stop: int,
        numbers: list[int],
        deadline: float,
        found: dict[int, int],
        slow: set[tuple[int, int]],
    ) -> int | None:
        """Rules ``numbers`` on each line of the window, timed; the last line if the deadline
        stopped them before the window's end."""
        matcher = self._matcher
        threshold = matcher.slow_seconds
        clock = time.perf_counter
        searches = [(n, matcher.rules[n].regex.search) for n in numbers]
        spent = [0.0] * len(searches)
        lines = text[start : stop - 1].split("\n")
        offset = start
        last = None
        for index, line in enumerate(lines):
            for slot, (number, search) in enumerate(searches):
                began = clock()
                match = search(line)
                took = clock() - began
                spent[slot] += took
                if took > threshold:
                    slow.add((number, index))
                if match is not None:
                    found[index] = offset
            offset += len(line) + 1
            if index + 1 < len(lines) and clock() > deadline:
                last = index
                break
        for slot, (number, _search) in enumerate(searches):
            matcher.add_seconds(number, spent[slot])
        return last


def _searching_cpu_time() -> float:
    """This thread's CPU time, less what it spent in garbage collections (see _window)."""
    return time.thread_time() - getattr(_collections, "seconds", 0.0)


# Per thread, the CPU time its garbage collections took (a collection runs in the thread whose
# allocation set it off): summed by a gc callback, which costs two clock reads per collection.
_collections = threading.local()


def _time_collections(phase: str, _info: dict[str, int]) -> None:
    if phase == "start":
        _collections.began = time.thread_time()
    elif (began := getattr(_collections, "began", None)) is not None:
        _collections.seconds = getattr(_collections, "seconds", 0.0) + time.thread_time() - began
        _collections.began = None


gc.callbacks.append(_time_collections)


class _BlockState:
    """Where :meth:`BlockSearch.block` is: lines gone through, hits so far, why it stops."""

    def __init__(self, max_hits: int, deadline: float) -> None:
        self.max_hits = max_hits
        self.deadline = deadline
        self.lines: list[LineHits] = []
        self.slow: list[tuple[str, int]] = []
        self.hits = 0
        self.index = 0  # complete lines gone through
        self.offset = 0  # bytes gone through
        self.stopped = False

    def line_done(self, pieces: list[Piece], end: int) -> None:
        """A line matched on its own (over the cap): its pieces, then the checks."""
        if pieces:
            self.lines.append(LineHits(self.index, pieces))
            self.hits += sum(len(p.hits) for p in pieces)
        self.index += 1
        self.offset = end
        if self.hits >= self.max_hits or time.perf_counter() > self.deadline:
            self.stopped = True


class _RawOffsets:
    """Byte offsets of the lines of a segment, from its raw lines, for increasing indices."""

    def __init__(self, raw_lines: list[bytes], start: int) -> None:
        self._lines = raw_lines
        self._index = 0
        self._offset = start

    def at(self, index: int) -> int:
        if index < self._index:
            raise ValueError("offsets are asked for in increasing order")
        self._offset += sum(map(len, self._lines[self._index : index])) + index - self._index
        self._index = index
        return self._offset


def _after_lines(text: str, start: int, count: int) -> int:
    """The offset after ``count`` lines of ``text`` from ``start``."""
    at = start
    for _ in range(count):
        at = text.find("\n", at) + 1
    return at
