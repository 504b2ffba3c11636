"""Tests for eventmp.matching: rules, the block search, its statistics, and a tail driving it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventmp.matching import Block, LineMatcher, Rule, RuleStats
from eventmp.tail import FileTailGenerator

# Pieces of patterns: anchors, classes that can match a newline or a \r, empty matches,
# lookarounds, atomic groups, backreferences, flags.
ATOMS = [
    "a", "b", "é", "1", " ", ",", "x", r"\s", r"\S", r"\w", r"\W", r"\d", r"\D", "[^a]", "[^ ]",
    "[^ab]", ".", "(?s:.)", r"\n", r"\r", "[\\n]", "[a-z]", "[\\x00-\\x7f]", "^", "$", r"\A", r"\Z",
    r"\b", r"\B", "(?=a)", "(?!b)", "(?<=a)", "(?<!\\s)", "(?<![^a])", "(a|b)", "(a)", "(?:ab|a)",
    "[\\s,]", "(?>a*)", "a*+", "\ufffd", "(?i:A)", "(?m:^)", "(?m:$)",
]  # fmt: skip
QUANTIFIERS = ["", "", "", "*", "+", "?", "{2}", "*?"]

# Bytes of log text: ASCII, CR and LF, multibyte UTF-8 and its pieces, invalid bytes.
TOKENS = [
    b"a", b"b", b"x", b"1", b" ", b",", b"\n", b"\n", b"\r", b"\r\n", b"\xc3\xa9", b"\xe2\x82\xac",
    b"\xe2\x82", b"\xff", b"\x80", b"\t", b"ab", b"\xf0\x9f\x98\x80",
]  # fmt: skip


SIMPLE = ["a", "b", "x", "1", " "]
ZERO_WIDTH = ("^", "$", r"\A", r"\Z", r"\b", r"\B")


@st.composite
def patterns(draw: st.DrawFn) -> str:
    """A random pattern that compiles: one to three atoms (plain letters often), maybe repeated."""
    atoms = st.one_of(st.sampled_from(SIMPLE), st.sampled_from(ATOMS))
    parts = draw(st.lists(st.tuples(atoms, st.sampled_from(QUANTIFIERS)), min_size=1, max_size=3))
    text = "".join(atom + ("" if atom in ZERO_WIDTH else q) for atom, q in parts)
    if draw(st.booleans()) and "(a)" in text:
        text += r"\1"
    try:
        re.compile(text)
    except re.error:
        return "a"
    return text


@st.composite
def rule_sets(draw: st.DrawFn) -> list[Rule]:
    """One to four rules with random patterns, excludes and quick flags."""
    rules = []
    for number in range(draw(st.integers(1, 3))):
        exclude = draw(patterns()) if draw(st.integers(0, 3)) == 0 else None
        rules.append(
            Rule(
                f"r{number}",
                re.compile(draw(patterns())),
                None,
                exclude=None if exclude is None else re.compile(exclude),
                quick=draw(st.booleans()),
            )
        )
    return rules


log_texts = st.lists(
    st.one_of(st.sampled_from([b"a", b"b", b"\n", b"x"]), st.sampled_from(TOKENS)), max_size=60
).map(b"".join)


def hits_of(block: Block) -> list[Any]:
    return [
        (
            line.line_index,
            piece.offset,
            piece.text,
            [(r.name, m.group(), m.groups(), m.groupdict()) for r, m in piece.hits],
        )
        for line in block.lines
        for piece in line.pieces
    ]


# == the block search ==============================================================================


TRICKY = [
    (["$"], b"\n\n"),
    (["a$"], b"a\nb\na\r\nx\n"),
    (["^b", r"\Ab\Z"], b"ab\nb\nb\r\n"),
    ([r"(?<!\s)x", r"x(?!\s)"], b"x\n x\nx\r\n"),
    ([r"a\sb", "(?s)a.b", "a[^x]b"], b"a\nb\na b\n"),
    ([r"(?>\s*)$", r"\s*+$"], b"a \n  \r\nb\n"),
    (["é$", "\ufffd"], b"\xc3\xa9\n\xe2\x82\r\n\xff\n"),
    (["x(?![^a])", "(?<![^a])b"], b"x\nbx\nb\n"),
    (["x(?![^ab])"], b"x\nbx\nb\n"),
    (["(?>[^ab]*)$"], b"x\nbx\nb\n"),
]


def tricky(patterns: list[str], data: bytes) -> dict[str, Any]:
    """The arguments of an example: these patterns as rules over ``data``."""
    rules = [Rule(f"r{n}", re.compile(p), None) for n, p in enumerate(patterns)]
    return {"rules": rules, "data": data, "limit": 8, "max_hits": 100}


@settings(
    max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@example(**tricky(*TRICKY[0]))
@example(**tricky(*TRICKY[1]))
@example(**tricky(*TRICKY[2]))
@example(**tricky(*TRICKY[3]))
@example(**tricky(*TRICKY[4]))
@example(**tricky(*TRICKY[5]))
@example(**tricky(*TRICKY[6]))
@example(**tricky(*TRICKY[7]))
@example(**tricky(*TRICKY[8]))
@example(**tricky(*TRICKY[9]))
@given(rules=rule_sets(), data=log_texts, limit=st.integers(1, 12), max_hits=st.integers(1, 30))
def test_block_search_agrees_with_the_line_by_line_definition(
    rules: list[Rule], data: bytes, limit: int, max_hits: int
) -> None:
    """For any rules and text, the block search finds what the per-line path finds."""
    data = data[: data.rfind(b"\n") + 1]
    fast = LineMatcher(rules, "utf-8", limit).block(data, max_hits)
    slow = LineMatcher(rules, "utf-8", limit).block_reference(data, max_hits)
    assert hits_of(fast) == hits_of(slow)
    assert (fast.lines_done, fast.bytes_done) == (slow.lines_done, slow.bytes_done)


@settings(max_examples=500, deadline=None, database=None)
@given(rules=rule_sets(), data=log_texts, window=st.integers(1, 20), max_hits=st.integers(1, 30))
def test_windows_of_any_size_agree(
    rules: list[Rule], data: bytes, window: int, max_hits: int
) -> None:
    """Searching a block in windows of any number of characters finds the same hits."""
    data = data[: data.rfind(b"\n") + 1]
    matcher = LineMatcher(rules, "utf-8", 8)
    matcher._window_size = window  # production windows are thousands of characters
    fast = matcher.block(data, max_hits)
    slow = LineMatcher(rules, "utf-8", 8).block_reference(data, max_hits)
    assert hits_of(fast) == hits_of(slow)
    assert (fast.lines_done, fast.bytes_done) == (slow.lines_done, slow.bytes_done)


@settings(max_examples=100, deadline=None, database=None)
@given(rules=rule_sets(), data=log_texts, encoding=st.sampled_from(["latin-1", "cp1252", "ascii"]))
def test_single_byte_encodings_agree_too(rules: list[Rule], data: bytes, encoding: str) -> None:
    """A single-byte encoding's block decodes as its lines do: the same hits either way."""
    data = data[: data.rfind(b"\n") + 1]
    fast = LineMatcher(rules, encoding, 8).block(data, 1000)
    slow = LineMatcher(rules, encoding, 8).block_reference(data, 1000)
    assert hits_of(fast) == hits_of(slow)


