"""Rules and the line matcher: which lines of log text match which rules, by definition.

Runs in the parent process, in the dispatcher thread (called by :mod:`eventmp.tail_lines` and
:mod:`eventmp.block_search`); pure: no I/O, no clock but ``time.perf_counter`` for the per-rule
statistics and the poll's deadline.

A line matches a :class:`Rule` when its regex search-matches the line's text (decoded, without
its ``\\n`` or ``\\r\\n``) and its ``exclude`` does not; rules are checked in order and a
``quick`` rule that matched ends the checking of that line. :meth:`LineMatcher.match_text`
is that definition, and the only code that builds results.

Most lines of a log match no rule, so the tail does not run the definition on every line:
:class:`eventmp.block_search.BlockSearch` finds the lines of a block worth checking with one
search per rule, and runs :meth:`~LineMatcher.match_text` on those. Its reference is
:meth:`LineMatcher.block_reference`, the same block one line at a time, which is also its path
where a block search does not apply. The statistics of both are kept here, per rule.

The docs: docs/tailing.md (lines, long lines, slow rules) and docs/design.md (matching).
"""

from __future__ import annotations

import re
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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
    """What a block search (or :meth:`LineMatcher.block_reference`) found in the lines it went
    through."""

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
        self._counters = [_Counters() for _ in self.rules]

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

    def decode_part(self, data: bytes | bytearray, start: int, end: int) -> str:
        """``decode(data[start:end])`` without copying the bytes out first."""
        with memoryview(data) as view, view[start:end] as part:
            return str(part, self.encoding, "replace")

    def count_matches(self, matches: list[int]) -> None:
        """Add each rule's matches (by rule number) of lines a block search found, as
        :meth:`match_text` counts them (for its lines with one hit, which skip that loop)."""
        for counters, number in zip(self._counters, matches, strict=True):
            counters.matches += number

    def add_seconds(self, number: int, seconds: float) -> None:
        """Time rule ``number`` spent matching elsewhere (a block search), for :meth:`stats`."""
        self._counters[number].seconds += seconds

    # == one line ==================================================================================

    def match_line(self, text: str) -> tuple[Hits, list[str]]:
        """The hits of one line (or piece) in rule order, and the names of rules slow on it."""
        hits, slow = self.match_text(text)
        names = list(dict.fromkeys(self.rules[n].name for n in slow))
        self.count_slow([(name, 0) for name in names])
        return hits, names

    def match_text(
        self,
        text: str,
        known: dict[int, re.Match[str]] | None = None,
        line_by_line: Container[int] = frozenset(),
    ) -> tuple[Hits, list[int]]:
        """The hits of one line (or piece), in rule order; and the rules (indices) slow on it.

        ``known``, from a block search, holds the match of each rule searched over the block
        that matched this line: the same match as the rule's own on the line alone (the same
        position, the same path through the pattern). A rule searched over the block and
        absent from it does not match this line (a non-empty one), and is not run again.
        ``line_by_line`` holds the rules that search did not search: they are run on the line.
        """
        hits: Hits = []
        slow: list[int] = []
        threshold = self.slow_seconds
        clock = time.perf_counter
        trusted = known is not None and text  # see the docstring; and below
        for number, rule in enumerate(self.rules):
            counters = self._counters[number]
            if trusted and number not in line_by_line:
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

    def match_pieces(self, raw: bytes | bytearray, start: int) -> tuple[list[Piece], list[int]]:
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
        """The hits of the complete lines of ``data``, one line at a time: the definition
        :class:`~eventmp.block_search.BlockSearch` must agree with, and its path for the
        encodings a block cannot be decoded in at once (the same arguments and stops)."""
        lines: list[LineHits] = []
        slow: list[tuple[str, int]] = []
        total = 0
        offset = 0
        index = 0
        for raw in bytes(data).split(b"\n")[:-1]:
            pieces, slow_here = self.match_pieces(raw, offset)
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
        self.count_slow(slow)
        return Block(lines, index, offset, slow)

    def count_slow(self, slow: list[tuple[str, int]]) -> None:
        """Count each (rule name, line) over the threshold, on the first rule of that name."""
        first = {rule.name: n for n, rule in reversed(list(enumerate(self.rules)))}
        for name, _index in slow:
            self._counters[first[name]].slow_lines += 1
