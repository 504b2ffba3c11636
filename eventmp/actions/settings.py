"""The checks of a built-in handler's settings, each raising a ``ValueError`` that names it.

Every handler's ``__init__`` runs them, so they run where the handler is built: in the parent,
when a pipeline file is loaded or a program builds one. A worker receives the checked values
(unpickling does not call ``__init__``) and never runs a check again. Each accepts the forms a
pipeline file can write: a string for every number, duration and boolean (``"30s"``, ``"3"``,
``"true"``).
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from ..templates import check
from ..units import parse_bool, parse_duration


def _bad(owner: str, setting: str, problem: str) -> ValueError:
    return ValueError(f"{owner}: setting {setting!r}: {problem}")


def _duration(owner: str, setting: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise _bad(owner, setting, str(exc)) from None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "more than 0"
        raise _bad(owner, setting, f"must be {bound} seconds, got {value!r}")
    return seconds


def _integer(owner: str, setting: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value)
    ):
        number = int(value)
    if number is None:
        raise _bad(owner, setting, f"expected a whole number, got {value!r}")
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise _bad(owner, setting, f"expected a whole number {bounds}, got {value!r}")
    return number


def _boolean(owner: str, setting: str, value: Any) -> bool:
    try:
        return parse_bool(value)
    except (TypeError, ValueError) as exc:
        raise _bad(owner, setting, str(exc)) from None


def _text(owner: str, setting: str, value: Any, *, one_line: bool = False) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _bad(owner, setting, f"expected a non-empty string, got {value!r}")
    if one_line and ("\n" in value or "\r" in value):
        raise _bad(owner, setting, f"must be one line, got {value!r}")
    return value


def _template(owner: str, setting: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(owner, setting, f"expected a template string, got {value!r}")
    try:
        check(value)
    except ValueError as exc:
        raise _bad(owner, setting, str(exc)) from None
    return value


def _function(owner: str, setting: str, value: Any) -> Callable[..., Any]:
    if not callable(value):
        raise _bad(owner, setting, f"expected a callable, got {value!r}")
    return value  # type: ignore[no-any-return]


def _names(owner: str, setting: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _bad(owner, setting, f"expected a list of field names, got {value!r}")
    for item in items:
        if not isinstance(item, str) or not item:
            raise _bad(owner, setting, f"expected non-empty field names, got {item!r}")
    if not items:
        raise _bad(owner, setting, "expected at least one field name")
    return items


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ENV_NAME = re.compile(r"[^=\x00]+")


def _headers(owner: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        # One "Name: value" per line: a header value may itself hold commas and semicolons.
        pairs: list[tuple[Any, Any]] = []
        for line in value.splitlines():
            if line.strip():
                name, colon, text = line.partition(":")
                if not colon:
                    raise _bad(owner, "headers", f"expected 'Name: value' lines, got {line!r}")
                pairs.append((name.strip(), text.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _bad(owner, "headers", f"expected a table of header names to values, got {value!r}")
    headers: dict[str, str] = {}
    for name, text in pairs:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise _bad(owner, "headers", f"not a header name: {name!r}")
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise _bad(owner, "headers", f"header {name!r}: expected a string, got {text!r}")
        if "\n" in str(text) or "\r" in str(text):
            raise _bad(owner, "headers", f"header {name!r}: a value must be one line")
        headers[name] = str(text)
    return headers


def _environment(owner: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        pairs: list[tuple[Any, Any]] = []
        for item in shlex.split(value):
            name, equals, text = item.partition("=")
            if not equals:
                raise _bad(owner, "env", f"expected NAME=value items, got {item!r}")
            pairs.append((name, text))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise _bad(owner, "env", f"expected a table of variable names to values, got {value!r}")
    env: dict[str, str] = {}
    for name, text in pairs:
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise _bad(owner, "env", f"not an environment variable name: {name!r}")
        if isinstance(text, bool):
            text = "true" if text else "false"
        if not isinstance(text, (str, int, float)) or "\x00" in str(text):
            raise _bad(owner, "env", f"variable {name!r}: expected a string, got {text!r}")
        env[name] = str(text)
    return env