def test_a_block_stops_after_the_line_that_reaches_max_hits() -> None:
    """The budget stops the search after a whole line, and says how far it got."""
    rules = [Rule("a", re.compile("a"), None), Rule("b", re.compile("b"), None)]
    block = LineMatcher(rules).block(b"x\nab\nab\na\n", 3)
    assert [line.line_index for line in block.lines] == [1, 2]
    assert (block.lines_done, block.bytes_done) == (3, 8)


def test_a_passed_deadline_still_gets_one_line_through() -> None:
    """A block whose deadline has passed goes through at least one line, so a tail advances."""
    rules = [Rule("nested", re.compile(r"(\d+)+x"), None)]
    block = LineMatcher(rules).block(b"1\n2\n3\n", 100, deadline=0.0)
    assert 1 <= block.lines_done <= 3


def test_rule_stats_count_matches_and_time() -> None:
    """Each rule's matches (events) and seconds add up per rule name."""
    rules = [Rule("a", re.compile("a"), None), Rule("b", re.compile("b"), None, quick=True)]
    matcher = LineMatcher(rules)
    matcher.block(b"a\nb\nab\nxx\n", 100)
    stats = matcher.stats()
    assert stats["a"].matches == 2 and stats["b"].matches == 2
    assert stats["a"].slow_lines == 0 and stats["a"].seconds > 0
    assert isinstance(stats["a"], RuleStats)


