"""A pipeline file's single values checked, and the errors that say where in the file they are.

Runs in the parent process, before the dispatcher starts: :class:`ValueChecker` is the base of
the loader behind :func:`~eventmp.pipeline.load_pipeline`. Every error it makes names the file
and the place (``rules[1].regex``), and shows a value substituted from ``${NAME}`` as
``${NAME}``, never as itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .units import parse_bool, parse_duration, parse_size

__all__ = ["ValueChecker", "kind_of", "literal"]

# A substituted value shorter than this is not looked for in error messages (it would match
# ordinary text: a digit, a word).
_SECRET_MIN = 4


class ValueChecker:
    """Checks of single values, each failure a :class:`PipelineError` naming the place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # The variables substituted so far, and their values: never printed in an error.
        self.substituted: dict[str, str] = {}

    def fail(self, where: str, message: str) -> PipelineError:
        location = f"{self.path}: {where}: " if where else f"{self.path}: "
        return PipelineError(self.hide_values(location + message))

    def hide_values(self, message: str) -> str:
        """``message`` with each substituted value, as any error may quote it, replaced by the
        ``${NAME}`` it came from, and a note naming those variables."""
        from .templates import printable

        found = []
        by_length = sorted(self.substituted.items(), key=lambda item: -len(item[1]))
        for name, value in by_length:
            if len(value) < _SECRET_MIN:
                continue
            forms: set[str] = set()
            for text in (value, literal(value)):
                for shown in (text, printable(text)):
                    forms.update((shown, repr(shown)[1:-1]))
            hit = False
            for form in sorted(forms, key=len, reverse=True):
                if form in message:
                    message = message.replace(form, f"${{{name}}}")
                    hit = True
            if hit:
                found.append(f"${{{name}}}")
        if found:
            message += f" (after substituting {', '.join(found)})"
        return message

    # -- values ---------------------------------------------------------------------------------

    def no_unknown(self, table: dict[str, Any], known: set[str], where: str) -> None:
        for key in table:
            if key not in known:
                raise self.fail(
                    f"{where}.{key}",
                    f"unknown setting (expected one of {', '.join(sorted(known))})",
                )

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {kind_of(value)}")
        return value

    def regex(self, value: Any, where: str) -> re.Pattern[str]:
        pattern = self.string(value, where)
        try:
            return re.compile(pattern)
        except re.error as exc:
            position = f" at position {exc.pos}" if exc.pos is not None else ""
            raise self.fail(where, f"bad regular expression{position}: {exc.msg}") from None

    def template(self, value: Any, where: str) -> str:
        from .templates import check

        text = self.string(value, where)
        try:
            check(text)
        except ValueError as exc:
            raise self.fail(where, str(exc)) from None
        return text

    def relative(self, path: str) -> str:
        expanded = os.path.expanduser(path)
        if os.path.isabs(expanded):
            return expanded
        return str(self.path.parent / expanded)

    def convert(self, value: Any, kind: str, where: str) -> Any:
        try:
            if kind == "duration":
                return parse_duration(value)
            if kind == "timeout":
                seconds = parse_duration(value)
                if seconds <= 0:
                    raise ValueError
                return seconds
            if kind == "spin":
                seconds = parse_duration(value)
                if seconds > 0.01:
                    raise ValueError
                return seconds
            if kind == "size":
                return parse_size(value)
            if kind == "bool":
                return parse_bool(value)
            if kind == "count":
                number = int(value) if not isinstance(value, bool) else None
                if number is None or number < 1 or (isinstance(value, float) and value != number):
                    raise ValueError
                return number
            if kind == "start_method":
                if value not in ("fork", "spawn", "forkserver"):
                    raise ValueError
                return value
        except (TypeError, ValueError):
            expected = {
                "duration": "a number of seconds or a string such as '250ms', '30s', '5m'",
                "timeout": "a number of seconds > 0 or a string such as '250ms', '30s', '5m'",
                "spin": "a number of seconds up to 0.01, or a string such as '0.2ms'",
                "size": "a number of bytes or a string such as '512MB'",
                "bool": "true or false",
                "count": "a whole number >= 1",
                "start_method": '"fork", "spawn" or "forkserver"',
            }[kind]
            raise self.fail(where, f"expected {expected}, got {value!r}") from None
        raise AssertionError(kind)


def literal(text: str) -> str:
    """``text`` as a template that renders to itself: each brace doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def kind_of(value: Any) -> str:
    """``value`` as an error says what was found instead: ``a table``, ``int 3``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"
