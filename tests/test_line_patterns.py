"""Tests for eventmp.line_patterns: patterns confined to a line, and the catastrophic shape."""

from __future__ import annotations

import re

import pytest

from eventmp.line_patterns import line_confined, nested_repeat


@pytest.mark.parametrize(
    ("pattern", "line"),
    [
        (r"^a$", "a"),
        (r"\Aab\Z", "ab"),
        (r"foo$", "foo"),
        (r"(?<!\s)x", "x"),
        (r"x(?![^a])", "x"),
        (r"(?>\s*)$", " "),
        (r"a*+$", "aa"),
    ],
)
def test_confined_pattern_matches_each_line_of_a_joined_text_as_alone(
    pattern: str, line: str
) -> None:
    """A rewritten pattern finds a line among others exactly as the rule finds it alone."""
    confined = line_confined(re.compile(pattern))
    assert confined is not None
    assert re.search(pattern, line) is not None
    text = f"zz z\n{line}\nyy\n"
    found = confined.search(text, 5)
    assert found is not None and found.start() >= 5 and found.end() <= 5 + len(line)


@pytest.mark.parametrize("pattern", [r"a\sb", r"a[^ ]+x", r"(?s)a.b", r"a\nb", r"a\Wb", r"a\Db"])
def test_confined_pattern_never_crosses_a_newline(pattern: str) -> None:
    """Classes that take a newline no longer do, so no match spans two lines."""
    confined = line_confined(re.compile(pattern))
    assert confined is not None
    assert all("\n" not in m.group() for m in confined.finditer("xa\nbx\na b\n"))
    assert re.search(pattern, "xa\nbx\n") is not None


def test_nested_repeats_are_told_apart() -> None:
    """A repeat inside a repeat is the catastrophic shape; a plain repeat is not."""
    assert nested_repeat(re.compile(r"(\d+)+x"))
    assert nested_repeat(re.compile(r"(a|ab)*c"))
    assert not nested_repeat(re.compile(r"Failed password for (invalid user )?([^ ]+) from"))


def test_a_pattern_the_rewrite_cannot_confine_is_left_to_the_line_by_line_path() -> None:
    """A class mixing a newline-taking category with other items is not rewritten: None."""
    assert line_confined(re.compile(r"[\s,]x")) is None