def test_a_slow_rule_is_counted_on_its_line() -> None:
    """A rule over the threshold on a line is named with that line's index, and counted once."""
    rules = [Rule("nested", re.compile(r"(\d+)+x"), None), Rule("ok", re.compile("ok"), None)]
    matcher = LineMatcher(rules, slow_seconds=1e-9)
    block = matcher.block(b"ok\n" + b"1" * 12 + b"\nok\n", 100)
    assert ("nested", 1) in block.slow
    assert matcher.stats()["nested"].slow_lines == len([s for s in block.slow if s[0] == "nested"])


def test_a_pause_of_the_process_does_not_make_a_rule_slow(monkeypatch: Any) -> None:
    """A wall clock that leaps (the process paused) sets no rule to line by line: CPU time does."""
    wall = iter(range(0, 10**9, 10))  # ten seconds pass between any two readings
    monkeypatch.setattr("eventmp.matching.time.perf_counter", lambda: float(next(wall)))
    matcher = LineMatcher([Rule("failed", re.compile(r"Failed (\w+)"), None)])
    data = b"".join(b"Failed %d\nok\n" % n for n in range(1000))
    for _ in range(2):
        block = matcher.block(data, 10_000)
        assert len(block.lines) == 1000 and not block.slow
    assert matcher.stats()["failed"].slow_lines == 0


# == through a tail ================================================================================


def per_line(data: bytes, rules: list[Rule], limit: int) -> list[Any]:
    """What the tail must make of ``data``, written independently of the matcher: one line at a
    time, ``\\r`` stripped, cut into pieces of ``limit`` bytes, each decoded and matched alone."""
    made = []
    offset = 0
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        raw = line[:-1] if line.endswith(b"\r") else line
        for at in range(0, max(len(raw), 1), limit):
            text = raw[at : at + limit].decode("utf-8", "replace")
            for rule in rules:
                match = rule.regex.search(text)
                if match is None or (rule.exclude is not None and rule.exclude.search(text)):
                    continue
                made.append((rule.name, number, text, match.group(), match.groups(), offset + at))
                if rule.quick:
                    break
        offset += len(line) + 1
    return made


@settings(max_examples=300, deadline=None, database=None)
@example(rules=[Rule("all", re.compile(""), None)], data=b"ab\r", limit=2, cuts=[3])
@example(rules=[Rule("e", re.compile("é"), None)], data=b"x\xc3\xa9\xc3\xa9", limit=3, cuts=[2, 4])
@given(
    rules=rule_sets(),
    data=log_texts,
    limit=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_a_tail_reading_at_random_boundaries_makes_the_per_line_events(
    rules: list[Rule], data: bytes, limit: int, cuts: list[int]
) -> None:
    """Written in random pieces (multibyte characters split, lines cut), a log gives a tail
    exactly the events, line numbers and checkpoint offsets of the per-line definition."""
    data += b"\n"
    made: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "app.log")
        log.write_bytes(b"")
        tail = FileTailGenerator(
            [str(log)],
            rules,
            start_at="beginning",
            rescan_interval=0,
            checkpoint_interval=0,
            max_line_bytes=limit,
            slow_line_seconds=60,
        )
        try:
            written = 0
            for cut in [*sorted(c for c in set(cuts) if c < len(data)), len(data)]:
                with open(log, "ab") as out:
                    out.write(data[written:cut])
                written = cut
                for _ in range(100):  # bounded: a poll always gets somewhere
                    events = tail.get_events()
                    for event in events:
                        d = event.data
                        offset = tail._inflight[id(event)][2]
                        made.append((d["rule"], d["line_number"], d["line"], d["match"]))
                        made[-1] += (tuple(d["groups"]), offset)
                        tail.settled(event, None)
                    if not tail.has_more:
                        break
        finally:
            tail.stop()
    assert made == per_line(data, rules, limit)
    assert tail.lines_read == data.count(b"\n")


def test_an_encoding_decoded_line_by_line_keeps_the_time_budget() -> None:
    """Shift JIS is matched one line at a time; a passed deadline still stops it after a line."""
    rules = [Rule("a", re.compile("a"), None)]
    matcher = LineMatcher(rules, "shift_jis")
    assert [line.line_index for line in matcher.block(b"a\nb\na\n", 100).lines] == [0, 2]
    assert matcher.block(b"a\nb\na\n", 100, deadline=0.0).lines_done == 1
