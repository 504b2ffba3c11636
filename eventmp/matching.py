"""Rules and the line matcher: which lines of a block of log text match which rules.

Runs in the parent process, in the dispatcher thread (called by :mod:`eventmp.tail`); pure:
no I/O, no clock but ``time.perf_counter`` and ``time.thread_time`` for the per-rule statistics.

A line matches a :class:`Rule` when its regex search-matches the line's text (decoded, without
its ``\\n`` or ``\\r\\n``) and its ``exclude`` does not; rules are checked in order and a
``quick`` rule that matched ends the checking of that line. :meth:`LineMatcher.match_text`
is that definition, and the only code that builds results.

Most lines of a log match no rule, so :meth:`LineMatcher.block` does not look at lines one
by one. It decodes a block of lines at once and searches the whole text with one pattern per
rule (C loops), then runs :meth:`~LineMatcher.match_text` on the lines found. The pattern
searched is the rule's own, rewritten by :func:`line_confined` so that it cannot consume a
newline and its anchors (``^``, ``$``, ``\\A``, ``\\Z``) mean the line's start and end. A line
holds no newline, so the rewrite matches every line exactly where the rule does; and since no
attempt can cross a newline, the engine does at each position of a line what it would do on
the line alone: the lines found are exactly the lines the rule matches, and a search costs
what the same lines cost one by one. Where that cannot be shown the rule is checked line by
line instead: a pattern the rewrite does not know, a pattern with a repeat inside a repeat
(the shape of catastrophic backtracking, whose cost per line must be seen line by line), a
rule that was once slow, and an encoding that may decode a block otherwise than line by line.

The docs: docs/tailing.md (lines, long lines, slow rules) and docs/design.md (matching).
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .line_patterns import line_confined, nested_repeat

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "SLOW_LINE_SECONDS",
    "LineMatcher",
    "Rule",
    "RuleStats",
    "check_encoding",
]

DEFAULT_MAX_LINE_BYTES = 16 << 10
"""Longer lines are cut into pieces of this many bytes, each matched alone.

A rule runs in the dispatcher thread, and a backtracking pattern's time grows faster than the
line's length: 16 KiB holds any syslog message (rsyslog's default maximum is 8 KiB) while
bounding what a polynomial pattern can cost on one line (docs/tailing.md, "Long lines").
"""

SLOW_LINE_SECONDS = 0.1
"""A rule that spends longer than this on one line is reported (once per rule) and counted.

