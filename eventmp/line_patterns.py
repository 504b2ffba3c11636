"""Rule patterns rewritten to search many lines at once, and the ones that must not be.

Runs in the parent process, in the dispatcher thread, once per rule when a tail is built
(:class:`eventmp.block_search.BlockSearch`); pure. Why the rewrite finds exactly the lines the
rule matches, at the same cost: docs/design.md, "Matching lines".

It uses re's own parser and compiler (the private modules ``re._parser`` and
``re._compiler``, stable since Python 3.11): a pattern it does not understand is checked line
by line, so a change there costs speed, never a line.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["line_confined", "nested_repeat"]


_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def _sre() -> Any:
    from re import _compiler, _constants, _parser  # type: ignore[attr-defined]

    return _parser, _compiler, _constants


def line_confined(regex: re.Pattern[str]) -> re.Pattern[str] | None:
    """``regex`` rewritten to match within one line of a text of many, or None.

    Every part that could consume ``\\n`` no longer does (a line has none, so on a line alone
    nothing changes), and ``^``, ``$``, ``\\A`` and ``\\Z`` become line anchors. Searched over
    lines joined by ``\\n``, it then matches at exactly the positions where ``regex`` matches
    each line alone, doing the same work there.
    """
    if not isinstance(regex.pattern, str):
        return None
    try:
        parser, compiler, constants = _sre()
        tree = parser.parse(regex.pattern, regex.flags)
        if not _confine(tree, constants):
            return None
        confined: re.Pattern[str] = compiler.compile(tree, regex.flags)
    except Exception:
        return None
    return confined


def nested_repeat(regex: re.Pattern[str]) -> bool:
    """Whether ``regex`` repeats something that itself repeats or branches: ``(\\d+)+``.

    That is the shape of catastrophic backtracking, whose cost on one line can be anything:
    such a rule is checked line by line, so that each line's time is seen on its own.
    """
    if not isinstance(regex.pattern, str):
        return True
    try:
        parser, _compiler, constants = _sre()
        tree = parser.parse(regex.pattern, regex.flags)
        return _nested(tree, constants, inside=False)
    except Exception:
        return True


def _nested(tree: Any, c: Any, *, inside: bool) -> bool:
    for op, av in tree.data:
        name = str(op)
        inner: list[Any] = []
        if name in _REPEATS:
            repeats = av[1] > 1
            if inside and repeats:
                return True
            if _nested(av[2], c, inside=inside or repeats):
                return True
        elif name == "BRANCH":
            if inside:
                return True
            inner = list(av[1])
        elif name == "SUBPATTERN":
            inner = [av[3]]
        elif name in ("ASSERT", "ASSERT_NOT"):
            inner = [av[1]]
        elif name == "ATOMIC_GROUP":
            inner = [av]
        elif name == "GROUPREF_EXISTS":
            inner = [p for p in av[1:] if p is not None]
        if any(_nested(p, c, inside=inside) for p in inner):
            return True
    return False


def _confine(tree: Any, c: Any) -> bool:
    """Rewrite ``tree`` (a parsed pattern) in place; false if it holds something unknown."""
    newline = ord("\n")
    never = (
        c.IN,
        [(c.NEGATE, None), (c.CATEGORY, c.CATEGORY_SPACE), (c.CATEGORY, c.CATEGORY_NOT_SPACE)],
    )
    anchors = {
        c.AT_BEGINNING: c.AT_BEGINNING_LINE,
        c.AT_BEGINNING_STRING: c.AT_BEGINNING_LINE,
        c.AT_END: c.AT_END_LINE,
        c.AT_END_STRING: c.AT_END_LINE,
    }
    with_newline = {c.CATEGORY_SPACE, c.CATEGORY_NOT_WORD, c.CATEGORY_NOT_DIGIT}
    complement = {
        c.CATEGORY_SPACE: c.CATEGORY_NOT_SPACE,
        c.CATEGORY_NOT_WORD: c.CATEGORY_WORD,
        c.CATEGORY_NOT_DIGIT: c.CATEGORY_DIGIT,
    }
    data = tree.data
    for i, (op, av) in enumerate(data):
        if op is c.LITERAL:
            if av == newline:
                data[i] = never
        elif op is c.NOT_LITERAL:
            if av != newline:
                data[i] = (c.IN, [(c.NEGATE, None), (c.LITERAL, av), (c.LITERAL, newline)])
        elif op is c.ANY:
            data[i] = (c.IN, [(c.NEGATE, None), (c.LITERAL, newline)])
        elif op is c.IN:
            items = av
            if items and items[0][0] is c.NEGATE:
                data[i] = (c.IN, [*items, (c.LITERAL, newline)])
                continue
            kept: list[Any] = []
            for kind, value in items:
                if kind is c.LITERAL and value == newline:
                    continue
                if kind is c.RANGE and value[0] <= newline <= value[1]:
                    low, high = value
                    if low < newline:
                        kept.append((c.RANGE, (low, newline - 1)))
                    if high > newline:
                        kept.append((c.RANGE, (newline + 1, high)))
                    continue
                if kind is c.CATEGORY and value in with_newline:
                    if len(items) != 1:
                        return False
                    kept = [(c.NEGATE, None), (c.CATEGORY, complement[value]), (c.LITERAL, newline)]
                    break
                if kind not in (c.LITERAL, c.RANGE, c.CATEGORY):
                    return False
                kept.append((kind, value))
            data[i] = (c.IN, kept) if kept else never
        elif op is c.AT:
            data[i] = (c.AT, anchors.get(av, av))
        elif op is c.BRANCH:
            if not all(_confine(item, c) for item in av[1]):
                return False
        elif op is c.SUBPATTERN:
            if not _confine(av[3], c):
                return False
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            if not _confine(av[2], c):
                return False
        elif op in (c.ASSERT, c.ASSERT_NOT):
            if not _confine(av[1], c):
                return False
        elif op is c.ATOMIC_GROUP:
            if not _confine(av, c):
                return False
        elif op is c.GROUPREF_EXISTS:
            if not all(p is None or _confine(p, c) for p in av[1:]):
                return False
        elif op is not c.GROUPREF:
            return False
    return True