Matching runs in the dispatcher thread, which every input and every acknowledgement share:
a tenth of a second is far above what a sane pattern spends on a 16 KiB line, and short
enough that a stall is noticed before it is felt. It is also the time one poll of a tail may
spend before it yields to the other inputs. See docs/tailing.md, "Slow rules".
"""

# Size of a window of the block search, in lines of the maximum length: a deadline is checked
# between windows, and a window costs a polynomial pattern about what that many such lines do.
_WINDOW_LINES_BYTES_FACTOR = 4

# Encodings whose decoding of a block is the decoding of its lines joined by "\n": UTF-8 (a
# byte below 0x80 is never part of an invalid sequence, so errors="replace" works the same on
# a line alone) and stateless single-byte codecs (one character per byte, whatever it is).
_SINGLE_BYTE_PREFIXES = ("latin-1", "iso8859-", "cp125", "cp437", "cp850", "ascii", "koi8-")


def check_encoding(encoding: str) -> None:
    """Raise ValueError unless the tail can read files in ``encoding``.

    The tail cuts lines at the byte 0x0A, so the encoding must write a newline as that byte
    alone (UTF-8, Latin-1 and the like; not UTF-16).
    """
    try:
        newline = "\n".encode(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
    if newline != b"\n":
        raise ValueError(
            f"encoding {encoding!r} does not write a newline as the byte 0x0A; "
            "the tail cuts lines at that byte (use UTF-8, Latin-1, ...)"
        )


@dataclass(frozen=True)
class Rule:
    """A line matches when ``regex`` search-matches it and ``exclude`` (if any) does not.

    Each matching rule makes one event for ``handler``; a ``quick`` rule that matched ends the
    checking of that line.
    """

    name: str
    regex: re.Pattern[str]
    handler: Any
    exclude: re.Pattern[str] | None = None
    quick: bool = False


@dataclass(frozen=True)
class RuleStats:
    """What one rule did so far: events made, lines it was slow on, seconds spent matching."""

    matches: int = 0
    slow_lines: int = 0
    seconds: float = 0.0


Hits = list[tuple[Rule, "re.Match[str]"]]


class Piece(NamedTuple):
    """A line, or one piece of a line cut at ``max_line_bytes``, and the rules it matched."""

    offset: int  # of its first byte, in the block
    text: str
    hits: Hits


class LineHits(NamedTuple):
    """A line of a block with at least one hit: its index in the block and its pieces."""

    line_index: int
    pieces: list[Piece]


class Block(NamedTuple):
    """What :meth:`LineMatcher.block` found in the lines it went through."""

    lines: list[LineHits]
    lines_done: int  # complete lines gone through (the caller's budget may stop it early)
    bytes_done: int
    slow: list[tuple[str, int]]  # (rule name, line index): a rule slower than the threshold


class _Counters:
    __slots__ = ("matches", "seconds", "slow_lines")

    def __init__(self) -> None:
        self.matches = 0
        self.slow_lines = 0
        self.seconds = 0.0


def _block_safe(encoding: str) -> tuple[bool, bool]:
    """(a block decodes as its lines do, one character per byte) for ``encoding``."""
    name = codecs.lookup(encoding).name
    if name == "utf-8":
        return True, False
    single = name.startswith(_SINGLE_BYTE_PREFIXES) or name in ("mac-roman", "cp1006")
    return single, single


class LineMatcher:
    """Matches lines against an input's rules, keeping per-rule statistics.

    ``slow_seconds`` is :data:`SLOW_LINE_SECONDS` unless a caller wants another threshold.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        encoding: str = "utf-8",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        *,
        slow_seconds: float = SLOW_LINE_SECONDS,
    ) -> None:
        self.rules = list(rules)
        self.encoding = encoding
        self.max_line_bytes = max_line_bytes
        self.slow_seconds = slow_seconds
        self._block_safe, self._single_byte = _block_safe(encoding)
        # Per rule: its confined pattern's search, or None while it is checked line by line.
        self._scanners: list[Any] = []
        for rule in self.rules:
            confined = None if nested_repeat(rule.regex) else line_confined(rule.regex)
            self._scanners.append(None if confined is None else confined.search)
        self._counters = [_Counters() for _ in self.rules]
        # Rules checked line by line (a match of theirs is never known from a block search).
        self._line_by_line = {n for n, search in enumerate(self._scanners) if search is None}
        self._window_size = max(max_line_bytes * _WINDOW_LINES_BYTES_FACTOR, 4096)

    def stats(self) -> dict[str, RuleStats]:
        """Per rule name (rules sharing a name add up): matches, slow lines, seconds."""
        result: dict[str, RuleStats] = {}
        for rule, c in zip(self.rules, self._counters, strict=True):
            old = result.get(rule.name, RuleStats())
            result[rule.name] = RuleStats(
                old.matches + c.matches, old.slow_lines + c.slow_lines, old.seconds + c.seconds
            )
        return result

    def decode(self, raw: bytes | bytearray) -> str:
        return raw.decode(self.encoding, "replace")

    # == one line ==================================================================================

    def match_line(self, text: str) -> tuple[Hits, list[str]]:
        """The hits of one line (or piece) in rule order, and the names of rules slow on it."""
        hits, slow = self.match_text(text)
        names = list(dict.fromkeys(self.rules[n].name for n in slow))
        self._count_slow([(name, 0) for name in names])
        return hits, names

    def match_text(
        self, text: str, known: dict[int, re.Match[str]] | None = None
    ) -> tuple[Hits, list[int]]:
        """The hits of one line (or piece), in rule order; and the rules (indices) slow on it.

        ``known``, from a block search, holds the match of each rule searched over the block
        that matched this line: the same match as the rule's own on the line alone (the same
        position, the same path through the pattern). A rule searched over the block and
        absent from it does not match this line (a non-empty one), and is not run again.
        """
        hits: Hits = []
        slow: list[int] = []
        threshold = self.slow_seconds
        clock = time.perf_counter
        trusted = known is not None and text  # see the docstring; and below
        for number, rule in enumerate(self.rules):
            counters = self._counters[number]
            if trusted and number not in self._line_by_line:
                assert known is not None
                match = known.get(number)
                if match is None:
                    continue
                if rule.exclude is not None:
                    started = clock()
                    if rule.exclude.search(text):
                        match = None
                    spent = clock() - started
                    counters.seconds += spent
                    if spent > threshold:
                        slow.append(number)
            else:
                # An empty line is searched again: re's \B never matches an empty string
                # (before Python 3.14), though it does between two newlines.
                started = clock()
                match = rule.regex.search(text)
                if match is not None and rule.exclude is not None and rule.exclude.search(text):
                    match = None
                spent = clock() - started
                counters.seconds += spent
                if spent > threshold:
                    slow.append(number)
            if match is None:
                continue
            hits.append((rule, match))
            counters.matches += 1
            if rule.quick:
                break
        return hits, slow

    def _pieces(self, raw: bytes | bytearray, start: int) -> tuple[list[Piece], list[int]]:
        """A line's text (raw bytes without its newline) matched whole, or in pieces."""
        if raw.endswith(b"\r"):
            raw = raw[:-1]  # before the cap: it applies to the line's own text
        pieces: list[Piece] = []
        slow: list[int] = []
        limit = self.max_line_bytes
        for at in range(0, max(len(raw), 1), limit):
            text = self.decode(raw[at : at + limit])
            hits, slow_here = self.match_text(text)
            slow += slow_here
            if hits:
                pieces.append(Piece(start + at, text, hits))
        return pieces, slow

    # == a block of lines ==========================================================================

    def block_reference(
        self, data: bytes | bytearray, max_hits: int, deadline: float = float("inf")
    ) -> Block:
        """:meth:`block` one line at a time: the definition the fast path must agree with,
        and the path of the encodings a block cannot be decoded in at once."""
        lines: list[LineHits] = []
        slow: list[tuple[str, int]] = []
        total = 0
        offset = 0
        index = 0
        for raw in bytes(data).split(b"\n")[:-1]:
            pieces, slow_here = self._pieces(raw, offset)
            slow += [(self.rules[n].name, index) for n in slow_here]
            offset += len(raw) + 1
            index += 1
            if pieces:
                lines.append(LineHits(index - 1, pieces))
                total += sum(len(p.hits) for p in pieces)
                if total >= max_hits:
                    break
            if time.perf_counter() > deadline:
                break
        slow = list(dict.fromkeys(slow))
        self._count_slow(slow)
        return Block(lines, index, offset, slow)

    def block(
        self, data: bytes | bytearray, max_hits: int, deadline: float = float("inf")
    ) -> Block:
        """The hits of the complete lines of ``data`` (which ends with a newline).

        Stops after the line whose hits bring the total to ``max_hits``, or at the first line
        or window boundary past ``deadline`` (``time.perf_counter``), a line at least done.
        """
        if not self._block_safe:
            return self.block_reference(data, max_hits, deadline)
        state = _BlockState(max_hits, deadline)
        size = len(data)
        limit = self.max_line_bytes
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
            pieces, slow_rules = self._pieces(data[end:newline], end)
            state.slow += [(self.rules[n].name, state.index) for n in slow_rules]
            state.line_done(pieces, newline + 1)
            at = newline + 1
        slow = list(dict.fromkeys(state.slow))
        self._count_slow(slow)
        return Block(state.lines, state.index, state.offset, slow)

    def _count_slow(self, slow: list[tuple[str, int]]) -> None:
        first = {rule.name: n for n, rule in reversed(list(enumerate(self.rules)))}
        for name, _index in slow:
            self._counters[first[name]].slow_lines += 1

    def _segment(self, data: bytes | bytearray, start: int, end: int, state: _BlockState) -> None:
        """Lines ``data[start:end]``, none over the cap, searched window by window."""
        text = self.decode(data[start:end])
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
        position = 0  # of the window, a line start
        while position < length and not state.stopped:
            stop = text.rfind("\n", position, position + self._window_size) + 1
            if stop <= position:
                stop = text.find("\n", position) + 1
            found, slow, count, complete = self._window(text, position, stop, state.deadline)
            for line, line_start, known in found:
                line_end = text.find("\n", line_start)
                line_text = text[line_start:line_end]
                hits, slow_here = self.match_text(line_text, known)
                if slow_here:
                    slow.update((n, line) for n in slow_here)
                if hits:
                    offset = (
                        start + line_start if raw is None else raw.at(state.index - base + line)
                    )
                    state.add(state.index + line, Piece(offset, line_text, hits))
                    if state.hits >= state.max_hits:
                        count = line + 1
                        complete = False
                        break
            if slow:
                state.slow += sorted(
                    (self.rules[n].name, state.index + line) for n, line in slow if line < count
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
        threshold = self.slow_seconds
        clock, cpu_clock = time.perf_counter, time.thread_time
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
            self._counters[number].seconds += clock() - began
            # The thread's CPU time, not the wall clock's: a pause of the whole process (the
            # machine busy, a VM's stolen time) must not turn a rule to line by line for good.
            if cpu_clock() - began_cpu > threshold:
                # Slow somewhere in these lines: from now on this rule is checked line by line,
                # starting with this window, so that its slow lines are named.
                self._scanners[number] = None
                self._line_by_line.add(number)
                by_line.append(number)
        lines_found: dict[int, int] = {}
        matches: dict[int, dict[int, re.Match[str]]] = {}
        index, counted = 0, start
        for line_start in sorted(starts):
            index += text.count("\n", counted, line_start)
            counted = line_start
            lines_found[index] = line_start
            matches[index] = starts[line_start]
        count = index + text.count("\n", counted, stop)
        complete = True
        if by_line:
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
        threshold = self.slow_seconds
        clock = time.perf_counter
        searches = [(n, self.rules[n].regex.search) for n in numbers]
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
            self._counters[number].seconds += spent[slot]
        return last


class _BlockState:
    """Where :meth:`LineMatcher.block` is: lines gone through, hits so far, why it stops."""

    def __init__(self, max_hits: int, deadline: float) -> None:
        self.max_hits = max_hits
        self.deadline = deadline
        self.lines: list[LineHits] = []
        self.slow: list[tuple[str, int]] = []
        self.hits = 0
        self.index = 0  # complete lines gone through
        self.offset = 0  # bytes gone through
        self.stopped = False

    def add(self, index: int, piece: Piece) -> None:
        self.lines.append(LineHits(index, [piece]))
        self.hits += len(piece.hits)

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
